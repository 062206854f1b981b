"""Tests of sampling: the filters (temperature, top-k, top-p), the KV cache, seeding,
generate/generate_stream, and sample.py's Sample (stop strings, end-of-text)."""

import dataclasses
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

import sample as sample_cli
from gptkit import sampling
from gptkit.checkpoint import save_checkpoint
from model import GPT, GPTConfig, KVCache
from gptkit.data import CharCodec
from gptkit.sampling import Sample, TokenSampler, check_sampling, sampling_probs
from sample import SampleConfig


def generate(model, idx, max_new_tokens, use_cache=True, **sampling):
    """model.generate with a TokenSampler made from the sampling settings."""
    return model.generate(idx, max_new_tokens, TokenSampler(**sampling), use_cache)


def random_model(config, seed=0, std=0.2):
    """A model with larger random weights than GPT-2's init, so its distributions are far from
    uniform and its greedy choices are not near-ties."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, std)
    return model.eval()


def config_with(**overrides):
    settings = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    settings.update(overrides)
    return GPTConfig(**settings)


def kept(probs):
    return set(torch.nonzero(probs[0] > 0).flatten().tolist())


# ----------------------------------------------------------------------------- sampling_probs


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9], [5.0, 0.0, 4.0, -3.0]])
    probs = sampling_probs(logits, temperature=0)
    expected = torch.zeros_like(logits)
    expected[0, 1] = 1.0
    expected[1, 0] = 1.0
    assert torch.equal(probs, expected)


def test_temperature_zero_ignores_top_k_and_top_p():
    logits = torch.tensor([[0.1, 2.0, -1.0, 1.9]])
    probs = sampling_probs(logits, temperature=0, top_k=3, top_p=0.5)
    assert probs[0].tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_scales_logits(temperature):
    torch.manual_seed(0)
    logits = torch.randn(3, 10) * 3
    probs = sampling_probs(logits, temperature=temperature)
    torch.testing.assert_close(probs, F.softmax(logits / temperature, dim=-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_lower_temperature_is_sharper():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    cold = sampling_probs(logits, temperature=0.5)
    hot = sampling_probs(logits, temperature=2.0)
    assert cold[0, 2] > sampling_probs(logits)[0, 2] > hot[0, 2]


@pytest.mark.parametrize("temperature", [1e-50, 1e-45, 1e-30, 1e-8, 9.9e-5])
def test_a_temperature_below_the_floor_is_greedy(temperature):
    """Below GREEDY_BELOW (1e-4) a temperature is greedy, exactly as 0 is: dividing by it would
    overflow float32 (and below ~1e-45 it is 0 in float32, which would give 0/0)."""
    logits = torch.tensor([[1.0, 3.0, 2.0, float("-inf")], [5.0, 4.0, -1.0, 0.0]])
    probs = sampling_probs(logits, temperature=temperature)
    torch.testing.assert_close(probs, sampling_probs(logits, temperature=0))
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_a_small_temperature_above_the_floor_is_a_distribution():
    logits = torch.tensor([[1.0, 3.0, 2.0, float("-inf")], [5.0, 5.0, -1.0, 0.0]])
    probs = sampling_probs(logits, temperature=1e-4)
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]))
    assert torch.multinomial(probs, 1)[0, 0] == 1  # what generate does with it: no error


def test_huge_temperature_is_uniform_over_real_tokens():
    logits = torch.tensor([[1.0, 3.0, 2.0, float("-inf")]])  # the last: a padding row
    probs = sampling_probs(logits, temperature=1e30)
    torch.testing.assert_close(probs, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]))


def test_low_precision_logits_give_float32_probs():
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16)
    probs = sampling_probs(logits)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, F.softmax(logits.float(), dim=-1))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_keeps_exactly_k_largest(k):
    logits = torch.tensor([[0.3, 2.5, -1.0, 1.7, 0.9, 3.1]])
    probs = sampling_probs(logits, top_k=k)
    largest = set(torch.topk(logits[0], k).indices.tolist())
    assert kept(probs) == largest
    # the kept tokens keep their relative odds: softmax over the kept logits
    mask = torch.full_like(logits, float("-inf"))
    mask[0, list(largest)] = 0.0
    torch.testing.assert_close(probs, F.softmax(logits + mask, dim=-1))


def test_top_k_at_least_vocab_keeps_all():
    logits = torch.tensor([[0.3, 2.5, -1.0, 1.7]])
    for k in (4, 10):
        torch.testing.assert_close(sampling_probs(logits, top_k=k), F.softmax(logits, dim=-1))


def test_top_k_keeps_all_tokens_tied_at_kth_value():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0, 2.0]])
    probs = sampling_probs(logits, top_k=2)
    assert kept(probs) == {0, 2, 3, 5}
    assert probs[0, 2] == probs[0, 3] == probs[0, 5]
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


def test_top_k_is_per_row():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    probs = sampling_probs(logits, top_k=2)
    assert set(torch.nonzero(probs[0]).flatten().tolist()) == {2, 3}
    assert set(torch.nonzero(probs[1]).flatten().tolist()) == {0, 1}


HAND_PROBS = [0.5, 0.3, 0.15, 0.05]


@pytest.mark.parametrize("p, expected", [
    (0.8, {0, 1}),
    (0.81, {0, 1, 2}),
    (0.5, {0}),
    (0.49, {0}),
    (0.51, {0, 1}),
    (0.95, {0, 1, 2}),
    (0.96, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    probs_in = torch.tensor([HAND_PROBS])
    # shuffle the order so the filter cannot rely on the tokens being sorted
    order = torch.tensor([2, 0, 3, 1])
    logits = probs_in.log()[:, order]
    probs = sampling_probs(logits, top_p=p)
    expected_tokens = {int(torch.nonzero(order == i)) for i in expected}
    assert kept(probs) == expected_tokens
    # the kept probabilities are renormalised, in the same proportions as before
    total = sum(HAND_PROBS[i] for i in expected)
    for token in expected_tokens:
        assert probs[0, token].item() == pytest.approx(probs_in[0, order[token]].item() / total, rel=1e-5)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("probs_in, p, expected", [
    ([0.71, 0.05, 0.02, 0.22], 0.93, {0, 3}),
    ([0.34, 0.12, 0.48, 0.06], 0.82, {0, 2}),
    ([0.21, 0.23, 0.24, 0.32], 0.56, {2, 3}),
])
def test_top_p_sum_equal_to_p_counts_as_reached(probs_in, p, expected):
    """Probabilities that add up to exactly p in decimal reach p, float rounding aside."""
    probs = sampling_probs(torch.tensor([probs_in]).log(), top_p=p)
    assert kept(probs) == expected


def test_top_p_keeps_all_tokens_tied_at_the_cut():
    logits = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).log()
    # 0.4 + 0.2 reaches 0.5; the other two 0.2s are tied with the cut, so they stay
    probs = sampling_probs(logits, top_p=0.5)
    assert kept(probs) == {0, 1, 2, 3}
    logits = torch.tensor([[0.1, 0.3, 0.3, 0.3]]).log()
    probs = sampling_probs(logits, top_p=0.2)
    assert kept(probs) == {1, 2, 3}
    torch.testing.assert_close(probs[0, 1:], torch.full((3,), 1 / 3))


def test_top_p_is_per_row():
    logits = torch.tensor([HAND_PROBS, [0.25, 0.25, 0.25, 0.25]]).log()
    probs = sampling_probs(logits, top_p=0.6)
    assert set(torch.nonzero(probs[0]).flatten().tolist()) == {0, 1}
    assert set(torch.nonzero(probs[1]).flatten().tolist()) == {0, 1, 2, 3}  # all tied


def test_top_p_after_temperature():
    logits = torch.tensor([HAND_PROBS]).log()
    # at temperature 2 the distribution is flatter: sqrt(p) normalised
    flat = torch.tensor(HAND_PROBS).sqrt()
    flat = flat / flat.sum()
    need = int((flat.cumsum(0) < 0.8).sum()) + 1
    probs = sampling_probs(logits, temperature=2.0, top_p=0.8)
    assert kept(probs) == set(range(need))
    assert need > 2  # more tokens than at temperature 1, where p=0.8 keeps 2


def test_top_k_is_applied_before_top_p():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top-k=2 leaves [4/7, 3/7]; top-p=0.5 on that keeps 1 token. The other order (top-p
    # on the full distribution keeps 0.4 + 0.3, then top-k=2) would keep 2.
    probs = sampling_probs(logits, top_k=2, top_p=0.5)
    assert kept(probs) == {0}
    assert probs[0, 0].item() == pytest.approx(1.0)
    probs = sampling_probs(logits, top_k=3, top_p=0.6)  # [4/9, 3/9, 2/9]: 4/9 < 0.6 <= 7/9
    assert kept(probs) == {0, 1}
    torch.testing.assert_close(probs[0, :2], torch.tensor([4 / 7, 3 / 7]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=-1), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-3), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=2), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
])
def test_check_sampling_rejects_bad_settings(kwargs, field):
    settings = dict(temperature=1.0, top_k=None, top_p=None)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=field):
        check_sampling(**settings)
    with pytest.raises(ValueError, match=field):
        sampling_probs(torch.zeros(1, 5), **settings)


def test_check_sampling_accepts_edge_values():
    for settings in [(0, None, None), (0.0, 1, 1.0), (1.0, 1, 1e-9), (5.0, 1000, 1)]:
        check_sampling(*settings)


def test_sampling_settings_are_checked_once_not_per_token(tiny_config, monkeypatch):
    calls, check = [], sampling.check_sampling
    monkeypatch.setattr(sampling, "check_sampling", lambda *args: calls.append(args) or check(*args))
    model = random_model(tiny_config)
    out = generate(model, torch.zeros(1, 2, dtype=torch.long), 20, temperature=0.8, top_k=5, top_p=0.9)
    assert out.shape == (1, 22)
    assert calls == [(0.8, 5, 0.9)]


def test_generate_rejects_bad_settings(tiny_config):
    model = random_model(tiny_config)
    idx = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, idx, 5, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        next(model.generate_stream(idx, 5, TokenSampler(temperature=-1)))


@pytest.mark.parametrize("call, message", [
    (lambda m: generate(m, torch.zeros(3, dtype=torch.long), 5), r"shape \(batch, length >= 1\), got shape \(3,\)"),
    (lambda m: generate(m, torch.zeros(1, 0, dtype=torch.long), 5), r"got shape \(1, 0\)"),
    (lambda m: generate(m, torch.zeros(2, 3, dtype=torch.long), 5, generators=[torch.Generator()]),
     "one generator per row of idx: got 1 for 2 rows"),
    (lambda m: generate(m, torch.zeros(1, 3, dtype=torch.long), -1), "max_new_tokens must be >= 0, got -1"),
])
def test_generate_says_what_is_wrong_with_its_arguments(tiny_config, call, message):
    with pytest.raises(ValueError, match=message):
        call(random_model(tiny_config))


# ----------------------------------------------------------------------------- KV cache


def stream(model, idx, steps, use_cache, temperature=0.0, seed=None, **kwargs):
    generators = None if seed is None else [torch.Generator().manual_seed(seed + i) for i in range(idx.size(0))]
    tokens, logits = [], []
    choose = TokenSampler(temperature=temperature, generators=generators, **kwargs)
    for token, step_logits in model.generate_stream(idx, steps, choose, use_cache=use_cache):
        tokens.append(token)
        logits.append(step_logits)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("prompt_len, steps", [(5, 8), (5, 40), (1, 15), (16, 5), (20, 10)])
def test_cache_greedy_matches_no_cache(pos_encoding, prompt_len, steps):
    config = config_with(pos_encoding=pos_encoding)
    model = random_model(config, seed=1)
    torch.manual_seed(2)
    idx = torch.randint(0, config.vocab_size, (2, prompt_len))
    cached_tokens, cached_probs = stream(model, idx, steps, use_cache=True)
    plain_tokens, plain_probs = stream(model, idx, steps, use_cache=False)
    assert torch.equal(cached_tokens, plain_tokens)
    torch.testing.assert_close(cached_probs, plain_probs, atol=1e-5, rtol=0)
    full = generate(model, idx, steps, temperature=0, use_cache=True)
    assert torch.equal(full, generate(model, idx, steps, temperature=0, use_cache=False))
    assert torch.equal(full[:, prompt_len:], cached_tokens)


@pytest.mark.parametrize("steps", [8, 40])
def test_cache_sampled_distributions_match_no_cache(steps):
    """At temperature 1 with seeded generators: the same tokens and the same distribution at
    every step, within the window (5 + 8 <= 16) and well past it (5 + 40)."""
    config = config_with()
    model = random_model(config, seed=3)
    torch.manual_seed(4)
    idx = torch.randint(0, config.vocab_size, (3, 5))
    cached_tokens, cached_logits = stream(model, idx, steps, use_cache=True, temperature=1.0, seed=10)
    plain_tokens, plain_logits = stream(model, idx, steps, use_cache=False, temperature=1.0, seed=10)
    assert torch.equal(cached_tokens, plain_tokens)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-5, rtol=0)
    # the distributions are far from uniform, so the comparison means something
    assert cached_logits.softmax(-1).max(-1).values.mean() > 3 / config.vocab_size


def test_stream_logits_are_what_the_model_predicts():
    """Each yielded logits row is the model's last logits over the window, and the token drawn
    is one that sampling_probs of them allows."""
    config = config_with()
    model = random_model(config, seed=5)
    idx = torch.randint(0, config.vocab_size, (1, 4))
    tokens, yielded = stream(model, idx, 20, use_cache=True, temperature=0.7, seed=0, top_k=5)
    sequence = torch.cat([idx, tokens], 1)
    for step in range(20):
        window = sequence[:, : 4 + step][:, -config.block_size:]
        with torch.no_grad():
            logits, _ = model(window)
        torch.testing.assert_close(yielded[:, step], logits[:, -1], atol=1e-5, rtol=0)
        probs = sampling_probs(yielded[:, step], temperature=0.7, top_k=5)
        assert probs[0, tokens[0, step]] > 0  # the drawn token was allowed
        assert (probs[0] > 0).sum() == 5


def test_vocab_limit_never_draws_the_padding_rows():
    config = config_with()
    model = random_model(config, seed=8)
    with torch.no_grad():  # make the padding rows (ids >= 10) by far the most likely
        model.lm_head.weight[10:] *= 50
    idx = torch.zeros(4, 1, dtype=torch.long)
    assert (generate(model, idx, 30, temperature=1.0)[:, 1:] >= 10).any()
    assert (generate(model, idx, 30, temperature=1.0, vocab_limit=10)[:, 1:] < 10).all()


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_cached_forward_one_token_at_a_time(pos_encoding):
    config = config_with(pos_encoding=pos_encoding)
    model = random_model(config, seed=6)
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config)
        prefill, _ = model(idx[:, :5], cache=cache)
        assert cache.length == 5
        torch.testing.assert_close(prefill, full[:, :5], atol=1e-5, rtol=0)
        for t in range(5, config.block_size):
            step, _ = model(idx[:, t : t + 1], cache=cache)
            assert cache.length == t + 1
            torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="block_size"):  # the cache is full
            model(idx[:, :1], cache=cache)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("prefill, chunks", [(3, [5, 1, 4, 3]), (1, [15]), (0, [6, 10]), (7, [2, 2, 5])])
def test_cached_forward_in_chunks(pos_encoding, prefill, chunks):
    """Several new tokens after cached ones: each may see the cache and the new tokens before it."""
    config = config_with(pos_encoding=pos_encoding)
    model = random_model(config, seed=7)
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config)
        start = 0
        for size in ([prefill] if prefill else []) + chunks:
            logits, _ = model(idx[:, start : start + size], cache=cache)
            torch.testing.assert_close(logits, full[:, start : start + size], atol=1e-5, rtol=0)
            start += size
            assert cache.length == start
    assert start == config.block_size


def test_cached_forward_only_last():
    config = config_with()
    model = random_model(config, seed=8)
    idx = torch.randint(0, config.vocab_size, (1, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(config)
        model(idx[:, :4], cache=cache)
        last, _ = model(idx[:, 4:12], cache=cache, only_last=True)
    assert last.shape == (1, 1, config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, 11], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- seeds and batches


def test_same_seed_same_samples(tiny_config):
    model = random_model(tiny_config, seed=9)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 3))
    a, _ = stream(model, idx, 30, use_cache=True, temperature=1.0, seed=123)
    b, _ = stream(model, idx, 30, use_cache=True, temperature=1.0, seed=123)
    c, _ = stream(model, idx, 30, use_cache=True, temperature=1.0, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_seed_makes_ungenerated_draws_repeatable(tiny_config):
    model = random_model(tiny_config, seed=9)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 3))
    torch.manual_seed(42)
    a = generate(model, idx, 20)
    torch.manual_seed(42)
    b = generate(model, idx, 20)
    torch.manual_seed(43)
    c = generate(model, idx, 20)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_rows_equal_single_draws(tiny_config, use_cache):
    model = random_model(tiny_config, seed=10)
    seed, n = 1337, 4
    prompt = torch.randint(0, tiny_config.vocab_size, (1, 4))
    batch = generate(model, prompt.repeat(n, 1), 25, temperature=1.0, top_k=20, use_cache=use_cache,
                           generators=[torch.Generator().manual_seed(seed + i) for i in range(n)])
    singles = [generate(model, prompt, 25, temperature=1.0, top_k=20, use_cache=use_cache,
                              generators=[torch.Generator().manual_seed(seed + i)]) for i in range(n)]
    assert torch.equal(batch, torch.cat(singles, 0))
    assert len({tuple(row.tolist()) for row in batch}) > 1  # the rows are different samples


def test_batch_rows_with_different_prompts_equal_single_draws(tiny_config):
    model = random_model(tiny_config, seed=11)
    prompts = torch.randint(0, tiny_config.vocab_size, (3, 6))
    batch = generate(model, prompts, 20, temperature=0.8,
                           generators=[torch.Generator().manual_seed(7 + i) for i in range(3)])
    for i in range(3):
        single = generate(model, prompts[i : i + 1], 20, temperature=0.8,
                                generators=[torch.Generator().manual_seed(7 + i)])
        assert torch.equal(batch[i : i + 1], single)


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_shape_and_prefix(tiny_config, use_cache):
    model = random_model(tiny_config, seed=12)
    idx = torch.randint(0, tiny_config.vocab_size, (3, 7))
    for new in (0, 1, 30):
        out = generate(model, idx, new, temperature=1.0, top_p=0.9, use_cache=use_cache)
        assert out.shape == (3, 7 + new)
        assert out.dtype == torch.long
        assert torch.equal(out[:, :7], idx)
        assert ((out >= 0) & (out < tiny_config.vocab_size)).all()


def test_generate_prompt_longer_than_block_size(tiny_config):
    model = random_model(tiny_config, seed=13)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 3 * tiny_config.block_size))
    out = generate(model, idx, 5, temperature=0)
    assert out.shape == (1, 3 * tiny_config.block_size + 5)
    with torch.no_grad():
        logits, _ = model(idx[:, -tiny_config.block_size:])
    assert out[0, -5] == logits[0, -1].argmax()  # the first token comes from the last window


def test_generate_keeps_training_mode(tiny_config):
    model = random_model(tiny_config, seed=14)
    idx = torch.zeros(1, 2, dtype=torch.long)
    model.train()
    generate(model, idx, 5)
    assert model.training
    assert all(m.training for m in model.modules())
    model.eval()
    generate(model, idx, 5)
    assert not model.training
    assert not any(m.training for m in model.modules())


def test_generate_stream_restores_training_mode_when_stopped_early(tiny_config):
    model = random_model(tiny_config, seed=15)
    model.train()
    steps = model.generate_stream(torch.zeros(1, 2, dtype=torch.long), 50)
    next(steps)
    assert not model.training  # samples in eval mode (no dropout)
    steps.close()
    assert model.training


def test_generate_in_training_mode_ignores_dropout():
    config = config_with(dropout=0.5)
    model = random_model(config, seed=16)
    idx = torch.randint(0, config.vocab_size, (2, 4))
    model.train()
    a = generate(model, idx, 10, temperature=0)
    b = generate(model, idx, 10, temperature=0)
    model.eval()
    assert torch.equal(a, b)
    assert torch.equal(a, generate(model, idx, 10, temperature=0))


def test_generate_has_no_grad(tiny_config):
    model = random_model(tiny_config, seed=17)
    token, logits = next(model.generate_stream(torch.zeros(1, 2, dtype=torch.long), 3))
    assert not logits.requires_grad
    assert not token.requires_grad


def test_what_generation_gives_back_can_be_trained_on_and_changed(tiny_config):
    """Sampling runs in inference mode; its tokens and logits come back as ordinary tensors, so a
    user can train on generated text or edit what came back."""
    model = random_model(tiny_config, seed=17)
    token, logits = next(model.generate_stream(torch.zeros(2, 2, dtype=torch.long), 1))
    generated = model.generate(torch.zeros(2, 2, dtype=torch.long), tiny_config.block_size - 1)
    model.train()
    _, loss = model(generated[:, :-1], generated[:, 1:])  # cross-entropy keeps its targets for backward
    loss.backward()
    _, loss = model(token[:, None], token[:, None])
    loss.backward()
    token[0], logits[0, 0] = 1, 0.0  # in place


# ----------------------------------------------------------------------------- sample.Sample


CHARS = "\nabcdeEND|Z "


def codec_for(chars=CHARS, eot=None):
    codec = CharCodec(chars)
    if eot is not None:
        codec.eot_token = codec.index[eot]
    return codec


def feed(s, codec, text):
    """Add text one character-token at a time; return what unshown() gave after each."""
    shown = []
    for token in codec.encode(text):
        s.add(token)
        shown.append(s.unshown())
    return shown


def test_sample_without_stop_shows_everything():
    codec = codec_for()
    s = Sample(codec, None)
    shown = feed(s, codec, "ab\n\ncd")
    assert shown == ["a", "b", "\n", "\n", "c", "d"]
    assert s.text() == "ab\n\ncd"
    assert not s.done


def test_stop_string_cuts_text_and_ends_sample():
    codec = codec_for()
    s = Sample(codec, "\n\n")
    feed(s, codec, "ab\ncd")
    assert not s.done
    feed(s, codec, "\n\n")
    assert s.done
    assert s.text() == "ab\ncd"
    feed(s, codec, "eee")  # added after the end: ignored
    assert s.text() == "ab\ncd"
    assert s.text(cut=False) == "ab\ncd\n\n"


def test_stop_string_split_across_tokens_is_held_back():
    codec = codec_for()
    s = Sample(codec, "\n\n")
    assert feed(s, codec, "ab") == ["a", "b"]
    assert feed(s, codec, "\n") == [""]  # could be the start of "\n\n": not shown yet
    assert feed(s, codec, "c") == ["\nc"]  # it was not: shown with what follows
    assert feed(s, codec, "\n") == [""]
    assert feed(s, codec, "\n") == [""]  # the stop string: never shown
    assert s.done
    assert s.unshown() == ""
    assert s.text() == "ab\nc"


def test_longer_stop_string_partial_prefixes():
    codec = codec_for()
    s = Sample(codec, "END")
    shown = feed(s, codec, "aEEN")
    assert "".join(shown) == "aE"  # "EN" might still become "END"
    shown += feed(s, codec, "Z")
    assert "".join(shown) == "aEENZ"
    shown += feed(s, codec, "bEND")
    assert s.done
    assert "".join(shown) == "aEENZb" == s.text()


def test_streamed_text_equals_final_text():
    """Whatever the text, the pieces unshown() gives add up to text() once the sample ends."""
    codec = codec_for(eot="|")
    for text in ["ab\n\ncd", "\n\n", "a\nb\nc\n\n", "E\nEN\n\nEND", "abc", "cEN", "ab\n"]:
        for stop in ["\n\n", "END", "\n", "c"]:
            s = Sample(codec, stop)
            shown = feed(s, codec, text)
            s.add(codec.eot_token)  # the end: nothing can grow into the stop string now
            assert s.done
            shown.append(s.unshown())
            assert "".join(shown) == s.text() == text.split(stop)[0], (text, stop)


def test_end_of_text_token_ends_sample():
    codec = codec_for(eot="|")
    s = Sample(codec, None)
    shown = feed(s, codec, "ab c")
    s.add(codec.eot_token)
    assert s.done
    shown.append(s.unshown())
    feed(s, codec, "de")  # after the end: ignored
    assert s.text() == "ab c"
    assert "|" not in s.text()
    assert codec.eot_token not in s.ids
    assert "".join(shown) == "ab c"


def test_end_of_text_releases_held_back_text():
    codec = codec_for(eot="|")
    s = Sample(codec, "\n\n")
    assert feed(s, codec, "ab\n") == ["a", "b", ""]
    s.add(codec.eot_token)
    assert s.done
    assert s.unshown() == "\n"  # it can no longer become the stop string
    assert s.text() == "ab\n"


def test_char_codec_has_no_end_of_text_by_default():
    codec = codec_for()
    assert codec.eot_token is None
    s = Sample(codec, None)
    feed(s, codec, "|")
    assert not s.done
    assert s.text() == "|"


class ByteCodec:
    """A byte-level codec like GPT-2's BPE at its finest: one token per UTF-8 byte, so one
    character can take several tokens. It records the longest list it was asked to decode."""

    vocab_size, eot_token = 256, None

    def __init__(self):
        self.longest = 0

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        self.longest = max(self.longest, len(ids))
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("stop", [None, "STOP", "🎉", "本語", "é w"])
def test_multi_token_characters_are_held_back_until_whole(stop):
    text = "héllo wörld 日本語 🎉🎉 end STOP more"
    codec = ByteCodec()
    s = Sample(codec, stop)
    shown = [s.unshown() for token in codec.encode(text) if s.add(token) or True]
    assert all("\ufffd" not in piece for piece in shown)  # no half character is ever printed
    s.done = True
    shown.append(s.unshown())
    assert "".join(shown) == s.text() == (text.split(stop)[0] if stop else text)


def test_a_character_cut_off_by_the_end_is_left_out():
    """Sampling that stops inside a character (max_new_tokens reached) leaves that character out:
    printed, its bytes would be U+FFFD."""
    codec = ByteCodec()
    s = Sample(codec, None)
    for token in "ab🎉".encode("utf-8")[:-1]:  # the last byte never comes
        s.add(token)
    assert s.unshown() == "ab"
    s.done = True
    assert s.unshown() == "" and s.text() == "ab"


def test_each_token_is_decoded_on_its_own():
    """The cost of a token does not grow with the sample: only the new token (with the bytes
    of an unfinished character) is decoded, never the whole text so far."""
    codec = ByteCodec()
    s = Sample(codec, "never")
    text = "日本語のテキスト " * 200  # 5,000 bytes
    for token in codec.encode(text):
        s.add(token)
        s.unshown()
    assert s.text() == text and codec.longest <= 3  # a CJK character is 3 bytes


def test_show_probs_never_offers_a_padding_row(tmp_path):
    """A model whose vocabulary is padded past the codec's: candidates come from real tokens
    only, even when more are asked for than there are."""
    chars = "\nabcdefgh"
    config = GPTConfig(block_size=16, vocab_size=16, n_layer=1, n_head=2, n_embd=16)
    path = tmp_path / "ckpt.pt"
    model = random_model(config, seed=3)
    save_checkpoint(path, {"model": model.state_dict(), "model_config": dataclasses.asdict(config),
                           "train_config": {}, "iter_num": 0, "best_val_loss": math.inf,
                           "meta": {"codec": "char", "vocab_size": len(chars), "chars": chars}})
    probs_file = tmp_path / "probs.jsonl"
    _, out = run_sample(path, start="a", max_new_tokens=5, show_probs=50, probs_file=str(probs_file))
    rows = [json.loads(line) for line in probs_file.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert sorted(c["token"] for c in row["candidates"]) == list(range(len(chars)))
        assert sum(c["prob"] for c in row["candidates"]) == pytest.approx(1, abs=1e-5)


def test_show_probs_labels_a_part_of_a_character_by_its_id():
    codec = ByteCodec()
    rows, drawn = sample_cli.candidates(torch.tensor([0.0] * 97 + [0.5] + [0.0] * 129 + [0.5] + [0.0] * 28), 227,
                                        2, codec)  # 97 is 'a'; 227 (0xe3) starts a 3-byte character
    line = sample_cli.format_candidates(0, rows, drawn)
    assert "#227" in line and "'a'" in line and "\ufffd" not in line


# ----------------------------------------------------------------------------- sample.py end to end


@pytest.fixture
def char_checkpoint(tmp_path):
    chars = "\nabcdefgh"
    config = GPTConfig(block_size=16, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)
    model = random_model(config, seed=18, std=0.5)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": dataclasses.asdict(config),
                           "train_config": {}, "iter_num": 0, "best_val_loss": math.inf,
                           "meta": {"codec": "char", "vocab_size": len(chars), "chars": chars}})
    return path, chars


def run_sample(path, **settings):
    out = io.StringIO()
    config = SampleConfig(checkpoint=str(path), device="cpu", dtype="float32", **settings)
    texts = sample_cli.sample(config, out)
    return texts, out.getvalue()


def test_sample_cli_stream_output_is_prompt_and_text(char_checkpoint):
    path, chars = char_checkpoint
    [text], out = run_sample(path, start="ab", max_new_tokens=20, temperature=1.0, seed=3)
    assert len(text) == 20
    assert set(text) <= set(chars)
    assert out == "ab" + text + "\n---------------\n"


def test_sample_cli_stops_at_stop_string(char_checkpoint):
    path, _ = char_checkpoint
    [text], _ = run_sample(path, start="a", max_new_tokens=30, temperature=0, seed=0)
    stop = text[3:5]  # greedy text is deterministic: a stop string that does occur in it
    [cut], out = run_sample(path, start="a", max_new_tokens=30, temperature=0, seed=0, stop=stop)
    assert cut == text.split(stop)[0]
    assert stop not in cut
    assert out == "a" + cut + "\n---------------\n"


def test_sample_cli_batch_prints_whole_text_when_stop_never_completes(char_checkpoint):
    """Two samples (printed at the end, not streamed) that end at max_new_tokens with a last
    character that starts the stop string, which never occurs: each is printed whole."""
    path, _ = char_checkpoint
    texts, _ = run_sample(path, start="a", max_new_tokens=10, temperature=0, num_samples=2)
    stop = texts[0][-1] + "Z"  # "Z" is not in the vocabulary: the stop string can never complete
    same, out = run_sample(path, start="a", max_new_tokens=10, temperature=0, num_samples=2, stop=stop)
    assert same == texts
    assert out == "".join("a" + t + "\n---------------\n" for t in texts)


def test_sample_cli_stream_flushes_held_back_text_at_the_end(char_checkpoint):
    """As above, one sample, streamed: the last character was held back as a possible start
    of the stop string, and the end of generation must print it."""
    path, _ = char_checkpoint
    [text], _ = run_sample(path, start="a", max_new_tokens=10, temperature=0)
    stop = text[-1] + "Z"
    [same], out = run_sample(path, start="a", max_new_tokens=10, temperature=0, stop=stop)
    assert same == text
    assert out == "a" + text + "\n---------------\n"


def test_sample_cli_with_a_tiny_temperature_gives_the_greedy_text(char_checkpoint):
    path, _ = char_checkpoint
    [greedy], _ = run_sample(path, start="a", max_new_tokens=20, temperature=0)
    [tiny], _ = run_sample(path, start="a", max_new_tokens=20, temperature=1e-50)
    assert tiny == greedy


@pytest.mark.parametrize("width", [32, 256])
def test_dtype_auto_samples_by_a_rule_on_the_model_and_leaves_it_whole(tmp_path, width):
    """On a CPU with bfloat16, dtype auto packs the Linear layers in bfloat16 for a model at least
    256 wide and keeps float32 below: a rule, never a stopwatch, so the same command gives the
    same text every time. After sampling the model is whole: the same state_dict, able to train."""
    from gptkit.cpu import PackedLinear, cpu_packs_bf16
    from gptkit.hardware import cpu_has_bf16
    from gptkit.sampling import sampling_context

    chars = "\nabcdefgh"
    config = GPTConfig(block_size=16, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=width)
    model = random_model(config, seed=18, std=0.5)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": dataclasses.asdict(config),
                           "train_config": {}, "iter_num": 0, "best_val_loss": math.inf,
                           "meta": {"codec": "char", "vocab_size": len(chars), "chars": chars}})
    settings = dict(checkpoint=str(path), device="cpu", dtype="auto", start="a", max_new_tokens=30, seed=5)
    texts = [sample_cli.sample(SampleConfig(**settings), io.StringIO()) for _ in range(2)]
    assert texts[0] == texts[1]
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with sampling_context(model, "cpu", "bfloat16" if cpu_has_bf16() else "float32", auto=True):
        packed = any(isinstance(m, PackedLinear) for m in model.modules())
    assert packed == (width >= 256 and cpu_has_bf16() and cpu_packs_bf16())
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()  # trains


# ----------------------------------------------------------------------------- valid UTF-8 from byte-level BPE

def test_utf8_states_accept_exactly_what_utf8_does():
    """Every byte after every prefix that leaves a character open: utf8_after accepts it exactly
    where Python's UTF-8 decoder does (overlong forms, surrogates and past U+10FFFF included)."""
    from gptkit.sampling import utf8_after

    prefixes = [b"", b"a"] + [bytes([lead]) for lead in range(0xC2, 0xF5)]
    prefixes += [bytes([lead, second]) for lead in range(0xE0, 0xF5) for second in range(0x80, 0xC0)
                 if utf8_after(0, bytes([lead, second])) is not None]
    for prefix in prefixes:
        state = utf8_after(0, prefix)
        assert state is not None, prefix
        for byte in range(256):
            valid = False  # some completion decodes (the lowest or the highest continuation bytes reach every range)
            for tail in (b"\x80" * n for n in range(4)), (b"\xbf" * n for n in range(4)):
                for ending in tail:
                    try:
                        (prefix + bytes([byte]) + ending).decode("utf-8")
                        valid = True
                    except UnicodeDecodeError:
                        pass
            assert (utf8_after(state, bytes([byte])) is not None) == valid, (prefix, hex(byte))


def test_samples_of_an_own_bpe_on_chinese_text_hold_no_broken_character(tmp_path):
    """A BPE learned on Chinese text splits many characters into byte tokens; drawn freely, a byte
    that continues no character prints as U+FFFD. The sampler draws only tokens that keep the text
    valid UTF-8, so no sample holds one, whatever the model (here an untrained one)."""
    from gptkit.data import codec_from_meta, dataset_meta
    from gptkit.datasets import prepare_text
    from gptkit.sampling import TokenSampler, utf8_guard

    (tmp_path / "zh.txt").write_text("大語言模型是一種語言模型，由具有許多參數的人工神經網絡組成。使用自監督學習對大量未標記文本進行訓練。\n"
                                     * 80, encoding="utf-8")
    prepare_text(tmp_path / "zh", tmp_path / "zh.txt", "bpe", vocab_size=300)
    codec = codec_from_meta(dataset_meta(tmp_path / "zh"))
    model = random_model(config_with(vocab_size=codec.vocab_size, block_size=64), seed=3, std=0.5)
    prompt = codec.encode("大語")
    idx = torch.tensor([prompt] * 4)
    guarded = TokenSampler(1.0, generators=[torch.Generator().manual_seed(i) for i in range(4)],
                           vocab_limit=codec.vocab_size, utf8=utf8_guard(codec), prompt=idx.tolist())
    free = TokenSampler(1.0, generators=[torch.Generator().manual_seed(i) for i in range(4)],
                        vocab_limit=codec.vocab_size)
    for choose, broken in ((guarded, False), (free, True)):
        rows = model.generate(idx, 60, choose)
        samples = [Sample(codec, "") for _ in rows]
        for sample, row in zip(samples, rows):
            for token in row.tolist():
                sample.add(token)
        texts = [sample.text() for sample in samples]  # what sample.py prints
        assert any("\ufffd" in text for text in texts) == broken, texts
