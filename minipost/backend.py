"""Which implementation serves attention and LoRA (the PyTorch reference or the Triton
kernels), and in which precision the model's matmuls run (float32 or bf16 autocast).

`--kernels auto` picks Triton when CUDA is present and the reference elsewhere (the
kernels run on the CPU only under TRITON_INTERPRET=1, which is for testing, not speed).
"""
from __future__ import annotations

import contextlib
import os

import torch

CHOICES = ("auto", "torch", "triton")
_use_triton = False


def set_kernels(choice: str, device: str | torch.device = "cpu") -> str:
    """Select the kernels for this process; returns the resolved name ("torch" or "triton")."""
    global _use_triton
    if choice not in CHOICES:
        raise ValueError(f"--kernels must be one of {CHOICES}, got {choice!r}")
    if choice == "auto":
        choice = "triton" if torch.device(device).type == "cuda" else "torch"
    if choice == "triton":
        if torch.device(device).type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("--kernels triton on a CPU needs TRITON_INTERPRET=1 (the kernels then run "
                               "in Triton's interpreter: correct but slow; for testing only)")
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise RuntimeError("--kernels triton needs the triton package (Linux only)") from e
    _use_triton = choice == "triton"
    return choice


def triton_enabled() -> bool:
    return _use_triton


# ---- Precision (DESIGN §13) ------------------------------------------------------------
# bf16 is torch.autocast around the model's forward: the matmuls (linear, attention) run in
# bfloat16 while the parameters, the optimizer state, the residual stream, the norms, the
# losses and the log-probs stay float32 (the logits are returned as float32).
PRECISIONS = ("auto", "fp32", "bf16")
# `auto` turns bf16 on only for models at least this large (parameters). The built-in
# presets (0.4M-1.6M parameters at the default vocabulary) measured no faster in bf16 on
# this CPU (their matmuls are too small for the bf16 kernels to win over the casts), and
# keeping them in float32 keeps the built-in runs' held-out numbers unchanged; SmolLM2-135M's
# shape measured several times faster (DESIGN-NOTES.md, "Precision").
AUTO_BF16_MIN_PARAMS = 20_000_000
_precision = "fp32"  # "fp32", "bf16" or "auto" (resolved per model size by autocast_dtype)


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matmuls run natively: CUDA with bf16 support, or a CPU with AVX512-BF16 or
    AMX under oneDNN. Elsewhere autocast would emulate bf16, slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


# What a run with --precision bf16 prints where bf16 is not native (cli.run).
EMULATED_BF16 = ("warning: --precision bf16 on a device without native bf16 (a CPU without AVX512-BF16 or AMX): "
                 "autocast emulates it, correct but far slower than float32 (a SmolLM2 LoRA-SFT step measured "
                 "212 s against 6.3 s in float32 on a 2-core AVX2 CPU). --precision auto picks float32 here.")


def set_precision(choice: str, device: str | torch.device = "cpu") -> str:
    """Select the matmul precision for this process; returns "fp32", "bf16" or, for `auto` on
    hardware with native bf16, "auto" (bf16 for models of AUTO_BF16_MIN_PARAMS or more).
    `bf16` is honoured on any device (emulated where not native: correct, slower)."""
    global _precision
    if choice not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {choice!r}")
    if choice == "auto" and not bf16_supported(device):
        choice = "fp32"
    _precision = choice
    return choice


def autocast_dtype(n_params: int) -> torch.dtype | None:
    """The autocast dtype for a model of n_params parameters (None: plain float32)."""
    if _precision == "bf16" or (_precision == "auto" and n_params >= AUTO_BF16_MIN_PARAMS):
        return torch.bfloat16
    return None


def autocast(device: torch.device, n_params: int):
    """A torch.autocast context for the current precision, or a no-op one for float32.
    Inside an enclosing autocast region (a caller's own) nothing changes."""
    dtype = autocast_dtype(n_params)
    if dtype is None or torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on x runs in: the autocast dtype inside an autocast region, else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def frozen_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight as a linear layer on x should use it: under autocast, a weight that is not
    trained (LoRA's base, a frozen lm_head) is cast once and the copy reused until the
    weight changes (its version counter moves: merging, loading). torch.autocast caches
    casts only of weights that require grad, and re-casting the frozen ones at every call
    measured 14% of a bf16 LoRA-SFT step at SmolLM2's shape. Costs a bf16 copy of them."""
    if weight.requires_grad or not torch.is_autocast_enabled(x.device.type):
        return weight
    dtype = torch.get_autocast_dtype(x.device.type)
    key = (weight.data_ptr(), weight._version, dtype)
    hit = getattr(weight, "_autocast_copy", None)  # kept on the tensor: it dies with it
    if hit is None or hit[0] != key:
        hit = key, weight.detach().to(dtype)
        weight._autocast_copy = hit
    return hit[1]


# ---- Memory reuse on Linux ------------------------------------------------------------------
# PyTorch's CPU tensors come from malloc. glibc serves each block over 32 MB (a real model's
# [tokens, vocab] logits: 100 MB in float32) with a fresh mmap and unmaps it on free, so a
# training step page-faults hundreds of MB of new, kernel-zeroed pages back in, every step.
# Measured on a bf16 SmolLM2 LoRA-SFT step (4 x 256 tokens, one thread): 100k page faults a
# step, and 20% of its time. With mmap off (M_MMAP_MAX = 0) and the heap trimmed only above
# 1 GB of free top (M_TRIM_THRESHOLD), freed blocks are reused instead; peak RSS rose 9%.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed large blocks for reuse; False where there is no
    glibc (macOS, musl: their allocators are left as they are)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
