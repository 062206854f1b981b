"""Checkpoints: what a training run's holds, saved atomically, loaded safely (tensors and plain
values only: no pickled code is ever run), and nanoGPT's read in this project's terms."""

import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from gptkit.data import GPT2_META, dataset_meta
from gptkit.files import atomic_write
from gptkit.settings import UserError, reason


def save_checkpoint(path, state, copies=()):
    """Write state to path, then give each path in copies the same bytes (a hard link where the
    file system allows, else a copy); every file is replaced atomically."""
    with atomic_write(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:  # torch reports a failed write (a full disk) as a RuntimeError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
    for copy in copies:
        tmp = Path(copy).with_name(f".{Path(copy).name}.link.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
            os.replace(tmp, copy)
        except OSError:
            tmp.unlink(missing_ok=True)
            with open(path, "rb") as source, atomic_write(copy) as f:
                shutil.copyfileobj(source, f)


CHECKPOINT_KEYS = ("model", "model_config", "train_config", "iter_num", "best_val_loss", "meta")  # what sample.py needs


def find_checkpoint(out_dir, checkpoint=None):
    """The checkpoint a script reads: the file named, else out_dir/best.pt, else out_dir/ckpt.pt."""
    if checkpoint and Path(checkpoint).is_dir():
        raise UserError(f"--checkpoint={checkpoint} is a folder; name a checkpoint file in it, "
                        f"or use --out_dir={checkpoint}")
    if checkpoint:
        return Path(checkpoint)
    out_dir = Path(out_dir)
    return out_dir / "best.pt" if (out_dir / "best.pt").is_file() else out_dir / "ckpt.pt"


def load_checkpoint(path, device="cpu", mmap=False):
    """Read a checkpoint written by train.py, checking that it is one. mmap: map the tensors
    rather than read them (cheap when only the settings are wanted)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one first (python train.py CONFIG) or set out_dir")
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({reason(e, 100).split('. ')[0]}); "
                        f"it may be truncated or corrupt: train again or use another out_dir") from None
    if isinstance(state, dict) and "model_args" in state and "model_config" not in state:
        state = from_nanogpt(state, path)
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a checkpoint of this project (keys missing); use one written by train.py")
    return state


def from_nanogpt(state, path):
    """A checkpoint nanoGPT's train.py wrote (model_args, config; a compiled model's parameter
    names start with _orig_mod.) in this project's terms. nanoGPT keeps no vocabulary in it: as its
    sample.py does, read data/<dataset>/ (meta.pkl), and take GPT-2's BPE when that says nothing."""
    try:
        args, config = state["model_args"], state.get("config") or {}
        model = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
        model = {k: v for k, v in model.items() if not k.endswith(".attn.bias")}  # its causal-mask buffer
        model_config = {k: args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}
        model_config.update(dropout=args.get("dropout", 0.0), pos_encoding="learned", activation="gelu_exact")
        data_dir = Path("data") / config.get("dataset", "openwebtext")
        if data_dir.is_dir() and ((data_dir / "meta.pkl").is_file() or (data_dir / "meta.json").is_file()):
            meta = dataset_meta(data_dir)
        elif args["vocab_size"] >= GPT2_META["vocab_size"]:
            meta = dict(GPT2_META)
        else:
            raise UserError(f"{path} is nanoGPT's checkpoint of a {args['vocab_size']}-token vocabulary, and "
                            f"{data_dir}/meta.pkl, which holds it, is missing; run from the folder with data/")
        # nanoGPT's optimizer holds the matrices, then the vectors, each in its module order
        params = [k for k in model if k != "lm_head.weight"]
        names = [k for k in params if model[k].dim() >= 2] + [k for k in params if model[k].dim() < 2]
        return {"model": model, "model_config": model_config, "train_config": config, "meta": meta,
                "optimizer": optimizer_state_by_name(state["optimizer"], names),
                "iter_num": int(state.get("iter_num", 0)), "best_val_loss": float(state.get("best_val_loss", 1e9)),
                "last_eval_iter": -1, "metrics_lines": 0}  # no batch sampler or random states: nanoGPT saves none
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} looks like nanoGPT's checkpoint but {type(e).__name__}: {str(e)[:80]}; "
                        f"use a checkpoint its train.py wrote") from None


def optimizer_state_by_name(saved, names):
    """An optimizer's state_dict, whose parameters are numbered in the optimizer's order, with
    names instead (names: the parameters' names in that order). In this form it loads into an
    optimizer over the same named parameters in any order, sharded or not
    (torch.distributed.checkpoint's set_optimizer_state_dict)."""
    return {"state": {names[i]: s for i, s in saved["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}


# ----------------------------------------------------------------------------- a training run's checkpoint

def run_state(run, rng_of_ranks):
    """Everything the rest of a training run depends on: the one definition of a checkpoint's
    contents. With FSDP, whole tensors gathered on rank 0 (the others get nothing).
    rng_of_ranks: every process's random states, in rank order."""
    model, optimizer = run.model.state_dict(), run.optimizer.state_dict()
    if run.sharded:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(run.model, options=options)
        model.setdefault("lm_head.weight", model.get("transformer.wte.weight"))  # tied: stored once
        optimizer = get_optimizer_state_dict(run.model, run.optimizer, options=options)
    return {
        "model": model,
        "optimizer": optimizer,
        "scaler": run.scaler.state_dict(),
        "sampler": run.sampler.state_dict(),
        "rng": rng_of_ranks[0],
        "rng_of_ranks": rng_of_ranks,  # each process draws its own dropout
        "precision": {"dtype": run.dtype, "device_type": run.device_type},  # what dtype=auto chose, kept on resume
        "model_config": asdict(run.model.config),
        "train_config": asdict(run.config),
        "meta": run.meta,
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "last_eval_iter": run.last_eval_iter,
        "metrics_lines": run.metrics.lines,  # metrics.jsonl as of this checkpoint, for a resume to continue
        "elapsed": run.clock.elapsed(),  # the run's wall seconds so far, resumes included
    }


def save_run(run, best=False):
    """ckpt.pt (the latest state) and, if best, best.pt; on failure the old files stay whole.
    Under torchrun rank 0 writes: every rank holds the same weights and optimizer state (with
    FSDP every rank first sends rank 0 its shards, so the file is whole and loads anywhere)."""
    run.guard.flush()  # never save weights a step made nan
    rng_of_ranks = run.procs.gather(rng_states())
    state = run_state(run, rng_of_ranks) if run.procs.master or run.sharded else None
    if not run.procs.master:
        return
    try:
        save_checkpoint(run.out_dir / "ckpt.pt", state, copies=[run.out_dir / "best.pt"] if best else [])
    except OSError as e:
        raise UserError(f"could not save a checkpoint in {run.out_dir}: {e.strerror}; "
                        + how_to_go_on(run.out_dir, "free space (or choose another out_dir)")) from None


def restore_run(run, state):
    """Continue the run a checkpoint was saved from, exactly."""
    path = run.out_dir / "ckpt.pt"
    if state["meta"] != run.meta:
        raise UserError(f"{path} was trained on other data (another vocabulary) than {run.config.dataset}; "
                        f"resume with the data it was trained on, or start a new out_dir")
    optimizer = state.get("train_config", {}).get("optimizer", "adamw")  # nanoGPT's: AdamW
    if optimizer != run.config.optimizer:
        raise UserError(f"{path} was trained with optimizer={optimizer}, whose state does not carry over to "
                        f"{run.config.optimizer}; resume with --optimizer={optimizer}, or start a new out_dir")
    run.iter_num, run.best_val_loss = state["iter_num"], state["best_val_loss"]
    run.last_eval_iter = state["last_eval_iter"]
    load_optimizer_state(run, state["optimizer"])
    if "sampler" not in state:  # nanoGPT's: weights, optimizer and iteration carry on, not its batches
        print(f"resuming nanoGPT's {path} at iteration {run.iter_num}; the batches from here are drawn afresh")
        return
    if run.scaler.is_enabled() and state["scaler"]:  # float16 only; a float32 run saved none
        run.scaler.load_state_dict(state["scaler"])
    run.sampler.load_state_dict(state["sampler"])
    saved_ranks = state.get("rng_of_ranks", [state["rng"]])
    if len(saved_ranks) == run.procs.world_size:
        set_rng_states(saved_ranks[run.procs.rank])
    else:  # the batches carry on exactly; dropout's draws cannot, with another number of processes
        print(f"resuming on {run.procs.world_size} process(es) a run saved by {len(saved_ranks)}: each process "
              f"draws fresh random streams (seed + rank) for dropout")
    run.clock.elapsed_before = state.get("elapsed", 0.0)
    print(f"resuming from {path} at iteration {run.iter_num}")


def load_optimizer_state(run, saved):
    """The optimizer's state from a checkpoint: a plain run's (parameters by position in the
    optimizer) or a sharded run's (by name), into this run's optimizer, sharded or not."""
    by_name = any(isinstance(key, str) for key in saved["state"])
    if not by_name and not run.sharded:
        return run.optimizer.load_state_dict(saved)
    if not by_name:
        name_of = {id(p): name for name, p in run.model.named_parameters()}
        saved = optimizer_state_by_name(saved, [name_of[id(p)] for g in run.optimizer.param_groups
                                                for p in g["params"]])
    try:
        set_optimizer_state_dict(run.model, run.optimizer, saved, options=StateDictOptions(full_state_dict=True))
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(f"the optimizer state in {run.out_dir / 'ckpt.pt'} does not fit this model "
                        f"({reason(e)}); start from its weights with a new out_dir instead") from None


def rng_states():
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain ints load without pickle
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all(),
            "numpy": numpy_state, "python": random.getstate()}


def set_rng_states(states):
    torch.set_rng_state(states["torch"].cpu())  # a checkpoint loaded onto a GPU holds them there
    if states["cuda"] and torch.cuda.is_available():
        saved, present = len(states["cuda"]), torch.cuda.device_count()
        for index, state in enumerate(states["cuda"][:present]):
            torch.cuda.set_rng_state(state.cpu(), index)
        if saved > present:  # fewer GPUs visible than when saved (another machine, CUDA_VISIBLE_DEVICES)
            print(f"the checkpoint holds random states for {saved} GPUs and {present} are visible here: "
                  f"restored those of the first {present}")
    numpy_state = states["numpy"]
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    random.setstate(states["python"])


def how_to_go_on(out_dir, fix):
    """The end of the line that stops a run: fix, then resume if there is a checkpoint to resume."""
    if (Path(out_dir) / "ckpt.pt").is_file():
        return f"the last checkpoint in {out_dir} is untouched: {fix} and resume with --init_from=resume"
    return f"no checkpoint was saved yet: {fix} and start again"
