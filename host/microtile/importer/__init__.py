"""Import: read a .tflite flatbuffer, validate every field, and build the graph IR."""
