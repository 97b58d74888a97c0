"""Offline side of the optimised kernels' fast requantisation (firmware/include/mt_requant_opt.h).

TFLite's MultiplyByQuantizedMultiplier with shift = -right (right >= 1) equals

    (SMMULR(2*acc, mult) + (h >> 31) + k) >> right,   k = 2**(right-1) + (zp << right)

(h the SMMULR result) whenever 2*acc and |acc| + 1 + |k| fit in int32. The kernels
accumulate 2*acc directly (weights and bias stored doubled). This module decides,
per channel, whether those conditions hold for every input the layer can see, from a
bound on |acc| computed from the constant weights and bias, and prepares (k, right).
"""
from __future__ import annotations

import numpy as np

INT32_MAX = (1 << 31) - 1


def max_abs_input(zero_point: int) -> int:
    """max |x - zp| over int8 x."""
    return max(abs(-128 - zero_point), abs(127 - zero_point))


def fast_requant_problem(shift: np.ndarray, out_zp: int, acc_bound: np.ndarray) -> str | None:
    """Why mt_requant_fast cannot serve every channel (a non-negative shift, i.e. an
    effective scale >= 0.5, or an accumulator bound that could overflow int32), or None."""
    shift = np.asarray(shift, dtype=np.int64).reshape(-1)
    bound = np.asarray(acc_bound, dtype=np.int64).reshape(-1)
    if shift.size == 0:
        return "no channels"
    if np.any(shift >= 0) or np.any(shift < -31):
        return f"requantisation shift {int(shift.max())} outside the fast path's -31..-1 (scale ratio >= 0.5)"
    right = -shift
    k = (np.int64(1) << (right - 1)) + (np.int64(out_zp) << right)
    if np.any(2 * bound > INT32_MAX) or np.any(bound + 1 + np.abs(k) > INT32_MAX):
        return f"accumulators up to {int(bound.max())} could overflow the fast path's doubled int32"
    return None


def fast_requant(mult: np.ndarray, shift: np.ndarray, out_zp: int,
                 acc_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel (k, right) for mt_requant_fast, or None when some channel does not
    qualify (fast_requant_problem says why). A channel with multiplier 0 (TFLM's
    QuantizeMultiplier gives (0, shift 0) for a scale below 2^-32, e.g. all-zero
    weights) outputs the zero point for every accumulator; so does the fast form with
    any right shift, so it takes right = 1 and keeps the layer on the fast path."""
    shift = np.where(np.asarray(mult).reshape(-1) == 0, -1, np.asarray(shift, dtype=np.int64).reshape(-1))
    if fast_requant_problem(shift, out_zp, acc_bound) is not None:
        return None
    right = -np.asarray(shift, dtype=np.int64).reshape(-1)
    k = (np.int64(1) << (right - 1)) + (np.int64(out_zp) << right)
    return k.astype(np.int64), right.astype(np.int64)


def reference_fast_requant(acc: np.ndarray, mult: np.ndarray, k: np.ndarray, right: np.ndarray) -> np.ndarray:
    """numpy model of mt_requant_fast (for tests): acc -> requantised + zp, unclamped."""
    a2 = 2 * np.asarray(acc, dtype=np.int64)
    h = (a2 * np.asarray(mult, dtype=np.int64) + (1 << 31)) >> 32
    h = h + (h >> 31)
    return (h + k) >> right


def pack16(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two int16 arrays -> int32 words (lo in bits 0-15), as the kernels read them."""
    lo = np.asarray(lo, dtype=np.int64) & 0xFFFF
    hi = np.asarray(hi, dtype=np.int64) & 0xFFFF
    return (lo | (hi << 16)).astype(np.uint32).view(np.int32)
