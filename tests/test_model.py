"""Tests of the GPT in model.py: shapes, loss, causality, parameters, init, options,
learning, config validation, context cropping and the optimizer groups."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptkit.cpu import CPUDropout, use_cpu_kernels
from gptkit.optim import configure_optimizer
from model import GPT, MLP, GPTConfig, KVCache, sinusoidal_positions




def make_model(config, seed=0):
    torch.manual_seed(seed)
    return GPT(config).eval()


def small_config(**overrides):
    settings = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    settings.update(overrides)
    return GPTConfig(**settings)


# ----------------------------------------------------------------------------- forward


def test_forward_shapes_without_targets(tiny_config):
    model = make_model(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (3, 11))
    logits, loss = model(idx)
    assert logits.shape == (3, 11, tiny_config.vocab_size)
    assert loss is None


def test_forward_shapes_with_targets(tiny_config):
    model = make_model(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    targets = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, tiny_config.block_size, tiny_config.vocab_size)
    assert loss.shape == ()
    assert torch.isfinite(loss)


def test_forward_only_last_is_last_position(tiny_config):
    model = make_model(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 9))
    last, _ = model(idx, only_last=True)
    full, _ = model(idx)
    assert last.shape == (2, 1, tiny_config.vocab_size)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-6, rtol=0)


def test_loss_ignores_targets_of_minus_one(tiny_config):
    model = make_model(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    targets = torch.randint(0, tiny_config.vocab_size, (2, 8))
    masked = targets.clone()
    masked[:, 4:] = -1
    logits, loss = model(idx, masked)
    expected = nn.functional.cross_entropy(logits[:, :4].flatten(0, 1), targets[:, :4].flatten())
    torch.testing.assert_close(loss, expected)


def test_forward_rejects_sequence_longer_than_block_size(tiny_config):
    model = make_model(tiny_config)
    model(torch.zeros(1, tiny_config.block_size, dtype=torch.long))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_initial_loss_is_close_to_uniform(tiny_config):
    torch.manual_seed(1)
    model = GPT(tiny_config).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (16, tiny_config.block_size))
    # targets unrelated to the inputs (never equal to them at the same place)
    targets = (idx + torch.randint(1, tiny_config.vocab_size, idx.shape)) % tiny_config.vocab_size
    assert not (targets == idx).any()
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(tiny_config.vocab_size)) < 0.15


# ----------------------------------------------------------------------------- causality


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("t", [0, 5, 13])
def test_causality(pos_encoding, t):
    config = small_config(pos_encoding=pos_encoding)
    model = make_model(config)
    with torch.no_grad():  # larger weights than at init, so every change shows clearly downstream
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    torch.manual_seed(2)
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    changed = idx.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 7) % config.vocab_size
    with torch.no_grad():
        before, _ = model(idx)
        after, _ = model(changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], atol=1e-6, rtol=0)
    # the changed token's own position, and every later one, does see the change
    for pos in range(t + 1, config.block_size):
        assert (after[:, pos] - before[:, pos]).abs().max() > 1e-4, pos


# ----------------------------------------------------------------------------- weights and parameters


def test_tied_weights(tiny_config):
    model = make_model(tiny_config)
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.lm_head.weight[3, 5] = 123.0
    assert model.transformer.wte.weight[3, 5].item() == 123.0
    with torch.no_grad():
        model.transformer.wte.weight[7].fill_(-2.0)
    assert torch.equal(model.lm_head.weight[7], torch.full((tiny_config.n_embd,), -2.0))
    # one tensor, counted once among the parameters
    ids = [id(p) for p in model.parameters()]
    assert ids.count(id(model.lm_head.weight)) == 1


def test_tied_weights_share_gradient(tiny_config):
    model = make_model(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.wte.weight.grad is model.lm_head.weight.grad
    assert model.lm_head.weight.grad.abs().sum() > 0


def expected_params(config):
    C, V, T, L, b = config.n_embd, config.vocab_size, config.block_size, config.n_layer, int(config.bias)
    layer_norm = C + C * b
    attention = C * 3 * C + 3 * C * b + C * C + C * b
    mlp = C * 4 * C + 4 * C * b + 4 * C * C + C * b
    block = 2 * layer_norm + attention + mlp
    wpe = T * C if config.pos_encoding == "learned" else 0
    return V * C + wpe + L * block + layer_norm, wpe


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_num_params_matches_formula(bias, pos_encoding):
    config = GPTConfig(block_size=24, vocab_size=50, n_layer=3, n_head=4, n_embd=48, bias=bias,
                       pos_encoding=pos_encoding)
    model = GPT(config)
    total, wpe = expected_params(config)
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - wpe
    # the count is of distinct tensors: the tied embedding is not counted twice
    assert sum(p.numel() for p in model.parameters()) == total
    if pos_encoding == "sinusoidal":
        assert wpe == 0
        assert not any("wpe" in name for name, _ in model.named_parameters())
        assert model.num_params(non_embedding=False) == model.num_params()
    else:
        assert model.transformer.wpe.weight.shape == (config.block_size, config.n_embd)
    if not bias:
        assert not any(name.endswith(".bias") for name, _ in model.named_parameters())


def test_gpt2_init():
    config = GPTConfig(block_size=32, vocab_size=512, n_layer=4, n_head=4, n_embd=256)
    torch.manual_seed(0)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    c_proj, others = [], []
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            c_proj.append(p)
        elif name.endswith("weight") and p.dim() == 2:  # Linear and Embedding weights
            others.append((name, p))
    assert len(c_proj) == 2 * config.n_layer
    for p in c_proj:
        assert p.std().item() == pytest.approx(residual_std, rel=0.05)
        assert abs(p.mean().item()) < 0.1 * residual_std
    assert {name.rsplit(".", 2)[-2] for name, _ in others} >= {"c_attn", "c_fc", "wte", "wpe"}
    for name, p in others:
        assert p.std().item() == pytest.approx(0.02, rel=0.05), name
    for name, p in model.named_parameters():
        if name.endswith("bias") and "ln" not in name:
            assert torch.count_nonzero(p) == 0, name  # Linear biases start at zero
    for block in model.transformer.h:
        assert torch.equal(block.ln_1.weight, torch.ones(config.n_embd))


# ----------------------------------------------------------------------------- options


def forward_backward(model, config):
    model.train()
    idx = torch.randint(0, config.vocab_size, (2, config.block_size))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    return loss


def test_sinusoidal_option():
    config = small_config(pos_encoding="sinusoidal")
    model = make_model(config)
    assert not hasattr(model.transformer, "wpe")
    assert "pos_table" not in model.state_dict()
    assert not any("wpe" in k for k in model.state_dict())
    table = sinusoidal_positions(config.block_size, config.n_embd)
    assert table.shape == (config.block_size, config.n_embd)
    # position 0: sin(0) = 0 on even channels, cos(0) = 1 on odd ones; positions differ
    assert torch.equal(table[0, 0::2], torch.zeros(config.n_embd // 2))
    assert torch.equal(table[0, 1::2], torch.ones(config.n_embd // 2))
    assert len({tuple(row.tolist()) for row in table}) == config.block_size
    torch.testing.assert_close(model.pos_table, table * model.pos_table[0, 1])  # the model uses it scaled
    forward_backward(model, config)
    # and a learned model with the same seed computes something else
    learned = make_model(small_config())
    idx = torch.randint(0, config.vocab_size, (1, 8))
    assert not torch.allclose(model.eval()(idx)[0], learned(idx)[0])


def test_sinusoidal_positions_do_not_drown_the_tokens():
    """After the first LayerNorm a token must still be told apart from its position: at
    initialisation the position signal is as large as the token embedding, not 35x larger."""
    config = small_config(pos_encoding="sinusoidal", n_embd=128)
    model = make_model(config)
    token_rms = model.transformer.wte.weight.pow(2).mean().sqrt()
    position_rms = model.pos_table.pow(2).mean().sqrt()
    assert 0.5 < position_rms / token_rms < 2


def test_sinusoidal_state_dict_round_trip():
    config = small_config(pos_encoding="sinusoidal")
    model = make_model(config, seed=0)
    other = make_model(small_config(pos_encoding="sinusoidal"), seed=1)
    other.load_state_dict(model.state_dict())  # strict: keys match exactly without pos_table
    idx = torch.randint(0, config.vocab_size, (2, 10))
    torch.testing.assert_close(other(idx)[0], model(idx)[0])


def test_relu_option():
    config = small_config(activation="relu")
    model = make_model(config)
    for block in model.transformer.h:
        assert isinstance(block.mlp.act, nn.ReLU)
    gelu = make_model(small_config())
    for block in gelu.transformer.h:
        assert isinstance(block.mlp.act, nn.GELU)
        assert block.mlp.act.approximate == "tanh"
    forward_backward(model, config)
    # the same weights give different outputs with the other nonlinearity
    gelu.load_state_dict(model.state_dict())
    model.eval()
    idx = torch.randint(0, config.vocab_size, (1, 8))
    assert not torch.allclose(model(idx)[0], gelu(idx)[0])


def test_relu_mlp_is_relu():
    config = small_config(activation="relu")
    torch.manual_seed(0)
    mlp = MLP(config)
    x = torch.randn(3, config.n_embd)
    expected = mlp.c_proj(torch.relu(mlp.c_fc(x)))
    torch.testing.assert_close(mlp(x), expected)


def test_dropout_active_only_in_training():
    config = small_config(dropout=0.5)
    model = make_model(config)
    idx = torch.randint(0, config.vocab_size, (2, 8))
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(idx)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        model.train()
        c, _ = model(idx)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_drops_a_fraction_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.full((400, 500), 3.0, requires_grad=True)
    y = CPUDropout(p).train()(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005  # 200,000 draws: the std is ~0.001
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 / (1 - p)), rtol=1e-4, atol=0)
    y.sum().backward()  # the gradient flows through the kept activations only, scaled alike
    torch.testing.assert_close(x.grad, kept.float() / (1 - p), rtol=1e-4, atol=0)
    assert not torch.equal(kept, CPUDropout(p).train()(x) != 0)  # a fresh draw each call
    torch.testing.assert_close(CPUDropout(p).eval()(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_dropout_keeps_the_dtype_and_scales_kept_values_as_that_dtype_rounds(dtype):
    x = torch.full((100, 100), 3.0, dtype=dtype, requires_grad=True)
    y = CPUDropout(0.1).train()(x)
    y.float().sum().backward()
    kept = y != 0
    assert y.dtype == x.grad.dtype == dtype
    expected = torch.tensor(3.0 / (1 - round(0.1 * 65536) / 65536)).to(dtype)  # p rounded to 1/65536
    assert torch.equal(y[kept], expected.expand_as(y[kept]))


def test_dropout_draws_are_independent_of_position():
    torch.manual_seed(0)
    kept = (CPUDropout(0.5).train()(torch.ones(2000, 1000)) != 0).float()
    for rows in (kept[:, 0::4], kept[:, 1::4], kept[:, 2::4], kept[:, 3::4]):  # the 4 slots of a 64-bit word
        assert abs(rows.mean().item() - 0.5) < 0.005
    together = (kept[:, :-1] * kept[:, 1:]).mean().item()  # neighbours kept together: 0.25 if independent
    assert abs(together - 0.25) < 0.005


def test_attention_written_out_for_dropout_on_cpu_equals_sdpa():
    # In training with dropout on a CPU, attention is computed by hand; with a dropout too small
    # to drop anything it must give what the fused attention gives (the causal mask included).
    with_dropout, without = small_config(dropout=1e-9), small_config(dropout=0.0)
    idx = torch.randint(0, with_dropout.vocab_size, (3, 16))
    a, loss_a = use_cpu_kernels(make_model(with_dropout)).train()(idx, idx)
    b, loss_b = make_model(without).train()(idx, idx)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b)


@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_cached_forward_in_training_with_dropout_equals_the_full_forward(cpu_kernels):
    # A cached forward in train mode takes the same attention path as any other: with a dropout
    # too small to drop anything, the prompt then its continuation through the cache give the
    # logits of the whole sequence at once (the cache's mask included).
    config = small_config(dropout=1e-9)
    model = make_model(config)
    model = (use_cpu_kernels(model) if cpu_kernels else model).train()
    idx = torch.randint(0, config.vocab_size, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config)
    first, _ = model(idx[:, :5], cache=cache)
    rest, _ = model(idx[:, 5:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_the_cpu_kernels_are_swapped_in_by_type():
    model = use_cpu_kernels(make_model(small_config(dropout=0.1)))
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"CPUDropout", "CPUCausalSelfAttention"} <= kinds and not {"Dropout", "CausalSelfAttention"} & kinds
    assert sorted(model.state_dict()) == sorted(make_model(small_config(dropout=0.1)).state_dict())


def test_attention_under_cpu_autocast_runs_in_float32(monkeypatch):
    # torch's bfloat16 attention on a CPU is several times slower than its float32 attention:
    # under CPU autocast, queries, keys and values reach attention in float32, autocast off.
    model = use_cpu_kernels(make_model(small_config(dropout=0.0))).train()
    seen, sdpa = [], F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert seen == [(torch.float32, False)] * model.config.n_layer
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_cpu_training_writes_attention_out_and_matches_sdpa(monkeypatch):
    # Compiled, written-out attention fuses its mask and softmax into one kernel and makes a
    # CPU step faster than torch's fused attention: compiled training on a CPU takes it (no call
    # to scaled_dot_product_attention), and its loss and gradients are the eager model's.
    model = use_cpu_kernels(make_model(small_config(dropout=0.0))).train()
    calls, sdpa = [], F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    idx = torch.randint(0, model.config.vocab_size, (2, 16))

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        _, loss = forward(idx, idx)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager = loss_and_grads(model)
    assert len(calls) == model.config.n_layer
    torch._dynamo.reset()
    compiled = loss_and_grads(torch.compile(model))
    assert len(calls) == model.config.n_layer  # none while compiled
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- learning


def test_overfits_one_batch(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    targets = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    _, first = model(idx, targets)
    for _ in range(80):
        _, loss = model(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    _, loss = model(idx, targets)
    assert first.item() > 3.0
    assert loss.item() < 0.1


def test_configure_optimizers_trains(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    optimizer = configure_optimizer(model, 0.1, 1e-2, (0.9, 0.95), "cpu")
    idx = torch.randint(0, tiny_config.vocab_size, (2, tiny_config.block_size))
    _, first = model(idx, idx)
    for _ in range(20):
        _, loss = model(idx, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item() - 1.0


# ----------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("field, value", [
    ("block_size", 0), ("vocab_size", 0), ("n_layer", 0), ("n_head", 0), ("n_embd", 0),
    ("block_size", -1), ("vocab_size", -5), ("n_layer", -2), ("n_head", -1), ("n_embd", -32),
])
def test_config_rejects_nonpositive_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        small_config(**{field: value})


def test_config_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError, match="n_embd") as info:
        small_config(n_embd=30, n_head=4)
    assert "n_head" in str(info.value)
    small_config(n_embd=30, n_head=3)  # divisible: fine


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_config_rejects_dropout_out_of_range(dropout):
    with pytest.raises(ValueError, match="dropout"):
        small_config(dropout=dropout)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.99])
def test_config_accepts_dropout_in_range(dropout):
    assert small_config(dropout=dropout).dropout == dropout


def test_config_rejects_unknown_pos_encoding():
    with pytest.raises(ValueError, match="pos_encoding"):
        small_config(pos_encoding="rotary")


def test_config_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        small_config(activation="swish")


# ----------------------------------------------------------------------------- crop_block_size


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
def test_crop_block_size(pos_encoding):
    model = make_model(small_config(pos_encoding=pos_encoding))
    torch.manual_seed(3)
    idx = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        full, _ = model(idx)
    model.crop_block_size(8)
    assert model.config.block_size == 8
    with torch.no_grad():
        cropped, _ = model(idx[:, :8])
    assert cropped.shape == (2, 8, 40)
    torch.testing.assert_close(cropped, full[:, :8], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="block_size"):
        model(idx[:, :9])
    if pos_encoding == "learned":
        assert model.transformer.wpe.weight.shape == (8, 32)
        assert model.state_dict()["transformer.wpe.weight"].shape == (8, 32)
        assert model.num_params(non_embedding=False) - model.num_params() == 8 * 32
    else:
        assert model.pos_table.shape == (8, 32)
        assert "pos_table" not in model.state_dict()


def test_cropped_model_still_trains_and_generates():
    model = make_model(small_config())
    model.crop_block_size(8)
    model.train()
    idx = torch.randint(0, 40, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.transformer.wpe.weight.grad.shape == (8, 32)
    out = model.generate(idx[:, :3], 12)  # greedy  # runs past the cropped window
    assert out.shape == (2, 15)


@pytest.mark.parametrize("size", [0, -1, 17])
def test_crop_block_size_rejects_out_of_range(size):
    model = make_model(small_config())
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(size)
    assert model.config.block_size == 16


# ----------------------------------------------------------------------------- optimizer groups


@pytest.mark.parametrize("bias", [True, False])
def test_configure_optimizers_groups(bias):
    config = small_config(bias=bias)
    model = make_model(config)
    optimizer = configure_optimizer(model, weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95),
                                    device_type="cpu")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == 2
    seen = []
    for group in optimizer.param_groups:
        assert group["lr"] == 3e-4
        assert group["betas"] == (0.9, 0.95)
        for p in group["params"]:
            seen.append(id(p))
            if p.dim() >= 2:
                assert group["weight_decay"] == 0.1
            else:
                assert group["weight_decay"] == 0.0
    params = list(model.parameters())
    assert sorted(seen) == sorted(id(p) for p in params)  # each parameter exactly once
    assert len(seen) == len(set(seen))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[i] for i in decayed}
    assert "lm_head.weight" in decayed_names or "transformer.wte.weight" in decayed_names
    assert all(n.endswith("weight") for n in decayed_names)
    assert not any(n.startswith("transformer.ln_f") or ".ln_" in n for n in decayed_names)
