"""The data-set recipes and the text they are made from: tiny Shakespeare as characters, as a BPE
of its own or as GPT-2's BPE (the text ships with the project, so no download is needed), which
train.py prepares by itself the first time one is used (ensure_data), and your own text
(prepare/text.py). prepare/<name>.py is each one's command line."""

import inspect
import os
import urllib.request
from pathlib import Path

import numpy as np

from gptkit.data import BPE_SIZES, END_OF_TEXT, GPT2_META, BPECodec, CharCodec, TiktokenCodec, is_prepared, write_dataset
from gptkit.files import atomic_write
from gptkit.runlog import progress
from gptkit.settings import ArgumentParser, UserError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_TEXT = Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt"  # ships with the project


def prepare_shakespeare_char(out_dir="data/shakespeare_char", input_path=None, val_fraction=0.1):
    """Tiny Shakespeare, one token per character: train.bin, val.bin (90/10) and meta.json."""
    prepare_text(out_dir, shakespeare_text(out_dir, input_path, "shakespeare_char"), tokenizer="char",
                 val_fraction=val_fraction)


def prepare_shakespeare(out_dir="data/shakespeare", input_path=None, val_fraction=0.1):
    """Tiny Shakespeare in GPT-2's BPE: the first 90% of the text for training, the rest for
    validation, as nanoGPT splits it."""
    source = shakespeare_text(out_dir, input_path, "shakespeare")
    text = read_text(source)
    codec = TiktokenCodec("gpt2")
    split = int(len(text) * (1 - val_fraction))
    train, val = (np.array(codec.encoding.encode_ordinary(part), dtype=np.uint16)
                  for part in (text[:split], text[split:]))
    write_dataset(out_dir, train, val, dict(GPT2_META))
    print(f"{source}: {len(text):,} characters; train {len(train):,} tokens, val {len(val):,} tokens "
          f"(GPT-2 BPE) -> {out_dir}")


def prepare_shakespeare_bpe(out_dir="data/shakespeare_bpe", input_path=None, val_fraction=0.1, vocab_size=1024):
    """Tiny Shakespeare in a BPE of its own (learned from the first 90% of the text)."""
    prepare_text(out_dir, shakespeare_text(out_dir, input_path, "shakespeare_bpe"), tokenizer="bpe",
                 val_fraction=val_fraction, vocab_size=vocab_size)


RECIPES = {"shakespeare_char": prepare_shakespeare_char, "shakespeare": prepare_shakespeare,
           "shakespeare_bpe": prepare_shakespeare_bpe}
CORPORA = ("openwebtext", "fineweb")  # large downloads (corpus.py): the user starts them, train.py does not


def ensure_data(data_dir, dataset):
    """The folder data_dir/dataset, prepared first by its recipe if it holds no data. Data that
    nanoGPT or llm.c prepared is used as it is, never prepared over."""
    folder = Path(data_dir) / dataset
    if is_prepared(folder):
        return folder
    if dataset in CORPORA:
        raise UserError(f"no prepared data in {folder}; make it first with python prepare/{dataset}.py "
                        f"(see its --help for the disk and time it takes)")
    if dataset not in RECIPES:
        raise UserError(f"no prepared data in {folder} (train.bin, val.bin, meta.json) and no data-set recipe "
                        f"named {dataset} ({', '.join(RECIPES)}) to make it; for your own text run "
                        f"python prepare/text.py --input YOUR.txt --out_dir {folder}")
    print(f"{folder} has no prepared data: preparing {dataset}")
    RECIPES[dataset](folder)
    return folder


def shakespeare_text(out_dir, input_path, name):
    """The tiny Shakespeare text: --input if given, else out_dir/input.txt if it is there (as
    nanoGPT leaves it), else the copy that ships with the project, else a download."""
    if input_path is None and not (Path(out_dir) / "input.txt").is_file() and SHAKESPEARE_TEXT.is_file():
        return SHAKESPEARE_TEXT
    return find_or_download(out_dir, "input.txt", SHAKESPEARE_URL, input_path,
                            script=f"prepare/{name}.py --out_dir {out_dir}")


def find_or_download(data_dir, filename, url, input_path=None, script="the prepare script", other_way=None):
    """The path of a source text: --input if given, else data_dir/filename, downloaded there
    from url if missing. Says exactly what to do when none of these works: put the file there,
    or other_way (default: give the script its --input)."""
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
            size = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            with progress(total=size, desc="downloading", unit="B", unit_scale=True) as bar:
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
            text = b"".join(chunks)
    except OSError as e:
        raise UserError(
            f"could not download {url} ({getattr(e, 'reason', e)}); "
            f"put the file at {path}, or {other_way or f'run: python {script} --input PATH'}") from None
    with atomic_write(path) as f:
        f.write(text)
    return path


def read_text(path):
    """A source file's text: UTF-8, not empty; a byte-order mark is not a character of it."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8") from None
    if not text:
        raise UserError(f"{path} is empty; give it some text")
    return text


def source_files(path):
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input not found: {path}; give a text file or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"{path} holds no files; give a text file or a folder of them")
    return files


def tokenize(texts, tokenizer):
    """(token ids as uint16, metadata) for a list of documents."""
    if tokenizer == "char":
        text = "".join(t if t.endswith("\n") else t + "\n" for t in texts[:-1]) + texts[-1]
        codec = CharCodec("".join(sorted(set(text))))
        if codec.vocab_size > 2**16:
            raise UserError(f"the text has {codec.vocab_size:,} distinct characters; at most 65,536 fit a "
                            f"token file: use --tokenizer bpe or gpt2")
        return np.array(codec.encode(text), dtype=np.uint16), {"codec": "char", "vocab_size": codec.vocab_size,
                                                                "chars": codec.chars}
    codec = TiktokenCodec("gpt2")
    return documents_to_ids(texts, codec.encoding.encode_ordinary, codec.eot_token), dict(GPT2_META)


def documents_to_ids(texts, encode, eot_token):
    """The documents' tokens as uint16, an end-of-text token between one document and the next."""
    ids = []
    for i, text in enumerate(texts):
        ids.extend(([eot_token] if i else []) + encode(text))
    return np.array(ids, dtype=np.uint16)


def split_documents(texts, val_fraction):
    """(train, val) lists of documents: the first 1 - val_fraction of the characters, the
    document it ends in cut in two."""
    total = sum(len(t) for t in texts)
    left = int(total * (1 - val_fraction))
    for i, text in enumerate(texts):
        if left <= len(text):
            return texts[:i] + [text[:left]], [text[left:]] + texts[i + 1:]
        left -= len(text)
    return texts, []


def train_bpe(texts, vocab_size):
    """A byte-level BPE of vocab_size tokens learned from texts with Hugging Face's tokenizers:
    the 256 bytes (so any text round-trips), merges of GPT-2's pre-split pieces (words, numbers,
    punctuation, spaces), <|endoftext|> last. Returns (its JSON, an encode of ordinary text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    low, high = BPE_SIZES
    if not low <= vocab_size <= high:
        raise UserError(f"--vocab_size must be from {low} (the 256 bytes and <|endoftext|>) to {high:,} (what a "
                        f"token file's uint16 holds), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split, then bytes
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    ordinary = Tokenizer.from_str(tokenizer.to_str())  # text in a document is text, even "<|endoftext|>"
    tokenizer.add_special_tokens([END_OF_TEXT])
    if tokenizer.get_vocab_size() < vocab_size:
        most = tokenizer.get_vocab_size()
        raise UserError(f"the training text has only {most - 257:,} pairs worth merging, so a vocabulary of "
                        f"{most:,} at most, not {vocab_size:,}: give a smaller --vocab_size or more text")
    return tokenizer.to_str(), lambda text: ordinary.encode(text).ids


def prepare_text(out_dir, input_path, tokenizer="char", val_fraction=0.1, vocab_size=None):
    """input_path (a file or a folder) -> out_dir/train.bin, val.bin and meta.json (and for bpe,
    tokenizer.json: a BPE of vocab_size tokens learned from the training split alone)."""
    if tokenizer not in ("char", "bpe", "gpt2"):
        raise UserError(f"--tokenizer must be char, bpe or gpt2, got {tokenizer!r}")
    if (vocab_size is not None) != (tokenizer == "bpe"):
        raise UserError("--tokenizer bpe needs --vocab_size N (e.g. 1024), and only bpe takes it")
    files = source_files(input_path)
    texts = [read_text(f) for f in files]
    if tokenizer == "bpe":
        train_texts, val_texts = split_documents(texts, val_fraction)
        if not "".join(train_texts) or not "".join(val_texts):
            raise UserError(f"{input_path} is too short to split into train and val text; give it more text")
        tokenizer_json, encode = train_bpe(train_texts, vocab_size)
        eot_token = BPECodec(tokenizer_json).eot_token
        train, val = (documents_to_ids([t for t in part if t], encode, eot_token) for part in (train_texts, val_texts))
        meta = {"codec": "bpe", "vocab_size": vocab_size, "tokenizer": tokenizer_json}
    else:
        ids, meta = tokenize(texts, tokenizer)
        split = int(len(ids) * (1 - val_fraction))
        train, val = ids[:split], ids[split:]
    write_dataset(out_dir, train, val, meta)
    print(f"{input_path}: {len(files):,} file(s), {len(train) + len(val):,} tokens ({tokenizer}), vocabulary of "
          f"{meta['vocab_size']:,}; train {len(train):,} tokens, val {len(val):,} tokens -> {out_dir}")


def prepare_from_source(prepare, doc, argv=None):
    """The command line of a data-set script made from one source file: --input (else the file
    in place, or downloaded) and --out_dir (default: prepare's own)."""
    parser = ArgumentParser(doc)
    parser.add_argument("--input", help="the source file, if you have it already")
    default_out_dir = inspect.signature(prepare).parameters["out_dir"].default
    parser.add_argument("--out_dir", default=default_out_dir, help="where to write the token files")
    args = parser.parse_args(argv)
    prepare(args.out_dir, args.input)
