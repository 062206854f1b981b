"""Which precision a run uses and what its speed is measured against."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gptkit.cpu as cpu
import gptkit.hardware as hardware
import train
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def determinism_restored():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("width, compiled, dtype", [(16, False, "float32"), (127, False, "float32"),
                                                   (128, False, "bfloat16"), (16, True, "bfloat16")])
def test_auto_on_a_bf16_cpu_follows_a_rule_on_the_model_and_says_it(char_data, tmp_path, monkeypatch, capsys,
                                                                   width, compiled, dtype, determinism_restored):
    """dtype auto on a CPU with bfloat16: bfloat16 when compiled or at least 128 wide, else float32;
    decided by the model, never by a stopwatch (so a busy moment cannot flip it)."""
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: pytest.fail("timed the choice"))
    assert hardware.cpu_auto_dtype(width, compiled)[0] == dtype
    config = load_settings(TrainConfig, [
        f"--data_dir={char_data}", "--dataset=tiny", f"--out_dir={tmp_path / 'out'}", "--n_layer=1", "--n_head=1",
        f"--n_embd={width}", "--block_size=8", "--batch_size=2", "--device=cpu", "--dtype=auto",
        f"--compile={compiled}"])
    monkeypatch.undo()  # the run's own clock
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    run = TrainingRun(config)
    assert run.dtype == dtype
    assert f"dtype auto: {dtype} (" in capsys.readouterr().out
    run.close()


def test_compiling_on_a_cpu_asks_for_deterministic_kernels(tiny_train_args, determinism_restored):
    # without them, two compiled runs of the CPU recipe differed (val 2.3856 against 2.3852 after 300 steps)
    torch.use_deterministic_algorithms(False)
    TrainingRun(load_settings(TrainConfig, tiny_train_args + ["--compile=False"]))
    assert not torch.are_deterministic_algorithms_enabled()
    args = [a.replace("/out", "/out2") if a.startswith("--out_dir") else a for a in tiny_train_args]
    run = TrainingRun(load_settings(TrainConfig, args + ["--compile=True"]))
    assert torch.are_deterministic_algorithms_enabled()
    run.close()
    assert not torch.are_deterministic_algorithms_enabled()  # for the run alone


@pytest.mark.slow
def test_a_compiler_that_fails_is_one_line_and_exit_status_2(tiny_train_args, monkeypatch, capsys,
                                                             determinism_restored):
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    try:  # the config's own patch, which puts the compiler back after (monkeypatch would delete it)
        with torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/g++",)}), pytest.raises(SystemExit) as stopped:
            train.main(tiny_train_args + ["--compile=True", "--max_iters=2", "--dtype=float32"])
    finally:
        torch._dynamo.reset()
    assert torch._inductor.config.cpp.cxx != ("/nonexistent/g++",)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("error: torch.compile failed here (") and err.rstrip().endswith("run with --compile=False")
    assert len(err.strip().splitlines()) == 1, err


# The names torch.cuda.get_device_name() returns, with each one's dense peaks from its data sheet
# in TFLOP/s: (bfloat16, float16, float32, which is TF32 where the GPU has it). None: no peak.
SXM, PCIE, NVL, A100 = (989, 989, 495), (756, 756, 378), (835, 835, 418), (312, 312, 156)
GPU_NAMES = [
    ("NVIDIA H100 80GB HBM3", SXM), ("NVIDIA H100", SXM), ("NVIDIA H100 PCIe", PCIE), ("NVIDIA H100 NVL", NVL),
    ("NVIDIA H800", SXM), ("NVIDIA H800 80GB HBM3", SXM), ("NVIDIA H800 PCIe", PCIE),
    ("NVIDIA H200", SXM), ("NVIDIA H200 NVL", NVL), ("NVIDIA GH200 480GB", SXM),
    ("NVIDIA B200", (2250, 2250, 1100)),
    ("NVIDIA A100-SXM4-40GB", A100), ("NVIDIA A100-SXM4-80GB", A100), ("NVIDIA A100 80GB PCIe", A100),
    ("NVIDIA A100-PCIE-40GB", A100), ("NVIDIA A800-SXM4-80GB", A100), ("NVIDIA A800 80GB PCIe", A100),
    ("NVIDIA A10", (125, 125, 62.5)), ("NVIDIA A10G", (None, None, None)), ("NVIDIA A40", (149.7, 149.7, 74.8)),
    ("NVIDIA L40S", (362, 362, 183)), ("NVIDIA L40", (181, 181, 90.5)), ("NVIDIA L4", (121, 121, 60)),
    ("NVIDIA GeForce RTX 5090", (209.5, 209.5, 104.8)), ("NVIDIA GeForce RTX 4090", (165, 165, 82.6)),
    ("NVIDIA GeForce RTX 3090", (71, 71, 35.6)),
    ("Tesla V100-SXM2-16GB", (None, 125, 15.7)), ("Tesla V100-SXM2-32GB", (None, 125, 15.7)),
    ("Tesla V100-PCIE-32GB", (None, 112, 14)), ("Tesla V100S-PCIE-32GB", (None, 130, 16.4)),
    ("Tesla T4", (None, 65, 8.1)),
    # MIG slices: N of the GPU's 7 compute slices
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", tuple(t / 7 for t in SXM)),
    ("NVIDIA H100 80GB HBM3 MIG 7g.80gb", SXM), ("NVIDIA H100 MIG 2g.20gb", tuple(2 * t / 7 for t in SXM)),
    ("NVIDIA H100 PCIe MIG 3g.40gb", tuple(3 * t / 7 for t in PCIE)),
    ("NVIDIA H100 NVL MIG 1g.12gb", tuple(t / 7 for t in NVL)),
    ("NVIDIA H800 MIG 1g.10gb+me", tuple(t / 7 for t in SXM)),
    ("NVIDIA H200 MIG 1g.18gb", tuple(t / 7 for t in SXM)),
    ("NVIDIA GH200 480GB MIG 4g.48gb", tuple(4 * t / 7 for t in SXM)),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", tuple(t / 7 for t in A100)),
    ("NVIDIA A100 80GB PCIe MIG 3g.40gb", tuple(3 * t / 7 for t in A100)),
    ("NVIDIA A800-SXM4-80GB MIG 2g.20gb", tuple(2 * t / 7 for t in A100)),
]


@pytest.mark.parametrize("name, tflops", GPU_NAMES)
def test_gpu_peak_by_the_name_torch_gives(monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    for dtype, expected in zip(("bfloat16", "float16", "float32"), tflops):
        flops, source = hardware.peak_flops("cuda", dtype)
        if expected is None:
            assert flops is None and source == f"unknown GPU ({name}, {dtype}): MFU not shown"
        else:
            assert flops == pytest.approx(expected * 1e12, rel=1e-12), dtype
            assert name in source and "data sheet" in source


# each a relative of a known GPU whose peak differs from it, or a MIG slice of unknown share
@pytest.mark.parametrize("name", ["Some Future GPU", "NVIDIA L4000", "NVIDIA A10G", "NVIDIA A30", "NVIDIA H20",
                                  "NVIDIA GB200", "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 4090 Laptop GPU",
                                  "NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce RTX 5090 D", "Tesla V100-FHHL-16GB",
                                  "NVIDIA A30 MIG 1g.6gb", "NVIDIA B200 MIG 1g.23gb",
                                  "NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb"])
def test_an_unknown_gpu_gets_no_mfu_rather_than_a_guess(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    flops, source = hardware.peak_flops("cuda", "bfloat16")
    assert flops is None and source == f"unknown GPU ({name}, bfloat16): MFU not shown"


def test_cpu_peak_is_measured_for_the_dtype():
    flops, source = hardware.peak_flops("cpu", "float32")
    assert 1e9 < flops < 1e14 and "measured" in source and "float32" in source


def test_emulated_bf16_gpus_get_float16(monkeypatch):
    """V100 and T4 emulate bfloat16: torch.cuda.is_bf16_supported() says yes unless asked about
    emulation; auto must pick float16 (with its GradScaler) there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert hardware.resolve_dtype("auto", "cuda") == "float16"


def test_mfu_is_the_models_flops_over_the_peak(char_data, tmp_path):
    config = load_settings(TrainConfig, [
        f"--data_dir={char_data}", "--dataset=tiny", f"--out_dir={tmp_path / 'out'}", "--n_layer=2", "--n_head=2",
        "--n_embd=32", "--block_size=16", "--batch_size=2", "--device=cpu", "--dtype=float32"])
    run = TrainingRun(config)
    assert run.model.config.vocab_size == 33 and not run.model.config.bias
    # by hand: the token embedding 33 x 32 (tied: also the unembedding), per block two LayerNorm
    # weights (2 x 32), q, k, v (32 x 96), the attention's projection (32 x 32), the MLP (32 x 128
    # and 128 x 32); the final LayerNorm (32). Positions are a lookup, not counted. 6N a token,
    # and 12 L T C for attention's scores and weighted sums.
    weights = 33 * 32 + 2 * (2 * 32 + 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 32
    per_token = 6 * weights + 12 * 2 * 16 * 32
    assert per_token == 167_040
    run.peak = 1e9
    assert run.mfu(1000.0) == pytest.approx(per_token * 1000.0 / 1e9)
    run.peak = None
    assert run.mfu(1000.0) is None


@pytest.mark.parametrize("flags", [["--iters=0"], ["--warmup=-1", "--iters=1"]])
def test_train_speed_benchmark_checks_its_counts(flags):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"),
                             str(ROOT / "configs" / "shakespeare_cpu.py"), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: --iters must be at least 1"), result.stderr


def test_side_by_side_benchmark_names_a_missing_nanogpt_checkout(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nanogpt_side_by_side.py"),
                             f"--nanogpt={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path} is not a checkout of karpathy/nanoGPT"), result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_gpu_check_without_a_gpu_is_one_line_and_exit_status_2(tmp_path):
    for extra in ([], ["--multi"]):  # the check on one GPU, and the one across several
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                                 f"--out={tmp_path / 'r.json'}", *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.strip().splitlines() == ["error: no CUDA GPU here (torch.cuda.is_available() is False); "
                                                      "run the GPU checks on a machine with one"]
        assert not (tmp_path / "r.json").exists()
        assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device, message", [("cuda", "device=cuda but CUDA is not available here"),
                                             ("mps", "--device must be cpu, cuda or cuda:N, got 'mps'")])
def test_side_by_side_benchmark_names_a_device_it_cannot_use(tmp_path, device, message):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nanogpt_side_by_side.py"),
                             f"--nanogpt={tmp_path}", f"--device={device}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {message}"), result.stderr


# ----------------------------------------------------------------------------- sampling precision

needs_packing = pytest.mark.skipif(not cpu.cpu_packs_bf16(), reason="this torch has no oneDNN bfloat16 matmul")


def decisive_model(seed=0, **overrides):
    """A small model with large random weights: distributions far from uniform, no near-ties."""
    torch.manual_seed(seed)
    settings = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    model = GPT(GPTConfig(**{**settings, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "ln" in name and name.endswith("weight") else 0.2 * torch.randn_like(p))
    return model.eval()


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_a_bfloat16_linear(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 24, bias=bias)
    x = torch.randn(3, 5, 96)[..., ::2]  # (3, 5, 48), not contiguous
    packed = cpu.PackedLinear(linear)
    y = packed(x)
    rounded = torch.nn.functional.linear(x.bfloat16().float(), linear.weight.bfloat16().float(),
                                         None if linear.bias is None else linear.bias.bfloat16().float())
    assert y.dtype == torch.float32 and y.shape == (3, 5, 24)
    torch.testing.assert_close(y, rounded, atol=1e-2, rtol=1e-2)  # bfloat16 output rounding only


@needs_packing
@pytest.mark.parametrize("activation", ["gelu", "gelu_exact", "relu"])  # each fused into its MLP's first matmul
def test_packed_sampling_gives_the_float32_model_tokens_cached_or_not(activation):
    model = decisive_model(activation=activation)
    idx = torch.randint(0, 40, (2, 3))
    with torch.no_grad():
        full32, _ = model(idx)
        tokens32 = model.generate(idx, 30)  # greedy, past the window of 16 too
    with cpu.sampling_precision(model, "cpu", "bfloat16"):
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        with torch.no_grad():
            full, _ = model(idx)
        cached, recomputed = model.generate(idx, 30), model.generate(idx, 30, use_cache=False)
    torch.testing.assert_close(full, full32, atol=0.15, rtol=0.05)  # bfloat16 weights
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, tokens32)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_sampling_precision_leaves_float32_and_gpus_to_autocast():
    model = decisive_model()
    assert isinstance(cpu.sampling_precision(model, "cpu", "float32"), contextlib.nullcontext)
    assert isinstance(cpu.sampling_precision(model, "cuda", "bfloat16"), hardware.Autocast)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2 * 4 + 1


KEEP_FREED = """
import sys
import torch
import gptkit.cpu as cpu
import gptkit.hardware as hardware
if sys.argv[1] == "keep":
    scope = cpu.keep_freed_memory()  # held: the setting lasts while the scope is open
    kept = scope.__enter__()
elif sys.argv[1] == "kept-then-restored":
    with cpu.keep_freed_memory() as kept:
        pass
    kept = False
else:
    kept = False
def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
block = torch.ones(4 << 20)  # 16 MiB, as a big model's step frees and allocates every time
held = resident_mib()
del block
print(kept, held - resident_mib())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_step():
    """After keep_freed_memory, a freed 16 MiB block stays with the process for the next step to
    reuse; by default glibc hands it back to the system (and the next step faults it in again)."""
    def released_mib(how):
        result = subprocess.run([sys.executable, "-c", KEEP_FREED, how], cwd=ROOT, capture_output=True, text=True,
                                check=True)
        kept, released = result.stdout.split()
        return kept == "True", float(released)
    assert released_mib("default") == (False, pytest.approx(16, abs=1))
    assert released_mib("keep") == (True, pytest.approx(0, abs=1))
    assert released_mib("kept-then-restored") == (False, pytest.approx(16, abs=1))  # glibc's defaults again
