"""The data every script shares: token files (a checked header, then uint16 tokens), a
dataset's metadata (meta.json: which codec and vocabulary), the codecs themselves, and the
batches training draws from the token files."""

import json
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from gptkit.files import atomic_write
from gptkit.settings import UserError, reason

# A token file is llm.c's (and modded-nanogpt's): a header of 256 little-endian int32 (magic
# 20240520, version 1, the token count, then zeros) and the tokens as little-endian uint16. The
# tokenizer and vocabulary are in meta.json beside it. Files of this project's first header (1024
# bytes of int64: magic 20261123, version, count, bytes per token, vocabulary size, the
# tokenizer's name from byte 64) are read as they are; nothing writes that header.
LLMC_MAGIC, LLMC_VERSION, HEADER_INTS, HEADER_BYTES = 20240520, 1, 256, 1024
OLD_MAGIC, OLD_NAME_OFFSET, OLD_NAME_BYTES = 20261123, 64, 64
VOCAB_CHECKED = 1 << 20  # a run checks the ids of a file's first million tokens against meta.json
TOKENIZER_FILE, END_OF_TEXT = "tokenizer.json", "<|endoftext|>"  # a BPE of the data's own; hf.py's folders
BPE_SIZES = (257, 65535)  # a byte-level BPE: the 256 bytes and <|endoftext|>, up to what uint16 holds


def tokenizer_name(meta):
    """'char', 'bpe' (the data's own), or the tiktoken encoding ('gpt2')."""
    return meta["encoding"] if meta["codec"] == "tiktoken" else meta["codec"]


def token_header(count):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = [LLMC_MAGIC, LLMC_VERSION, count]
    return header.tobytes()


class TokenWriter:
    """Appends tokens to an open token file; token_writer() fills in the count at the end."""

    def __init__(self, f, meta):
        self.f, self.meta, self.count = f, meta, 0
        self.limit = meta["vocab_size"] if meta is not None else 2**16

    def write(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.limit):
            raise ValueError(f"token ids must be in [0, {self.limit - 1}] (the vocabulary, stored as uint16)")
        self.f.write(tokens.astype("<u2").tobytes())
        self.count += tokens.size


@contextmanager
def token_writer(path, meta=None):
    """Write a token file piece by piece (never all of it in memory), atomically:
    with token_writer(path, meta) as out: out.write(ids) ..."""
    with atomic_write(path) as f:
        f.write(token_header(0))
        out = TokenWriter(f, meta)
        yield out
        f.seek(0)
        f.write(token_header(out.count))


def write_tokens(path, tokens, meta=None):
    """Write a 1-D array of token ids (each < 65536, and < meta's vocab_size) to path, atomically."""
    with token_writer(path, meta) as out:
        out.write(tokens)


def read_tokens(path, meta=None):
    """Memory-map a token file (llm.c's format, or this project's first one), checking its header
    and, given the data set's meta, that its tokens belong to that vocabulary."""
    hint = "; prepare the data again (python prepare/<dataset>.py)"
    try:
        size, head = os.path.getsize(path), np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}{hint}") from None
    if head.size == HEADER_INTS and head[0] == OLD_MAGIC:
        return read_old_tokens(path, meta, hint)
    if head.size < HEADER_INTS or head[0] != LLMC_MAGIC:
        raise UserError(f"{path} is not a token file (no llm.c header){hint}")
    if head[1] != LLMC_VERSION:
        raise UserError(f"{path} is an llm.c file of version {head[1]}, not 1 (uint16 tokens){hint}")
    count = int(head[2])
    if size != HEADER_BYTES + 2 * count:
        raise UserError(f"{path} is truncated: its header promises {count:,} tokens{hint}")
    tokens = map_tokens(path, HEADER_BYTES, count)
    if meta is not None and count:
        largest = int(tokens[:VOCAB_CHECKED].max())
        if largest >= meta["vocab_size"]:
            raise UserError(f"{path} holds token id {largest:,}, but meta.json beside it says {tokenizer_name(meta)} "
                            f"with a vocabulary of {meta['vocab_size']:,}{hint}")
    return tokens


def read_old_tokens(path, meta, hint):
    """A token file with this project's first header (see the top of this file)."""
    header = np.fromfile(path, dtype="<i8", count=HEADER_BYTES // 8)
    if header[1] != 1 or header[3] != 2:
        raise UserError(f"{path} has token-file version {header[1]}, expected 1{hint}")
    count = int(header[2])
    if os.path.getsize(path) != HEADER_BYTES + 2 * count:
        raise UserError(f"{path} is truncated: its header promises {count:,} tokens{hint}")
    name = header.tobytes()[OLD_NAME_OFFSET : OLD_NAME_OFFSET + OLD_NAME_BYTES].rstrip(b"\0").decode("ascii", "replace")
    if meta is not None and header[4] and (header[4], name) != (meta["vocab_size"], tokenizer_name(meta)):
        raise UserError(f"{path} holds {name} tokens (a vocabulary of {header[4]:,}) but meta.json beside it "
                        f"says {tokenizer_name(meta)} ({meta['vocab_size']:,}){hint}")
    return map_tokens(path, HEADER_BYTES, count)


def map_tokens(path, offset, count):
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(count,))


def write_dataset(out_dir, train, val, meta):
    """A prepared dataset: out_dir/train.bin, val.bin and meta.json (written last: a folder
    without it is unfinished, and train.py prepares it again)."""
    try:
        write_tokens(Path(out_dir) / "train.bin", train, meta)
        write_tokens(Path(out_dir) / "val.bin", val, meta)
        write_meta(out_dir, meta)
    except OSError as e:
        raise UserError(f"cannot write the prepared data to {out_dir}: {e.strerror}; "
                        f"free some space or choose another --out_dir") from None


def write_meta(data_dir, meta):
    """meta.json, and for a BPE of the data's own its tokenizer.json beside it (written first)."""
    if "tokenizer" in meta:
        with atomic_write(Path(data_dir) / TOKENIZER_FILE, "w") as f:
            f.write(meta["tokenizer"])
    with atomic_write(Path(data_dir) / "meta.json", "w") as f:
        json.dump({key: value for key, value in meta.items() if key != "tokenizer"}, f, indent=1)


def read_meta(data_dir):
    """A data folder's meta.json; a BPE's tokenizer.json comes with it as meta['tokenizer'] (the
    JSON text), so a checkpoint of the run holds its tokenizer."""
    path = Path(data_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and meta.get("codec") == "bpe":
            path = Path(data_dir) / TOKENIZER_FILE
            meta["tokenizer"] = path.read_text(encoding="utf-8")
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
    elif codec == "bpe":
        if not isinstance(meta.get("tokenizer"), str):
            return "'tokenizer' must be the text of a tokenizer.json"
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not BPE_SIZES[0] <= vocab_size <= BPE_SIZES[1]:
            return f"'vocab_size' must be an integer from {BPE_SIZES[0]} to {BPE_SIZES[1]}"
    elif codec == "tiktoken":
        if not isinstance(meta.get("encoding"), str):
            return "'encoding' must name a tiktoken encoding"
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
            return "'vocab_size' must be a positive integer"
    else:
        return f"unknown codec {codec!r} (expected 'char', 'bpe' or 'tiktoken')"
    return None


# ----------------------------------------------------------------------------- a data folder

def split_files(data_dir):
    """{'train': [paths], 'val': [paths]} of a data folder, or None: train.bin and val.bin (ours
    or nanoGPT's), else llm.c / modded-nanogpt shards (*train*.bin, *val*.bin)."""
    data_dir = Path(data_dir)
    if (data_dir / "train.bin").is_file() and (data_dir / "val.bin").is_file():
        return {"train": [data_dir / "train.bin"], "val": [data_dir / "val.bin"]}
    shards = {split: sorted(p for p in data_dir.glob(f"*{split}*.bin") if p.is_file()) for split in ("train", "val")}
    return shards if all(shards.values()) else None


def magic(path):
    """The first int32 of a file: 20240520 for llm.c's token files (ours), 20261123 for those
    of this project's first header; anything else for raw tokens."""
    with open(path, "rb") as f:
        head = f.read(4)
    return int.from_bytes(head, "little") if len(head) == 4 else None


def is_prepared(data_dir):
    """Whether data_dir holds data to train on: ours, finished (meta.json is written last), or
    another tool's (nanoGPT's raw train.bin and val.bin, llm.c's shards), used as it is."""
    files = split_files(data_dir)
    if files is None:
        return False
    ours = files["train"] == [Path(data_dir) / "train.bin"] and magic(files["train"][0]) in (LLMC_MAGIC, OLD_MAGIC)
    return (Path(data_dir) / "meta.json").is_file() or not ours


def read_split(data_dir, split, meta):
    """The token arrays of one split (several for shards), memory-mapped: files with a header
    checked as read_tokens checks them, nanoGPT's raw files as they are."""
    return [read_tokens(path, meta) if magic(path) in (LLMC_MAGIC, OLD_MAGIC) else read_raw_tokens(path)
            for path in split_files(data_dir)[split]]


def read_raw_tokens(path):
    """nanoGPT's train.bin and val.bin: uint16 tokens, no header."""
    size = os.path.getsize(path)
    if size % 2:
        raise UserError(f"{path} is not a file of uint16 tokens (an odd number of bytes); prepare the data again")
    return map_tokens(path, 0, size // 2)


GPT2_META = {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": 50257}


def dataset_meta(data_dir):
    """The metadata of a data folder: meta.json (ours), else nanoGPT's meta.pkl (characters),
    else GPT-2's BPE, which nanoGPT and llm.c assume when a folder says nothing."""
    data_dir = Path(data_dir)
    if (data_dir / "meta.json").is_file():
        return read_meta(data_dir)
    if (data_dir / "meta.pkl").is_file():
        return read_meta_pkl(data_dir / "meta.pkl")
    print(f"{data_dir} has no meta.json or meta.pkl: reading its tokens as GPT-2 BPE, as nanoGPT does")
    return dict(GPT2_META)


class PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function is refused, so
    no code in the file can run."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused {module}.{name}: only plain values are read")


def read_meta_pkl(path):
    """nanoGPT's character metadata (vocab_size, itos, stoi) as our meta, read without running code."""
    try:
        with open(path, "rb") as f:
            data = PlainUnpickler(f).load()
        itos = data["itos"]
        chars = "".join(itos[i] for i in range(data["vocab_size"]))
        if not all(isinstance(ch, str) and len(ch) == 1 for ch in itos.values()):
            raise ValueError("itos must map to single characters")
    except Exception as e:
        raise UserError(f"cannot read {path} as nanoGPT's character metadata ({type(e).__name__}: "
                        f"{str(e)[:100]}); prepare the data again") from None
    meta = {"codec": "char", "vocab_size": len(chars), "chars": chars}
    problem = meta_problem(meta)
    if problem:
        raise UserError(f"{path}: {problem}; prepare the data again")
    return meta


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
            more = f" and {len(unknown) - 20:,} more" if len(unknown) > 20 else ""  # the line stays short
            raise UserError(f"text has characters outside the model's vocabulary: {''.join(unknown[:20])!r}{more}; "
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
            raise UserError(f"cannot load the {encoding!r} BPE files ({reason(e, 120)}); with no internet, set "
                            f"TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached files") from None
        self.vocab_size = self.encoding.n_vocab
        self.eot_token = self.encoding.eot_token

    def raw_bytes(self):
        """Each token's bytes of UTF-8 text (None for a special token)."""
        special = {self.encoding.encode_single_token(name) for name in self.encoding.special_tokens_set}
        return [None if i in special else self.encoding.decode_single_token_bytes(i) for i in range(self.vocab_size)]

    def encode(self, text):
        return self.encoding.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self.encoding.decode(list(ids))


class BPECodec:
    """A byte-level BPE learned from the data's own text (prepare/text.py --tokenizer bpe,
    prepare/shakespeare_bpe.py) with Hugging Face's tokenizers: 256 byte tokens, the merges, and
    <|endoftext|> last, as GPT-2's."""

    def __init__(self, tokenizer_json):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as e:
            raise UserError(f"cannot read the data's tokenizer ({reason(e, 120)}); prepare the data again") from None
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eot_token = self.tokenizer.token_to_id(END_OF_TEXT)

    def encode(self, text):
        return self.tokenizer.encode(text).ids

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def raw_bytes(self):
        """Each token's bytes of UTF-8 text (None for a special token): its byte-level text mapped
        back through the byte-to-character table byte-level BPE uses."""
        special = set(self.tokenizer.get_added_tokens_decoder())
        to_byte = {ch: b for b, ch in byte_level_characters().items()}
        return [None if i in special else bytes(to_byte[ch] for ch in self.tokenizer.id_to_token(i))
                for i in range(self.vocab_size)]


def byte_level_characters():
    """{byte: the printable character byte-level BPE (GPT-2's, and tokenizers' ByteLevel) writes it as}."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def codec_from_meta(meta):
    """The codec that metadata checked by meta_problem names."""
    if meta["codec"] == "char":
        return CharCodec(meta["chars"])
    return BPECodec(meta["tokenizer"]) if meta["codec"] == "bpe" else TiktokenCodec(meta["encoding"])


def token_bytes(meta):
    """The UTF-8 bytes of text each token of the vocabulary stands for, (vocab_size,) int64:
    what bits per byte divides by. Special tokens (<|endoftext|>) stand for no text: 0."""
    if meta["codec"] == "char":
        return torch.tensor([len(ch.encode("utf-8")) for ch in meta["chars"]])
    return torch.tensor([0 if data is None else len(data) for data in codec_from_meta(meta).raw_bytes()])


# ----------------------------------------------------------------------------- batches

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
        """(x, y), each (batch_size, block_size) on the CPU: views of windows()."""
        windows = self.windows(split, rng, count, part)
        return windows[:, :-1], windows[:, 1:]

    def windows(self, split, rng=None, count=None, part=slice(None)):
        """(batch_size, block_size + 1) int32 token windows on the CPU, one contiguous block: x is
        each window but its last token, y all but its first. count: draw that many windows instead
        (an optimizer step's, across every process) and build only those in `part`."""
        starts, span = self.starts[split], np.arange(self.block_size + 1)
        offsets = (rng or self.rng).integers(0, starts[-1], size=count or self.batch_size)[part]
        if len(starts) == 1:  # one file: every window in one gather
            windows = self.data[split][0][offsets[:, None] + span]
        else:
            files = np.searchsorted(starts, offsets, side="right")
            offsets -= np.concatenate(([0], starts[:-1]))[files]
            windows = np.stack([self.data[split][f][o + span] for f, o in zip(files, offsets)])
        return torch.from_numpy(windows.astype(np.int32))  # made int64 on the device (half the transfer)

    def eval_windows(self, split, count):
        """The same `count` batches' windows at every evaluation, so val losses compare like with
        like (built once)."""
        if (split, count) not in self.eval_cache:
            rng = np.random.default_rng([self.seed, 1])
            self.eval_cache[split, count] = [self.windows(split, rng) for _ in range(count)]
        return self.eval_cache[split, count]

    def eval_batches(self, split, count):
        """eval_windows() as (x, y) pairs."""
        return [(windows[:, :-1], windows[:, 1:]) for windows in self.eval_windows(split, count)]

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
