"""token_logps / sequence_logps against an explicit loop over positions (float64)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minipost.logprobs import sequence_logps, token_logps


def ref_token_logps(logits, targets):
    """log p(target) position by position, in float64 Python arithmetic."""
    L = logits.double().tolist()
    Y = targets.tolist()
    out = []
    for b in range(len(Y)):
        row = []
        for t in range(len(Y[b])):
            y = Y[b][t]
            if y == -100:
                row.append(0.0)
                continue
            z = L[b][t]
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            row.append(z[y] - lse)
        out.append(row)
    return out


def ref_sequence_logps(logits, targets, reduction):
    tok = ref_token_logps(logits, targets)
    out = []
    for b, row in enumerate(targets.tolist()):
        n = sum(1 for y in row if y != -100)
        s = sum(tok[b])
        out.append(s if reduction == "sum" else (s / n if n else 0.0))
    return out


def make_batch(B, T, V, ignore_frac, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    ignore = torch.rand(B, T, generator=g) < ignore_frac
    targets[ignore] = -100
    return logits, targets


def test_token_logps_matches_loop_with_ignored_positions():
    logits, targets = make_batch(3, 7, 11, 0.3, seed=0)
    targets[1] = -100  # a row with nothing scored
    got = token_logps(logits, targets)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    assert torch.allclose(got.double(), torch.tensor(ref_token_logps(logits, targets), dtype=torch.float64), atol=1e-5)
    assert torch.all(got[targets == -100] == 0)


def test_token_logps_float64_is_exact():
    logits, targets = make_batch(2, 5, 9, 0.2, seed=1)
    got = token_logps(logits.double(), targets)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor(ref_token_logps(logits.double(), targets), dtype=torch.float64), atol=1e-12)


def test_bf16_logits_are_scored_in_float32():
    logits, targets = make_batch(2, 6, 13, 0.2, seed=2)
    lb = logits.bfloat16()
    got = token_logps(lb, targets)
    assert got.dtype == torch.float32
    # Reference on the very same (bf16-rounded) numbers: only float32 rounding may remain.
    want = torch.tensor(ref_token_logps(lb.double(), targets), dtype=torch.float64)
    assert torch.allclose(got.double(), want, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_sequence_logps_matches_loop(reduction):
    logits, targets = make_batch(4, 8, 10, 0.4, seed=3)
    targets[2] = -100
    got = sequence_logps(logits, targets, reduction=reduction)
    want = torch.tensor(ref_sequence_logps(logits, targets, reduction), dtype=torch.float64)
    assert got.shape == (4,)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert got[2].item() == 0.0 and not torch.isnan(got).any()


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 6),
    V=st.integers(2, 8),
    ignore_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    reduction=st.sampled_from(["sum", "mean"]),
)
def test_sequence_logps_property(B, T, V, ignore_frac, seed, reduction):
    logits, targets = make_batch(B, T, V, ignore_frac, seed)
    got = sequence_logps(logits.double(), targets, reduction=reduction)
    want = torch.tensor(ref_sequence_logps(logits, targets, reduction), dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-10)


def test_gradient_is_onehot_minus_softmax_on_scored_positions_only():
    logits, targets = make_batch(2, 5, 6, 0.3, seed=4)
    x = logits.double().requires_grad_(True)
    sequence_logps(x, targets, "sum").sum().backward()
    active = (targets != -100).double().unsqueeze(-1)
    onehot = torch.nn.functional.one_hot(targets.clamp(min=0), 6).double()
    want = (onehot - torch.softmax(logits.double(), -1)) * active
    assert torch.allclose(x.grad, want, atol=1e-12)


def test_bad_arguments_raise():
    logits, targets = make_batch(2, 4, 5, 0.0, seed=5)
    with pytest.raises(ValueError, match="reduction"):
        sequence_logps(logits, targets, reduction="max")
    with pytest.raises(ValueError, match="targets"):
        token_logps(logits, targets[:, :3])


def tiny_gpt():
    from minipost.config import preset
    from minipost.model import GPT

    torch.manual_seed(0)
    return GPT(preset("tiny", 50)).double()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_model_sequence_logps_equals_full_logits(reduction):
    """lm_head on the scored rows only gives the numbers of the full [B, T, V] logits, also
    for a row with nothing scored, and the same gradients."""
    from minipost.logprobs import model_sequence_logps

    model = tiny_gpt()
    ids = torch.randint(50, (3, 9), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(50, (3, 9), generator=torch.Generator().manual_seed(2))
    targets[0, :4] = -100
    targets[1, :] = -100
    targets[2, 7:] = -100
    full = sequence_logps(model(ids), targets, reduction)
    (grad_full,) = torch.autograd.grad(full.sum(), model.tok_emb.weight)
    fast = model_sequence_logps(model, ids, targets, reduction)
    (grad_fast,) = torch.autograd.grad(fast.sum(), model.tok_emb.weight)
    assert fast.tolist() == pytest.approx(full.tolist(), rel=1e-12, abs=1e-12)
    assert fast[1].item() == 0.0
    assert torch.allclose(grad_fast, grad_full, rtol=1e-10, atol=1e-12)


def test_scored_logits_and_hidden_states():
    from minipost.logprobs import scored_logits

    model = tiny_gpt()
    ids = torch.randint(50, (2, 7), generator=torch.Generator().manual_seed(3))
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]])
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]])
    targets = torch.full((2, 7), -100)
    targets[0, 2], targets[0, 5], targets[1, 6] = 4, 9, 11
    logits, hidden = model(ids, doc_ids=doc_ids, position_ids=position_ids, return_hidden=True)
    assert torch.equal(model.hidden_states(ids, doc_ids=doc_ids, position_ids=position_ids), hidden)
    picked_logits, picked = scored_logits(model, ids, targets, doc_ids=doc_ids, position_ids=position_ids)
    assert picked.tolist() == [[4, 9, 11]]
    expected = torch.stack([logits[0, 2], logits[0, 5], logits[1, 6]])[None]
    assert torch.allclose(picked_logits, expected, rtol=1e-12, atol=1e-12)


def pair_rows(pairs, pad=0):
    """[(prompt, chosen, rejected)] token lists -> input_ids, targets [2B, W] as pair_batch
    lays them out (chosen rows, then rejected rows; right-padded; scored on the reply)."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    W = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), W), pad)
    targets = torch.full((len(rows), W), -100)
    for i, (p, c) in enumerate(rows):
        seq = p + c
        ids[i, :len(seq)] = torch.tensor(seq)
        for t in range(len(p) - 1, len(seq) - 1):
            targets[i, t] = seq[t + 1]
        targets[i, len(seq) - 1] = 7  # the final <|end|>-like target, as render_completion scores
    return ids, targets


@settings(max_examples=20, deadline=None)
@given(spec=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), reduction=st.sampled_from(["sum", "mean"]), peft=st.sampled_from(["none", "lora"]))
def test_pair_logps_with_the_prompt_run_once_equal_the_plain_pass(spec, seed, reduction, peft):
    """pair_sequence_logps against model_sequence_logps over all 2B rows (float64): values and
    gradients, for prompts of 1-6 tokens and replies of 0-5 (a reply may be empty, the two
    replies may be equal or begin alike, so the shared prefix runs past the prompt)."""
    from minipost.logprobs import model_sequence_logps, pair_sequence_logps
    from minipost.peft import apply_peft

    g = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(1, 4, (n,), generator=g).tolist()  # noqa: E731  few ids: replies often share a start
    pairs = [(tokens(p), tokens(c), tokens(r)) for p, c, r in spec]
    ids, targets = pair_rows(pairs)
    model = tiny_gpt()
    if peft == "lora":
        model = apply_peft(model, "lora", r=2, alpha=4)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1, generator=g)
    params = [p for p in model.parameters() if p.requires_grad]
    plain = model_sequence_logps(model, ids, targets, reduction)
    shared = pair_sequence_logps(model, ids, targets, reduction)
    torch.testing.assert_close(shared, plain, rtol=1e-10, atol=1e-10)
    weights = torch.randn(plain.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((shared * weights).sum(), params), torch.autograd.grad((plain * weights).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_pair_logps_shared_prompt_with_prefix_and_prompt_tuning(method):
    """Prefix-tuning keys and prompt-tuning virtual tokens are seen by every position in both
    passes, as in the plain one."""
    from minipost.logprobs import model_sequence_logps, pair_sequence_logps
    from minipost.peft import apply_peft

    model = apply_peft(tiny_gpt(), method, n_virtual=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(generator=torch.Generator().manual_seed(5))
    ids, targets = pair_rows([([1, 2, 3, 4], [5, 6], [5, 8, 9]), ([2, 2], [9], [3, 3, 3, 3])])
    torch.testing.assert_close(pair_sequence_logps(model, ids, targets), model_sequence_logps(model, ids, targets),
                               rtol=1e-10, atol=1e-10)
