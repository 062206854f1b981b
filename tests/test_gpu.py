"""What only a GPU runs: compiled bfloat16 steps, flash attention, fused AdamW, float16 with its
gradient scaler, the KV cache on the GPU, pinned batches, NCCL between two GPUs, and MFU against
the GPU's own peak. Skipped where there is no CUDA (`pytest -m gpu` runs just these)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import train
from gptkit.hardware import gpu_peak
from gptkit.optim import configure_optimizer
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun
from model import GPT, GPTConfig, KVCache

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_args(char_data, out_dir, **extra):
    values = {"data_dir": char_data, "dataset": "tiny", "out_dir": out_dir, "n_layer": 2, "n_head": 2, "n_embd": 64,
              "block_size": 32, "batch_size": 8, "gradient_accumulation_steps": 1, "max_iters": 20,
              "eval_interval": 10, "eval_iters": 2, "log_interval": 1, "warmup_iters": 2, "lr_decay_iters": 20,
              "learning_rate": 1e-3, "device": "cuda", "dropout": 0.0, **extra}
    return [f"--{k}={v}" for k, v in values.items()]


def metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def test_compiled_bfloat16_training_learns(char_data, tmp_path, capsys):
    assert train.main(gpu_args(char_data, tmp_path / "out", dtype="bfloat16", compile=True)) == 0
    rows = [r for r in metrics(tmp_path / "out") if r.get("val_loss") is not None]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    assert "dtype bfloat16" in capsys.readouterr().out


def test_flash_attention_gives_the_math_paths_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=100, n_layer=2, n_head=4, n_embd=128)).cuda()
    idx = torch.randint(0, 100, (4, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            _, flash = model(idx, idx)
        with sdpa_kernel(SDPBackend.MATH):
            _, math = model(idx, idx)
    torch.testing.assert_close(flash, math, rtol=1e-2, atol=1e-2)


def test_adamw_is_fused_on_the_gpu(tiny_config):
    optimizer = configure_optimizer(GPT(tiny_config).cuda(), 0.1, 1e-3, (0.9, 0.95), "cuda")
    assert optimizer.defaults.get("fused") is True


def test_float16_trains_with_its_gradient_scaler(char_data, tmp_path):
    run = TrainingRun(load_settings(TrainConfig, gpu_args(char_data, tmp_path / "probe", dtype="float16")))
    assert run.scaler.is_enabled()
    run.close()
    assert train.main(gpu_args(char_data, tmp_path / "out", dtype="float16")) == 0
    rows = [r for r in metrics(tmp_path / "out") if r.get("loss") is not None]
    assert all(r["loss"] is not None for r in rows) and rows[-1]["loss"] < rows[0]["loss"]


def test_kv_cache_on_the_gpu_equals_recompute():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50, n_layer=2, n_head=2, n_embd=64)).cuda().eval()
    idx = torch.randint(0, 50, (2, 10), device="cuda")
    cached = model.generate(idx, 40, use_cache=True)
    recomputed = model.generate(idx, 40, use_cache=False)
    assert torch.equal(cached, recomputed)
    with torch.no_grad():
        cache = KVCache(model.config)
        first, _ = model(idx[:, :6], cache=cache)
        rest, _ = model(idx[:, 6:], cache=cache)
        whole, _ = model(idx)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-4, atol=1e-4)


def test_batches_go_over_pinned_without_waiting(char_data, tmp_path):
    run = TrainingRun(load_settings(TrainConfig, gpu_args(char_data, tmp_path / "out")))
    windows = run.sampler.windows("train")
    gx, gy = run.to_device(windows)
    assert gx.is_cuda and gx.dtype == torch.int64 and torch.equal(gx.cpu(), windows[:, :-1].long())
    assert torch.equal(gy.cpu(), windows[:, 1:].long())
    run.close()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_torchrun_with_nccl_on_two_gpus_equals_one(char_data, tmp_path):
    args = gpu_args(char_data, tmp_path / "two", gradient_accumulation_steps=2, dtype="float32")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "2 processes" in result.stdout
    assert train.main(gpu_args(char_data, tmp_path / "one", gradient_accumulation_steps=2, dtype="float32")) == 0
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["iter"] for r in two] == [r["iter"] for r in one]
    for a, b in zip(one, two):
        for key in ("loss", "val_loss"):
            if a.get(key) is not None:
                assert abs(a[key] - b[key]) < 1e-3, (key, a, b)


def test_mfu_is_against_this_gpus_data_sheet_peak(char_data, tmp_path, capsys):
    assert train.main(gpu_args(char_data, tmp_path / "out", dtype="bfloat16")) == 0
    out = capsys.readouterr().out
    name = torch.cuda.get_device_name()
    if gpu_peak(name, "bfloat16") is None:
        assert "MFU not shown" in out
    else:
        assert f"mfu against {name}, bfloat16: {gpu_peak(name, 'bfloat16') / 1e12:.0f} TFLOP/s (data sheet)" in out
        assert all(r.get("mfu") for r in metrics(tmp_path / "out") if r.get("loss") is not None)
