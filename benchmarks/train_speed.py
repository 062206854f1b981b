"""Training speed of a config on this machine, as train.py runs it: ms per iteration, tokens/s,
MFU, start-up time and peak memory.

    python benchmarks/train_speed.py configs/shakespeare_cpu.py
    python benchmarks/train_speed.py configs/shakespeare.py --dtype=float32 --iters=5
    python benchmarks/train_speed.py configs/gpt2.py --compile=True        # on a GPU

Runs `python train.py CONFIG` as a separate process for --warmup + --iters steps (one log row a
step) and reads each step's time from its metrics.jsonl: the median of the last --iters steps.
Start-up (imports, data, model, the first evaluation, compiling in the warm-up steps) is
reported apart. The config's data is used if it is prepared (tiny Shakespeare is prepared from
the text that ships); otherwise random tokens of its vocabulary stand in (speed does not depend
on the text). Any train.py setting can follow the config as --key=value.
"""

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gptkit.data import GPT2_META, write_dataset
from gptkit.datasets import RECIPES
from gptkit.runlog import read_metrics, step_seconds
from gptkit.settings import ArgumentParser, UserError, load_settings, run_cli
from gptkit.train_settings import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
CHARS = "".join(chr(32 + i) for i in range(65))  # a stand-in character vocabulary of tiny Shakespeare's size


def random_data(folder, char, tokens=1_000_000):
    meta = {"codec": "char", "vocab_size": len(CHARS), "chars": CHARS} if char else dict(GPT2_META)
    ids = np.random.default_rng(0).integers(0, meta["vocab_size"], tokens)
    write_dataset(folder, ids[: tokens * 9 // 10], ids[tokens * 9 // 10 :], meta)


def main(argv):
    parser = ArgumentParser(__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/shakespeare_cpu.py")
    parser.add_argument("--iters", type=int, default=10, help="steps timed (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first and not timed (compile, caches)")
    args, overrides = parser.parse_known_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise UserError(f"--iters must be at least 1 and --warmup at least 0, got {args.iters} and {args.warmup}")
    config = load_settings(TrainConfig, [args.config, *overrides])  # a mistake is one line here, before any run
    steps = args.warmup + args.iters
    with tempfile.TemporaryDirectory() as tmp:
        data = []
        if not (Path(config.data_dir) / config.dataset).is_dir() and config.dataset not in RECIPES:
            random_data(Path(tmp) / "data" / config.dataset, char=config.dataset.endswith("char"))
            data = [f"--data_dir={tmp}/data"]
            print(f"no prepared {config.dataset} data: random tokens of its vocabulary")
        command = [sys.executable, str(ROOT / "train.py"), args.config, *overrides, *data, f"--out_dir={tmp}/out",
                   f"--max_iters={steps}", f"--eval_interval={steps}", "--eval_iters=1", "--log_interval=1",
                   "--wandb_log=False", "--always_save_checkpoint=False"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode:
            raise UserError(f"train.py failed: {result.stderr.strip().splitlines()[-1] if result.stderr else '?'}")
        rows = read_metrics(Path(tmp) / "out" / "metrics.jsonl")
    times = step_seconds(rows)
    timed = [seconds for it, seconds in times if it > args.warmup]
    seconds = statistics.median(timed)
    tokens_per_step = config.gradient_accumulation_steps * config.batch_size * config.block_size
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None and r["iter"] > args.warmup]
    header = [line for line in result.stdout.splitlines() if line.startswith(("model:", "device", "mfu against",
                                                                              "dtype auto", "peak GPU"))]
    print("\n".join(header))
    memory = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"{args.config}: {1000 * seconds:.1f} ms/iter (median of {len(timed)}), "
          f"{tokens_per_step / seconds:,.0f} tokens/s, "
          + (f"MFU {100 * statistics.median(mfu):.1f}%" if mfu else "MFU unknown")
          + f"; start-up and the {args.warmup} warm-up steps {wall - sum(timed):.1f} s; "
          f"peak memory {memory:.2f} GiB (process resident)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
