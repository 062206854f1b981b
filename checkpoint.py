"""Files that must never be left half-written: atomic writes, and checkpoints saved with
them and loaded safely (tensors and plain values only: no pickled code is ever run)."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from settings import UserError, reason


@contextmanager
def atomic_write(path, mode="wb"):
    """Yield a temporary file beside path; when the block ends without error, flush it to
    disk and rename it over path. A crash at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # the mode a plain open() gives, not mkstemp's 0600
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        Path(tmp).unlink(missing_ok=True)


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
    from prepare.tokens import GPT2_META, dataset_meta

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
