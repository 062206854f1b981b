"""Every GPU check in one command, with a JSON report: the tests marked gpu, the 10.65M
Shakespeare model for 200 steps, GPT-2 124M beside nanoGPT's own train.py, and sampling speed.

    python benchmarks/gpu_check.py --nanogpt=../nanoGPT                 # report in gpu_report.json
    python benchmarks/gpu_check.py --nanogpt=../nanoGPT --full          # also the whole Shakespeare run
    python benchmarks/gpu_check.py --out=report.json                    # without nanoGPT: no side-by-side

Each part runs as its own process (as a user runs it) and the report keeps what each printed,
with the figures read from it: ms/iter, MFU, peak memory, val loss, tok/s.
"""

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gptkit.files import atomic_write
from gptkit.runlog import read_metrics, step_seconds
from gptkit.settings import ArgumentParser, UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent


def run(command, timeout):
    """(exit status, stdout and stderr together, wall seconds) of a command run from the project."""
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        output, status = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as e:
        output, status = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s", 124
    return status, output, round(time.perf_counter() - started, 1)


def shakespeare(steps, tmp, timeout):
    """configs/shakespeare.py (compiled) for `steps` steps: its speed, MFU, memory and losses."""
    out = Path(tmp) / f"shakespeare-{steps}"
    extra = [f"--max_iters={steps}", f"--eval_interval={steps}", "--log_interval=1"] if steps else ["--log_interval=1"]
    status, output, wall = run([sys.executable, "train.py", "configs/shakespeare.py", "--compile=True",
                                f"--out_dir={out}", *extra], timeout)
    report = {"command": f"python train.py configs/shakespeare.py --compile=True {' '.join(extra)}",
              "status": status, "wall_seconds": wall, "output_tail": output[-3000:]}
    if status == 0:
        rows = read_metrics(out / "metrics.jsonl")
        times = [s for it, s in step_seconds(rows) if it > 10]
        mfu = [r["mfu"] for r in rows if r.get("mfu") and r["iter"] > 10]
        memory = re.search(r"peak GPU memory ([\d.]+) GiB", output)
        report.update(ms_per_iter=round(1000 * statistics.median(times), 2) if times else None,
                      mfu=round(statistics.median(mfu), 4) if mfu else None,
                      peak_memory_gib=float(memory.group(1)) if memory else None,
                      best_val_loss=min(r["val_loss"] for r in rows if r.get("val_loss") is not None))
    return report


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT, for GPT-2 124M side by side")
    parser.add_argument("--out", default="gpu_report.json", help="the JSON report to write")
    parser.add_argument("--full", action="store_true", help="also train configs/shakespeare.py to the end")
    parser.add_argument("--timeout", type=int, default=600, help="seconds each part may take")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU here (torch.cuda.is_available() is False); run the GPU checks on a machine "
                        "with one")
    report = {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M")}

    def save():
        with atomic_write(args.out, "w") as f:
            json.dump(report, f, indent=1)

    status, output, wall = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                               args.timeout)
    report["gpu_tests"] = {"status": status, "wall_seconds": wall, "summary": output.strip().splitlines()[-1:],
                           "output_tail": output[-3000:]}
    print(f"gpu tests: {report['gpu_tests']['summary']}", flush=True)
    save()
    with tempfile.TemporaryDirectory() as tmp:
        report["shakespeare_200_steps"] = shakespeare(200, tmp, args.timeout)
        print(f"shakespeare, 200 steps: {json.dumps({k: v for k, v in report['shakespeare_200_steps'].items() if k != 'output_tail'})}",
              flush=True)
        save()
        if args.full:
            report["shakespeare_full"] = shakespeare(0, tmp, args.timeout)
            save()
    if args.nanogpt:
        status, output, wall = run([sys.executable, "benchmarks/nanogpt_side_by_side.py", f"--nanogpt={args.nanogpt}",
                                    "--device=cuda", "--rounds=1"], args.timeout)
        report["beside_nanogpt"] = {"status": status, "wall_seconds": wall, "output": output[-4000:]}
        print(output[-2000:], flush=True)
        save()
    status, output, wall = run([sys.executable, "benchmarks/sample_speed.py", "--device=cuda"], args.timeout)
    report["sampling"] = {"status": status, "wall_seconds": wall, "output": output[-3000:]}
    print(output[-1500:], flush=True)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
