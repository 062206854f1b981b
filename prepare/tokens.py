"""The data every script shares: token files (a checked header, then uint16 tokens), a
dataset's metadata (meta.json: which codec and vocabulary), and the codecs themselves."""

import json
import os
from pathlib import Path

import numpy as np

from checkpoint import atomic_write
from settings import UserError

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
