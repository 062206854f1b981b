"""This repo's speed beside nanoGPT's, measured in one run on this machine: training steps of
its two Shakespeare models and sampling from the larger one, with the ratios.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --only=sampling --rounds=1

nanoGPT's side is its own model.py (imported from the checkout) run as its train.py and
sample.py run it: a float32 step on a CPU (its train.py uses autocast only on a GPU), with its
get_batch, AdamW from its configure_optimizers and gradient clipping at 1.0; generate() with its
sample.py's temperature 0.8 and top-k 200. This repo's side is train.py's Trainer.step with the
config's settings (dtype auto) and sample.py's TokenSampler with the same temperature and top-k.
Training runs on random tokens and sampling from the same random weights on both sides (speed
depends on neither). Shared machines are noisy: the two sides take turns, --rounds times, and
each figure is the median over its rounds.
"""

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.train_speed import random_data  # noqa: E402
from hardware import measured_cpu_matmul_flops, resolve_device, resolve_dtype  # noqa: E402
from model import GPT  # noqa: E402
from sample import TokenSampler, sampling_context  # noqa: E402
from settings import UserError, load_settings, run_cli  # noqa: E402
from train import Trainer, TrainConfig  # noqa: E402

MODELS = {  # nanoGPT's README: its CPU recipe, and its Shakespeare model for one GPU
    "0.8M (4x128, context 64, batch 12)": "configs/shakespeare_cpu.py",
    "10.65M (6x384, context 256, batch 64, dropout 0.2)": "configs/shakespeare.py",
}
VOCAB_SIZE = 65


def import_nanogpt(folder):
    path = Path(folder) / "model.py"
    if not path.is_file():
        raise UserError(f"{path} not found: --nanogpt must be a checkout of karpathy/nanoGPT "
                        "(git clone https://github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)  # ours is "model"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NanoGPTSteps:
    """nanoGPT's model and optimizer step as its train.py runs them on a CPU (float32)."""

    def __init__(self, nanogpt, config, tokens):
        c = config
        self.tokens = tokens  # a raw uint16 token file, as its prepare scripts write
        torch.manual_seed(c.seed)
        self.model = nanogpt.GPT(nanogpt.GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                                   block_size=c.block_size, bias=c.bias, vocab_size=VOCAB_SIZE,
                                                   dropout=c.dropout))
        self.optimizer = self.model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), "cpu")
        self.config = c

    def batch(self):
        """Its get_batch: the token file opened afresh, each window copied to int64 and stacked."""
        T = self.config.block_size
        data = np.memmap(self.tokens, dtype=np.uint16, mode="r")
        starts = torch.randint(len(data) - T, (self.config.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in starts])
        return x, y

    def step(self):
        c = self.config
        for _ in range(c.gradient_accumulation_steps):
            _, loss = self.model(*self.batch())
            (loss / c.gradient_accumulation_steps).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()


def seconds_per_step(step, count):
    times = []
    for _ in range(count):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare_training(nanogpt, rounds, tmp):
    for name, config_file in MODELS.items():
        data = Path(tmp) / "data"
        if not (data / "shakespeare_char").exists():
            random_data(data / "shakespeare_char", char=True)
        config = load_settings(TrainConfig, [str(ROOT / config_file), f"--out_dir={tmp}/out",  # nanoGPT's
                                             f"--data_dir={data}", "--device=cpu", "--optimizer=adamw"])  # AdamW
        raw = Path(tmp) / "nanogpt_train.bin"
        np.random.default_rng(0).integers(0, VOCAB_SIZE, 1_000_000, dtype=np.uint16).tofile(raw)
        ours, theirs = Trainer(config), NanoGPTSteps(nanogpt, config, raw)
        count = 20 if config.n_embd <= 128 else 2  # steps per turn
        ours.step(), theirs.step()  # warm-up
        times = {"nanoGPT": [], "ours": []}
        for _ in range(rounds):
            times["nanoGPT"].append(seconds_per_step(theirs.step, count))
            times["ours"].append(seconds_per_step(lambda: (ours.step(), ours.check_unchecked()), count))
        tokens = ours.tokens_per_step
        theirs_s, ours_s = statistics.median(times["nanoGPT"]), statistics.median(times["ours"])
        print(f"training {name}: nanoGPT {1000 * theirs_s:,.1f} ms/iter ({tokens / theirs_s:,.0f} tok/s, float32); "
              f"ours {1000 * ours_s:,.1f} ms/iter ({tokens / ours_s:,.0f} tok/s, {ours.dtype}): "
              f"{theirs_s / ours_s:.2f}x", flush=True)
        del ours, theirs


def compare_sampling(nanogpt, rounds, dtype):
    settings = load_settings(TrainConfig, [str(ROOT / "configs/shakespeare.py")])
    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(n_layer=settings.n_layer, n_head=settings.n_head, n_embd=settings.n_embd,
                                           block_size=settings.block_size, bias=settings.bias, vocab_size=VOCAB_SIZE,
                                           dropout=0.0)).eval()
    ours = GPT(replace(settings.model_config(VOCAB_SIZE), activation="gelu_exact", dropout=0.0))  # nanoGPT's GELU
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.endswith(".attn.bias")})
    ours.eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)

    def theirs_sample(n):
        theirs.generate(prompt, n, temperature=0.8, top_k=200)

    precision = sampling_context(ours, prompt, "cpu", dtype, measure=True)  # as sample.py's dtype auto

    def ours_sample(n):
        choose = TokenSampler(0.8, 200, generators=[torch.Generator().manual_seed(0)])
        with precision:
            ours.generate(prompt, n, choose)

    with torch.no_grad():
        theirs_sample(8), ours_sample(8)  # warm-up
        for n in (settings.block_size - 1, 1000):
            times = {"nanoGPT": [], "ours": []}
            for _ in range(rounds):
                times["nanoGPT"].append(seconds_per_step(lambda: theirs_sample(n), 1))
                times["ours"].append(seconds_per_step(lambda: ours_sample(n), 1))
            theirs_s, ours_s = statistics.median(times["nanoGPT"]), statistics.median(times["ours"])
            print(f"sampling {n} tokens from the 10.65M model: nanoGPT {n / theirs_s:,.1f} tok/s (float32); "
                  f"ours {n / ours_s:,.1f} tok/s ({dtype}): {theirs_s / ours_s:.2f}x", flush=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes; figures are medians")
    parser.add_argument("--only", choices=["training", "sampling"], help="measure only this")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    nanogpt = import_nanogpt(args.nanogpt)
    dtype = resolve_dtype("auto", resolve_device("cpu"))
    print(f"CPU, {torch.get_num_threads()} threads; matmul {measured_cpu_matmul_flops('float32') / 1e9:.0f} GFLOP/s "
          f"float32, {measured_cpu_matmul_flops('bfloat16') / 1e9:.0f} bfloat16 (1024 x 1024); "
          f"{args.rounds} round(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "sampling":
            compare_training(nanogpt, args.rounds, tmp)
    if args.only != "training":
        compare_sampling(nanogpt, args.rounds, dtype)


if __name__ == "__main__":
    sys.exit(run_cli(main))
