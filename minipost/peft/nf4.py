"""4-bit NormalFloat (NF4) weights, the storage format of QLoRA.

Dettmers, Pagnoni, Holtzman & Zettlemoyer (2023), "QLoRA: Efficient Finetuning of Quantized
LLMs", §3. The weight matrix is flattened and cut into blocks of 64 values; each block keeps
one float32 scale c (its absolute maximum) and one 4-bit code per value:

    c          = max_i |W_i|                              per block (eq. 1, absmax scaling)
    code_i     = argmin_k | W_i / c - q_k |               nearest of the 16 NF4 levels q_k
    W'_i       = q[code_i] * c                            dequantization, done on the fly

so each value is off by at most half the gap between its two neighbouring levels, times c.

The levels. Pretrained weights are close to normally distributed, so NF4 puts its levels
at quantiles of N(0, 1), each level holding an equal share of the probability mass, and
rescales them to [-1, 1]. To represent 0 exactly the code is asymmetric: 8 levels for the
positive half, 7 for the negative half, plus 0. With Phi^-1 the normal quantile function
and delta = 1 - (1/30 + 1/32) / 2 = 0.9677083 (the paper's choice, which keeps the end
levels finite):

    q_pos = Phi^-1(linspace(delta, 1/2, 9)[:8]) / Phi^-1(delta)          8 values in (0, 1]
    q_neg = -Phi^-1(linspace(delta, 1/2, 8)[:7]) / Phi^-1(delta)         7 values in [-1, 0)
    NF4   = sort(q_neg + [0] + q_pos)

`NF4_LEVELS` is the table printed in the paper (Appendix E); `nf4_levels_from_quantiles()`
recomputes it from the formula above (the tests check they agree).

Storage: two 4-bit codes per uint8 byte (the first value of each pair in the high nibble),
so a weight costs 0.5 byte plus 4 bytes / 64 = 0.0625 byte of scale.

Double quantization (§3, optional here: `double_quant=True`): the float32 scales are
themselves quantized, to 8-bit floats in blocks of 256 scales, after subtracting their mean
(the scales are all positive; centring them uses the float's sign bit):

    c2 = c - mean(c);   s = max |c2| per block of 256;   c2_8 = fp8_e4m3(c2 / s * 448)
    c' = c2_8 / 448 * s + mean(c)

which brings the scale overhead from 32/64 = 0.5 bit to 8/64 + 32/(64*256) ~ 0.127 bit per
weight. Deviation: the paper's second-level 8-bit float is bitsandbytes' dynamic 8-bit map;
here it is torch's float8_e4m3fn (448 = its largest value), the standard 8-bit float.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost import backend

NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
BLOCK_SIZE = 64
SCALE_BLOCK_SIZE = 256
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def nf4_levels_from_quantiles(delta: float = 1 - (1 / 30 + 1 / 32) / 2) -> torch.Tensor:
    """The 16 NF4 levels [16] (float64), computed from normal quantiles as in the docstring."""
    ppf = torch.special.ndtri
    pos = ppf(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -ppf(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).sort().values
    return levels / levels.max()


@dataclass
class NF4Tensor:
    """A weight matrix in NF4. `packed` [ceil(n/64) * 32] uint8 holds the codes, two per byte;
    the block scales are either `absmax` [n_blocks] float32, or (double quantization)
    `absmax_fp8` [n_blocks padded to 256] float8 with `scale_absmax` [n_blocks/256] float32
    and `scale_mean` [] float32. `shape` is the logical shape of the weight."""

    packed: torch.Tensor
    shape: tuple[int, ...]
    absmax: torch.Tensor | None = None
    absmax_fp8: torch.Tensor | None = None
    scale_absmax: torch.Tensor | None = None
    scale_mean: torch.Tensor | None = None
    block_size: int = BLOCK_SIZE

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("packed", "absmax", "absmax_fp8", "scale_absmax", "scale_mean")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes of storage: the packed codes plus the scales (and their scales)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    return F.pad(x, (0, -x.numel() % multiple))


def _block_scales(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x flat -> (x as [n_blocks, block] padded with zeros, absmax [n_blocks])."""
    blocks = _pad_to(x, block).view(-1, block)
    return blocks, blocks.abs().amax(dim=1)


def quantize_nf4(weight: torch.Tensor, block_size: int = BLOCK_SIZE, double_quant: bool = False) -> NF4Tensor:
    """weight [any shape] -> NF4Tensor. Values are normalised per block by the block's absmax
    and rounded to the nearest NF4 level (a block of zeros keeps scale 0 and codes for 0)."""
    if block_size % 2:
        raise ValueError(f"block_size must be even (two codes per byte), got {block_size}")
    blocks, absmax = _block_scales(weight.detach().float().reshape(-1), block_size)
    normed = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]
    levels = torch.tensor(NF4_LEVELS, device=weight.device)
    # Nearest level = the number of midpoints between neighbouring levels lying below the value.
    codes = torch.bucketize(normed.reshape(-1), (levels[1:] + levels[:-1]) / 2).to(torch.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    q = NF4Tensor(packed=packed, shape=tuple(weight.shape), block_size=block_size)
    if not double_quant:
        q.absmax = absmax
        return q
    mean = absmax.mean()
    scale_blocks, scale_absmax = _block_scales(absmax - mean, SCALE_BLOCK_SIZE)
    scale_absmax = torch.where(scale_absmax > 0, scale_absmax, 1.0)
    q.absmax_fp8 = (scale_blocks / scale_absmax[:, None] * FP8_MAX).to(torch.float8_e4m3fn).reshape(-1)
    q.scale_absmax, q.scale_mean = scale_absmax, mean
    return q


def dequantize_scales(q: NF4Tensor) -> torch.Tensor:
    """The block scales c' [n_blocks] float32 that dequantization multiplies by."""
    if q.absmax is not None:
        return q.absmax.float()
    n_blocks = -(-q.numel // q.block_size)
    c2 = q.absmax_fp8.float().view(-1, SCALE_BLOCK_SIZE) / FP8_MAX * q.scale_absmax.float()[:, None]
    return c2.reshape(-1)[:n_blocks] + q.scale_mean.float()


def byte_levels(device=None) -> torch.Tensor:
    """[256, 2] float32: byte b -> (NF4[b >> 4], NF4[b & 15]), the two levels it packs."""
    levels = torch.tensor(NF4_LEVELS, device=device)
    return torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=1)


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NF4Tensor -> weight of shape q.shape in dtype: W'_i = NF4[code_i] * c'_block(i).
    The product is taken in float32 and rounded once to dtype (bf16 under autocast).
    One lookup per byte gives both of its values (byte_levels): half the index work of
    unpacking the two codes first, 13 -> 7 ms for a 1536 x 576 matrix on one CPU thread."""
    pairs = byte_levels(q.packed.device)[q.packed.long()]  # [numel / 2, 2], the codes' order
    values = (pairs.view(-1, q.block_size) * dequantize_scales(q)[:, None]).to(dtype)
    return values.reshape(-1)[: q.numel].view(q.shape)


class NF4Linear(nn.Module):
    """A frozen nn.Linear whose weight is stored in NF4 and dequantized at every forward.

    forward: x [..., in] -> x W'ᵀ + bias [..., out], W' = dequantize_nf4(weight), computed in
    x's dtype, or in the autocast dtype inside an autocast region (`--precision bf16`: the
    weight is dequantized straight into bf16, never held in float32). The codes and scales are
    buffers (not parameters): they are never trained.

    Deviation, for generation: in eval mode without gradients (greedy replies, rollouts) the
    dequantized weight is kept and reused until train(), eval() or a state-dict load. A decode
    step computes one token per row, so re-dequantizing the 106M weights of SmolLM2's linear
    layers at each step cost ~1.5 s against ~0.05 s of matmuls (one CPU thread); keeping them
    costs 2 bytes a weight in bf16 while generation runs, and training memory stays NF4's.
    """

    def __init__(self, linear: nn.Linear, double_quant: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q = quantize_nf4(linear.weight, double_quant=double_quant)
        self.shape, self.block_size = q.shape, q.block_size
        for name, t in q.tensors().items():
            self.register_buffer(name, t)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self._inference_weight: torch.Tensor | None = None  # see the class docstring

    def train(self, mode: bool = True):
        self._inference_weight = None  # so buffers loaded since are never shadowed by an old copy
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._inference_weight = None  # new codes: the kept copy would be stale
        return super()._load_from_state_dict(*args, **kwargs)

    def quantized(self) -> NF4Tensor:
        fields = ("packed", "absmax", "absmax_fp8", "scale_absmax", "scale_mean")
        return NF4Tensor(shape=self.shape, block_size=self.block_size,
                         **{k: getattr(self, k, None) for k in fields})

    @property
    def logical_numel(self) -> int:
        """The number of weights stored (each as half a byte)."""
        return math.prod(self.shape)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_nf4(self.quantized(), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = backend.matmul_dtype(x)
        bias = None if self.bias is None else self.bias.to(dtype)
        if self.training or torch.is_grad_enabled():
            return F.linear(x.to(dtype), self.dequantized_weight(dtype), bias)
        weight = self._inference_weight
        if weight is None or weight.dtype != dtype or weight.device != x.device:
            weight = self._inference_weight = self.dequantized_weight(dtype)
        return F.linear(x.to(dtype), weight, bias)

    def extra_repr(self) -> str:
        dq = ", double_quant" if getattr(self, "absmax_fp8", None) is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4{dq}"
