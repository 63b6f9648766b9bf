"""Each GGUF dequantizer against its block formula written as a plain loop, and against the
gguf package's reference dequantizer."""
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from minipost.gguf_quants import FORMATS, dequantize  # noqa: E402


def half(two_bytes) -> float:
    return struct.unpack("<e", bytes(two_bytes))[0]


def loop_dequantize(raw: np.ndarray, fmt: str) -> list[float]:
    """The formulas of minipost/gguf_quants.py, one value at a time."""
    data = bytes(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))
    out = []
    if fmt == "F32":
        return [struct.unpack("<f", data[i:i + 4])[0] for i in range(0, len(data), 4)]
    if fmt == "F16":
        return [half(data[i:i + 2]) for i in range(0, len(data), 2)]
    if fmt == "BF16":
        return [struct.unpack("<f", b"\x00\x00" + data[i:i + 2])[0] for i in range(0, len(data), 2)]
    size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[fmt]
    for start in range(0, len(data), size):
        block = data[start:start + size]
        d = half(block[:2])
        if fmt == "Q8_0":
            for i in range(32):
                q = block[2 + i] - 256 if block[2 + i] > 127 else block[2 + i]
                out.append(d * q)
            continue
        m = half(block[2:4]) if fmt == "Q4_1" else 0.0
        codes = block[4:] if fmt == "Q4_1" else block[2:]
        for i in range(32):
            q = codes[i] & 0x0F if i < 16 else codes[i - 16] >> 4
            out.append(d * q + m if fmt == "Q4_1" else d * (q - 8))
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_dequantize_matches_formula_and_gguf_reference(fmt):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 64)) * rng.uniform(0.01, 2.0, (3, 1))).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[fmt]
    raw = gguf.quants.quantize(x, qtype)
    ours = dequantize(raw, fmt, 64)
    assert ours.shape == (3, 64) and ours.dtype == np.float32
    reference = gguf.quants.dequantize(raw, qtype).reshape(3, 64)
    np.testing.assert_array_equal(ours, reference.astype(np.float32))
    np.testing.assert_allclose(ours.reshape(-1), np.array(loop_dequantize(raw, fmt)), rtol=0, atol=1e-6)
    if fmt == "F32":
        np.testing.assert_array_equal(ours, x)


def test_q4_nibble_order_hand_made_block():
    # One Q4_1 block by hand: d = 0.5, m = -1, byte j = (q_low = j % 16) | (q_high = 15 - j) << 4.
    codes = bytes((j % 16) | ((15 - j) << 4) for j in range(16))
    raw = np.frombuffer(struct.pack("<ee", 0.5, -1.0) + codes, dtype=np.uint8)
    got = dequantize(raw, "Q4_1", 32)[0]
    expected = [0.5 * j - 1 for j in range(16)] + [0.5 * (15 - j) - 1 for j in range(16)]
    assert got.tolist() == expected


def test_unsupported_type_names_it():
    with pytest.raises(ValueError, match="Q5_K"):
        dequantize(np.zeros(10, np.uint8), "Q5_K", 32)
