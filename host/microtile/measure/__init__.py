"""Measure: run inputs through a target, check them against TFLM, count instructions or cycles, and estimate cycles."""
