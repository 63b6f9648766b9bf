"""Dequantizing GGUF tensors by hand: the block formats of llama.cpp's ggml (Gerganov et al., 2023).

A GGUF file stores each weight row by row; a quantized row is a run of fixed-size blocks of
32 values. The `gguf` package only reads the container (names, shapes, raw bytes); the
numbers are computed here, one small function per format, from these layouts (all
little-endian; f16 is IEEE half precision):

  F32    4 bytes per value, x = the float32.
  F16    2 bytes per value, x = float(half).
  BF16   2 bytes per value: the upper 16 bits of a float32, x = float32(bits << 16).
  Q8_0   34-byte blocks: d (f16), then q[0..31] (int8).         x[i] = d * q[i]
  Q4_0   18-byte blocks: d (f16), then 16 bytes of 4-bit codes. x[i] = d * (q[i] - 8)
  Q4_1   20-byte blocks: d (f16), m (f16), then 16 code bytes.   x[i] = d * q[i] + m
         In both 4-bit formats byte j holds q[j] in its low nibble and q[j + 16] in its high
         nibble (the first half of the block in the low nibbles, the second in the high).

`dequantize(raw, qtype, n_per_row)` -> float32 numpy array [rows, n_per_row], where raw is
the tensor's bytes as the gguf reader gives them (uint8 [rows, bytes_per_row] for block
formats, the typed array otherwise).
"""
from __future__ import annotations

import numpy as np

BLOCK = 32  # values per block in every quantized format here
_BLOCK_BYTES = {"Q8_0": 2 + 32, "Q4_0": 2 + 16, "Q4_1": 2 + 2 + 16}
FORMATS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def _blocks(raw: np.ndarray, fmt: str) -> np.ndarray:
    """raw bytes -> uint8 [n_blocks, block_bytes]."""
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    size = _BLOCK_BYTES[fmt]
    if data.size % size:
        raise ValueError(f"{fmt}: {data.size} bytes is not a whole number of {size}-byte blocks")
    return data.reshape(-1, size)


def _half(block_bytes: np.ndarray) -> np.ndarray:
    """uint8 [n, 2] -> float32 [n, 1]: a little-endian f16 per row."""
    return np.ascontiguousarray(block_bytes).view("<f2").astype(np.float32)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 [n, 16] -> [n, 32]: the low nibbles are values 0..15, the high ones 16..31."""
    return np.concatenate([codes & 0x0F, codes >> 4], axis=1).astype(np.float32)


def dequantize_f32(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f4").astype(np.float32).reshape(-1)


def dequantize_f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").astype(np.float32).reshape(-1)


def dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(raw).view("<u2").astype(np.uint32).reshape(-1)
    return (bits << 16).view(np.float32)


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, "Q8_0")
    d, q = _half(b[:, :2]), b[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(-1)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, "Q4_0")
    d, q = _half(b[:, :2]), _nibbles(b[:, 2:])
    return (d * (q - 8.0)).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    b = _blocks(raw, "Q4_1")
    d, m, q = _half(b[:, :2]), _half(b[:, 2:4]), _nibbles(b[:, 4:])
    return (d * q + m).reshape(-1)


_DEQUANTIZERS = {"F32": dequantize_f32, "F16": dequantize_f16, "BF16": dequantize_bf16,
                 "Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1}


def dequantize(raw: np.ndarray, qtype: str, n_per_row: int) -> np.ndarray:
    """raw tensor bytes of format `qtype` (a name in FORMATS) -> float32 [rows, n_per_row]."""
    if qtype not in _DEQUANTIZERS:
        raise ValueError(f"GGUF tensor type {qtype} is not supported; minipost reads {', '.join(FORMATS)}")
    values = _DEQUANTIZERS[qtype](raw)
    if values.size % n_per_row:
        raise ValueError(f"{qtype}: {values.size} values do not form rows of {n_per_row}")
    return values.reshape(-1, n_per_row)
