"""microtile: int8 TFLite models compiled into memory-planned Cortex-M firmware."""

__version__ = "0.1.0"
