"""Check: the TFLM oracle, the numpy reference executor and the fuzzers that compare them with the kernels."""
