"""NF4 quantization (peft/nf4.py) and the QLoRA model, against the paper's table and plain math."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minipost.config import preset
from minipost.model import GPT
from minipost.peft import apply_lora, trainable_parameters
from minipost.peft.lora import LORA_TARGETS, LoRALinear
from minipost.peft.nf4 import (
    NF4Linear, dequantize_nf4, dequantize_scales, nf4_levels_from_quantiles, quantize_nf4,
)

# Dettmers et al. 2023 (QLoRA), Appendix E: the NF4 data type's 16 values.
PAPER_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
HALF_MAX_GAP = max(b - a for a, b in zip(PAPER_NF4, PAPER_NF4[1:])) / 2  # 0.152, between -1 and -0.696


def codes_of(q):
    """Unpack by hand: byte i holds value 2i in its high nibble and value 2i+1 in its low one."""
    out = []
    for byte in q.packed.tolist():
        out += [byte >> 4, byte & 0xF]
    return out


def test_code_book_is_the_papers():
    levels = dequantize_nf4(quantize_nf4(torch.tensor(PAPER_NF4))).tolist()
    assert levels == [torch.tensor(v).item() for v in PAPER_NF4]  # each level is its own value exactly
    assert codes_of(quantize_nf4(torch.tensor(PAPER_NF4)))[:16] == list(range(16))


def test_code_book_is_normal_quantiles():
    # The table is the float32 rounding of the construction in nf4.py's docstring.
    expected = torch.tensor(PAPER_NF4, dtype=torch.float64)
    assert (nf4_levels_from_quantiles() - expected).abs().max() < 1e-6


def test_codes_are_the_nearest_level_and_dequantize_is_level_times_absmax():
    torch.manual_seed(0)
    W = torch.randn(4, 32)  # two blocks of 64
    q = quantize_nf4(W)
    codes = codes_of(q)
    flat = W.reshape(-1).tolist()
    deq = dequantize_nf4(q).reshape(-1).tolist()
    for b in range(2):
        block = flat[64 * b: 64 * (b + 1)]
        absmax = max(abs(v) for v in block)
        assert q.absmax[b].item() == pytest.approx(absmax, rel=0, abs=0)
        for i, w in enumerate(block):
            dist = [abs(w / absmax - lv) for lv in PAPER_NF4]
            assert codes[64 * b + i] == dist.index(min(dist))
            assert deq[64 * b + i] == pytest.approx(PAPER_NF4[codes[64 * b + i]] * absmax, rel=1e-6)


def check_error_bound(W, q):
    """|W' - W| <= (half the largest gap between neighbouring levels) * the block's absmax,
    plus, with double quantization, the error of the block's dequantized scale c'."""
    deq = dequantize_nf4(q).double().reshape(-1)
    flat = W.double().reshape(-1)
    scales = dequantize_scales(q).double()
    for b, start in enumerate(range(0, flat.numel(), 64)):
        block, got = flat[start:start + 64], deq[start:start + 64]
        absmax = block.abs().max().item()
        scale_error = abs(scales[b].item() - absmax)
        assert (got - block).abs().max().item() <= HALF_MAX_GAP * absmax * (1 + 1e-6) + scale_error


def test_error_bound_and_shape():
    torch.manual_seed(1)
    W = torch.randn(48, 40) * 0.05
    q = quantize_nf4(W)
    assert dequantize_nf4(q).shape == W.shape
    check_error_bound(W, q)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 70), log_scale=st.floats(-6, 3),
       outlier=st.floats(0, 100), double_quant=st.booleans(), seed=st.integers(0, 2**16))
def test_error_bound_property(rows, cols, log_scale, outlier, double_quant, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 10 ** log_scale
    W.view(-1)[0] *= 1 + outlier  # one large weight: its block's other values lose precision
    q = quantize_nf4(W, double_quant=double_quant)
    assert dequantize_nf4(q).shape == W.shape
    check_error_bound(W, q)


def test_zero_block_stays_zero():
    W = torch.zeros(2, 64)
    W[1] = torch.randn(64)
    assert torch.equal(dequantize_nf4(quantize_nf4(W))[0], torch.zeros(64))


def test_packed_storage_is_half_a_byte_per_weight_plus_scales():
    W = torch.randn(128, 96)  # 12288 weights = 192 blocks of 64
    q = quantize_nf4(W)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == 12288 // 2
    assert q.nbytes == 12288 // 2 + 4 * (12288 // 64) == 6912
    assert q.nbytes / W.numel() == 0.5 + 4 / 64
    # A ragged size is padded to whole blocks: 21 weights -> one block.
    assert quantize_nf4(torch.randn(3, 7)).nbytes == 32 + 4


def test_double_quantization_bytes_and_error_bound():
    torch.manual_seed(2)
    W = torch.randn(256, 128) * torch.rand(256, 1)  # 512 blocks with varied scales
    n, n_blocks = W.numel(), W.numel() // 64
    q = quantize_nf4(W, double_quant=True)
    # codes + one fp8 per block (padded to 256) + one fp32 per 256 scales + the fp32 mean
    assert q.nbytes == n // 2 + n_blocks * 1 + 4 * (n_blocks // 256) + 4
    assert q.absmax is None and q.absmax_fp8.dtype == torch.float8_e4m3fn
    exact = quantize_nf4(W).absmax.double()
    approx = dequantize_scales(q).double()
    # float8 e4m3 keeps 3 mantissa bits: relative rounding error <= 2^-4 for normal numbers,
    # absolute <= 2^-10 (half the subnormal spacing 2^-9) below them, here in units of s / 448.
    c2 = exact - exact.mean()
    s = c2.view(-1, 256).abs().amax(1).repeat_interleave(256)
    bound = torch.maximum(c2.abs() * 2 ** -4, s / 448 * 2 ** -10)
    assert ((approx - exact).abs() <= bound * (1 + 1e-5) + 1e-9).all()
    deq = dequantize_nf4(q).double().view(-1, 64)
    err = (deq - W.double().view(-1, 64)).abs().amax(1)
    assert (err <= HALF_MAX_GAP * exact + (approx - exact).abs() + 1e-7).all()


def test_nf4_linear_forward_is_dequantized_matmul():
    torch.manual_seed(3)
    lin = torch.nn.Linear(64, 32, bias=True)
    q = NF4Linear(lin)
    x = torch.randn(2, 5, 64)
    W = dequantize_nf4(quantize_nf4(lin.weight)).double()
    expected = x.double() @ W.T + lin.bias.double()
    torch.testing.assert_close(q(x).double(), expected, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in q.parameters())


def tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(preset("tiny", vocab_size=97)).eval()


def test_qlora_model_is_the_model_with_dequantized_weights():
    base = tiny()
    ids = torch.randint(0, 97, (2, 12))
    qlora = apply_lora(copy.deepcopy(base), r=4, quantize="nf4")
    dq = copy.deepcopy(base)
    with torch.no_grad():
        for name, module in dq.named_modules():
            if name.rsplit(".", 1)[-1] in LORA_TARGETS:
                module.weight.copy_(dequantize_nf4(quantize_nf4(module.weight)))
    assert torch.equal(qlora(ids), dq(ids))  # B = 0 and W' is exactly what forward uses
    assert all(m.quantize == "nf4" and isinstance(m.base, NF4Linear)
               for m in qlora.modules() if isinstance(m, LoRALinear))
    # The logical size counts 4-bit weights as weights: the fp32 model's total plus A and B.
    n_lora = sum(p.numel() for n, p in qlora.named_parameters() if "lora_" in n)
    assert trainable_parameters(qlora) == (n_lora, base.num_parameters() + n_lora)


def test_qlora_logits_close_to_fp32_model():
    """The logits' error is the quantization error dW = W' - W propagated through the network.
    Its first-order part J dW (J = d logits / d W) is computed by a central difference on a
    float64 copy of the model (step h = 1e-3: its own error is O(h^2) relative, negligible).
    The rest is second order in dW; dW is about 10% of W (4-bit codes), so the rest is about
    10% of the first-order part. The test allows 25%: the max error is bounded by
    1.25 * max |J dW|, a bound derived from the quantization error, not a free tolerance."""
    base = tiny()
    ids = torch.randint(0, 97, (2, 16))
    qlora = apply_lora(copy.deepcopy(base), r=4, quantize="nf4")
    err = qlora(ids).double() - base(ids).double()

    base64 = copy.deepcopy(base).double()
    names = [n for n, _ in base64.named_parameters() if n.split(".")[-2] in LORA_TARGETS]
    params = dict(base64.named_parameters())
    W = {n: params[n].detach().clone() for n in names}
    dW = {n: dequantize_nf4(quantize_nf4(w)).double() - w for n, w in W.items()}
    rel = (sum((d ** 2).sum() for d in dW.values()) / sum((w ** 2).sum() for w in W.values())).sqrt().item()

    def logits_at(t):
        with torch.no_grad():
            for n in names:
                params[n].copy_(W[n] + t * dW[n])
            return base64(ids)

    h = 1e-3
    first_order = (logits_at(h) - logits_at(-h)) / (2 * h)
    bound = 1.25 * first_order.abs().max().item()
    print(f"\nNF4 relative weight error {rel:.4f}; logits max |error| {err.abs().max().item():.3e} "
          f"(first-order estimate {first_order.abs().max().item():.3e}, bound {bound:.3e})")
    assert 0.05 < rel < 0.15
    assert err.abs().max().item() <= bound
    # And the error is the first-order term plus a small remainder, position by position.
    assert (err - first_order).abs().max().item() <= 0.25 * first_order.abs().max().item()


def test_dequantize_is_the_level_of_each_nibble_times_its_scale():
    """The per-byte lookup against the codes unpacked one by one (high nibble first)."""
    torch.manual_seed(5)
    q = quantize_nf4(torch.randn(24, 40), double_quant=True)
    codes = [c for byte in q.packed.tolist() for c in (byte >> 4, byte & 15)]
    scales = dequantize_scales(q).tolist()
    expected = torch.tensor([PAPER_NF4[c] * scales[i // 64] for i, c in enumerate(codes)][: 24 * 40])
    torch.testing.assert_close(dequantize_nf4(q).reshape(-1), expected, rtol=1e-6, atol=0)
    assert torch.equal(dequantize_nf4(q, torch.bfloat16), dequantize_nf4(q).to(torch.bfloat16))


def test_generation_reuses_the_dequantized_weight_and_training_does_not():
    torch.manual_seed(4)
    q = NF4Linear(torch.nn.Linear(64, 32))
    x = torch.randn(3, 64)
    exact = x.double() @ dequantize_nf4(q.quantized()).double().T + q.bias.double()
    calls = []
    real = q.dequantized_weight
    q.dequantized_weight = lambda dtype=torch.float32: calls.append(dtype) or real(dtype)
    q.eval()
    with torch.no_grad():
        outs = [q(x) for _ in range(3)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = q(x)
    assert calls == [torch.float32, torch.bfloat16]  # once per dtype, not once per forward
    for out in outs:
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-6)
    assert torch.equal(bf, torch.nn.functional.linear(x.bfloat16(), real(torch.bfloat16), q.bias.bfloat16()))
    q(x)  # gradients on: dequantized afresh
    q.train()
    assert q._inference_weight is None
    with torch.no_grad():
        q(x)  # train mode: afresh too
    assert calls == [torch.float32, torch.bfloat16, torch.float32, torch.float32]


def test_loading_new_codes_drops_the_kept_weight():
    torch.manual_seed(6)
    q, other = NF4Linear(torch.nn.Linear(64, 32)), NF4Linear(torch.nn.Linear(64, 32))
    x = torch.randn(2, 64)
    q.eval()
    with torch.no_grad():
        q(x)  # keeps q's own dequantized weight
        q.load_state_dict(other.state_dict())
        out = q(x)
    expected = x.double() @ dequantize_nf4(other.quantized()).double().T + other.bias.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
