# Toolchain: arm-none-eabi-gcc for bare-metal Cortex-M (default Cortex-M4F, hard
# float). Board-specific CPU flags come in as MT_CPU_FLAGS (from the board YAML).
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

find_program(MT_ARM_GCC arm-none-eabi-gcc)
if(NOT MT_ARM_GCC)
  message(FATAL_ERROR "arm-none-eabi-gcc not found: sudo apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi (or make setup)")
endif()
get_filename_component(MT_ARM_BIN "${MT_ARM_GCC}" DIRECTORY)

set(CMAKE_C_COMPILER "${MT_ARM_BIN}/arm-none-eabi-gcc")
set(CMAKE_ASM_COMPILER "${MT_ARM_BIN}/arm-none-eabi-gcc")
set(CMAKE_OBJCOPY "${MT_ARM_BIN}/arm-none-eabi-objcopy" CACHE FILEPATH "objcopy")
set(CMAKE_SIZE "${MT_ARM_BIN}/arm-none-eabi-size" CACHE FILEPATH "size")
# compiler checks cannot link without our startup code
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

if(NOT DEFINED MT_CPU_FLAGS OR MT_CPU_FLAGS STREQUAL "")
  set(MT_CPU_FLAGS "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
endif()
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES MT_CPU_FLAGS)

set(CMAKE_C_FLAGS_INIT "${MT_CPU_FLAGS} -O2 -g -ffunction-sections -fdata-sections -fno-common")
set(CMAKE_ASM_FLAGS_INIT "${MT_CPU_FLAGS} -g")
# newlib-nano for the few libc functions kernels may use (memcpy, memset); no
# semihosting, no syscalls, no C runtime start files (startup.c is ours).
set(CMAKE_EXE_LINKER_FLAGS_INIT "${MT_CPU_FLAGS} --specs=nano.specs -nostartfiles -Wl,--gc-sections")

set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
