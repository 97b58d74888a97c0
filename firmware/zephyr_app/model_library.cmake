# The model for the Zephyr app: a `microtile export` folder, the same library the
# bare-metal firmware adds (root CMakeLists.txt). Its zephyr/ subfolder is a Zephyr
# module; this adds it to ZEPHYR_EXTRA_MODULES and turns its Kconfig symbol on through
# a config fragment in EXTRA_CONF_FILE. Included before find_package(Zephyr); runs in
# cmake -P script mode too (tests/test_zephyr.py evaluates it so).
#
# In: MT_MODEL_DIR. Out: MT_MODEL_DIR (absolute), MT_MODEL_KCONFIG (the symbol),
# ZEPHYR_EXTRA_MODULES and EXTRA_CONF_FILE appended.
if(MT_MODEL_DIR STREQUAL "" OR NOT EXISTS "${MT_MODEL_DIR}/zephyr/module.yml"
    OR NOT EXISTS "${MT_MODEL_DIR}/zephyr/Kconfig")
  message(FATAL_ERROR
    "MT_MODEL_DIR='${MT_MODEL_DIR}' must be a `microtile export` folder (with zephyr/module.yml): run "
    "`microtile export MODEL.tflite --board <board> --out DIR` and pass -DMT_MODEL_DIR=DIR")
endif()
get_filename_component(MT_MODEL_DIR "${MT_MODEL_DIR}" ABSOLUTE)

file(STRINGS "${MT_MODEL_DIR}/zephyr/Kconfig" MT_MODEL_KCONFIG REGEX "^config MICROTILE_MODEL_[A-Z0-9_]+$")
list(LENGTH MT_MODEL_KCONFIG mt_kconfig_count)
if(NOT mt_kconfig_count EQUAL 1)
  message(FATAL_ERROR "${MT_MODEL_DIR}/zephyr/Kconfig must define one MICROTILE_MODEL_<NAME> symbol: "
                      "export the model again with `microtile export`")
endif()
string(REGEX REPLACE "^config " "" MT_MODEL_KCONFIG "${MT_MODEL_KCONFIG}")

if(CMAKE_BINARY_DIR)
  set(mt_conf_dir "${CMAKE_BINARY_DIR}")
else()
  set(mt_conf_dir "${CMAKE_CURRENT_BINARY_DIR}")
endif()
file(WRITE "${mt_conf_dir}/microtile_model.conf" "CONFIG_${MT_MODEL_KCONFIG}=y\n")
list(APPEND ZEPHYR_EXTRA_MODULES "${MT_MODEL_DIR}")
list(APPEND EXTRA_CONF_FILE "${mt_conf_dir}/microtile_model.conf")
unset(mt_conf_dir)
unset(mt_kconfig_count)
