"""LoRA, rsLoRA and QLoRA: a trainable low-rank update beside each frozen linear layer.

Hu et al. (2021), "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3. A frozen
weight W0 [out, in] is adapted by the product of two small matrices:

    h = W0 x + (alpha / r) * B A x          A [r, in], B [out, r], r << min(in, out)

B starts at zero, so B A = 0 and the adapted model starts exactly as the base model; only A
and B are trained. The scaling alpha / r keeps the update's size roughly independent of r
when r is changed at a fixed learning rate.

rsLoRA: Kalajdzievski (2023), "A Rank Stabilization Scaling Factor for Fine-Tuning with
LoRA": with alpha / r the learning signal through B A shrinks as r grows (larger ranks learn
no better); scaling = alpha / sqrt(r) is the choice that keeps it rank-stable.

QLoRA: Dettmers et al. (2023). W0 is stored in 4-bit NF4 (nf4.py) and dequantized at each
forward, h = dequant(W0) x + (alpha / r) B A x; A and B stay in full precision. Gradients
flow through the dequantized W0 to x (and so to earlier layers' A, B), never into W0.

Merging, for inference: W0 <- W0 + (alpha / r) B A makes the layer a plain matmul again;
`unmerge_lora` subtracts it back (exact up to float rounding). A merged layer computes
only W0 x. Merging into an NF4 weight is refused: the sum would have to be re-quantized,
which would throw away most of the (small) update.

The fast path (`LoRAMatmul`, every layer without dropout, bias or NF4) writes the gradients
out instead of leaving them to autograd, with s = scaling, u = x A^T [tokens, r]:

    y  = x W0^T + s u B^T           dx = dy W0 + s (dy B) A
    dA = s (dy B)^T x               dB = s dy^T u            (W0 gets none: it is frozen)

so that each "+" is the accumulate of a matmul (addmm_) rather than a pass of its own over a
[tokens, out] or [tokens, in] tensor: autograd's version adds the branch to the base output
forward and the two parts of dx backward, and in bf16 on a CPU those adds cost as much as
the skinny matmuls (measured on a bf16 [1024, 576] -> 1536 layer, forward + backward: 8.7 -> 4.9
ms; a 1536 -> 576 layer 10.8 -> 5.0 ms). The plain expression below stays as the reference
and serves the other layers; the two are tested equal in float64.

The rank-r products are computed transposed, u^T = A x^T and (dy B)^T = B^T dy^T, each [r,
tokens], and dB as (u^T dy)^T: the same numbers, but a matmul with r = 8 output columns and
thousands of rows ran 2-6x slower under MKL than the same product with r rows and thousands
of columns. Measured in float32 on one AVX2 core, the LoRA-only work of a
[1024 tokens, 576] -> 1536 layer (forward + backward, the base matmuls apart): 10.8 -> 4.1 ms;
1536 -> 576: 7.3 -> 4.8 ms; 576 -> 576: 4.3 -> 2.1 ms (bf16 on an AMX CPU not measured).

Deviations: A is initialised like nn.Linear's weight (Kaiming-uniform, a = sqrt(5)), as in
the authors' loralib and the PEFT library, where the paper says "random Gaussian"; both
only need A != 0 and B = 0. Dropout on the LoRA branch's input (dropout(x) A^T B^T) follows
loralib; the paper does not use it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minipost import backend
from minipost.peft.nf4 import NF4Linear
from minipost.peft.settings import LORA_TARGETS, LoRASettings, clear, record

D = LoRASettings  # the defaults


def lora_forward(x, weight, A, B, scaling):
    """-> (y = x W0^T + s (x A^T) B^T, u_t = A x^T [r, tokens]), all in x's dtype."""
    u_t = A @ x.reshape(-1, x.shape[-1]).T  # transposed: see the module docstring
    # The base product as nn.Linear computes it, so that with B = 0 (a fresh adapter) the
    # output is bit for bit the base model's (the DPO reference with adapters off).
    y = F.linear(x, weight)
    y.view(-1, weight.shape[0]).addmm_(u_t.T, B.T, alpha=scaling)
    return y, u_t


class LoRAMatmul(torch.autograd.Function):
    """y = x W0^T + s (x A^T) B^T with the backward of the module docstring. All inputs in
    one dtype (the caller casts); A and B get their gradients back in their own dtype."""

    @staticmethod
    def forward(ctx, x, weight, lora_A, lora_B, scaling):
        A, B = lora_A.to(x.dtype), lora_B.to(x.dtype)
        y, u_t = lora_forward(x, weight, A, B, scaling)
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight, A, B, u_t)
        ctx.scaling, ctx.x_shape, ctx.dtypes = scaling, x.shape, (lora_A.dtype, lora_B.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, A, B, u_t = ctx.saved_tensors
        s = ctx.scaling
        dy2 = dy.reshape(-1, weight.shape[0]).to(x2.dtype)
        dyB_t = B.T @ dy2.T  # (dy B)^T [r, tokens]
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ weight).addmm_(dyB_t.T, A, alpha=s).view(ctx.x_shape)
        dA = (dyB_t @ x2).mul_(s).to(ctx.dtypes[0]) if ctx.needs_input_grad[2] else None
        dB = (u_t @ dy2).T.mul_(s).to(ctx.dtypes[1]) if ctx.needs_input_grad[3] else None
        return dx, None, dA, dB, None


class LoRALinear(nn.Module):
    """base(x) + scaling * dropout(x) @ lora_A.T @ lora_B.T, with base frozen.

    base: the wrapped nn.Linear (or its NF4Linear copy under QLoRA), kept as `.base` so the
    state dict reads `...q_proj.base.weight`, `...q_proj.lora_A`, `...q_proj.lora_B`.
    lora_A [r, in], lora_B [out, r]. forward: x [..., in] -> [..., out].
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False,
                 quantize: str | None = None, double_quant: bool = False):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        if quantize not in (None, "nf4"):
            raise ValueError(f"quantize must be None or 'nf4', got {quantize!r}")
        base.requires_grad_(False)
        self.base = NF4Linear(base, double_quant=double_quant) if quantize == "nf4" else base
        self.r, self.alpha, self.rslora, self.quantize, self.double_quant = r, alpha, rslora, quantize, double_quant
        self.dropout_p = dropout
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # W0 currently holds W0 + scaling * B A
        self.disabled = False  # set by disable_adapters: compute base(x) only

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A [out, in], the update the branch adds to W0."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, NF4Linear):
            return self.base(x)
        return F.linear(x, backend.frozen_weight(self.base.weight, x), self.base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.disabled:
            return self._base(x)
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        fusable = self.quantize is None and self.base.bias is None and not dropout_active
        if backend.triton_enabled() and fusable:
            from kernels.lora_matmul import lora_matmul

            return lora_matmul(x, self.base.weight, self.lora_A, self.lora_B, self.scaling)
        if fusable:  # the matmuls run in the autocast dtype when autocast is on (bf16), as nn.Linear's
            x = x.to(backend.matmul_dtype(x))
            weight = backend.frozen_weight(self.base.weight, x).to(x.dtype)
            if not torch.is_grad_enabled():  # generation: no autograd.Function bookkeeping per call
                return lora_forward(x, weight, self.lora_A.to(x.dtype), self.lora_B.to(x.dtype), self.scaling)[0]
            return LoRAMatmul.apply(x, weight, self.lora_A, self.lora_B, self.scaling)
        # The reference expression: also the path for what LoRAMatmul does not do
        # (dropout on the branch input in training, an NF4 base, a bias).
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        # base + scaling * branch in one op (add's alpha): no separate scaled [tokens, out] tensor
        return torch.add(self._base(x), self.dropout(x) @ A.T @ B.T, alpha=self.scaling)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def apply_lora(model: nn.Module, r: int = D.r, alpha: float = D.alpha, targets=D.targets, dropout: float = D.dropout,
               rslora: bool = D.rslora, quantize: str | None = D.quantize, double_quant: bool = D.double_quant
               ) -> nn.Module:
    """Freeze every parameter of `model` and wrap each nn.Linear named in `targets` (by its
    attribute name: q_proj ... down_proj) in a LoRALinear. quantize="nf4" (QLoRA) stores
    those frozen weights in NF4, with double_quant also quantizing their scales.
    Returns the model, changed in place."""
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got unknown {unknown}")
    if double_quant and quantize != "nf4":
        raise ValueError("double_quant applies to quantize='nf4' only")
    model.requires_grad_(False)
    found = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, r, alpha, dropout, rslora, quantize, double_quant))
                found.add(name)
    if found != set(targets):
        raise ValueError(f"no nn.Linear named {sorted(set(targets) - found)} in the model")
    record(model, "qlora" if quantize else "lora", LoRASettings(r, alpha, tuple(t for t in LORA_TARGETS if t in found),
                                                                 dropout, rslora, quantize, double_quant))
    return model.train(model.training)  # the new modules follow the model's train/eval mode


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """W0 <- W0 + scaling * B A in every LoRA layer not yet merged (for inference)."""
    layers = lora_layers(model)
    if any(m.quantize for m in layers):
        raise RuntimeError("merge_lora: the base weights are 4-bit NF4 (QLoRA); adding B A and re-quantizing "
                           "would lose most of the update. Load the adapter onto a full-precision base to merge.")
    for m in layers:
        if not m.merged:
            m.base.weight += m.delta_weight().to(m.base.weight.dtype)
            m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """W0 <- W0 - scaling * B A in every merged LoRA layer (exact up to float rounding)."""
    for m in lora_layers(model):
        if m.merged:
            m.base.weight -= m.delta_weight().to(m.base.weight.dtype)
            m.merged = False
    return model


def merge_and_unwrap(model: nn.Module) -> nn.Module:
    """The end of the LoRA story: fold every update into its base weight (merge_lora) and put
    the plain nn.Linear back, so the model is an ordinary GPT again (its record cleared)."""
    merge_lora(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.base)
    clear(model)
    return model
