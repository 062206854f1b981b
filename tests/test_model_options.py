"""The newer GPTs' parts as settings: rotary positions, RMSNorm, QK-norm, ReLU², SwiGLU, untied
embeddings and logit soft-capping, each against its formula, with the KV cache, resume and export."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import export
import train
from gptkit.checkpoint import load_checkpoint
from gptkit.cpu import use_cpu_kernels
from model import GPT, MLP, GPTConfig, KVCache, ReLU2, SwiGLU, rotate
from tests.test_cli import assert_one_error_line

OPTIONS = [dict(pos_encoding="rope"), dict(norm="rmsnorm"), dict(qk_norm=True), dict(activation="relu2"),
           dict(activation="swiglu"), dict(tie_embeddings=False), dict(logit_softcap=5.0),
           dict(pos_encoding="rope", norm="rmsnorm", qk_norm=True, activation="relu2", tie_embeddings=False,
                logit_softcap=5.0)]
NAMES = ["rope", "rmsnorm", "qk_norm", "relu2", "swiglu", "untied", "softcap", "all"]
ROOT = Path(__file__).resolve().parent.parent


def config(**options):
    return GPTConfig(**{**dict(block_size=32, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True),
                        **options})


def model(seed=0, **options):
    torch.manual_seed(seed)
    m = GPT(config(**options)).eval()
    with torch.no_grad():  # weights away from their initial values, so each part does something
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def test_rope_scores_depend_only_on_relative_position():
    m = model(pos_encoding="rope")
    idx = torch.randint(0, 40, (2, 12))
    logits, _ = m(idx)
    rotary = m.rotary
    m.rotary = lambda start, length: rotary(start + 7, length)  # every position shifted by 7
    shifted, _ = m(idx)
    torch.testing.assert_close(shifted, logits, rtol=1e-5, atol=1e-5)
    m.rotary = lambda start, length: rotary(start, length) if start else (rotary(0, length)[0].flip(0),
                                                                          rotary(0, length)[1].flip(0))
    assert not torch.allclose(m(idx)[0], logits, atol=1e-3)  # other relative positions: other logits


@pytest.mark.parametrize("options", OPTIONS, ids=NAMES)
@pytest.mark.parametrize("cpu_kernels", [False, True])
def test_kv_cache_equals_recompute(options, cpu_kernels):
    m = model(**options)
    m = use_cpu_kernels(m) if cpu_kernels else m
    idx = torch.randint(0, 40, (2, 6))
    assert torch.equal(m.generate(idx, 40, use_cache=True), m.generate(idx, 40, use_cache=False))  # past the window
    with torch.no_grad():
        cache = KVCache(m.config)
        first, _ = m(idx[:, :4], cache=cache)
        rest, _ = m(idx[:, 4:], cache=cache)
        torch.testing.assert_close(torch.cat([first, rest], 1), m(idx)[0], rtol=1e-5, atol=1e-5)


def test_rmsnorm_is_its_formula():
    m = model(norm="rmsnorm")
    x = torch.randn(3, 5, 32) * 4 + 1
    ln = m.transformer.h[0].ln_1
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ln.weight
    torch.testing.assert_close(ln(x), expected, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(mod, torch.nn.LayerNorm) for mod in m.modules())


def test_qk_norm_normalises_each_heads_queries_and_keys():
    m = model(qk_norm=True)
    attn = m.transformer.h[0].attn
    x = torch.randn(2, 7, 32)
    q, k, v = attn.heads(x)
    raw_q, raw_k, raw_v = [t.view(2, 7, 2, 16).transpose(1, 2) for t in attn.c_attn(x).split(32, dim=2)]
    rms = lambda t: t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5)  # noqa: E731
    torch.testing.assert_close(q, rms(raw_q) * attn.q_norm.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, rms(raw_k) * attn.k_norm.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, raw_v)


def test_relu2_and_swiglu_are_their_formulas():
    x = torch.randn(4, 10)
    torch.testing.assert_close(ReLU2()(x), torch.clamp(x, min=0) ** 2)
    a, b = x[:, :5], x[:, 5:]
    torch.testing.assert_close(SwiGLU()(x), a * torch.sigmoid(a) * b)


@pytest.mark.parametrize("n_embd", [32, 384, 768])
def test_swiglu_keeps_the_parameters_of_the_4x_mlp(n_embd):
    count = lambda activation: sum(p.numel() for p in MLP(  # noqa: E731
        GPTConfig(n_embd=n_embd, n_head=1, bias=False, activation=activation)).parameters())
    assert abs(count("swiglu") - count("gelu")) / count("gelu") < 0.01


def test_logit_softcap_is_c_tanh_of_logits_over_c():
    capped, plain = model(logit_softcap=0.5), model()
    idx = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(capped(idx)[0], 0.5 * torch.tanh(plain(idx)[0] / 0.5), rtol=1e-5, atol=1e-5)
    assert capped(idx)[0].abs().max() < 0.5 < plain(idx)[0].abs().max()


def test_untied_embeddings_are_two_tensors_that_train_apart():
    torch.manual_seed(0)
    m = GPT(config(tie_embeddings=False))
    wte, head = m.transformer.wte.weight, m.lm_head.weight
    assert wte.data_ptr() != head.data_ptr()
    assert m.num_params() == sum(p.numel() for p in m.parameters()) - wte.numel() - m.transformer.wpe.weight.numel()
    before = head.detach().clone()
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
    idx = torch.randint(0, 40, (4, 16))
    _, loss = m(idx, idx)
    loss.backward()
    optimizer.step()
    assert not torch.equal(wte, head) and not torch.equal(head, before)
    assert not torch.allclose(wte.grad, head.grad)
    tied = GPT(config())
    assert tied.transformer.wte.weight is tied.lm_head.weight


def test_a_config_that_cannot_be_is_refused():
    with pytest.raises(ValueError, match="head size n_embd / n_head \\(5\\) must be even"):
        GPTConfig(n_embd=10, n_head=2, pos_encoding="rope")
    with pytest.raises(ValueError, match="norm must be 'layernorm' or 'rmsnorm'"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="logit_softcap must be >= 0"):
        GPTConfig(logit_softcap=-1.0)


def flags(options):
    return [f"--{k}={v}" for k, v in options.items()]


@pytest.mark.slow
@pytest.mark.parametrize("options", OPTIONS, ids=NAMES)
def test_each_option_resumes_bit_exactly(options, tiny_train_args, tmp_path):
    args = tiny_train_args + flags(options) + ["--max_iters=8", "--eval_interval=4", "--lr_decay_iters=8"]
    assert train.main(args + [f"--out_dir={tmp_path / 'whole'}"]) == 0
    assert train.main(args + [f"--out_dir={tmp_path / 'part'}", "--max_iters=4"]) == 0
    assert train.main(args + [f"--out_dir={tmp_path / 'part'}", "--init_from=resume"]) == 0
    whole, part = (load_checkpoint(tmp_path / name / "ckpt.pt") for name in ("whole", "part"))
    assert part["model_config"] == whole["model_config"] and all(
        whole["model_config"][k] == v for k, v in options.items())
    assert all(torch.equal(whole["model"][name], part["model"][name]) for name in whole["model"])


def test_export_refuses_rotary_with_layernorm_in_one_line_naming_the_layouts(tiny_train_args, tmp_path, capsys):
    assert train.main(tiny_train_args + ["--pos_encoding=rope", "--max_iters=2", "--eval_interval=2"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        export.main([f"--out_dir={tmp_path / 'out'}", f"--to={tmp_path / 'hf'}"])
    assert_one_error_line(capsys, excinfo, "this model has pos_encoding='rope', which GPT-2's layout does not take, "
                                           "and norm='layernorm', which Llama's does not: GPT-2's takes GPT-2's parts")
    assert not (tmp_path / "hf").exists()


def test_the_defaults_are_gpt2():
    c = GPTConfig()
    assert (c.pos_encoding, c.norm, c.qk_norm, c.activation, c.tie_embeddings, c.logit_softcap) == \
        ("learned", "layernorm", False, "gelu", True, 0.0)
    assert math.isclose(F.gelu(torch.tensor(1.0), approximate="tanh").item(), 0.8411920070648193, rel_tol=1e-6)


@pytest.mark.parametrize("options", [dict(pos_encoding="rope", qk_norm=True), dict(logit_softcap=0.5)],
                         ids=["rope-qk_norm", "softcap"])
def test_explain_shows_what_the_model_computes(options):
    import explain

    m = model(**options)
    idx = torch.randint(0, 40, (1, 10))
    weights = explain.attention_weights(m, idx)  # (n_layer, nh, T, T)
    logits, streams, inputs = explain.trace(m, idx)
    attn, rotary = m.transformer.h[0].attn, m.rotary(0, 10)
    _, _, v = attn.heads(inputs[0], rotary)
    y = (weights[0] @ v[0]).transpose(0, 1).reshape(1, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn.c_proj(y), attn(inputs[0], rotary), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(explain.logit_lens(m, streams)[-1], logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", OPTIONS, ids=NAMES)
def test_each_option_samples_with_the_cpus_packed_bfloat16_layers(options):
    from gptkit.cpu import cpu_packs_bf16, sampling_precision

    if not cpu_packs_bf16():
        pytest.skip("this torch has no oneDNN bfloat16 matmul")
    m = model(**options)
    idx = torch.randint(0, 40, (1, 5))
    with torch.no_grad():
        reference = m(idx)[0][:, -1]
    with sampling_precision(m, "cpu", "bfloat16"):
        steps = list(m.generate_stream(idx, 8))
    tokens = torch.stack([token for token, _ in steps], 1)
    assert tokens.shape == (1, 8) and all(torch.isfinite(logits).all() for _, logits in steps)
    torch.testing.assert_close(steps[0][1], reference, rtol=0.05, atol=0.1)  # bfloat16 rounds, no more


def options_table(*args):
    return subprocess.run([sys.executable, "benchmarks/options_table.py", "configs/shakespeare_cpu.py", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_options_table_tunes_each_rows_learning_rate_then_runs_every_seed(tiny_train_args, tmp_path):
    settings = [a for a in tiny_train_args if not a.startswith("--out_dir")] + ["--compile=False"]
    args = [*settings, "--rows", "gpt2", "rope", "--seeds", "1", "2", "--learning_rates", "1e-3", "3e-2",
            "--parallel=2", f"--out_dir={tmp_path / 'table'}"]
    result = options_table(*args)
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "table" / "results.json").read_text())
    assert len(results) == 6  # 2 rows x 2 rates on seed 1, then each row's chosen rate on seed 2
    for row, pos_encoding in [("gpt2", "learned"), ("rope", "rope")]:
        first = {lr: results[f"{row} lr={lr} seed=1"]["best_val_loss"] for lr in ("0.001", "0.03")}
        chosen = min(first, key=first.get)
        losses = [results[f"{row} lr={chosen} seed={seed}"]["best_val_loss"] for seed in (1, 2)]
        run = tmp_path / "table" / f"{row}-lr{chosen}-seed2"
        assert load_checkpoint(run / "ckpt.pt")["model_config"]["pos_encoding"] == pos_encoding
        val = [r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
        assert losses[1] == min(val)
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {row} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[2] == chosen and cells[3] == f"{losses[0]:.4f}, {losses[1]:.4f}"
        assert cells[4] == f"{(losses[0] + losses[1]) / 2:.4f}" and cells[5] == f"{abs(losses[0] - losses[1]):.4f}"
        assert cells[7] == "20, 20"  # each run's iterations (a time_budget would choose them)
    again = options_table(*args)  # every run is in the folder: nothing runs, the same table
    assert again.returncode == 0 and again.stdout == result.stdout[result.stdout.index("| row |"):]


def test_the_options_table_refuses_an_unknown_part_in_one_line(tmp_path):
    result = options_table("--rows", "gpt2", "rope+gelu", f"--out_dir={tmp_path / 'table'}")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: unknown row part 'gelu' in 'rope+gelu'"), result.stderr
    assert not (tmp_path / "table").exists()


def test_rotary_positions_survive_a_cast_to_bfloat16():
    """A notebook or an export casts a model: its rotary angles are made in float32 all the same,
    so a bfloat16 model turns queries and keys as the float32 one does (to bfloat16's precision)."""
    float32 = GPT(GPTConfig(block_size=1024, vocab_size=40, n_layer=1, n_head=2, n_embd=64, pos_encoding="rope"))
    cos, sin = float32.rotary(0, 1024)
    cast_cos, cast_sin = float32.to(torch.bfloat16).rotary(0, 1024)
    torch.testing.assert_close(cast_cos, cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(cast_sin, sin, rtol=0, atol=1e-6)
    q = torch.randn(1, 2, 1024, 32)  # queries turned in bfloat16: float32's, to bfloat16's rounding
    torch.testing.assert_close(rotate(q.bfloat16(), cast_cos, cast_sin).float(), rotate(q, cos, sin),
                               rtol=2e-2, atol=2e-2)
