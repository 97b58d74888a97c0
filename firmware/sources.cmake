# The portable firmware sources: the operator kernels and the device app (link
# protocol, measurement). One list for every build that compiles them: the bare-metal
# build (CMakeLists.txt at the repository root) and the Zephyr module
# (zephyr/CMakeLists.txt). Board ports and the generated model are not in it.
#
# Defines MT_FIRMWARE_DIR, MT_KERNEL_SOURCES, MT_APP_SOURCES (absolute paths, sorted).
# Works in project mode and in cmake -P script mode (tests/test_zephyr.py reads it so).
get_filename_component(MT_FIRMWARE_DIR "${CMAKE_CURRENT_LIST_DIR}" ABSOLUTE)
if(CMAKE_SCRIPT_MODE_FILE)
  set(_mt_glob_flags "")
else()
  set(_mt_glob_flags CONFIGURE_DEPENDS)
endif()
file(GLOB MT_KERNEL_SOURCES ${_mt_glob_flags} "${MT_FIRMWARE_DIR}/kernels/*.c")
file(GLOB MT_APP_SOURCES ${_mt_glob_flags} "${MT_FIRMWARE_DIR}/app/*.c" "${MT_FIRMWARE_DIR}/app/*.S")
list(SORT MT_KERNEL_SOURCES)
list(SORT MT_APP_SOURCES)
unset(_mt_glob_flags)
