"""Setting up a training run: processes and device, precision, where the weights come from
(scratch, a checkpoint to resume, GPT-2's), the data, the model, its optimizer, and the files
it writes. train.py's loop works with the TrainingRun this builds."""

import gc
import os
import random
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP

from gptkit.budget import budgeted
from gptkit.checkpoint import load_checkpoint, restore_run
from gptkit.cpu import keep_freed_memory, use_cpu_kernels
from gptkit.data import BatchSampler, codec_from_meta, dataset_meta, model_vocab_size, token_bytes, tokenizer_name
from gptkit.datasets import ensure_data
from gptkit.distributed import Processes, materialise, shard
from gptkit.gpu import use_gpu_loss
from gptkit.hardware import (autocast_context, cpu_auto_dtype, enable_tf32, flops_per_token, peak_flops,
                             resolve_compile, resolve_dtype)
from gptkit.hellaswag import HellaSwag, check_vocabulary, hellaswag_file
from gptkit.hf import gpt2_meta, load_gpt2
from gptkit.nonfinite import NonfiniteGuard
from gptkit.optim import configure_optimizer
from gptkit.runlog import Clock, Metrics, start_wandb
from gptkit.settings import UserError
from gptkit.train_settings import settings_for_model, with_settings
from model import GPT


class TrainingRun:
    """Everything one training run works with, built from its settings (and, to resume, from
    out_dir/ckpt.pt): the processes and device, the data and its batches, the model (and the
    wrapped model that takes steps), the optimizer and gradient scaler, the counters a
    checkpoint keeps, the clock, the metrics file and the non-finite policy."""

    def __init__(self, config):
        self.scoped = ExitStack()  # what the run sets process-wide, undone by close()
        try:
            self.set_up(config)
        except BaseException:  # a mistake found while setting up leaves the process as it was
            self.scoped.close()
            raise

    def set_up(self, config):
        self.out_dir = Path(config.out_dir)
        self.procs = Processes(config.backend, config.device)  # one, or torchrun's many
        check_accumulation(config.gradient_accumulation_steps, self.procs.world_size)
        self.device = self.procs.device
        self.device_type = self.device.split(":")[0]
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.compile_chosen = config.compile is None  # said in the run's opening lines
        config = with_settings(config, compile=resolve_compile(config.compile, self.device))
        config, saved, pretrained = self.starting_point(config)
        config, self.budget_open = budgeted(config, saved)
        self.config = config
        self.choose_precision(saved)
        seed_everything(config.seed)

        data_dir = ensure_data(config.data_dir, config.dataset)
        self.meta = dataset_meta(data_dir)
        if pretrained and self.meta != gpt2_meta(pretrained, config.init_from):
            wanted = gpt2_meta(pretrained, config.init_from)
            if tokenizer_name(wanted) == "gpt2":
                reads, fix = "GPT-2's BPE", ("prepare the data with prepare/shakespeare.py or prepare/text.py "
                                             "--tokenizer gpt2")
            else:
                reads, fix = f"its own {tokenizer_name(wanted)}", "train it on the data it was trained on"
            raise UserError(f"init_from={config.init_from} reads {reads} tokens, but {data_dir} holds "
                            f"{tokenizer_name(self.meta)} tokens; {fix}")
        self.sampler = BatchSampler(data_dir, self.meta, config.block_size, config.batch_size, config.seed)
        self.hellaswag = self.hellaswag_share(data_dir) if config.hellaswag_interval else None
        self.token_bytes = self.text_bytes_of_tokens()
        self.sharded = config.fsdp and self.procs.world_size > 1
        if self.sharded and config.optimizer == "muon":
            raise UserError("optimizer='muon' needs each matrix whole, and fsdp=True shards them across processes; "
                            "set fsdp=False (every process then holds the whole model) or optimizer='adamw'")
        if self.sharded and self.dtype == "float16":
            raise UserError("dtype=float16 needs a gradient scaler whose inf check agrees across processes, which "
                            "fsdp=True does not give; use --dtype=bfloat16 (or float32), or fsdp=False")
        model_config = config.model_config(model_vocab_size(self.meta, config.vocab_size))
        self.model = self.sharded_model(model_config, saved, pretrained) if self.sharded else \
            self.whole_model(model_config, saved, pretrained)
        if self.procs.world_size > 1:  # the weights began alike; from here each process draws its own dropout
            seed_everything(config.seed + self.procs.rank)
        self.optimizer = configure_optimizer(self.model, config.weight_decay, config.learning_rate,
                                             (config.beta1, config.beta2), self.device_type, config.optimizer)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == "float16")
        self.iter_num, self.best_val_loss, self.last_eval_iter = 0, float("inf"), -1
        self.tokens_per_step = config.gradient_accumulation_steps * config.batch_size * config.block_size
        self.micro_steps = config.gradient_accumulation_steps // self.procs.world_size  # on each process
        self.clock = Clock()
        self.guard = NonfiniteGuard(config.nonfinite_loss, self.scaler, self.out_dir, self.device_type)
        if saved:
            restore_run(self, saved)
        elif (self.out_dir / "ckpt.pt").exists() and not config.eval_only:
            raise UserError(f"{self.out_dir} already holds a run (ckpt.pt); continue it with --init_from=resume, "
                            f"or choose another out_dir (or delete that one) to start afresh")
        self.step_model = self.wrapped_model()
        # FSDP: every process runs as many HellaSwag forwards, each gathering the weights
        self.hellaswag_forwards = max(self.procs.gather(len(self.hellaswag.batches))) \
            if self.hellaswag and self.sharded else 0
        if self.precision_note:
            print(self.precision_note)
        self.peak, self.peak_source = peak_flops(self.device, self.dtype)  # for MFU
        self.flops_per_token = sum(flops_per_token(self.model)["training"])
        wandb = start_wandb(config) if config.wandb_log and not config.eval_only and self.procs.master else None
        self.metrics = self.open_out_dir(saved["metrics_lines"] if saved else 0, wandb)

    def whole_model(self, model_config, saved, pretrained):
        """The model on this process's device, all of it, with its starting weights."""
        model = (pretrained or GPT(model_config)).to(self.device)
        if saved:
            model.load_state_dict(saved["model"])
        return use_fast_paths(model, self.device_type)

    def sharded_model(self, model_config, saved, pretrained):
        """FSDP: the model built on the meta device, which holds no memory, then sharded, and
        each process makes only its own shards: of the initial weights (the same as one process
        would start from), or of the checkpoint's or GPT-2's, read from the CPU copy."""
        with torch.device("meta"):
            model = use_fast_paths(GPT(model_config), self.device_type)
        shard(model, self.dtype)
        weights = saved["model"] if saved else pretrained.state_dict() if pretrained else None
        if weights is None:
            materialise(model, self.device)
        else:
            model.to_empty(device=self.device)
            set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
            model.make_position_tables()
        return model

    def text_bytes_of_tokens(self):
        """token_bytes of the data's vocabulary on the device, for bits per byte. Training needs no
        tokenizer: where its files are not at hand (GPT-2's BPE offline), every token counts 0
        bytes and bits per byte is not shown."""
        try:
            return token_bytes(self.meta).to(self.device)
        except UserError as e:
            print(f"bits per byte not shown: {e}")
            return torch.zeros(self.meta["vocab_size"], dtype=torch.long, device=self.device)

    def hellaswag_share(self, data_dir):
        """This process's share of HellaSwag's examples, read and rendered now: another vocabulary
        than GPT-2's, or no file and no network, stops the run before it trains. The first process
        on each machine downloads the file, if it must, while the others wait."""
        config, codec = self.config, codec_from_meta(self.meta)
        check_vocabulary(codec, f"hellaswag_interval={config.hellaswag_interval}: {data_dir}",
                         remedy="set hellaswag_interval=0, or train on GPT-2 BPE data (prepare/shakespeare.py, "
                                "prepare/text.py --tokenizer gpt2)")
        if self.procs.local_rank == 0:
            hellaswag_file(config.hellaswag_file, config.data_dir)
        self.procs.barrier()
        path = hellaswag_file(config.hellaswag_file, config.data_dir)  # there now, on every process
        return HellaSwag(path, codec, config.block_size, config.batch_size * config.block_size,
                         rank=self.procs.rank, world_size=self.procs.world_size)

    def starting_point(self, config):
        """(settings, checkpoint or None, pretrained GPT or None): where the weights come from.
        A checkpoint or GPT-2's weights fix the model's shape, which the settings then take."""
        if config.init_from == "auto":  # what torchrun --max-restarts needs: carry on if there is a run
            config = with_settings(config, init_from="resume" if (self.out_dir / "ckpt.pt").is_file() else "scratch")
        if config.init_from == "resume":
            path = self.out_dir / "ckpt.pt"
            if not path.is_file():
                raise UserError(f"init_from=resume but there is no checkpoint at {path}; "
                                f"start with --init_from=scratch or set out_dir to the run to resume")
            saved = load_checkpoint(path, "cpu", mmap=True)  # read as needed; the device takes what it keeps
            return settings_for_model(config, saved["model_config"], path), saved, None
        if config.init_from == "scratch":
            return config, None, None
        pretrained = load_gpt2(config.init_from, config.dropout)
        config = settings_for_model(config, asdict(pretrained.config), f"init_from={config.init_from}", crop=True)
        pretrained.crop_block_size(config.block_size)
        return config, None, pretrained

    def wrapped_model(self):
        """The model that takes training steps: under DistributedDataParallel when there are several
        processes (FSDP has sharded it in place), compiled if asked."""
        step_model = self.model
        if self.procs.world_size > 1 and not self.sharded:
            step_model = DDP(self.model, device_ids=[self.procs.local_rank] if self.device_type == "cuda" else None)
        if self.config.compile:
            if self.device_type == "cpu":
                # Compiled CPU kernels otherwise add in an order that differs from run to run (an
                # index_put in the embedding's gradient, among others); torch's own kernels repeat.
                self.scoped.enter_context(deterministic_algorithms())
            step_model = torch.compile(step_model)
        return step_model

    def choose_precision(self, saved):
        """The run's dtype and autocast, and the device's settings that go with them. A resumed run
        keeps the dtype it was saved with, unless another is set; dtype='auto' on one CPU with
        bfloat16 follows cpu_auto_dtype's rule on the model. What was chosen is said once the run
        is set up (precision_note)."""
        config, self.precision_note = self.config, None
        recorded = (saved or {}).get("precision", {})
        if recorded.get("device_type") == self.device_type:
            if config.dtype == "auto":
                self.dtype = recorded["dtype"]
                self.precision_note = f"dtype auto: {self.dtype}, as the run was saved"
            elif recorded["dtype"] != self.dtype:
                self.precision_note = f"dtype {self.dtype} as set; the run was saved training in {recorded['dtype']}"
        elif config.dtype == "auto" and self.dtype == "bfloat16" and self.device_type == "cpu":
            self.dtype, why = cpu_auto_dtype(config.n_embd, config.compile)
            self.precision_note = f"dtype auto: {self.dtype} ({why})"
        if self.device_type == "cuda":
            enable_tf32()
        if self.device_type == "cpu":
            self.scoped.enter_context(keep_freed_memory())
        self.autocast = autocast_context(self.device, self.dtype)

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

    def to_device(self, windows):
        """(N, T + 1) token windows -> (x, y), each (N, T) int64 on the device, views of one copy.
        To a GPU the windows go as one contiguous block of pinned memory, copied without waiting:
        the host draws the next batch while the GPU computes. (A non-contiguous or pageable
        tensor would be staged through a temporary, and the copy would wait.)"""
        if self.device_type == "cuda":
            windows = windows.contiguous().pin_memory()
        windows = windows.to(self.device, non_blocking=True).long()
        return windows[:, :-1], windows[:, 1:]

    def mfu(self, tokens_per_second):
        """Model FLOPs utilisation: the FLOPs the model needs for these tokens (6N + 12 L T C a
        token) over what the hardware could do in the time (the peak of every process's device)."""
        if not self.peak:
            return None
        return self.flops_per_token * tokens_per_second / (self.peak * self.procs.world_size)

    def close(self):
        """Close the metrics file, then the processes' connections, the wrapped models going first;
        undo what the run set process-wide."""
        self.scoped.close()
        self.metrics.close()
        self.step_model = None  # DistributedDataParallel goes before its process group does
        if self.procs.world_size > 1:  # and so do the sharded weights and optimizer state
            self.model = self.optimizer = None
            gc.collect()
        self.procs.close()


def use_fast_paths(model, device_type):
    """The model with the device's own fast paths swapped in (before any wrapping): the CPU's
    dropout and attention, or the GPU's chunked loss."""
    if device_type == "cpu":
        return use_cpu_kernels(model)
    if device_type == "cuda":
        return use_gpu_loss(model)
    return model


@contextmanager
def deterministic_algorithms():
    """torch.use_deterministic_algorithms(True) within it, as it was after."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def check_accumulation(steps, world_size):
    if steps % world_size:
        raise UserError(f"gradient_accumulation_steps={steps} is the total across processes, as in nanoGPT, so it "
                        f"must be a multiple of their number ({world_size}); e.g. --gradient_accumulation_steps="
                        f"{-(-steps // world_size) * world_size}")


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
