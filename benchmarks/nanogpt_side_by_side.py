"""This repo's speed beside nanoGPT's, measured in one run on this machine: training steps of
two models and sampling from the 10.65M one, with the ratios.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --only=sampling --rounds=1
    python benchmarks/nanogpt_side_by_side.py --nanogpt=../nanoGPT --device=cuda

nanoGPT's side is its own model.py (imported from the checkout) run as its train.py and
sample.py run it: with its get_batch, AdamW from its configure_optimizers and gradient clipping
at 1.0; on a CPU in float32 and not compiled (its README's CPU command), on a GPU compiled, in
bfloat16 autocast, with fused AdamW (its defaults there); generate() with its sample.py's
temperature 0.8 and top-k 200. This repo's side is train.py's Trainer.step with the config's
settings (dtype auto; compiled on a GPU) and sample.py's TokenSampler with the same temperature
and top-k. On a CPU the models are its two Shakespeare models (its CPU recipe, 0.8M, and its
GPU model, 10.65M); on a GPU, GPT-2 124M as its bench.py runs it (12 x 1,024 tokens a step)
and the 10.65M model. Training runs on random tokens and sampling from the same random weights
on both sides (speed depends on neither). Shared machines are noisy: the two sides take turns,
--rounds times, and each figure is the median over its rounds.
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
from hardware import autocast_context, measured_cpu_matmul_flops, peak_flops, resolve_device, resolve_dtype  # noqa: E402
from model import GPT  # noqa: E402
from sample import TokenSampler, sampling_context  # noqa: E402
from settings import UserError, load_settings, run_cli  # noqa: E402
from train import Trainer, TrainConfig  # noqa: E402

CPU_MODELS = {  # nanoGPT's README: its CPU recipe, and its Shakespeare model for one GPU
    "0.8M (4x128, context 64, batch 12)": ("configs/shakespeare_cpu.py", []),
    "10.65M (6x384, context 256, batch 64, dropout 0.2)": ("configs/shakespeare.py", []),
}
GPU_MODELS = {  # nanoGPT's bench.py (one step of 12 sequences), and its Shakespeare model
    "GPT-2 124M (12x768, context 1024, batch 12)": (
        "configs/gpt2.py", ["--gradient_accumulation_steps=1", "--wandb_log=False", "--compile=True"]),
    "10.65M (6x384, context 256, batch 64, dropout 0.2)": ("configs/shakespeare.py", ["--compile=True"]),
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
    """nanoGPT's model and optimizer step as its train.py runs them: on a CPU in float32, not
    compiled; on a GPU in bfloat16 autocast (float16 where bfloat16 is emulated), compiled."""

    def __init__(self, nanogpt, config, tokens, vocab_size, device):
        c = config
        self.tokens, self.device = tokens, device  # tokens: a raw uint16 token file, as its prepare scripts write
        self.cuda = device.startswith("cuda")
        torch.manual_seed(c.seed)
        self.model = nanogpt.GPT(nanogpt.GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                                   block_size=c.block_size, bias=c.bias, vocab_size=vocab_size,
                                                   dropout=c.dropout)).to(device)
        self.optimizer = self.model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2),
                                                         "cuda" if self.cuda else "cpu")
        self.dtype = resolve_dtype("auto", device) if self.cuda else "float32"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == "float16")
        self.step_model = torch.compile(self.model) if self.cuda else self.model
        self.config = c

    def batch(self):
        """Its get_batch: the token file opened afresh, each window copied to int64 and stacked."""
        T = self.config.block_size
        data = np.memmap(self.tokens, dtype=np.uint16, mode="r")
        starts = torch.randint(len(data) - T, (self.config.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in starts])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in starts])
        if self.cuda:
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def step(self):
        c = self.config
        for _ in range(c.gradient_accumulation_steps):
            with autocast_context(self.device, self.dtype):
                _, loss = self.step_model(*self.batch())
            self.scaler.scale(loss / c.gradient_accumulation_steps).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()


def seconds_per_step(step, count, device="cpu"):
    times = []
    for _ in range(count):
        started = time.perf_counter()
        step()
        if device.startswith("cuda"):  # what the host queued has run
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def compare_training(nanogpt, rounds, tmp, device, models):
    for name, (config_file, overrides) in models.items():
        config = load_settings(TrainConfig, [str(ROOT / config_file), *overrides])
        char = config.dataset.endswith("char")
        data = Path(tmp) / "data"
        if not (data / config.dataset).exists():
            random_data(data / config.dataset, char=char)
        config = load_settings(TrainConfig, [str(ROOT / config_file), *overrides, f"--out_dir={tmp}/out",
                                             f"--data_dir={data}", f"--device={device}",
                                             "--optimizer=adamw"])  # nanoGPT's AdamW
        vocab_size = VOCAB_SIZE if char else 50304  # GPT-2's, padded as nanoGPT pads it
        raw = Path(tmp) / "nanogpt_train.bin"
        np.random.default_rng(0).integers(0, vocab_size if char else 50257, 1_000_000, dtype=np.uint16).tofile(raw)
        ours, theirs = Trainer(config), NanoGPTSteps(nanogpt, config, raw, vocab_size, device)
        count = 20 if config.n_embd <= 128 or device != "cpu" else 2  # steps per turn
        for _ in range(3 if device != "cpu" else 1):  # warm-up (a GPU: compiling, then autotuning)
            ours.step(), ours.check_unchecked(), theirs.step()
        times = {"nanoGPT": [], "ours": []}
        for _ in range(rounds):
            times["nanoGPT"].append(seconds_per_step(theirs.step, count, device))
            times["ours"].append(seconds_per_step(lambda: (ours.step(), ours.check_unchecked()), count, device))
        tokens = ours.tokens_per_step
        theirs_s, ours_s = statistics.median(times["nanoGPT"]), statistics.median(times["ours"])
        their_peak, _ = peak_flops(device, theirs.dtype)
        print(f"training {name}: nanoGPT {1000 * theirs_s:,.1f} ms/iter ({tokens / theirs_s:,.0f} tok/s, "
              f"{theirs.dtype}{mfu_text(ours.flops_per_token * tokens / theirs_s, their_peak)}); "
              f"ours {1000 * ours_s:,.1f} ms/iter ({tokens / ours_s:,.0f} tok/s, {ours.dtype}"
              f"{mfu_text(ours.flops_per_token * tokens / ours_s, ours.peak)}): {theirs_s / ours_s:.2f}x", flush=True)
        del ours, theirs


def mfu_text(flops_per_second, peak):
    return f", MFU {100 * flops_per_second / peak:.1f}%" if peak else ""


def compare_sampling(nanogpt, rounds, device, dtype):
    settings = load_settings(TrainConfig, [str(ROOT / "configs/shakespeare.py")])
    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(n_layer=settings.n_layer, n_head=settings.n_head, n_embd=settings.n_embd,
                                           block_size=settings.block_size, bias=settings.bias, vocab_size=VOCAB_SIZE,
                                           dropout=0.0)).eval()
    ours = GPT(replace(settings.model_config(VOCAB_SIZE), activation="gelu_exact", dropout=0.0))  # nanoGPT's GELU
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if not k.endswith(".attn.bias")})
    theirs, ours = theirs.to(device), ours.to(device).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    their_dtype = dtype if device.startswith("cuda") else "float32"  # its sample.py: autocast on a GPU only

    def theirs_sample(n):
        with autocast_context(device, their_dtype):
            theirs.generate(prompt, n, temperature=0.8, top_k=200)

    precision = sampling_context(ours, prompt, device, dtype, measure=True)  # as sample.py's dtype auto

    def ours_sample(n):
        choose = TokenSampler(0.8, 200, generators=[torch.Generator(device=device).manual_seed(0)])
        with precision:
            ours.generate(prompt, n, choose)

    with torch.no_grad():
        theirs_sample(8), ours_sample(8)  # warm-up
        for n in (settings.block_size - 1, 1000):
            times = {"nanoGPT": [], "ours": []}
            for _ in range(rounds):
                times["nanoGPT"].append(seconds_per_step(lambda: theirs_sample(n), 1, device))
                times["ours"].append(seconds_per_step(lambda: ours_sample(n), 1, device))
            theirs_s, ours_s = statistics.median(times["nanoGPT"]), statistics.median(times["ours"])
            print(f"sampling {n} tokens from the 10.65M model: nanoGPT {n / theirs_s:,.1f} tok/s ({their_dtype}); "
                  f"ours {n / ours_s:,.1f} tok/s ({dtype}): {theirs_s / ours_s:.2f}x", flush=True)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--rounds", type=int, default=3, help="turns each side takes; figures are medians")
    parser.add_argument("--only", choices=["training", "sampling"], help="measure only this")
    parser.add_argument("--device", default="cpu", help="cpu (the default), cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {args.rounds}")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    device = resolve_device(args.device)
    nanogpt = import_nanogpt(args.nanogpt)
    dtype = resolve_dtype("auto", device)
    if device == "cpu":
        print(f"CPU, {torch.get_num_threads()} threads; matmul {measured_cpu_matmul_flops('float32') / 1e9:.0f} "
              f"GFLOP/s float32, {measured_cpu_matmul_flops('bfloat16') / 1e9:.0f} bfloat16 (1024 x 1024); "
              f"{args.rounds} round(s)", flush=True)
    else:
        print(f"{torch.cuda.get_device_name(device)}; {args.rounds} round(s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "sampling":
            compare_training(nanogpt, args.rounds, tmp, device, CPU_MODELS if device == "cpu" else GPU_MODELS)
    if args.only != "training":
        compare_sampling(nanogpt, args.rounds, device, dtype)


if __name__ == "__main__":
    sys.exit(run_cli(main))
