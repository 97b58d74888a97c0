"""Model zoo builders: int8 .tflite files microtile generates itself."""
