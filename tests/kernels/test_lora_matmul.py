"""kernels/lora_matmul.py against the LoRA equations written out in float64.

Without CUDA the kernels run under TRITON_INTERPRET=1 (NumPy on the CPU), set by tests/conftest.py
before triton first sees the kernel module; tiles there are 32 wide, so the shapes below
are ragged and span several tiles in every dimension.
"""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernels.lora_matmul import lora_matmul

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEV = "cpu" if INTERPRET else "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def rel_err(out, ref):
    # ‖out - ref‖ / ‖ref‖; a zero reference (e.g. scaling 0 gives dA = dB = 0) needs out == 0.
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def reference(x, W, A, B, s, dy):
    """The LoRA forward and its gradients as explicit float64 formulas (2-D x, dy)."""
    x, W, A, B, dy = (t.double() for t in (x, W, A, B, dy))
    h = x @ A.T                       # [T, r]
    y = x @ W.T + s * h @ B.T
    dx = dy @ W + s * (dy @ B) @ A
    dA = s * (dy @ B).T @ x
    dB = s * dy.T @ h
    return y, dx, dA, dB


def make(lead, d_in, d_out, r, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d_in, generator=g)
    W = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    A = torch.randn(r, d_in, generator=g) / d_in ** 0.5
    B = torch.randn(d_out, r, generator=g) / r ** 0.5
    return [t.to(DEV, dtype) for t in (x, W, A, B)]


def check_against_reference(lead, d_in, d_out, r, s, dtype, seed=0):
    x, W, A, B = make(lead, d_in, d_out, r, dtype, seed)
    x.requires_grad_(); A.requires_grad_(); B.requires_grad_()
    y = lora_matmul(x, W, A, B, s)
    assert y.shape == (*lead, d_out) and y.dtype == dtype
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEV, dtype)
    y.backward(dy)
    ref = reference(x.detach().reshape(-1, d_in), W, A.detach(), B.detach(), s, dy.reshape(-1, d_out))
    tol = TOL[dtype]
    assert rel_err(y.reshape(-1, d_out), ref[0]) < tol
    assert rel_err(x.grad.reshape(-1, d_in), ref[1]) < tol
    assert rel_err(A.grad, ref[2]) < tol
    assert rel_err(B.grad, ref[3]) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference_ragged_3d(dtype):
    # T = 2*37 rows, d_in = 48, d_out = 40: none a multiple of the 32-wide tiles; r = 5 < 16.
    check_against_reference((2, 37), 48, 40, 5, 0.75, dtype)


def test_matches_reference_several_tiles_rank16():
    # 70 x 33 -> 65: 3 row tiles, 2 k-steps, 3 column tiles; r = 16 needs no rank padding.
    check_against_reference((70,), 33, 65, 16, 2.0, torch.float32)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(t=st.integers(1, 40), d_in=st.integers(1, 40), d_out=st.integers(1, 40),
       r=st.integers(1, 20), s=st.floats(-4, 4, allow_nan=False), seed=st.integers(0, 99))
def test_matches_reference_random_shapes(t, d_in, d_out, r, s, seed):
    check_against_reference((t,), d_in, d_out, r, s, torch.float32, seed)


def test_gradcheck_float64():
    x, W, A, B = make((2, 3), 5, 4, 2, torch.float64, seed=3)
    args = (x.requires_grad_(), W, A.requires_grad_(), B.requires_grad_(), 0.5)
    assert torch.autograd.gradcheck(lora_matmul, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_zero_B_gives_the_base_layer_exactly():
    # LoRA's initialisation (B = 0) leaves the frozen layer's output unchanged, and then
    # only B receives a gradient: dA = s (dy B)ᵀ x = 0.
    x, W, A, B = make((9,), 20, 12, 4, torch.float64, seed=5)
    B = torch.zeros_like(B).requires_grad_()
    A.requires_grad_()
    y = lora_matmul(x, W, A, B, 2.0)
    assert torch.allclose(y, x @ W.T, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert torch.count_nonzero(A.grad) == 0
    assert torch.count_nonzero(B.grad) > 0


def test_only_some_inputs_need_grad():
    x, W, A, B = make((13,), 17, 19, 3, torch.float32, seed=7)
    dy = torch.randn(13, 19).to(DEV)
    ref = reference(x, W, A, B, 1.5, dy)
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    lora_matmul(x, W, A1, B1, 1.5).backward(dy)           # x frozen: first layer
    assert rel_err(A1.grad, ref[2]) < 1e-4 and rel_err(B1.grad, ref[3]) < 1e-4
    x1 = x.clone().requires_grad_()
    lora_matmul(x1, W, A, B, 1.5).backward(dy)            # adapters frozen
    assert rel_err(x1.grad, ref[1]) < 1e-4


def test_fp32_adapters_with_fp16_activations():
    # A, B are cast to x's dtype for the kernel; their gradients come back in their dtype.
    x, W, A, B = make((21,), 24, 18, 4, torch.float16, seed=11)
    A32, B32 = A.float().requires_grad_(), B.float().requires_grad_()
    y = lora_matmul(x, W, A32, B32, 1.0)
    dy = torch.randn(21, 18).to(DEV, torch.float16)
    y.backward(dy)
    ref = reference(x, W, A32.detach(), B32.detach(), 1.0, dy)
    assert A32.grad.dtype == torch.float32 and B32.grad.dtype == torch.float32
    assert rel_err(y, ref[0]) < 2e-2
    assert rel_err(A32.grad, ref[2]) < 2e-2 and rel_err(B32.grad, ref[3]) < 2e-2


def test_strided_inputs():
    # x a transposed view, W the transpose of a [d_in, d_out] tensor: the kernels take strides.
    x, W, A, B = make((23,), 34, 29, 3, torch.float32, seed=13)
    xt = x.T.contiguous().T.requires_grad_()          # strides (1, 23)
    Wt = W.T.contiguous().T                            # strides (1, 29)
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    y = lora_matmul(xt, Wt, A1, B1, 0.5)
    dy = torch.randn(23, 29).to(DEV)
    y.backward(dy)
    ref = reference(x, W, A, B, 0.5, dy)
    assert xt.stride() == (1, 23) and Wt.stride() == (1, 29)
    for out, r in zip((y, xt.grad, A1.grad, B1.grad), ref):
        assert rel_err(out, r) < 1e-4


def test_trainable_weight_is_refused():
    x, W, A, B = make((4,), 8, 8, 2, torch.float32)
    with pytest.raises(ValueError, match="frozen"):
        lora_matmul(x, W.requires_grad_(), A, B, 1.0)


def test_bad_shapes_are_refused():
    x, W, A, B = make((4,), 8, 6, 2, torch.float32)
    with pytest.raises(ValueError, match="lora_A"):
        lora_matmul(x, W, A[:, :5], B, 1.0)
    with pytest.raises(ValueError, match="lora_B"):
        lora_matmul(x, W, A, B.T, 1.0)
    with pytest.raises(ValueError, match="does not match"):
        lora_matmul(x[:, :7], W, A, B, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                    reason="bf16 needs a CUDA GPU (the interpreter's bf16 arithmetic is wrong)")
def test_bf16_on_gpu():
    check_against_reference((3, 300), 520, 260, 16, 2.0, torch.bfloat16)
