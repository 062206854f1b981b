"""Every setting of a training run: its default, what it means, and its check (train.py reads
them: the defaults here, then config files, then --key=value; see docs/settings.md)."""

from dataclasses import dataclass, fields, replace
from typing import Optional

from gptkit.hf import PRETRAINED, is_pretrained
from gptkit.settings import UserError
from model import GPTConfig


@dataclass
class TrainConfig:
    # output and evaluation
    out_dir: str = "out"  # checkpoints (ckpt.pt latest, best.pt best by val loss), metrics.jsonl, loss.png
    eval_interval: int = 2000  # estimate train and val loss every this many iterations (and at the end)
    log_interval: int = 1  # print a line every this many iterations
    eval_iters: int = 200  # batches per loss estimate
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # write ckpt.pt at every evaluation, not only when val improves
    hellaswag_interval: int = 0  # score HellaSwag at every evaluation at a multiple of this (GPT-2's BPE only); 0: off
    hellaswag_file: Optional[str] = None  # None: data_dir/hellaswag/hellaswag_val.jsonl, downloaded the first time
    # 'scratch'; 'resume' (out_dir/ckpt.pt, whose model shape it keeps); 'auto' (resume if out_dir holds a
    # run, else scratch); or weights to finetune: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a Hugging
    # Face folder (GPT-2's, Llama's or Qwen3's layout; the weights fix the shape; dropout and a shorter block_size
    # may be set)
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
    pos_encoding: str = "learned"  # 'learned' (GPT-2), 'sinusoidal' or 'rope' (rotary)
    activation: str = "gelu"  # 'gelu' (GPT-2's tanh form), 'gelu_exact', 'relu', 'relu2' or 'swiglu'
    norm: str = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm'
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    tie_embeddings: bool = True  # the output layer is the token embedding (GPT-2); False: its own matrix
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c); 0: off
    vocab_size: Optional[int] = None  # None: the data's vocabulary (BPE padded up to a multiple of 64)
    # optimizer
    optimizer: str = "adamw"  # 'adamw', or 'muon': Muon for the matrices inside the blocks, AdamW for the rest
    learning_rate: float = 6e-4  # peak learning rate (Muon's steps are scaled to AdamW's size: one rate serves)
    max_iters: int = 600000  # optimizer steps in the whole run
    time_budget: float = 0.0  # > 0: seconds the whole command may take; max_iters is then chosen to fit (unless set)
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
    compile: Optional[bool] = None  # torch.compile the model (faster steps after a slow first one); None: on CUDA only
    fsdp: bool = False  # under torchrun: shard weights, gradients and AdamW state across processes (FSDP)
    nonfinite_loss: str = "stop"  # on a nan/inf loss: 'stop' (keeping the last checkpoint) or 'skip' the step

    def __post_init__(self):
        for name in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval",
                     "log_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hellaswag_interval < 0 or self.hellaswag_interval % self.eval_interval:
            raise ValueError(f"hellaswag_interval must be a multiple of eval_interval ({self.eval_interval}), as "
                             f"HellaSwag is scored at an evaluation, or 0 (off); got {self.hellaswag_interval}")
        if not self.time_budget >= 0:
            raise ValueError(f"time_budget must be >= 0 seconds (0: off), got {self.time_budget}")
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
OPTION_DEFAULTS = {f.name: f.default for f in fields(GPTConfig)
                   if f.name not in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")}


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
    gave that differs is a mistake. crop: a shorter block_size than the model's may be set.
    An option a model_config does not name (nanoGPT's checkpoints name only theirs) is its default."""
    saved = {**OPTION_DEFAULTS, **saved}
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
