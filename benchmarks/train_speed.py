"""Training speed of a config on this machine: ms per iteration, tokens/s, MFU, peak memory.

    python benchmarks/train_speed.py configs/shakespeare_cpu.py
    python benchmarks/train_speed.py configs/shakespeare.py --dtype=float32 --iters=5
    python benchmarks/train_speed.py configs/gpt2.py --compile=True        # on a GPU

Runs train.py's own optimizer steps (Trainer.step: batches, forward, backward, clipping,
the optimizer: AdamW, or Muon with --optimizer=muon) after a few warm-up steps, on the config's prepared data if it is there, else on
random tokens of the same vocabulary (speed does not depend on the text). Nothing is saved.
Any train.py setting can follow the config as --key=value.
"""

import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prepare.tokens import GPT2_META, is_prepared, write_dataset  # noqa: E402
from settings import ArgumentParser, UserError, load_settings, run_cli  # noqa: E402
from train import Trainer, TrainConfig  # noqa: E402

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
    with tempfile.TemporaryDirectory() as tmp:
        config = load_settings(TrainConfig, [args.config, *overrides, f"--out_dir={tmp}/out"])
        if not is_prepared(Path(config.data_dir) / config.dataset):
            random_data(Path(tmp) / "data" / config.dataset, char=config.dataset.endswith("char"))
            config = load_settings(TrainConfig, [args.config, *overrides, f"--out_dir={tmp}/out",
                                                 f"--data_dir={tmp}/data"])
            print(f"no prepared {config.dataset} data: random tokens of its vocabulary")
        trainer = Trainer(config)
        cuda = trainer.device_type == "cuda"
        times = []
        for i in range(args.warmup + args.iters):
            started = time.perf_counter()
            trainer.step()
            trainer.check_unchecked()  # its loss read back on the host: the step has finished
            if i >= args.warmup:
                times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
        speed = trainer.tokens_per_step / seconds
        mfu = trainer.mfu(speed)
        memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{args.config}: {trainer.model.num_params() / 1e6:.2f}M parameters, "
              f"{trainer.tokens_per_step:,} tokens per step, device {trainer.device}, dtype {trainer.dtype}, "
              f"compile {config.compile}, {torch.get_num_threads()} threads")
        print(f"{1000 * seconds:.1f} ms/iter (median of {args.iters}), {speed:,.0f} tokens/s, "
              + (f"MFU {100 * mfu:.1f}% " if mfu is not None else "MFU unknown ")
              + f"against {trainer.peak_source}; peak memory {memory:.2f} GiB "
              + ("(GPU, allocated)" if cuda else "(process resident)"))


if __name__ == "__main__":
    sys.exit(run_cli(main))
