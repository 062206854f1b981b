"""What a GPU run does differently, checked on a CPU with the GPU's part faked or counted: step
times that include the device's work, compiling by default, one pinned copy a step, and a
resume on fewer GPUs than the run was saved on."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from gptkit import checkpoint
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun


def metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def with_args(args, **changes):
    """tiny_train_args with some settings replaced."""
    kept = [a for a in args if a.split("=")[0][2:] not in changes]
    return kept + [f"--{k}={v}" for k, v in changes.items()]


@pytest.mark.parametrize("log_interval", [1, 4])
def test_step_time_includes_the_device_finishing_its_work(tiny_train_args, monkeypatch, log_interval):
    """A device that takes 50 ms to finish what was queued: every logged interval's time holds that
    wait (tok/s, MFU and time left read it), and the host waits only where it logs or evaluates."""
    waits = []

    def slow_device(device):
        waits.append(device)
        time.sleep(0.05)

    monkeypatch.setattr(train, "synchronize", slow_device)
    args = with_args(tiny_train_args, log_interval=log_interval, max_iters=16, eval_interval=8, lr_decay_iters=16)
    assert train.main(args) == 0
    rows = [r for r in metrics(tiny_train_args[2].split("=", 1)[1]) if r.get("tokens_per_sec")]
    assert len(rows) == 16 // log_interval
    tokens_per_step = 4 * 16
    previous = 0
    for row in rows:
        seconds = tokens_per_step * (row["iter"] - previous) / row["tokens_per_sec"]
        assert seconds >= 0.05, row  # the device's 50 ms is in the interval's time
        previous = row["iter"]
    assert waits == ["cpu"] * (16 // log_interval)  # log points (8 and 16 are also evaluations)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config_file", ["configs/gpt2.py", "configs/shakespeare.py", "configs/finetune_shakespeare.py"])
def test_gpu_configs_compile_on_cuda_without_a_flag_and_compile_false_wins(config_file):
    from gptkit.hardware import resolve_compile

    config = load_settings(TrainConfig, [str(ROOT / config_file)])
    assert config.compile is None  # left to the device
    assert resolve_compile(config.compile, "cuda") is True and resolve_compile(config.compile, "cuda:1") is True
    assert resolve_compile(config.compile, "cpu") is False and resolve_compile(config.compile, "mps") is False
    off = load_settings(TrainConfig, [str(ROOT / config_file), "--compile=False"])
    assert resolve_compile(off.compile, "cuda") is False
    nanogpt_style = load_settings(TrainConfig, [str(ROOT / config_file), "--compile=True"])  # a config that says so
    assert resolve_compile(nanogpt_style.compile, "cpu") is True


def test_a_run_records_its_compile_choice_and_says_it(tiny_train_args, capsys):
    args = [a for a in tiny_train_args if not a.startswith("--max_iters")] + ["--max_iters=10"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "not compiled (compile auto: on for CUDA only)" in out
    saved = checkpoint.load_checkpoint(Path(tiny_train_args[2].split("=", 1)[1]) / "ckpt.pt")
    assert saved["train_config"]["compile"] is False  # what the run did, not "auto"
    try:
        run = TrainingRun(load_settings(TrainConfig, with_args(tiny_train_args, compile=True, init_from="resume")))
        assert isinstance(run.step_model, torch._dynamo.eval_frame.OptimizedModule) and not run.compile_chosen
        run.close()
    finally:
        torch.use_deterministic_algorithms(False)  # what a compiled CPU run asks for


def test_a_step_sends_one_contiguous_pinned_block_to_the_gpu(tiny_train_args, monkeypatch):
    """On CUDA each step pins its windows once, as one contiguous block, and copies that without
    waiting; the micro-batches are slices of the copy. The CPU stands in for the GPU here: pinning
    is recorded, and the batches must be the ones the CPU run trains on."""
    run = TrainingRun(load_settings(TrainConfig, with_args(tiny_train_args, gradient_accumulation_steps=3)))
    pinned, copies = [], []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t)
    original_to = torch.Tensor.to

    def to(t, *args, **kwargs):
        copies.append((t, kwargs.get("non_blocking")))
        return original_to(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    run.device_type = "cuda"
    state = run.sampler.state_dict()
    train.train_step(run, 1e-3)
    assert len(pinned) == 1 and pinned[0].is_contiguous() and pinned[0].shape == (3 * 4, 17)
    token_copies = [(t is pinned[0], blocking) for t, blocking in copies if not t.is_floating_point()]
    assert token_copies == [(True, True)]  # the block itself, once, without waiting
    run.sampler.load_state_dict(state)  # the same draw as the step's, for comparison
    assert torch.equal(pinned[0], run.sampler.windows("train", count=12))
    run.close()


@pytest.mark.parametrize("visible", [1, 3])
def test_random_states_of_more_gpus_than_are_visible_restore_those_that_fit(monkeypatch, capsys, visible):
    saved = checkpoint.rng_states()
    saved["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]  # saved on a machine with 2 GPUs
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update({device: state}))
    checkpoint.set_rng_states(saved)
    assert sorted(restored) == list(range(min(visible, 2)))
    assert all(torch.equal(restored[i], saved["cuda"][i]) for i in restored)
    out = capsys.readouterr().out
    assert ("random states for 2 GPUs and 1 are visible here: restored those of the first 1" in out) == (visible == 1)


def test_a_gpu_run_trains_with_the_chunked_loss_and_a_cpu_run_with_the_cpu_kernels(tiny_config):
    from gptkit.cpu import CPUCausalSelfAttention
    from gptkit.gpu import ChunkedLossGPT
    from gptkit.training import use_fast_paths
    from model import GPT

    on_gpu = use_fast_paths(GPT(tiny_config), "cuda")
    assert type(on_gpu) is ChunkedLossGPT and type(on_gpu.transformer.h[0].attn) is not CPUCausalSelfAttention
    on_cpu = use_fast_paths(GPT(tiny_config), "cpu")
    assert type(on_cpu) is GPT and type(on_cpu.transformer.h[0].attn) is CPUCausalSelfAttention


@pytest.mark.slow
def test_train_sample_train_in_one_process_behaves_like_three_commands(tiny_train_args, tmp_path, capsys):
    """A notebook trains (compiled, bfloat16), samples, and trains again: nothing the first run set
    process-wide (deterministic kernels, warning filters, the output stream) outlives it, and the
    second run equals the first."""
    import warnings

    import sample

    filters, stdout = list(warnings.filters), sys.stdout
    deterministic = torch.are_deterministic_algorithms_enabled()
    args = with_args(tiny_train_args, compile=True, dtype="bfloat16", norm="rmsnorm", max_iters=10, eval_interval=5)
    assert train.main(args) == 0
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert warnings.filters == filters and sys.stdout is stdout
    out_dir = Path(tiny_train_args[2].split("=", 1)[1])
    assert sample.main([f"--out_dir={out_dir}", "--max_new_tokens=5", "--dtype=bfloat16", "--device=cpu"]) == 0
    assert warnings.filters == filters and torch.are_deterministic_algorithms_enabled() == deterministic
    again = with_args(args, out_dir=tmp_path / "again")
    assert train.main(again) == 0
    assert warnings.filters == filters and torch.are_deterministic_algorithms_enabled() == deterministic
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed", "tokens_per_sec", "mfu")}  # noqa: E731
                            for r in rows]
    assert untimed(metrics(out_dir)) == untimed(metrics(tmp_path / "again"))


def test_a_quiet_rank_gets_its_output_stream_back_when_closed(monkeypatch):
    """Under torchrun the ranks other than 0 print nothing; closing their Processes gives the
    process its stdout back (a notebook or a test that goes on printing)."""
    import torch.distributed as dist

    from gptkit.distributed import Processes

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: None)
    stdout = sys.stdout
    procs = Processes("gloo", "cpu")
    assert sys.stdout is not stdout  # quiet
    procs.close()
    assert sys.stdout is stdout


def test_the_step_before_is_read_back_without_waiting_for_the_step_queued_after(monkeypatch, tmp_path):
    """On a GPU, a step's loss and norm are copied to pinned memory behind an event as the step is
    queued; checking it one step later waits on that step's event alone (a plain float() would
    wait for everything queued, the next step too, and the GPU would idle between steps)."""
    from gptkit.nonfinite import NonfiniteGuard

    events = []

    class FakeEvent:
        def __init__(self):
            self.recorded = self.waited = False
            events.append(self)

        def record(self):
            self.recorded = True

        def synchronize(self):
            self.waited = True

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: t)
    guard = NonfiniteGuard("stop", torch.amp.GradScaler("cpu", enabled=False), tmp_path, device_type="cuda")
    guard.deferred(1, torch.tensor(2.5), torch.tensor(0.5))
    assert len(events) == 1 and events[0].recorded and not events[0].waited
    guard.deferred(2, torch.tensor(2.25), torch.tensor(0.25))  # step 2 queued: step 1 is checked now
    assert [e.waited for e in events] == [True, False]
    assert (guard.last_loss, guard.last_norm) == (2.5, 0.5)
    guard.flush()
    assert [e.waited for e in events] == [True, True] and (guard.last_loss, guard.last_norm) == (2.25, 0.25)
    guard.deferred(3, torch.tensor(float("nan")), torch.tensor(1.0))
    with pytest.raises(Exception, match="the loss is nan at iteration 3"):
        guard.flush()
