"""The zoo serialises with microtile's own writer (host/microtile/tflite_format.py);
this module keeps the ``microtile_models.tflite_writer.write_tflite`` name working."""
from microtile.tflite_format import load_tflite, write_tflite

__all__ = ["load_tflite", "write_tflite"]
