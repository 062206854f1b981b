"""Train a GPT.

    python train.py configs/shakespeare_cpu.py                 # a CPU: a small model in minutes
    python train.py configs/shakespeare.py                     # a GPU: the 10.65M-parameter model
    python train.py configs/shakespeare.py --batch_size=32 --max_iters=2000

Settings: the defaults below, then each config file in order, then --key=value.
"""

import gc
import importlib
import importlib.util
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import load_checkpoint, optimizer_state_by_name, save_checkpoint
from distributed import Processes, no_sync_unless, shard
from hardware import (autocast_context, enable_tf32, fastest_cpu_dtype, keep_freed_memory, peak_flops,
                      resolve_dtype)
from metrics import Metrics, start_wandb
from hf_gpt2 import PRETRAINED, gpt2_meta, is_pretrained
from model import GPT, GPTConfig
from plot import loss_figure, save_png
from prepare.tokens import dataset_meta, is_prepared, read_split, split_files, tokenizer_name
from progress import duration, log, progress
from settings import UserError, load_settings, reason, run_cli


@dataclass
class TrainConfig:
    # output and evaluation
    out_dir: str = "out"  # checkpoints (ckpt.pt latest, best.pt best by val loss), metrics.jsonl, loss.png
    eval_interval: int = 2000  # estimate train and val loss every this many iterations (and at the end)
    log_interval: int = 1  # print a line every this many iterations
    eval_iters: int = 200  # batches per loss estimate
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # write ckpt.pt at every evaluation, not only when val improves
    # 'scratch'; 'resume' (out_dir/ckpt.pt, whose model shape it keeps); 'auto' (resume if out_dir holds a
    # run, else scratch); or GPT-2's weights to finetune: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or
    # a folder in Hugging Face's GPT-2 format (the weights fix the shape; dropout and a shorter block_size may be set)
    init_from: str = "scratch"
    seed: int = 1337  # fixes the initial weights, the batches and dropout
    # logging to Weights & Biases
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data: data_dir/dataset/{train,val}.bin and meta.json, made by prepare/<dataset>.py
    dataset: str = "openwebtext"
    data_dir: str = "data"
    gradient_accumulation_steps: int = 40  # micro-batches per optimizer step
    batch_size: int = 12  # sequences per micro-batch
    block_size: int = 1024  # context length in tokens
    # model: every field of GPTConfig (model.py), which the model is built from
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 had them; slightly faster without)
    pos_encoding: str = "learned"  # 'learned' or 'sinusoidal'
    activation: str = "gelu"  # 'gelu' (GPT-2's tanh form), 'gelu_exact' or 'relu'
    vocab_size: Optional[int] = None  # None: the data's vocabulary (BPE padded up to a multiple of 64)
    # optimizer
    optimizer: str = "adamw"  # 'adamw', or 'muon': Muon for the matrices inside the blocks, AdamW for the rest
    learning_rate: float = 6e-4  # peak learning rate (Muon's steps are scaled to AdamW's size: one rate serves)
    max_iters: int = 600000  # optimizer steps in the whole run
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 turns clipping off
    # learning-rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000  # ~ max_iters, per Chinchilla
    min_lr: float = 6e-5  # ~ learning_rate / 10, per Chinchilla
    # system
    backend: str = "auto"  # under torchrun: auto (nccl between GPUs, gloo between CPU processes), nccl, gloo
    device: str = "auto"  # auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto, float32, bfloat16, float16 (float16 uses a GradScaler)
    compile: bool = False  # torch.compile the model (faster steps after a slow first one)
    fsdp: bool = False  # under torchrun: shard weights, gradients and AdamW state across processes (FSDP)
    nonfinite_loss: str = "stop"  # on a nan/inf loss: 'stop' (keeping the last checkpoint) or 'skip' the step

    def __post_init__(self):
        for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval",
                     "log_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_iters < 0:
            raise ValueError(f"max_iters must be >= 0, got {self.max_iters}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss must be 'stop' or 'skip', got {self.nonfinite_loss!r}")
        if self.init_from not in ("scratch", "resume", "auto") and not is_pretrained(self.init_from):
            raise ValueError(f"init_from must be 'scratch', 'resume', 'auto', a GPT-2 model ({', '.join(PRETRAINED)}) "
                             f"or a folder holding one in Hugging Face's format, got {self.init_from!r}")
        if not self.out_dir:
            raise ValueError("out_dir must name a folder")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters"):
            if not getattr(self, name) >= 0:  # `not >=` also catches nan
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}"
                                 + (" (0 turns clipping off)" if name == "grad_clip" else ""))
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1 (or None for the data's), got {self.vocab_size}")
        self.model_config(vocab_size=1)  # raises on a bad model shape, with the other setting checks
        if self.decay_lr and self.lr_decay_iters <= self.warmup_iters:
            raise ValueError(f"lr_decay_iters ({self.lr_decay_iters}) must be greater than "
                             f"warmup_iters ({self.warmup_iters})")

    def model_config(self, vocab_size):
        """The GPTConfig these settings describe: each of its fields is a setting here."""
        return GPTConfig(**{**{name: getattr(self, name) for name in MODEL_SETTINGS}, "vocab_size": vocab_size})


MODEL_SETTINGS = [f.name for f in fields(GPTConfig)]
SHAPE_SETTINGS = [name for name in MODEL_SETTINGS if name != "dropout"]  # fixed by a checkpoint's weights


def given_settings(config):
    """The settings a user gave in a config file or on the command line (load_settings records
    them); for a TrainConfig made in code, those that differ from the defaults."""
    if hasattr(config, "explicit"):
        return config.explicit
    defaults = TrainConfig()
    return {f.name for f in fields(config) if getattr(config, f.name) != getattr(defaults, f.name)}


def settings_for_model(config, saved, source, crop=False):
    """config with the model shape `saved` (a checkpoint's model_config, or pretrained weights'):
    as nanoGPT resumes, the config file may leave the shape out, and a shape setting the user
    gave that differs is a mistake. crop: a shorter block_size than the model's may be set."""
    given = given_settings(config)
    fixed = [k for k in SHAPE_SETTINGS if not (crop and k == "block_size" and config.block_size <= saved[k])]
    differ = [f"{k}={saved.get(k)!r} (settings: {getattr(config, k)!r})" for k in fixed
              if k in given and saved.get(k) != getattr(config, k)]
    if differ:
        raise UserError(f"{source} holds a different model: {', '.join(differ)}; leave the model settings "
                        f"out to take its own" + ("" if crop else ", or start a new out_dir"))
    keep = {"block_size"} & given if crop else set()
    try:
        return with_settings(config, **{k: saved[k] for k in SHAPE_SETTINGS if k not in keep})
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source} is not a checkpoint of this project (model_config: {e}); "
                        f"use one written by train.py") from None


def with_settings(config, **changes):
    """config with some settings changed; which ones the user gave stays as it was."""
    changed = replace(config, **changes)
    changed.explicit = given_settings(config)
    return changed


class BatchSampler:
    """Random contiguous windows of the token files: x is block_size tokens, y the same shifted
    by one. The only source of batches: which ones a run sees depends only on the seed and on
    how many it has drawn, which state_dict() captures for an exact resume. A split may be
    several files (shards): a window lies within one, each start equally likely."""

    def __init__(self, data_dir, meta, block_size, batch_size, seed):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.data = {split: read_split(data_dir, split, meta) for split in ("train", "val")}
        self.starts = {}  # per split, the cumulative count of window starts over its files
        for split, files in self.data.items():
            self.starts[split] = np.cumsum([max(len(tokens) - block_size, 0) for tokens in files])
            if self.starts[split][-1] == 0:
                paths = split_files(data_dir)[split]
                where = paths[0] if len(paths) == 1 else f"each {split} shard in {data_dir}"
                raise UserError(f"{where} has {max(map(len, files)):,} tokens, but block_size={block_size} "
                                f"needs more than that; use more text or a smaller block_size")
        self.rng = np.random.default_rng(seed)
        self.eval_cache = {}

    def batch(self, split, rng=None, count=None, part=slice(None)):
        """(x, y), each (batch_size, block_size) int64 on the CPU. count: draw that many windows
        instead (an optimizer step's, across every process) and build only those in `part`."""
        starts, span = self.starts[split], np.arange(self.block_size + 1)
        offsets = (rng or self.rng).integers(0, starts[-1], size=count or self.batch_size)[part]
        if len(starts) == 1:  # one file: every window in one gather
            windows = self.data[split][0][offsets[:, None] + span]
        else:
            files = np.searchsorted(starts, offsets, side="right")
            offsets -= np.concatenate(([0], starts[:-1]))[files]
            windows = np.stack([self.data[split][f][o + span] for f, o in zip(files, offsets)])
        windows = torch.from_numpy(windows.astype(np.int32))  # made int64 on the device (half the transfer)
        return windows[:, :-1], windows[:, 1:]

    def eval_batches(self, split, count):
        """The same `count` batches at every evaluation, so val losses compare like with like
        (built once)."""
        if (split, count) not in self.eval_cache:
            rng = np.random.default_rng([self.seed, 1])
            self.eval_cache[split, count] = [self.batch(split, rng) for _ in range(count)]
        return self.eval_cache[split, count]

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def ensure_data(config):
    """The data folder, prepared by prepare/<dataset>.py first if it holds no data. Data that
    nanoGPT or llm.c prepared is used as it is, never prepared over."""
    data_dir = Path(config.data_dir) / config.dataset
    if is_prepared(data_dir):
        return data_dir
    script = config.dataset.isidentifier() and importlib.util.find_spec(f"prepare.{config.dataset}")
    module = script and importlib.import_module(f"prepare.{config.dataset}")
    if hasattr(module, "corpus_main"):  # a large download: the user starts it, train.py does not
        raise UserError(f"no prepared data in {data_dir}; make it first with python prepare/{config.dataset}.py "
                        f"(see its --help for the disk and time it takes)")
    if not callable(getattr(module, "prepare", None)):  # prepare/tokens.py and the like make no data set
        raise UserError(f"no prepared data in {data_dir} (train.bin, val.bin, meta.json) and no "
                        f"data-set script prepare/{config.dataset}.py to make it; for your own text run "
                        f"python prepare/text.py --input YOUR.txt --out_dir {data_dir}")
    print(f"{data_dir} has no prepared data: running prepare/{config.dataset}.py")
    module.prepare(data_dir)
    return data_dir


def model_vocab_size(meta, setting=None):
    """The model's vocabulary: the setting (a resumed run's is its checkpoint's), else the data's."""
    data_vocab = meta["vocab_size"]
    if setting is not None:
        vocab_size = setting
    else:  # BPE padded to a multiple of 64 runs faster; the extra rows go unused
        vocab_size = data_vocab if meta["codec"] == "char" else -(-data_vocab // 64) * 64
    if vocab_size < data_vocab:
        raise UserError(f"vocab_size={vocab_size} is smaller than the data's vocabulary "
                        f"({data_vocab}); raise it or leave it unset")
    return vocab_size


def get_lr(config, it):
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not config.decay_lr:
        return config.learning_rate
    if it < config.warmup_iters:
        return config.learning_rate * (it + 1) / (config.warmup_iters + 1)
    if it > config.lr_decay_iters:
        return config.min_lr
    progress = (it - config.warmup_iters) / (config.lr_decay_iters - config.warmup_iters)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def rng_states():
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain ints load without pickle
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(),
            "numpy": numpy_state, "python": random.getstate()}


def set_rng_states(states):
    torch.set_rng_state(states["torch"].cpu())  # a checkpoint loaded onto a GPU holds them there
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    numpy_state = states["numpy"]
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    random.setstate(states["python"])


class Trainer:
    """One training run. __init__ builds it from the settings (and, to resume, from
    out_dir/ckpt.pt); train() runs the loop: evaluate when due, stop when asked or done,
    else take one optimizer step. Every other method is one part of that loop."""

    def __init__(self, config):
        self.out_dir = Path(config.out_dir)
        self.procs = Processes(config.backend, config.device)  # one, or torchrun's many
        if config.gradient_accumulation_steps % self.procs.world_size:
            raise UserError(f"gradient_accumulation_steps={config.gradient_accumulation_steps} is the total across "
                            f"processes, as in nanoGPT, so it must be a multiple of their number "
                            f"({self.procs.world_size}); e.g. --gradient_accumulation_steps="
                            f"{-(-config.gradient_accumulation_steps // self.procs.world_size) * self.procs.world_size}")
        self.device = self.procs.device
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.device_type = self.device.split(":")[0]
        if config.init_from == "auto":  # what torchrun --max-restarts needs: carry on if there is a run
            config = with_settings(config, init_from="resume" if (self.out_dir / "ckpt.pt").is_file() else "scratch")
        saved = self.read_checkpoint(config) if config.init_from == "resume" else None
        pretrained = None
        if saved:
            config = settings_for_model(config, saved["model_config"], self.out_dir / "ckpt.pt")
        elif config.init_from != "scratch":
            pretrained = GPT.from_pretrained(config.init_from, config.dropout)
            config = settings_for_model(config, asdict(pretrained.config), f"init_from={config.init_from}", crop=True)
            pretrained.crop_block_size(config.block_size)
        self.config = config
        seed_everything(config.seed)

        data_dir = ensure_data(config)
        self.meta = dataset_meta(data_dir)
        if pretrained and self.meta != gpt2_meta(pretrained, config.init_from):
            raise UserError(f"init_from={config.init_from} reads GPT-2's BPE tokens, but {data_dir} holds "
                            f"{tokenizer_name(self.meta)} tokens; prepare the data with prepare/shakespeare.py "
                            f"or prepare/text.py --tokenizer gpt2")
        self.sampler = BatchSampler(data_dir, self.meta, config.block_size, config.batch_size, config.seed)
        self.model = (pretrained or GPT(config.model_config(model_vocab_size(self.meta, config.vocab_size)))).to(self.device)
        if saved:
            self.model.load_state_dict(saved["model"])
        self.sharded = config.fsdp and self.procs.world_size > 1
        if self.sharded and config.optimizer == "muon":
            raise UserError("optimizer='muon' needs each matrix whole, and fsdp=True shards them across processes; "
                            "set fsdp=False (every process then holds the whole model) or optimizer='adamw'")
        if self.sharded:
            shard(self.model)
        self.optimizer = self.model.configure_optimizers(
            config.weight_decay, config.learning_rate, (config.beta1, config.beta2), self.device_type, config.optimizer)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == "float16")
        self.iter_num, self.best_val_loss, self.last_eval_iter = 0, float("inf"), -1
        self.unchecked = None  # the last step's (iteration, loss, norm), not yet read back from the device
        self.tokens_per_step = config.gradient_accumulation_steps * config.batch_size * config.block_size
        self.micro_steps = config.gradient_accumulation_steps // self.procs.world_size  # on each process
        self.clock = Clock()
        if saved:
            self.load_state(saved)
        elif (self.out_dir / "ckpt.pt").exists() and not config.eval_only:
            raise UserError(f"{self.out_dir} already holds a run (ckpt.pt); continue it with --init_from=resume, "
                            f"or choose another out_dir (or delete that one) to start afresh")
        self.step_model = self.model
        if self.procs.world_size > 1 and not self.sharded:
            self.step_model = DDP(self.model, device_ids=[self.procs.local_rank] if self.device_type == "cuda" else None)
        if config.compile:
            if self.device_type == "cpu":
                # Compiled CPU kernels otherwise add in an order that differs from run to run (two
                # runs of the CPU recipe: val 2.3856 and 2.3852 after 300 steps). In this mode
                # inductor uses torch's own kernels instead, for index_put (as in the embedding's
                # gradient) among others, and a compiled run repeats exactly, no slower (measured).
                torch.use_deterministic_algorithms(True)
            self.step_model = torch.compile(self.step_model)
        if config.dtype == "auto" and self.dtype == "bfloat16" and self.device_type == "cpu" and \
                self.procs.world_size == 1:
            if config.compile:  # measured on the 0.8M model: 30 ms/iter against 41 in float32, both compiled
                print("dtype auto: bfloat16 (compiled, its casts are fused: faster than float32 at any size)")
            else:
                self.dtype = self.choose_cpu_dtype()
        if self.device_type == "cuda":
            enable_tf32()
        if self.device_type == "cpu":
            keep_freed_memory()
        self.autocast = autocast_context(self.device, self.dtype)
        self.peak, self.peak_source = peak_flops(self.device, self.dtype)  # for MFU
        self.flops_per_token = sum(self.model.flops_per_token()["training"])
        wandb = start_wandb(config) if config.wandb_log and not config.eval_only and self.procs.master else None
        self.metrics = self.open_out_dir(saved["metrics_lines"] if saved else 0, wandb)

    def choose_cpu_dtype(self):
        """dtype='auto' on a CPU with bfloat16: whichever of float32 and bfloat16 runs this
        model's forward and backward faster, measured on a slice of a batch (a few seconds at
        most; the run's own batches and random numbers are untouched)."""
        x, y = self.sampler.batch("val", rng=np.random.default_rng(0))
        dtype, seconds = fastest_cpu_dtype(self.model, x[:8].long(), y[:8].long())
        print(f"dtype auto: {dtype} (forward and backward of 8 sequences: "
              + ", ".join(f"{d} {1000 * t:.1f} ms" for d, t in seconds.items()) + ", measured here)")
        return dtype

    def read_checkpoint(self, config):
        path = self.out_dir / "ckpt.pt"
        if not path.is_file():
            raise UserError(f"init_from=resume but there is no checkpoint at {path}; "
                            f"start with --init_from=scratch or set out_dir to the run to resume")
        return load_checkpoint(path, self.device)

    def load_state(self, state):
        """Continue the run a checkpoint was saved from, exactly."""
        path = self.out_dir / "ckpt.pt"
        if state["meta"] != self.meta:
            raise UserError(f"{path} was trained on other data (another vocabulary) than {self.config.dataset}; "
                            f"resume with the data it was trained on, or start a new out_dir")
        optimizer = state.get("train_config", {}).get("optimizer", "adamw")  # nanoGPT's: AdamW
        if optimizer != self.config.optimizer:
            raise UserError(f"{path} was trained with optimizer={optimizer}, whose state does not carry over to "
                            f"{self.config.optimizer}; resume with --optimizer={optimizer}, or start a new out_dir")
        self.iter_num, self.best_val_loss = state["iter_num"], state["best_val_loss"]
        self.last_eval_iter = state["last_eval_iter"]
        self.load_optimizer_state(state["optimizer"])
        if "sampler" not in state:  # nanoGPT's: weights, optimizer and iteration carry on, not its batches
            print(f"resuming nanoGPT's {path} at iteration {self.iter_num}; the batches from here are drawn afresh")
            return
        if self.scaler.is_enabled() and state["scaler"]:  # float16 only; a float32 run saved none
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_states(state["rng"])
        self.clock = Clock(state.get("elapsed", 0.0))
        print(f"resuming from {path} at iteration {self.iter_num}")

    def load_optimizer_state(self, saved):
        """The optimizer's state from a checkpoint: a plain run's (parameters by position in the
        optimizer) or a sharded run's (by name), into this run's optimizer, sharded or not."""
        by_name = any(isinstance(key, str) for key in saved["state"])
        if not by_name and not self.sharded:
            return self.optimizer.load_state_dict(saved)
        if not by_name:
            name_of = {id(p): name for name, p in self.model.named_parameters()}
            saved = optimizer_state_by_name(saved, [name_of[id(p)] for g in self.optimizer.param_groups
                                                    for p in g["params"]])
        try:
            set_optimizer_state_dict(self.model, self.optimizer, saved, options=StateDictOptions(full_state_dict=True))
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"the optimizer state in {self.out_dir / 'ckpt.pt'} does not fit this model "
                            f"({reason(e)}); start from its weights with a new out_dir instead") from None

    def open_out_dir(self, metrics_lines, wandb):
        """Only now, with every setting checked, touch what is on disk (eval_only writes nothing)."""
        if self.config.eval_only or not self.procs.master:
            return Metrics(None, metrics_lines, wandb)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create out_dir {self.out_dir}: {e.strerror}; choose another out_dir") from None
        if not os.access(self.out_dir, os.W_OK):
            raise UserError(f"cannot write to out_dir {self.out_dir}; choose another out_dir")
        for name in ("ckpt.pt", "best.pt", "metrics.jsonl", "loss.png"):  # temp files left by a save killed part-way
            for unfinished in self.out_dir.glob(f".{name}.*tmp"):
                unfinished.unlink()
        return Metrics(self.out_dir / "metrics.jsonl", metrics_lines, wandb)

    def state_dict(self):
        """Everything the rest of a run depends on: the one definition of a checkpoint's contents."""
        model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        if self.sharded:  # whole tensors, gathered on rank 0 (the others get nothing)
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model = get_model_state_dict(self.model, options=options)
            model.setdefault("lm_head.weight", model.get("transformer.wte.weight"))  # tied: stored once
            optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        return {
            "model": model,
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_states(),
            "model_config": asdict(self.model.config),
            "train_config": asdict(self.config),
            "meta": self.meta,
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "last_eval_iter": self.last_eval_iter,
            "metrics_lines": self.metrics.lines,  # metrics.jsonl as of this checkpoint, for a resume to continue
            "elapsed": self.clock.elapsed(),  # the run's wall seconds so far, resumes included
        }

    def to_device(self, x, y):
        """int64 token ids on the device; to a GPU from pinned memory, without waiting."""
        if self.device_type == "cuda":
            x, y = (t.pin_memory() if not t.is_pinned() else t for t in (x, y))
        return (t.to(self.device, non_blocking=True).long() for t in (x, y))

    @torch.no_grad()
    def estimate_loss(self):
        self.model.eval()
        losses = {}
        procs = self.procs
        with progress(total=2 * self.config.eval_iters, desc="evaluating", unit="batch") as bar:
            for split in ("train", "val"):
                total = torch.zeros((), device=self.device)  # summed where it is computed: no wait per batch
                batches = self.sampler.eval_batches(split, self.config.eval_iters)
                share = batches[procs.rank :: procs.world_size]  # each process its share
                rounds = -(-len(batches) // procs.world_size) if self.sharded else len(share)
                for i in range(rounds):  # FSDP: every process runs as many forwards (each gathers weights)
                    with self.autocast:
                        _, loss = self.model(*self.to_device(*(share[i] if i < len(share) else batches[0])))
                    if i < len(share):
                        total += loss.float()
                    bar.update(procs.world_size)
                losses[split] = procs.sum(total.item()) / self.config.eval_iters
        self.model.train()
        self.last_eval_iter = self.iter_num
        return losses

    def evaluate(self):
        """Estimate the losses and record them; save ckpt.pt when val improves (or always, by
        setting) and best.pt when it improves. Weights whose loss is not finite are never saved."""
        self.check_unchecked()  # a step that made the weights nan is named as such
        config, it = self.config, self.iter_num
        started = time.perf_counter()
        losses = self.estimate_loss()
        self.metrics.record({"iter": it, "tokens": it * self.tokens_per_step, "train_loss": losses["train"],
                             "val_loss": losses["val"], "elapsed": round(self.clock.elapsed(), 3)})
        report = f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        if not all(map(math.isfinite, losses.values())) and not config.eval_only:
            self.nonfinite(f"the evaluated loss is {losses['train']} (train), {losses['val']} (val)", it,
                           in_step=False)
        improved = losses["val"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, losses["val"])
        if it > 0 and not config.eval_only and (improved or config.always_save_checkpoint):
            self.save(best=improved)
            report += "; saved ckpt.pt and best.pt" if improved else "; saved ckpt.pt"
        if not config.eval_only and self.procs.master:
            self.draw_loss_plot()
        log(report)
        self.clock.evaluated(time.perf_counter() - started)

    def draw_loss_plot(self):
        """out_dir/loss.png from metrics.jsonl's rows; a failure to draw never stops training."""
        try:
            save_png(loss_figure(self.metrics.rows, title=str(self.out_dir)), self.out_dir / "loss.png")
        except OSError as e:
            log(f"could not write {self.out_dir / 'loss.png'}: {e.strerror}")

    def step(self):
        """One optimizer step over gradient_accumulation_steps micro-batches. Returns the mean
        loss and the gradient norm, as tensors still on the device, and the learning rate.
        Whether they are finite is read back later (check_step), so that a GPU is not left
        waiting for the host every step: with nonfinite_loss='stop' a bad step stops the run
        without saving, so its check can wait. With 'skip', or float16's loss scaling (which
        reads the gradients back anyway), the step is checked before the optimizer takes it: a
        step whose loss or gradient is not finite leaves the weights as they were."""
        lr = get_lr(self.config, self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # The step's windows are drawn at once, the same on every process; each builds its own
        # share, so what a run sees depends on its seed and tokens per step, not on how many
        # processes share them or how the micro-batches split them.
        B, steps, procs = self.config.batch_size, self.micro_steps, self.procs
        x_all, y_all = self.sampler.batch("train", count=B * self.config.gradient_accumulation_steps,
                                          part=slice(procs.rank * steps * B, (procs.rank + 1) * steps * B))
        if self.device_type == "cuda":  # pinned once for the whole step; its slices stay pinned
            x_all, y_all = x_all.pin_memory(), y_all.pin_memory()
        total = torch.zeros((), device=self.device)
        for micro in range(steps):
            x, y = self.to_device(x_all[micro * B : (micro + 1) * B], y_all[micro * B : (micro + 1) * B])
            with no_sync_unless(self.step_model, sync=micro == steps - 1):
                with self.autocast:
                    _, loss = self.step_model(x, y)
                self.scaler.scale(loss / steps).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        elif hasattr(torch.nn.utils, "get_total_norm"):  # the norm alone, for the log and the check
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        else:  # torch < 2.6
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a sharded norm
        taken = (self.iter_num, total / steps, norm)
        checked_first = self.config.nonfinite_loss == "skip" or self.scaler.is_enabled()
        problem = self.check(taken) if checked_first else None
        if problem is None:
            self.scaler.step(self.optimizer)
        self.scaler.update()  # float16: also after a skipped step, which unscale_ counted (it lowers the scale)
        self.optimizer.zero_grad(set_to_none=True)
        if not checked_first:  # checked once the next step is queued: the device has work meanwhile
            previous, self.unchecked = self.unchecked, taken
            if previous is not None:
                self.check(previous)
        return lr

    def check(self, taken):
        """Read a step's (iteration, loss, norm) back to the host, the loss as the mean over
        processes, into self.last_loss and self.last_norm (for the log). A loss or gradient that
        is not finite goes to nonfinite(); returns what was wrong, or None."""
        it, loss, norm = taken
        procs = self.procs
        self.last_loss = loss = procs.sum(float(loss)) / procs.world_size
        self.last_norm = norm = float(norm)
        # float16: an inf gradient means the loss scale is too high; the scaler skips that step
        # and lowers the scale, routine and not the run's problem.
        problem = (f"the loss is {loss}" if not math.isfinite(loss) else
                   f"the gradient norm is {norm}" if not math.isfinite(norm) and not self.scaler.is_enabled()
                   else None)
        if problem:
            self.nonfinite(problem, it)
        return problem

    def check_unchecked(self):
        """Check the step still waiting for it, if there is one: before a log line, an
        evaluation, a save, and at the end."""
        if self.unchecked is not None:
            taken, self.unchecked = self.unchecked, None
            self.check(taken)

    def nonfinite(self, what, it, in_step=True):
        """The one policy for nan and inf. A training step's (loss or gradient) stops the run
        without saving (a UserError), unless nonfinite_loss='skip': then the step is skipped.
        A non-finite evaluation always stops it: averaged over many batches, it means the
        weights themselves are broken, which skipping steps cannot mend."""
        if in_step and self.config.nonfinite_loss == "skip":
            log(f"iter {it}: {what}; step skipped (nonfinite_loss='skip')")
            return
        hint = "" if in_step else " (the model's weights no longer give a finite loss)"
        alternative = ", or set nonfinite_loss='skip' to go on past such steps" if in_step else ""
        raise UserError(f"{what} at iteration {it}{hint}; stopped without saving: "
                        + self.how_to_go_on("lower learning_rate") + alternative)

    def save(self, best=False):
        """ckpt.pt (the latest state) and, if best, best.pt; on failure the old files stay whole.
        Under torchrun rank 0 writes: every rank holds the same weights and optimizer state (with
        FSDP every rank first sends rank 0 its shards, so the file is whole and loads anywhere)."""
        self.check_unchecked()  # never save weights a step made nan
        state = self.state_dict() if self.procs.master or self.sharded else None
        if not self.procs.master:
            return
        try:
            save_checkpoint(self.out_dir / "ckpt.pt", state,
                            copies=[self.out_dir / "best.pt"] if best else [])
        except OSError as e:
            raise UserError(f"could not save a checkpoint in {self.out_dir}: {e.strerror}; "
                            + self.how_to_go_on("free space (or choose another out_dir)")) from None

    def how_to_go_on(self, fix):
        """The end of the line that stops a run: fix, then resume if there is a checkpoint to resume."""
        if (self.out_dir / "ckpt.pt").is_file():
            return f"the last checkpoint in {self.out_dir} is untouched: {fix} and resume with --init_from=resume"
        return f"no checkpoint was saved yet: {fix} and start again"

    def train(self):
        try:
            with StopRequest() as stop:
                self.loop(stop)
            self.procs.barrier()  # under torchrun: every process is done before any closes its connections
        except torch._dynamo.exc.BackendCompilerFailed as error:  # e.g. no C++ compiler for a CPU
            raise UserError(f"torch.compile failed here ({reason(error, 200)}); "
                            f"run with --compile=False") from None
        finally:
            self.metrics.close()
            self.step_model = None  # DistributedDataParallel goes before its process group does
            if self.procs.world_size > 1:  # and so do the sharded weights and optimizer state
                self.model = self.optimizer = None
                gc.collect()
            self.procs.close()
        return self

    def loop(self, stop):
        config, metrics = self.config, self.metrics
        print(f"model: {self.model.num_params() / 1e6:.2f}M parameters, {config.n_layer} layers, "
              f"{config.n_head} heads, {config.n_embd} wide, context {config.block_size}")
        processes = f", {self.procs.world_size} processes" if self.procs.world_size > 1 else ""
        print(f"device {self.device}{processes}, dtype {self.dtype}; {self.tokens_per_step:,} tokens per step "
              f"({config.gradient_accumulation_steps} x {config.batch_size} x {config.block_size})")
        print(f"mfu against {self.peak_source}")
        first_iter, step_seconds, steps_since_log = self.iter_num, 0.0, 0
        bar = progress(total=config.max_iters, initial=self.iter_num, desc="training", unit="iter")
        while True:
            it = self.iter_num
            due = it % config.eval_interval == 0 or it == config.max_iters
            if config.eval_only or (due and self.last_eval_iter != it):  # a resumed run has evaluated at `it`
                self.evaluate()
            if config.eval_only or it >= config.max_iters:
                break
            if self.procs.any(stop.signal is not None):  # every process stops at the same step
                self.save()
                log(f"stopped at iteration {it}; saved {self.out_dir / 'ckpt.pt'}. "
                    f"To continue, run the same command with --init_from=resume")
                break
            started = time.perf_counter()
            lr = self.step()
            seconds = time.perf_counter() - started
            self.clock.stepped(seconds)
            step_seconds += seconds
            steps_since_log += 1
            self.iter_num += 1
            bar.update()
            if self.iter_num % config.log_interval == 0 or self.iter_num == config.max_iters:
                self.check_unchecked()
                loss, norm = self.last_loss, self.last_norm
                speed = self.tokens_per_step * steps_since_log / step_seconds
                left = self.clock.left(self.iter_num, config)
                mfu = self.mfu(speed)
                log(f"iter {self.iter_num}/{config.max_iters}: loss {loss:.4f}, lr {lr:.2e}, "
                    f"{1000 * step_seconds / steps_since_log:.1f} ms/iter, {speed:,.0f} tok/s, "
                    + (f"mfu {100 * mfu:.1f}%, " if mfu is not None else "")
                    + f"{duration(self.clock.elapsed())} elapsed, {duration(left)} left")
                metrics.record({"iter": self.iter_num, "tokens": self.iter_num * self.tokens_per_step,
                                "loss": loss, "lr": lr, "grad_norm": norm, "tokens_per_sec": round(speed, 1),
                                "mfu": None if mfu is None else round(mfu, 5),
                                "elapsed": round(self.clock.elapsed(), 3)})
                step_seconds, steps_since_log = 0.0, 0
        bar.close()
        self.check_unchecked()
        self.summary(self.iter_num - first_iter)

    def mfu(self, tokens_per_second):
        """Model FLOPs utilisation: the FLOPs the model needs for these tokens (6N + 12 L T C a
        token) over what the hardware could do in the time (the peak of every process's device)."""
        if not self.peak:
            return None
        return self.flops_per_token * tokens_per_second / (self.peak * self.procs.world_size)

    def summary(self, steps):
        """The closing lines: best val loss, where the checkpoints are, time, tokens and speed."""
        if self.config.eval_only:
            print(f"val loss {self.best_val_loss:.4f} (eval_only: nothing written)")
        elif (self.out_dir / "ckpt.pt").is_file():
            print(f"best val loss {self.best_val_loss:.4f}; checkpoints in {self.out_dir}")
        else:  # iteration 0 is never saved, and with always_save_checkpoint=False only a better val loss is
            print(f"best val loss {self.best_val_loss:.4f}; no checkpoint saved: none is written at iteration 0, "
                  f"and with always_save_checkpoint=False only when val loss improves on its best")
        if steps:
            step_time = self.clock.step_seconds
            print(f"{steps:,} iterations, {steps * self.tokens_per_step:,} tokens in {duration(self.clock.session())} "
                  f"({steps * self.tokens_per_step / step_time:,.0f} tok/s while stepping); the run so far: "
                  f"{self.iter_num * self.tokens_per_step:,} tokens in {duration(self.clock.elapsed())}")


class Clock:
    """The run's wall time (carried across resumes) and the time left, from the measured
    mean step and evaluation times of this session. The session's first step and first
    evaluation are left out of those means once there are others: they include compiling
    (compile=True: tens of seconds on a CPU) and warming caches."""

    def __init__(self, elapsed_before=0.0):
        self.elapsed_before, self.started = elapsed_before, time.perf_counter()
        self.step_seconds, self.steps, self.eval_seconds, self.evals = 0.0, 0, 0.0, 0
        self.first_step = self.first_eval = 0.0

    def session(self):
        return time.perf_counter() - self.started

    def elapsed(self):
        return self.elapsed_before + self.session()

    def stepped(self, seconds):
        self.first_step = seconds if self.steps == 0 else self.first_step
        self.step_seconds, self.steps = self.step_seconds + seconds, self.steps + 1

    def evaluated(self, seconds):
        self.first_eval = seconds if self.evals == 0 else self.first_eval
        self.eval_seconds, self.evals = self.eval_seconds + seconds, self.evals + 1

    def left(self, iter_num, config):
        """Seconds to the end, just after the step to iter_num: the steps left, and the
        evaluations still to come (at each multiple of eval_interval from iter_num on, and at
        max_iters)."""
        evals_left = config.max_iters // config.eval_interval - (iter_num - 1) // config.eval_interval
        evals_left += config.max_iters % config.eval_interval != 0
        step = mean_after_first(self.step_seconds, self.steps, self.first_step)
        evaluation = mean_after_first(self.eval_seconds, self.evals, self.first_eval)
        return (config.max_iters - iter_num) * step + evals_left * evaluation


def mean_after_first(total, count, first):
    """The mean of count durations summing to total, without the first of them when there are others."""
    return (total - first) / (count - 1) if count > 1 else total / max(count, 1)


class StopRequest:
    """The first SIGINT or SIGTERM (Ctrl-C, a cluster's pre-emption) asks the run to stop after
    the current step, with a checkpoint; a second one interrupts at once."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(send it again to stop at once)", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def main(argv=None):
    return run_cli(lambda args: Trainer(load_settings(TrainConfig, args)).train(), argv)


if __name__ == "__main__":
    sys.exit(main())
