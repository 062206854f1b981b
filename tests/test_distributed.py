"""torchrun on the CPU: 2 processes talking through gloo, checked against one process."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from gptkit.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def settings(char_data, out_dir, **extra):
    values = {"data_dir": char_data, "dataset": "tiny", "out_dir": out_dir, "n_layer": 2, "n_head": 2, "n_embd": 32,
              "block_size": 16, "batch_size": 4, "gradient_accumulation_steps": 2, "max_iters": 10,
              "eval_interval": 5, "eval_iters": 4, "log_interval": 1, "warmup_iters": 2, "lr_decay_iters": 10,
              "learning_rate": 1e-3, "device": "cpu", "dtype": "float32", "dropout": 0.0, **extra}
    return [f"--{k}={v}" for k, v in values.items()]


def torchrun(args, cwd, nproc=2, extra=(), timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
               str(ROOT / "train.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def losses(out_dir):
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r.get("loss"), r.get("val_loss")) for r in rows]


def assert_same_run(a, b):
    for (ia, la, va), (ib, lb, vb) in zip(losses(a), losses(b), strict=True):
        assert ia == ib
        for x, y in ((la, lb), (va, vb)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-5), (ia, x, y)
    wa, wb = load_checkpoint(Path(a) / "ckpt.pt")["model"], load_checkpoint(Path(b) / "ckpt.pt")["model"]
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_with_accumulation(char_data, tmp_path):
    """2 ranks x 1 micro-batch each see the batches 1 process x 2 micro-batches sees: same losses,
    same weights. Only rank 0 writes, and each log line appears once."""
    runs = tmp_path / "runs"
    runs.mkdir()
    result = torchrun(settings(char_data, "two"), runs)
    assert result.returncode == 0, result.stderr
    assert train.main(settings(char_data, runs / "one")) == 0
    assert_same_run(runs / "one", runs / "two")
    assert "2 processes" in result.stdout
    assert result.stdout.count("iter 10/10:") == 1 and result.stdout.count("step 5:") == 1
    assert sorted(p.name for p in (runs / "two").iterdir()) == sorted(p.name for p in (runs / "one").iterdir())
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # nothing else written anywhere


@pytest.mark.slow
def test_resume_under_torchrun_on_two_or_on_one_continues_exactly(char_data, tmp_path):
    assert train.main(settings(char_data, tmp_path / "whole")) == 0
    for name, resume_on in (("two-two", 2), ("two-one", 1)):
        first = torchrun(settings(char_data, tmp_path / name, max_iters=5), tmp_path)
        assert first.returncode == 0, first.stderr
        resume = settings(char_data, tmp_path / name, init_from="resume")
        if resume_on == 2:
            result = torchrun(resume, tmp_path)
            assert result.returncode == 0, result.stderr
        else:
            assert train.main(resume) == 0
        assert_same_run(tmp_path / "whole", tmp_path / name)


@pytest.mark.slow
def test_auto_resumes_after_a_killed_worker(char_data, tmp_path):
    """torchrun --max-restarts restarts the group after a worker dies; with init_from=auto the
    restarted processes carry on from the last checkpoint by themselves."""
    args = settings(char_data, tmp_path / "out", init_from="auto", max_iters=3000, eval_interval=100,
                    eval_iters=1, log_interval=100, lr_decay_iters=3000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
               str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "out" / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and worker_of(p, tmp_path)]
    assert workers and proc.poll() is None, "the run ended before a worker could be killed"
    os.kill(workers[-1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resuming from" in out
    state = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert state["iter_num"] == 3000


def worker_of(proc_dir, tmp_path):
    try:
        cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(ROOT / "train.py").encode() in cmdline and b"torch.distributed.run" not in b" ".join(cmdline) \
        and f"--out_dir={tmp_path / 'out'}".encode() in cmdline


@pytest.mark.parametrize("extra, fragment", [
    ({"gradient_accumulation_steps": 3}, "must be a multiple of their number (2)"),
    ({"device": "cuda:1"}, "each process takes the GPU of its LOCAL_RANK"),
    ({"backend": "nccl"}, "backend=nccl needs GPUs"),
    ({"fsdp": True, "optimizer": "muon"}, "optimizer='muon' needs each matrix whole"),
    ({"fsdp": True, "dtype": "float16"}, "dtype=float16 needs a gradient scaler whose inf check agrees"),
])
@pytest.mark.slow
def test_mistakes_under_torchrun_are_one_line_not_a_hang(char_data, tmp_path, extra, fragment):
    result = torchrun(settings(char_data, tmp_path / "out", **extra), tmp_path, timeout=60)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and all(fragment in line for line in errors), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fsdp_on_two_processes_checkpoints_whole_and_matches_one(char_data, tmp_path):
    """FSDP on 2 CPU ranks: a few steps, a checkpoint gathered whole on rank 0, a resume under
    FSDP, and one on a single process, all equal to a plain run; sample.py reads the checkpoint."""
    import sample

    first = torchrun(settings(char_data, tmp_path / "fsdp", max_iters=5, fsdp=True, eval_iters=3), tmp_path)
    assert first.returncode == 0, first.stderr
    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp-then-one")
    again = torchrun(settings(char_data, tmp_path / "fsdp", init_from="resume", fsdp=True, eval_iters=3), tmp_path)
    assert again.returncode == 0, again.stderr
    assert train.main(settings(char_data, tmp_path / "fsdp-then-one", init_from="resume", eval_iters=3)) == 0
    assert train.main(settings(char_data, tmp_path / "plain3", eval_iters=3)) == 0
    assert_same_run(tmp_path / "plain3", tmp_path / "fsdp")
    assert_same_run(tmp_path / "plain3", tmp_path / "fsdp-then-one")
    texts = sample.sample(sample.SampleConfig(out_dir=str(tmp_path / "fsdp"), max_new_tokens=10, device="cpu"),
                          out=io.StringIO())
    assert len(texts[0]) == 10


DROPOUT_PROBE = '''
import sys
import numpy as np
import torch
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun

run = TrainingRun(load_settings(TrainConfig, sys.argv[1:]))
x, _ = run.sampler.batch("val", rng=np.random.default_rng(0))  # the same batch on every process
run.model.train()
logits, _ = run.model(x.long())
outputs = run.procs.gather(logits.detach())
weights = run.procs.gather(run.model.transformer.wte.weight.detach().clone())
if run.procs.master:
    print("same weights:", torch.equal(weights[0], weights[1]))
    print("same dropout:", torch.equal(outputs[0], outputs[1]))
run.close()
'''


def torchrun_script(code, args, cwd, nproc=2, timeout=120):
    script = Path(cwd) / "probe.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_each_process_draws_its_own_dropout_from_the_same_weights(char_data, tmp_path):
    result = torchrun_script(DROPOUT_PROBE, settings(char_data, tmp_path / "out", dropout=0.2), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "same weights: True" in result.stdout and "same dropout: False" in result.stdout, result.stdout


def weights_equal(a, b):
    wa, wb = load_checkpoint(Path(a) / "ckpt.pt")["model"], load_checkpoint(Path(b) / "ckpt.pt")["model"]
    return sorted(wa) == sorted(wb) and all(torch.equal(wa[name], wb[name]) for name in wa)


@pytest.mark.slow
def test_dropout_under_torchrun_resumes_exactly_and_anew_on_another_count(char_data, tmp_path):
    """A 2-process run with dropout stopped and resumed on 2 processes equals, weight for weight,
    one that never stopped: each process's random streams are in the checkpoint. Resumed on 1
    process it goes on with fresh streams, and says so."""
    whole = torchrun(settings(char_data, tmp_path / "whole", dropout=0.2), tmp_path)
    assert whole.returncode == 0, whole.stderr
    first = torchrun(settings(char_data, tmp_path / "stopped", dropout=0.2, max_iters=5), tmp_path)
    assert first.returncode == 0, first.stderr
    shutil.copytree(tmp_path / "stopped", tmp_path / "on-one")
    again = torchrun(settings(char_data, tmp_path / "stopped", dropout=0.2, init_from="resume"), tmp_path)
    assert again.returncode == 0, again.stderr
    assert losses(tmp_path / "whole") == losses(tmp_path / "stopped")
    assert weights_equal(tmp_path / "whole", tmp_path / "stopped")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"),
                             *settings(char_data, tmp_path / "on-one", dropout=0.2, init_from="resume")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "resuming on 1 process(es) a run saved by 2: each process draws fresh random streams" in result.stdout
    assert load_checkpoint(tmp_path / "on-one" / "ckpt.pt")["iter_num"] == 10


COLLECTIVE_COUNTER = f'''
import json, os, sys
import torch.distributed as dist
sys.path.insert(0, {str(ROOT)!r})  # train.py is a script of the checkout, not installed
import train

calls, marks = [], []
all_reduce = dist.all_reduce
dist.all_reduce = lambda *args, **kwargs: calls.append(1) or all_reduce(*args, **kwargs)
train_step = train.train_step

def counted_step(run, lr):
    marks.append((run.iter_num, len(calls)))  # our collectives before this step began
    return train_step(run, lr)

train.train_step = counted_step
train.main(sys.argv[1:])
if os.environ["RANK"] == "0":
    print("MARKS", json.dumps(marks))
'''


@pytest.mark.slow
def test_a_step_that_neither_logs_nor_evaluates_waits_on_no_other_process(char_data, tmp_path):
    """Our own collectives (the stop agreement, the logged loss's mean, evaluation) come only at
    log lines and evaluations; between them a step exchanges its gradients and nothing else."""
    args = settings(char_data, tmp_path / "out", max_iters=12, log_interval=4, eval_interval=8, lr_decay_iters=12)
    result = torchrun_script(COLLECTIVE_COUNTER, args, tmp_path)
    assert result.returncode == 0, result.stderr
    marks = json.loads(result.stdout.split("MARKS", 1)[1])
    between = {it: later - before for (it, before), (_, later) in zip(marks, marks[1:])}  # step it -> it + 1
    quiet = [it for it in between if (it + 1) % 4 and (it + 1) % 8]
    assert quiet == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert all(between[it] == 0 for it in quiet), between
    assert between[3] > 0  # the log line at 4: the loss's mean over processes, and the stop agreement


@pytest.mark.slow
def test_a_stop_signal_lands_every_process_on_one_step_with_a_checkpoint(char_data, tmp_path):
    """SIGINT reaching one process only stops both after the same step (they agree at the next
    log line): one checkpoint of that step, and the resumed run equals the one that never stopped."""
    args = settings(char_data, tmp_path / "out", max_iters=800, eval_interval=400, eval_iters=1, log_interval=50,
                    lr_decay_iters=800, dropout=0.1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not any(
            row[0] >= 100 for row in (losses(tmp_path / "out") if (tmp_path / "out" / "metrics.jsonl").exists() else [])):
        time.sleep(0.02)
    workers = sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and worker_of(p, tmp_path))
    assert len(workers) == 2 and proc.poll() is None, "the run ended before it could be stopped"
    os.kill(workers[1], signal.SIGINT)  # the other process is told nothing
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("stopped at iteration") == 1, out
    stopped_at = int(out.split("stopped at iteration ")[1].split(";")[0])
    assert load_checkpoint(tmp_path / "out" / "ckpt.pt")["iter_num"] == stopped_at < 800
    resumed = torchrun(settings(char_data, tmp_path / "out", max_iters=800, eval_interval=400, eval_iters=1,
                                log_interval=50, lr_decay_iters=800, dropout=0.1, init_from="resume"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = torchrun(settings(char_data, tmp_path / "whole", max_iters=800, eval_interval=400, eval_iters=1,
                              log_interval=50, lr_decay_iters=800, dropout=0.1), tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert weights_equal(tmp_path / "whole", tmp_path / "out")


FSDP_PROBE = f'''
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
sys.path.insert(0, {str(ROOT)!r})  # train.py is a script of the checkout, not installed
import train
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun

import gptkit.training
built_on = []  # where each GPT's weights were made: on the meta device, no process holds the whole model


class RecordedGPT(gptkit.training.GPT):
    def __init__(self, config):
        super().__init__(config)
        built_on.append(str(self.lm_head.weight.device))


gptkit.training.GPT = RecordedGPT
out = sys.argv[1]
run = TrainingRun(load_settings(TrainConfig, sys.argv[2:]))
initial = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
dtypes = set()  # the weights' dtype as the layers compute with them (gathered)
run.model.transformer.h[0].attn.c_attn.register_forward_pre_hook(lambda m, a: dtypes.add(str(m.weight.dtype)))
reduce_scatters = []
reduce_scatter = dist.reduce_scatter_single
dist.reduce_scatter_single = lambda *a, **k: reduce_scatters.append(1) or reduce_scatter(*a, **k)
local = lambda t: t.to_local() if hasattr(t, "to_local") else t
grad_dtypes, step = set(), run.optimizer.step
run.optimizer.step = lambda *a, **k: grad_dtypes.update(str(local(p.grad).dtype) for p in run.model.parameters()) \
    or step(*a, **k)
for it in range(2):
    train.train_step(run, 1e-3)
held = sum(local(p).numel() * local(p).element_size() for p in run.model.parameters())
held += sum(local(v).numel() * local(v).element_size() for state in run.optimizer.state.values()
            for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
report = {{"held": run.procs.gather(held), "reduce_scatters": run.procs.gather(len(reduce_scatters)),
          "dtypes": sorted(dtypes), "grad_dtypes": sorted(grad_dtypes), "built_on": built_on}}
if run.procs.master:
    torch.save(initial, out + ".pt")
    open(out + ".json", "w").write(json.dumps(report))
run.close()
'''


def single_process_start(args):
    """One process's initial weights, and the bytes of weights and AdamW state it holds after 2 steps."""
    from gptkit.settings import load_settings
    from gptkit.train_settings import TrainConfig
    from gptkit.training import TrainingRun

    run = TrainingRun(load_settings(TrainConfig, args))
    initial = {name: t.clone() for name, t in run.model.state_dict().items()}
    for _ in range(2):
        train.train_step(run, 1e-3)
    held = sum(p.numel() * p.element_size() for p in run.model.parameters())
    held += sum(v.numel() * v.element_size() for state in run.optimizer.state.values() for v in state.values()
                if torch.is_tensor(v) and v.dim() > 0)
    run.close()
    return initial, held


@pytest.mark.slow
@pytest.mark.parametrize("parts", [
    {"dtype": "bfloat16", "gradient_accumulation_steps": 4},
    {"dtype": "float32", "pos_encoding": "rope", "norm": "rmsnorm", "activation": "swiglu", "qk_norm": True,
     "tie_embeddings": False, "bias": False},
], ids=["gpt2-parts-bf16-accumulating", "newer-parts-float32"])
def test_fsdp_ranks_make_only_their_shards_of_one_process_weights(char_data, tmp_path, parts):
    """Built on the meta device and materialised shard by shard, 2 FSDP ranks start from exactly
    the weights one process starts from with the same seed; each holds about half of the weights
    and AdamW state; gradients are reduce-scattered once a step however many micro-steps it has;
    in bfloat16 the layers compute with weights gathered in bfloat16 and gradients stay float32."""
    args = settings(char_data, tmp_path / "out", n_embd=64, **parts)
    result = torchrun_script(FSDP_PROBE, [str(tmp_path / "probe"), *args, "--fsdp=True"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "probe.json").read_text())
    sharded = torch.load(tmp_path / "probe.pt")
    initial, held = single_process_start(settings(char_data, tmp_path / "one", n_embd=64, **parts))
    assert report["built_on"] == ["meta"]
    assert sorted(sharded) == sorted(initial)
    for name in initial:
        assert torch.equal(sharded[name], initial[name]), name
    assert all(bytes_held <= 0.6 * held for bytes_held in report["held"]), (report["held"], held)
    groups = 2 + 1  # one FSDP group a block, and the root's (embeddings, final norm)
    assert report["reduce_scatters"] == [2 * groups] * 2  # 2 steps, however many micro-steps each
    assert report["dtypes"] == (["torch.bfloat16"] if parts["dtype"] == "bfloat16" else ["torch.float32"])
    assert report["grad_dtypes"] == ["torch.float32"]  # reduced in float32, as the optimizer steps in it
