"""The GPU check: whether this project's GPU paths work, and how fast GPT-2 124M trains, in one
command that fits 8 minutes on one H100 with the compile caches empty. The JSON report is
rewritten after every stage, so a run cut short keeps every stage it finished.

    python benchmarks/gpu_check.py                            # one GPU: gpu_report.json, within 480 s
    python benchmarks/gpu_check.py --budget=300 --out=r.json
    python benchmarks/gpu_check.py --multi                    # 2+ GPUs: gpu_report_multi.json

One GPU, in this order (the seconds each stage needs on an H100, compile caches empty); each
model is built as a training run builds it (on a GPU, with the chunked loss of gptkit/gpu.py):
  preflight            10  torch, CUDA, driver and cuDNN versions, the GPU and its memory, whether
                           its data-sheet peak is known (for MFU), whether Triton imports
  flash_attention      75  forward and backward in bfloat16 with only flash attention allowed, of a
                           small GPT with GPT-2's parts and with the newer ones, eager and compiled:
                           each loss within 1e-2 of the math backend's
  bf16_vs_fp32         15  GPT-2 124M, the same weights and batch: the bfloat16 training loss within
                           1e-2 of the float32 one (TF32 off)
  compiled_vs_eager    70  GPT-2 124M, a forward and backward in bfloat16: the compiled loss within
                           1e-3 of the eager one
  host_syncs           20  train.py's step of the 10.65M Shakespeare model: the synchronising calls
                           of 10 steady steps, by the line that makes them (none expected: the
                           guard reads the step before back behind an event, at most 2 a step), and
                           whether a step's batch goes to the GPU from pinned memory
  speed             45+85  GPT-2 124M compiled in bfloat16 through train.py, at batch 8, then 16
                           (1,024 tokens a sequence): ms/iter, tokens/s, MFU (target: >= 45%), peak
                           memory; batch 16 (85 s: it compiles again) runs only if the later
                           stages keep their time
  muon_and_float16     30  30 steps each of a small model with Muon, and in float16 with its gradient
                           scaler: every loss finite, and falling
  save_resume_sample   30  a run saved at step 10 and resumed to 20 gives the losses of 20 steps in
                           one go (within 1e-3); sample.py reads its checkpoint on the GPU and the CPU

--multi (2 or more GPUs), each against one process on the same data:
  preflight            10
  ddp_compiled        120  2 processes, compiled, 4 micro-steps a step, float32: losses within 1e-3
  fsdp                 60  2 processes with fsdp=True, bfloat16: losses within 1e-2
  resume_two_to_one    45  float32, saved by 2 processes at step 10, resumed by 1 to step 20:
                           losses within 1e-3
  muon_ranks           30  Muon on 2 processes: the ranks' weights identical after 10 steps

A stage runs only if the time left of --budget covers its estimate; otherwise it is recorded as
skipped, with the reason, and when the budget runs out during a stage, that stage is stopped
and recorded as failed. Each stage records its status (ok, failed or skipped), its wall seconds
beside its estimate, its figures and checks, and for a failure the last lines of the error and
of its output. A failing stage does not stop the others. Exit status: 0 if no stage failed, 1 if
one did; without CUDA, one line and 2. nanoGPT side by side is a command of its own:
benchmarks/nanogpt_side_by_side.py --device=cuda.
"""

import collections
import gc
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from gptkit.data import write_dataset
from gptkit.datasets import ensure_data
from gptkit.files import atomic_write
from gptkit.hardware import autocast_context, flops_per_token, gpu_peak, peak_flops, synchronize
from gptkit.optim import get_lr
from gptkit.runlog import read_metrics, step_seconds
from gptkit.settings import ArgumentParser, UserError, load_settings, run_cli
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun, use_fast_paths
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent


def script(name):
    """train.py or sample.py as a module, to call in this process what their users run. Only model
    and gptkit are installed; the scripts load from the checkout, as the tests import them."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train, sample = script("train"), script("sample")

GPT2_CONFIG = "configs/gpt2.py"  # GPT-2 124M; relative to the project root, where commands run
GPT2_TOKENS = 50257  # the vocabulary of the random data
GPT2_VOCAB = 50304  # the model's: GPT-2's tokens padded to a multiple of 64, as train.py pads a BPE
SPEED_BATCHES = (8, 16)  # the first is also compiled_vs_eager's, whose compile train.py then finds cached
SECOND_BATCH_NEED = 85  # seconds for the second batch size: train.py compiles again for it
FLASH_MODEL = {"block_size": 256, "vocab_size": 512, "n_layer": 2, "n_head": 4, "n_embd": 256, "bias": False}
NEWER_PARTS = {"pos_encoding": "rope", "norm": "rmsnorm", "qk_norm": True, "activation": "swiglu",
               "tie_embeddings": False, "logit_softcap": 15.0}
# the small training runs of the later stages: tiny Shakespeare, 4 layers, 256 wide, context 128
SMALL_RUN = {"dataset": "shakespeare_char", "n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128,
             "batch_size": 32, "gradient_accumulation_steps": 1, "max_iters": 20, "lr_decay_iters": 20,
             "eval_interval": 10, "eval_iters": 4, "log_interval": 1, "warmup_iters": 5, "learning_rate": 2e-3,
             "min_lr": 2e-4, "dropout": 0.0, "dtype": "bfloat16", "compile": False, "wandb_log": False}
SYNC_WARNING = "called a synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode('warn') says


# ----------------------------------------------------------------------------- running stages

class Check:
    """What the stages share: the deadline, a scratch folder, the device, the data they train on."""

    def __init__(self, budget, tmp, device="cuda"):
        self.budget, self.tmp, self.device = budget, Path(tmp), device
        self.deadline = time.monotonic() + budget
        self.reserve = 0  # seconds the stages after the running one need
        self.caches_at_start = compile_caches()
        self.references = {}  # --multi: {dtype: the one-process run that stages compare with}

    def left(self):
        return self.deadline - time.monotonic()

    def data_dir(self):
        """A data folder with tiny Shakespeare prepared in it (shakespeare_char, from the text that ships)."""
        folder = self.tmp / "data"
        ensure_data(folder, "shakespeare_char")
        return folder


class OutOfBudget(BaseException):
    """Raised in the running stage when the deadline passes: a BaseException, so that no `except
    Exception` inside torch swallows it."""


@contextmanager
def stopped_at(deadline):
    def stop(signum, frame):
        raise OutOfBudget

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """The JSON report, rewritten whole (atomically) at every change."""

    def __init__(self, path, header):
        self.path, self.started = Path(path), time.monotonic()
        self.data = {**header, "stages": {}}

    def record(self, name, entry):
        self.data["stages"][name] = entry
        self.data["elapsed_seconds"] = round(time.monotonic() - self.started, 1)
        with atomic_write(self.path, "w") as f:
            json.dump(plain(self.data), f, indent=1)
            f.write("\n")


def run_stages(stages, check, report):
    """Each stage in turn, if the time left covers its estimate; its output is kept, and shown in
    the report when it fails."""
    for i, (name, need, stage) in enumerate(stages):
        check.reserve = sum(later for _, later, _ in stages[i + 1:])
        if check.left() < need:
            report.record(name, {"status": "skipped", "estimate_seconds": need,
                                 "reason": f"needs ~{need} s; {max(check.left(), 0):.0f} s of the "
                                           f"{check.budget:.0f} s budget left"})
            print(f"{name}: skipped (needs ~{need} s, {max(check.left(), 0):.0f} s left)", flush=True)
            continue
        report.record(name, {"status": "running", "estimate_seconds": need})  # what a killed check was doing
        started, output = time.perf_counter(), io.StringIO()
        try:
            with redirect_stdout(output), redirect_stderr(output), stopped_at(check.deadline):
                figures = stage(check)
            failed = [c for c, passed in figures.get("checks", {}).items() if not passed]
            entry = {"status": "failed" if failed else "ok", **figures}
            if failed:
                entry.update(failed_checks=failed, output_tail=last_lines(output.getvalue()))
        except OutOfBudget:
            entry = {"status": "failed", "error": [f"stopped: the {check.budget:.0f} s budget ran out"],
                     "output_tail": last_lines(output.getvalue())}
        except (Exception, SystemExit):
            entry = {"status": "failed", "error": last_lines(traceback.format_exc(), 20),
                     "output_tail": last_lines(output.getvalue())}
        entry.update(wall_seconds=round(time.perf_counter() - started, 1), estimate_seconds=need)
        report.record(name, entry)
        line = f"{name}: {entry['status']} in {entry['wall_seconds']:.0f} s (estimate {need} s)"
        detail = entry.get("summary") or (entry.get("error") or [""])[-1]
        print(f"{line}: {detail}" if detail else line, flush=True)
        release_memory()


def release_memory():
    """What a stage left on the GPU (compiled graphs hold their models), freed for the next."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_command(command, timeout):
    """(exit status, stdout and stderr together) of a command run from the project root, in a
    session of its own. On a timeout (status 124), or when the budget runs out meanwhile, it is
    sent SIGTERM (torchrun passes that on to its workers, which run in sessions of their own),
    then its session is killed."""
    process = subprocess.Popen([str(part) for part in command], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=max(timeout, 1))
        return process.returncode, output
    except BaseException as stop:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        if isinstance(stop, subprocess.TimeoutExpired):
            return 124, f"{output}\ntimed out after {timeout:.0f} s"
        raise


def ran(command, check):
    """The output of a command that must succeed within the time left."""
    status, output = run_command(command, check.left() - 2)
    if status:
        raise RuntimeError(f"{' '.join(map(str, command[1:4]))} ... failed (exit status {status}):\n"
                           f"{last_text(output)}")
    return output


# ----------------------------------------------------------------------------- one GPU: the stages

def preflight(check):
    name = torch.cuda.get_device_name()
    properties = torch.cuda.get_device_properties()
    peak = gpu_peak(name, "bfloat16")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    figures = {"gpu": name, "gpus": torch.cuda.device_count(), "memory_gib": round(properties.total_memory / 2**30, 1),
               "compute_capability": f"{properties.major}.{properties.minor}", "torch": torch.__version__,
               "cuda": torch.version.cuda, "driver": driver_version(), "cudnn": torch.backends.cudnn.version(),
               "nccl": nccl_version(), "triton": triton_version,
               "peak_bfloat16_tflops": peak / 1e12 if peak else None, "compile_caches_at_start": check.caches_at_start}
    figures["checks"] = {"data_sheet_peak_known": peak is not None, "triton_imports": triton_version is not None,
                         "bfloat16_native": torch.cuda.is_bf16_supported(including_emulation=False)}
    figures["summary"] = (f"{name}, {figures['memory_gib']} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}, "
                          f"driver {figures['driver']}, Triton {triton_version}; peak "
                          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown (no MFU)"))
    return figures


def flash_attention(check):
    """Flash attention alone allowed, eager and compiled: a path that cannot use it raises."""
    import torch._functorch.config
    import torch._inductor.config

    torch._dynamo.reset()
    results = {}
    # A compile picks its attention kernel while tracing, under the sdpa_kernel then in force; a graph
    # from the on-disk caches was traced under whatever was in force then, so they are off here.
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        for parts, options in (("gpt2_parts", {}), ("newer_parts", NEWER_PARTS)):
            model = run_model(GPTConfig(**FLASH_MODEL, **options), check.device)
            idx, targets = random_batch(check.device, 8, FLASH_MODEL["block_size"], FLASH_MODEL["vocab_size"])
            with sdpa_kernel(SDPBackend.MATH), autocast_context(check.device, "bfloat16"):
                math_loss = model(idx, targets)[1].item()  # the training loss: gradients enabled
            for mode, runner in (("eager", model), ("compiled", torch.compile(model))):
                try:
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        forward_backward(runner, idx, targets, check.device)  # compiles; profiled: what runs
                        (loss, finite), ops = attention_ops(
                            lambda: forward_backward(runner, idx, targets, check.device))
                    results[f"{parts}_{mode}"] = {"loss": loss, "math_loss": math_loss,
                                                  "difference": abs(loss - math_loss), "gradients_finite": finite,
                                                  "attention_ops": ops}
                except Exception as e:
                    results[f"{parts}_{mode}"] = {"error": last_lines(f"{type(e).__name__}: {e}", 5)}
    checks = {key: "error" not in r and r["difference"] < 1e-2 and r["gradients_finite"]
              and any("flash" in op for op in r["attention_ops"]) for key, r in results.items()}
    return {**results, "checks": checks,
            "summary": ", ".join(f"{key} {'ok' if passed else 'FAILED'}" for key, passed in checks.items())}


def bf16_vs_fp32(check):
    """The training loss (gradients enabled: on a GPU, the chunked loss) in both precisions."""
    model = run_model(gpt2_settings().model_config(GPT2_VOCAB), check.device)
    idx, targets = random_batch(check.device, 8, 1024, GPT2_TOKENS)
    with tf32(False):  # float32 itself, not TF32's 10-bit mantissa
        float32 = model(idx, targets)[1].item()
        with autocast_context(check.device, "bfloat16"):
            bfloat16 = model(idx, targets)[1].item()
    difference = abs(bfloat16 - float32)
    return {"loss_float32": float32, "loss_bfloat16": bfloat16, "difference": difference,
            "checks": {"within_1e-2": difference < 1e-2},
            "summary": f"float32 {float32:.5f}, bfloat16 {bfloat16:.5f}: {difference:.1e} apart"}


def compiled_vs_eager(check):
    """A training step's forward and backward, eager then compiled, with TF32 on, as train.py runs
    them: Inductor's cache key includes TF32, so the speed stage's train.py finds this compile."""
    torch._dynamo.reset()
    model = run_model(gpt2_settings().model_config(GPT2_VOCAB), check.device)
    idx, targets = random_batch(check.device, SPEED_BATCHES[0], 1024, GPT2_TOKENS)
    with tf32(True):
        eager, _ = forward_backward(model, idx, targets, check.device)
        started = time.perf_counter()
        compiled, _ = forward_backward(torch.compile(model), idx, targets, check.device)
        compile_seconds = time.perf_counter() - started
    difference = abs(compiled - eager)
    return {"loss_eager": eager, "loss_compiled": compiled, "difference": difference,
            "compile_seconds": round(compile_seconds, 1), "checks": {"within_1e-3": difference < 1e-3},
            "summary": f"eager {eager:.5f}, compiled {compiled:.5f}: {difference:.1e} apart; "
                       f"compiling forward and backward took {compile_seconds:.0f} s"}


def host_syncs(check, warmup=3, steps=10):
    """train.py's own step (train.train_step) on configs/shakespeare.py, uncompiled: a sync comes from
    the loop's code, not the model's."""
    config = load_settings(TrainConfig, [str(ROOT / "configs" / "shakespeare.py"), f"--data_dir={check.data_dir()}",
                                         f"--out_dir={check.tmp / 'syncs'}", f"--device={check.device}",
                                         "--dtype=bfloat16", "--compile=False"])
    run = TrainingRun(config)
    try:
        for _ in range(warmup):
            take_step(run)
        with counted_syncs() as places:
            for _ in range(steps):
                take_step(run)
        copies, waits = copies_and_waits(run)
    finally:
        run.close()
    total = sum(places.values())
    pinned, pageable = (sum(n for name, n in copies.items() if f"({kind} -> Device)" in name)
                        for kind in ("Pinned", "Pageable"))
    return {"steps": steps, "syncs": total, "syncs_per_step": total / steps, "by_line": dict(places),
            "one_step_host_to_device": copies, "one_step_host_waits": waits,
            "checks": {"only_the_guards_read_back": all(p.startswith(("gptkit/nonfinite.py", "gptkit/hardware.py"))
                                                        for p in places),
                       "at_most_2_a_step": total <= 2 * steps,
                       "batches_from_pinned_memory": pinned > 0 and pageable == 0},
            "summary": f"{total / steps:.1f} syncs a step ({', '.join(f'{p} x{n}' for p, n in places.items())}); "
                       f"a step's host-to-device copies: {copies}"}


def speed(check):
    """GPT-2 124M as its users train it: train.py as its own process, compiled, bfloat16."""
    data_dir = random_tokens(check.tmp / "data")
    with torch.device("meta"):  # the shape alone, for FLOPs per token
        flops = sum(flops_per_token(GPT(gpt2_settings().model_config(GPT2_VOCAB)))["training"])
    peak, peak_source = peak_flops(check.device, "bfloat16")
    figures, checks, targets = {"peak": peak_source}, {}, {}
    for i, batch in enumerate(SPEED_BATCHES):
        key = f"batch_{batch}"
        if i and check.left() < SECOND_BATCH_NEED + check.reserve:
            figures[key] = {"skipped": f"needs ~{SECOND_BATCH_NEED} s and the later stages {check.reserve} s; "
                                       f"{check.left():.0f} s left"}
            continue
        try:
            figures[key] = timed_training(check, data_dir, batch, flops, peak)
            if figures[key]["mfu"] is not None:
                targets[f"{key}_mfu_at_least_45_percent"] = figures[key]["mfu"] >= 0.45
        except Exception as e:
            figures[key] = {"error": last_lines(str(e), 30)}
        checks[f"{key}_trained"] = "error" not in figures[key]
    return {**figures, "checks": checks, "targets": targets,
            "summary": "; ".join(speed_line(key, r) for key, r in figures.items() if key.startswith("batch_"))}


def speed_line(key, result):
    if "ms_per_iter" not in result:
        return f"{key}: {'skipped' if 'skipped' in result else 'FAILED'}"
    mfu = f"MFU {100 * result['mfu']:.1f}%" if result["mfu"] is not None else "MFU unknown"
    memory = f", peak memory {result['peak_memory_gib']} GiB" if result["peak_memory_gib"] is not None else ""
    return f"{key}: {result['ms_per_iter']:.1f} ms/iter, {result['tokens_per_second']:,} tok/s, {mfu}{memory}"


def timed_training(check, data_dir, batch, flops, peak, warmup=5, timed=30):
    """train.py for warmup + timed steps at this batch size, one log row a step (at which it waits
    for the GPU, so a step's time is the GPU's): the median of the timed steps."""
    out, steps = check.tmp / f"speed-{batch}", warmup + timed
    arguments = [GPT2_CONFIG, f"--data_dir={data_dir}", "--dataset=random",
                 f"--vocab_size={GPT2_VOCAB}", f"--out_dir={out}", f"--batch_size={batch}",
                 "--gradient_accumulation_steps=1", f"--max_iters={steps}", f"--eval_interval={steps}",
                 "--eval_iters=1", "--log_interval=1", "--always_save_checkpoint=False", "--wandb_log=False",
                 "--compile=True", "--dtype=bfloat16", f"--device={check.device}"]
    started = time.perf_counter()
    output = ran([sys.executable, "train.py", *arguments], check)
    wall = time.perf_counter() - started
    seconds = [s for it, s in step_seconds(read_metrics(out / "metrics.jsonl")) if it > warmup]
    shutil.rmtree(out)  # its checkpoint: 1.5 GB
    step = statistics.median(seconds)
    tokens_per_second = batch * 1024 / step
    memory = re.search(r"peak GPU memory ([\d.]+) GiB", output)
    return {"command": "python train.py " + " ".join(map(str, arguments)), "ms_per_iter": round(1000 * step, 2),
            "tokens_per_second": round(tokens_per_second), "mfu": flops * tokens_per_second / peak if peak else None,
            "peak_memory_gib": float(memory.group(1)) if memory else None, "steps_timed": len(seconds),
            "startup_seconds": round(wall - sum(seconds), 1), "wall_seconds": round(wall, 1)}


def muon_and_float16(check, steps=30):
    results = {}
    for name, extra in (("muon", {"optimizer": "muon"}), ("float16", {"dtype": "float16"})):
        out = check.tmp / name
        try:
            train.train(load_settings(TrainConfig, small_run(check, out, max_iters=steps, lr_decay_iters=steps,
                                                             eval_interval=steps, **extra)))
            losses = [r.get("loss") for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
            finite = len(losses) == steps and all(loss is not None and math.isfinite(loss) for loss in losses)
            first, last = (statistics.mean(losses[:5]), statistics.mean(losses[-5:])) if finite else (None, None)
            results[name] = {"finite": finite, "first_5_mean": first, "last_5_mean": last,
                             "falling": finite and last < first - 0.2}
        except Exception as e:
            results[name] = {"error": last_lines(f"{type(e).__name__}: {e}", 10)}
    checks = {f"{name}_finite_and_falling": r.get("falling", False) for name, r in results.items()}
    return {**results, "checks": checks,
            "summary": "; ".join(f"{name}: loss {r['first_5_mean']:.3f} -> {r['last_5_mean']:.3f}" if r.get("finite")
                                 else f"{name}: FAILED" for name, r in results.items())}


def save_resume_sample(check, steps=20):
    whole, resumed = check.tmp / "whole", check.tmp / "resumed"
    schedule = {"max_iters": steps, "lr_decay_iters": steps, "eval_interval": steps // 2}
    for out, changes in ((whole, {}), (resumed, {"max_iters": steps // 2}), (resumed, {"init_from": "resume"})):
        train.train(load_settings(TrainConfig, small_run(check, out, **{**schedule, **changes})))
    difference = largest_difference(whole, resumed)
    samples = {}
    for device in (check.device, "cpu"):
        try:
            config = load_settings(sample.SampleConfig, [f"--out_dir={resumed}", f"--device={device}",
                                                         "--max_new_tokens=100"])
            text = sample.sample(config, out=io.StringIO())[0]
            samples[device] = {"characters": len(text), "start": text[:40]}
        except (Exception, SystemExit) as e:
            samples[device] = {"error": last_lines(f"{type(e).__name__}: {e}", 10)}
    checks = {"resumed_equals_uninterrupted": difference < 1e-3,
              **{f"sampled_on_{device}": s.get("characters") == 100 for device, s in samples.items()}}
    return {"largest_loss_difference": difference, "samples": samples, "checks": checks,
            "summary": f"resumed run within {difference:.1e} of the uninterrupted one; sampled on "
                       + ", ".join(device for device, s in samples.items() if s.get("characters") == 100)}


STAGES = [  # (name, seconds it needs on an H100 from cold caches, function): the docstring's list
    ("preflight", 10, preflight),
    ("flash_attention", 75, flash_attention),
    ("bf16_vs_fp32", 15, bf16_vs_fp32),
    ("compiled_vs_eager", 70, compiled_vs_eager),
    ("host_syncs", 20, host_syncs),
    ("speed", 45, speed),
    ("muon_and_float16", 30, muon_and_float16),
    ("save_resume_sample", 30, save_resume_sample),
]


# ----------------------------------------------------------------------------- several GPUs: the stages

# The stages that ask for equal losses run in float32 (TF32 matmuls on a GPU): in bfloat16, 2
# processes and 1 sum the micro-batches' gradients in another order, and that alone moves the
# losses further apart than the 1e-3 those stages hold them to.

def ddp_compiled(check):
    two, one = check.tmp / "ddp-two", check.tmp / "ddp-one"
    output = torchrun(check, multi_run(check, two, compile=True, dtype="float32"))
    ran([sys.executable, "train.py", *multi_run(check, one, compile=True, dtype="float32")], check)
    return compared(one, two, 1e-3, {"ran_on_2_processes": "2 processes" in output})


def fsdp(check):
    two = check.tmp / "fsdp-two"
    output = torchrun(check, multi_run(check, two, fsdp=True, dtype="bfloat16"))
    return compared(reference_run(check, "bfloat16"), two, 1e-2, {"ran_on_2_processes": "2 processes" in output})


def resume_two_to_one(check):
    out = check.tmp / "two-then-one"
    torchrun(check, multi_run(check, out, max_iters=10, dtype="float32"))
    output = ran([sys.executable, "train.py", *multi_run(check, out, init_from="resume", dtype="float32")], check)
    return compared(reference_run(check, "float32"), out, 1e-3, {"resumed_at_10": "resuming from" in output})


def muon_ranks(check):
    """Each rank steps by Muon on the gradients DDP averaged; the ranks' weights must stay identical."""
    result = check.tmp / "muon-ranks.json"
    torchrun(check, [f"--rank_weights={result}", *multi_run(check, check.tmp / "muon", optimizer="muon",
                                                             max_iters=10)], program="benchmarks/gpu_check.py")
    differences = json.loads(result.read_text())["largest_difference_from_rank_0"]
    return {"largest_difference_from_rank_0": differences,
            "checks": {"ranks_identical": all(d == 0 for d in differences)},
            "summary": f"largest difference from rank 0's weights, by rank: {differences}"}


MULTI_STAGES = [
    ("preflight", 10, preflight),
    ("ddp_compiled", 120, ddp_compiled),
    ("fsdp", 60, fsdp),
    ("resume_two_to_one", 45, resume_two_to_one),
    ("muon_ranks", 30, muon_ranks),
]


def multi_run(check, out_dir, **changes):
    """A small run's settings with 4 micro-steps a step: 2 on each of 2 processes, or 4 on one."""
    return small_run(check, out_dir, batch_size=16, gradient_accumulation_steps=4, **changes)


def torchrun(check, arguments, program="train.py"):
    return ran([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", program,
                *arguments], check)


def reference_run(check, dtype):
    """The one-process run (20 steps, uncompiled) in dtype that the 2-process runs compare with."""
    if dtype not in check.references:
        out = check.tmp / f"one-{dtype}"
        ran([sys.executable, "train.py", *multi_run(check, out, dtype=dtype)], check)
        check.references[dtype] = out
    return check.references[dtype]


def compared(one, other, tolerance, checks):
    difference = largest_difference(one, other)
    return {"largest_loss_difference": difference,
            "checks": {**checks, f"losses_within_{tolerance:g}": difference < tolerance},
            "summary": f"losses within {difference:.1e} of one process's (tolerance {tolerance:g})"}


def rank_weights(path, settings):
    """Run by muon_ranks under torchrun: train with these settings, then write (rank 0) the largest
    difference of each rank's weights from rank 0's."""
    config = load_settings(TrainConfig, settings)
    run = TrainingRun(config)
    try:
        while run.iter_num < config.max_iters:
            take_step(run)
        run.guard.flush()
        weights = torch.cat([p.detach().float().flatten() for p in run.model.parameters()])
        reference = weights.clone()
        torch.distributed.broadcast(reference, src=0)
        differences = run.procs.gather((weights - reference).abs().max().item())
        if run.procs.master:
            with atomic_write(path, "w") as f:
                json.dump({"largest_difference_from_rank_0": differences}, f)
        run.procs.barrier()
    finally:
        run.close()


# ----------------------------------------------------------------------------- what the stages share

def small_run(check, out_dir, **changes):
    """train.py's command-line settings for a small run on tiny Shakespeare (SMALL_RUN, changed)."""
    values = {**SMALL_RUN, "data_dir": check.data_dir(), "out_dir": out_dir, "device": check.device, **changes}
    return [f"--{key}={value}" for key, value in values.items()]


def take_step(run):
    """One step, as train.py's loop takes it."""
    train.train_step(run, get_lr(run.config, run.iter_num))
    run.iter_num += 1


def loss_rows(out_dir):
    """{(iteration, kind): loss} of a run's metrics.jsonl: each step's loss, each evaluation's."""
    rows = read_metrics(Path(out_dir) / "metrics.jsonl")
    return {(r["iter"], kind): r[kind] for r in rows for kind in ("loss", "train_loss", "val_loss") if kind in r}


def largest_difference(one, other):
    """The largest difference between two runs' losses, row by row; the runs must log the same rows."""
    a, b = loss_rows(one), loss_rows(other)
    if a.keys() != b.keys() or not a:
        raise RuntimeError(f"{one} and {other} logged different rows: {sorted(a.keys() ^ b.keys())[:6]}")
    if any(value is None for value in (*a.values(), *b.values())):  # a loss that was not finite
        return math.inf
    return max(abs(a[key] - b[key]) for key in a)


def gpt2_settings():
    return load_settings(TrainConfig, [str(ROOT / GPT2_CONFIG), f"--vocab_size={GPT2_VOCAB}"])


def run_model(config, device):
    """A seeded GPT as a training run on the device has it: with the device's fast paths (on a GPU,
    the chunked loss, which a forward with gradients enabled uses)."""
    torch.manual_seed(0)
    return use_fast_paths(GPT(config), device.split(":")[0]).to(device)


def random_batch(device, batch, length, vocab):
    """(inputs, targets) of random tokens, the same every time: views of one block of windows,
    as train.py's to_device gives them (a compile is specialised to its inputs' strides)."""
    generator = torch.Generator(device=device).manual_seed(0)
    windows = torch.randint(0, vocab, (batch, length + 1), device=device, generator=generator)
    return windows[:, :-1], windows[:, 1:]


def random_tokens(data_dir):
    """data_dir/random: a million random tokens of GPT-2's vocabulary size (speed does not depend on
    the text), as characters, so that no GPT-2 tokenizer files are needed (a GPU machine may have no
    internet to fetch them). train.py's --vocab_size pads the model's vocabulary as GPT-2's."""
    folder = data_dir / "random"
    if not (folder / "meta.json").is_file():
        ids = np.random.default_rng(0).integers(0, GPT2_TOKENS, 1_000_000)
        chars = "".join(chr(0x10000 + i) for i in range(GPT2_TOKENS))  # past the BMP: no surrogates among them
        meta = {"codec": "char", "vocab_size": GPT2_TOKENS, "chars": chars}
        write_dataset(folder, ids[:900_000], ids[900_000:], meta)
    return data_dir


def forward_backward(model, idx, targets, device):
    """(loss, whether every gradient is finite) of a forward and backward in bfloat16 autocast."""
    with autocast_context(device, "bfloat16"):
        _, loss = model(idx, targets)
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.stack([g.isfinite().all() for g in gradients]).all())
    model.zero_grad(set_to_none=True)
    return loss.item(), finite


def attention_ops(function):
    """(function(), the attention ops it ran): aten's op names say which attention kernel ran,
    eager or compiled."""
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        result = function()
    return result, sorted({e.name for e in profiler.events() if "scaled_dot_product" in e.name})


@contextmanager
def counted_syncs():
    """A Counter of the synchronising CUDA calls made inside, by the line of this project's code
    that led to each (torch warns of each with set_sync_debug_mode('warn'))."""
    places, show = collections.Counter(), warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            places[project_line(filename, lineno)] += 1
        else:
            show(message, category, filename, lineno, file, line)

    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # each one, not the first from each line
            warnings.showwarning = record  # catch_warnings restores it
            yield places
    finally:
        torch.cuda.set_sync_debug_mode(before)


def project_line(filename, lineno):
    """'path:line' of the innermost frame of this project's code (not torch's) in the stack that
    reached filename:lineno."""
    stack = traceback.extract_stack()
    origin = max((i for i, frame in enumerate(stack) if (frame.filename, frame.lineno) == (filename, lineno)),
                 default=None)
    for frame in reversed(stack[: origin + 1] if origin is not None else []):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(ROOT) and "site-packages" not in path.parts:
            return f"{path.relative_to(ROOT)}:{frame.lineno}"
    return f"{filename}:{lineno}"


def copies_and_waits(run):
    """One step under the profiler: its host-to-device copies (CUPTI names where the memory was
    pinned or pageable) and the host's waits on the GPU."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        take_step(run)
        synchronize(run.device)
    names = collections.Counter(e.name for e in profiler.events())
    copies = {name: n for name, n in names.items() if name.startswith("Memcpy HtoD")}
    waits = {name: n for name, n in names.items() if name in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                              "cudaEventSynchronize")}
    return copies, waits


@contextmanager
def tf32(enabled):
    """TF32 matmuls on or off inside; as they were, after."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def driver_version():
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        return result.stdout.split()[0] if result.returncode == 0 and result.stdout.split() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def nccl_version():
    try:
        return ".".join(map(str, torch.cuda.nccl.version()))
    except Exception:  # a torch built without NCCL
        return None


def compile_caches():
    """Whether Inductor's and Triton's on-disk caches held anything when the check started: the
    compile times depend on it."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    folders = {"inductor": os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir(),
               "triton": os.environ.get("TRITON_CACHE_DIR") or str(Path.home() / ".triton" / "cache")}
    return {kind: {"path": folder, "empty": not (Path(folder).is_dir() and any(Path(folder).iterdir()))}
            for kind, folder in folders.items()}


def last_lines(text, count=30):
    return text.strip().splitlines()[-count:]


def last_text(text, count=30):
    return "\n".join(last_lines(text, count))


def plain(value):
    """value for JSON: a float that is not finite becomes None (JSON has no nan), a path a string."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


# ----------------------------------------------------------------------------- the command

def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--out", help="the JSON report (default: gpu_report.json; with --multi gpu_report_multi.json)")
    parser.add_argument("--budget", type=float, default=480, help="seconds the whole check may take (default 480)")
    parser.add_argument("--multi", action="store_true", help="the checks across 2 or more GPUs, with torchrun")
    parser.add_argument("--rank_weights", metavar="FILE", help="what --multi runs under torchrun: train with the "
                                                               "train.py settings that follow, then write FILE")
    args, settings = parser.parse_known_args(argv)
    if args.rank_weights:
        return rank_weights(Path(args.rank_weights), settings)
    if settings:
        raise UserError(f"unrecognized arguments: {' '.join(settings)} (see {parser.prog} --help)")
    if not args.budget > 0:
        raise UserError(f"--budget must be a number of seconds above 0, got {args.budget}")
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU here (torch.cuda.is_available() is False); run the GPU checks on a machine "
                        "with one")
    if args.multi and torch.cuda.device_count() < 2:
        raise UserError(f"--multi needs 2 or more CUDA GPUs; this machine has {torch.cuda.device_count()}")
    stages = MULTI_STAGES if args.multi else STAGES
    out = args.out or ("gpu_report_multi.json" if args.multi else "gpu_report.json")
    name = torch.cuda.get_device_name()
    print(f"GPU check on {name} ({torch.cuda.device_count()} GPU(s)): {len(stages)} stages within "
          f"{args.budget:.0f} s; report in {out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        report = Report(out, {"command": " ".join(["python benchmarks/gpu_check.py", *argv]), "gpu": name,
                              "date": time.strftime("%Y-%m-%d %H:%M"), "budget_seconds": args.budget})
        run_stages(stages, Check(args.budget, tmp), report)
    statuses = collections.Counter(entry["status"] for entry in report.data["stages"].values())
    print(f"{statuses['ok']} ok, {statuses['failed']} failed, {statuses['skipped']} skipped in "
          f"{report.data['elapsed_seconds']:.0f} s; wrote {out}", flush=True)
    if statuses["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(run_cli(main))
