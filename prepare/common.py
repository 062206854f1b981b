"""What the data scripts, train.py and sample.py share: the settings loader, the token-file
format and its metadata, the text codecs, device and precision choice, and checkpoint I/O."""

import ast
import difflib
import json
import os
import runpy
import shutil
import sys
import tempfile
import types
import typing
import urllib.request
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A mistake the user can fix: reported as one line, with exit status 2."""


def run_cli(main, argv=None):
    """Run main(argv) (default: the command line) and return exit status 0; a UserError
    becomes one line on stderr and exit status 2. Ctrl-C, and a reader that closed the pipe
    (`python sample.py | head`), end the program quietly, with a shell's usual statuses."""
    try:
        main(sys.argv[1:] if argv is None else argv)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        raise SystemExit(141) from None


# ----------------------------------------------------------------------------- settings

def load_settings(cls, argv):
    """Build the dataclass cls from its defaults, then config files (in order), then the
    command line: `file.py`, `--key=value` or `--key value` (a bare `--flag` sets a bool)."""
    types_ = typing.get_type_hints(cls)
    files, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, has_value, raw = arg[2:].partition("=")
        if not arg.startswith("--"):
            files.append(arg)
        elif has_value:
            overrides.append((key, raw, f"from {arg}"))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and (
                bool not in _allowed(types_.get(key)) or argv[i + 1] in ("True", "False")):
            overrides.append((key, argv[i + 1], f"from {arg} {argv[i + 1]}"))
            i += 1
        elif key in types_ and bool not in _allowed(types_[key]):
            raise UserError(f"--{key} needs a value: --{key}=VALUE")
        else:
            overrides.append((key, "True", f"from {arg}"))
        i += 1
    values = {}
    for path in files:
        for key, value in _run_config_file(path).items():
            values[key] = _check(cls, types_, key, value, path)
    for key, raw, source in overrides:
        values[key] = _check(cls, types_, key, _parse(raw, types_.get(key)), source)
    try:
        return cls(**values)
    except ValueError as e:
        raise UserError(str(e)) from None


def _allowed(annotation):
    """The types a setting takes: (int,) for int, (float, NoneType) for Optional[float]."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)


def _run_config_file(path):
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:  # a fresh namespace per file: nothing leaks between files or into the program
        namespace = runpy.run_path(path)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise UserError(f"{path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType) and not callable(v)}


def _parse(raw, annotation):
    allowed = _allowed(annotation)
    if str in allowed:  # a string setting takes the text as written ('3' stays '3'), or None
        return None if raw == "None" and type(None) in allowed else raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _check(cls, types_, key, value, source):
    """Return value if it suits setting `key` of cls, else raise a UserError naming source
    (a config file's path, or 'from --key=value')."""
    if key not in types_:
        close = difflib.get_close_matches(key, [f.name for f in fields(cls)], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown setting '{key}' ({source}){hint}")
    allowed = _allowed(types_[key])
    if value is None and type(None) in allowed:
        return value
    for kind in allowed:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    names = " or ".join("None" if k is type(None) else k.__name__ for k in allowed)
    raise UserError(f"{key}: expected {names}, got {value!r} ({source})")


# ----------------------------------------------------------------------------- data files

# A token file is a 1024-byte header of int64s (magic, version, token count, bytes per
# token) followed by the tokens as little-endian uint16.
TOKENS_MAGIC, TOKENS_VERSION, HEADER_INTS = 20261123, 1, 128


def write_tokens(path, tokens):
    """Write a 1-D array of token ids (each < 65536) to path, atomically."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("token ids must be in [0, 65535] to be stored as uint16")
    header = np.zeros(HEADER_INTS, dtype="<i8")
    header[:4] = [TOKENS_MAGIC, TOKENS_VERSION, tokens.size, 2]
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def read_tokens(path):
    """Memory-map a token file written by write_tokens, checking its header."""
    hint = "; prepare the data again (python prepare/<dataset>.py)"
    try:
        header = np.fromfile(path, dtype="<i8", count=HEADER_INTS)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}{hint}") from None
    if header.size < HEADER_INTS or header[0] != TOKENS_MAGIC:
        raise UserError(f"{path} is not a token file of this project{hint}")
    if header[1] != TOKENS_VERSION or header[3] != 2:
        raise UserError(f"{path} has token-file version {header[1]}, expected {TOKENS_VERSION}{hint}")
    count = int(header[2])
    if os.path.getsize(path) != HEADER_INTS * 8 + 2 * count:
        raise UserError(f"{path} is truncated: its header promises {count:,} tokens{hint}")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_INTS * 8, shape=(count,))


def write_dataset(out_dir, train, val, meta):
    """A prepared dataset: out_dir/train.bin, val.bin and meta.json (written last: a folder
    without it is unfinished, and train.py prepares it again)."""
    try:
        write_tokens(Path(out_dir) / "train.bin", train)
        write_tokens(Path(out_dir) / "val.bin", val)
        write_meta(out_dir, meta)
    except OSError as e:
        raise UserError(f"cannot write the prepared data to {out_dir}: {e.strerror}; "
                        f"free some space or choose another --out_dir") from None


def write_meta(data_dir, meta):
    with atomic_write(Path(data_dir) / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)


def read_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); prepare the data again") from None
    problem = meta_problem(meta)
    if problem:
        raise UserError(f"{path}: {problem}; prepare the data again")
    return meta


def meta_problem(meta):
    """What is wrong with a dataset's metadata (from meta.json or a checkpoint), or None."""
    if not isinstance(meta, dict):
        return "metadata is not a JSON object"
    codec, vocab_size = meta.get("codec"), meta.get("vocab_size")
    if codec == "char":
        chars = meta.get("chars")
        if not isinstance(chars, str) or not chars or len(set(chars)) != len(chars):
            return "'chars' must be a non-empty string of distinct characters"
        if vocab_size != len(chars):
            return f"'vocab_size' must equal the number of characters ({len(chars)})"
    elif codec == "tiktoken":
        if not isinstance(meta.get("encoding"), str):
            return "'encoding' must name a tiktoken encoding"
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            return "'vocab_size' must be a positive integer"
    else:
        return f"unknown codec {codec!r} (expected 'char' or 'tiktoken')"
    return None


def find_or_download(data_dir, filename, url, input_path=None, script="the prepare script"):
    """The path of a source text: --input if given, else data_dir/filename, downloaded there
    from url if missing. Says exactly what to do when none of these works."""
    if input_path:
        if os.path.isdir(input_path):
            raise UserError(f"--input {input_path} is a folder; give it a text file")
        if not os.path.isfile(input_path):
            raise UserError(f"input file not found: {input_path}")
        return Path(input_path)
    path = Path(data_dir) / filename
    if path.is_file():
        return path
    print(f"downloading {url} -> {path}")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read()
    except OSError as e:
        raise UserError(
            f"could not download {url} ({getattr(e, 'reason', e)}); "
            f"put the file at {path}, or run: python {script} --input PATH") from None
    with atomic_write(path) as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------- codecs

class CharCodec:
    """One token per character, in the vocabulary made from the training text."""

    def __init__(self, chars):
        self.chars = chars
        self.index = {ch: i for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot_token = None

    def encode(self, text):
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise UserError(f"text has characters outside the model's vocabulary: {''.join(unknown)!r}; "
                            f"use only characters from its training text (a prompt is set with --start)")
        return [self.index[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class TiktokenCodec:
    """GPT-2's byte-pair encoding (or another tiktoken encoding)."""

    def __init__(self, encoding="gpt2"):
        import tiktoken

        try:
            self.encoding = tiktoken.get_encoding(encoding)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise UserError(f"cannot load the {encoding!r} BPE files ({reason}); with no internet, set "
                            f"TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached files") from None
        self.vocab_size = self.encoding.n_vocab
        self.eot_token = self.encoding.eot_token

    def encode(self, text):
        return self.encoding.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self.encoding.decode(list(ids))


def codec_from_meta(meta):
    """The codec that metadata checked by meta_problem names."""
    return CharCodec(meta["chars"]) if meta["codec"] == "char" else TiktokenCodec(meta["encoding"])


# ----------------------------------------------------------------------------- device and precision

def resolve_device(device):
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available here; use --device=cpu (or auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device} but MPS is not available here; use --device=cpu (or auto)")
    if kind not in ("cuda", "mps", "cpu"):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def resolve_dtype(dtype, device):
    """'auto': bfloat16 where the hardware computes it natively (recent GPUs, CPUs with
    AVX512-BF16 or AMX), float16 on older GPUs (with a GradScaler), else float32."""
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if dtype != "auto":
        return dtype
    kind = device.split(":")[0]
    if kind == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if kind == "cpu" and torch.cpu._is_avx512_bf16_supported():
        return "bfloat16"
    return "float32"


def autocast_context(device, dtype):
    """The one place mixed precision is switched on: weights stay float32, matmuls run in dtype."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=getattr(torch, dtype))


# ----------------------------------------------------------------------------- checkpoints

class atomic_write:
    """Open a temporary file beside path; on success flush, fsync and rename it over path, so
    a crash at any moment leaves the old file or the new one, whole."""

    def __init__(self, path, mode="wb"):
        self.path, self.mode = Path(path), mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # the mode a plain open() would give, not mkstemp's 0600
        self.file = os.fdopen(fd, self.mode)
        return self.file

    def __exit__(self, exc_type, exc, tb):
        try:
            try:
                if exc_type is None:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
        return False


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


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint written by train.py (tensors and plain values only: no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; train one first (python train.py CONFIG) or set out_dir")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:100]
        raise UserError(f"{path} is not a readable checkpoint ({reason}); "
                        f"it may be truncated or corrupt: train again or use another out_dir") from None
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise UserError(f"{path} is not a checkpoint of this project (keys missing); use one written by train.py")
    return state
