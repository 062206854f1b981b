"""A large corpus (a Hugging Face dataset, or your own json/jsonl/parquet/txt files) into GPT-2
token files, the way nanoGPT prepares OpenWebText: every document tokenised with GPT-2's BPE and
followed by the end-of-text token, a fixed-seed choice of whole documents for validation.

The one code path behind prepare/openwebtext.py and prepare/fineweb.py; with --data_files either
script prepares local files instead of its download:

    python prepare/fineweb.py --data_files 'my_corpus/*.jsonl' --out_dir data/mine

The dataset is memory-mapped from Hugging Face's Arrow cache and the token files are written as
they grow, so neither the text nor the tokens are ever all in memory. The output is the same,
byte for byte, whatever --num_proc.
"""

import glob
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from gptkit.data import GPT2_META, TiktokenCodec, token_writer, write_meta
from gptkit.runlog import progress
from gptkit.settings import ArgumentParser, UserError, reason

EOT = 50256  # GPT-2's <|endoftext|>, after every document

# datasets' builder for each kind of local file (a .gz of json or text is read as it is)
FILE_KINDS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


def default_num_proc():
    """The CPUs this process may run on (fewer than os.cpu_count() under taskset or in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Run only by prepare/openwebtext.py and prepare/fineweb.py: train.py prepares a missing data set
# by itself only from datasets.RECIPES, and a download of tens of gigabytes never starts unasked.
def prepare_corpus(out_dir, path, name=None, data_files=None, text_field="text", val_fraction=0.0005, seed=2357,
                   num_proc=None, cache_dir=None, overwrite=False, batch_size=1024):
    """A Hugging Face dataset (path, name; its train split) or local data_files -> out_dir/train.bin,
    val.bin and meta.json (written last). A document goes wholly to val with probability val_fraction,
    drawn with seed; num_proc processes tokenise batch_size documents at a time (neither changes
    the output). cache_dir: where datasets keeps downloads and Arrow files (default: its own)."""
    out_dir = Path(out_dir)
    num_proc = default_num_proc() if num_proc is None else num_proc
    if not 0 < val_fraction < 1:
        raise UserError(f"--val_fraction must lie between 0 and 1, got {val_fraction}")
    if num_proc < 1:
        raise UserError(f"--num_proc must be at least 1, got {num_proc}")
    check_out_dir(out_dir, overwrite)
    codec = TiktokenCodec("gpt2")  # here, not in a worker: a missing BPE file is one clear line

    started = time.time()
    dataset, source = load_documents(path, name, data_files, text_field, num_proc, cache_dir)
    n_docs = len(dataset)
    is_val = np.random.default_rng(seed).random(n_docs) < val_fraction  # drawn per document, once
    n_val = int(is_val.sum())
    if not 0 < n_val < n_docs:
        raise UserError(f"{source} has {n_docs:,} document(s), and --val_fraction {val_fraction} puts {n_val:,} "
                        f"of them in validation; both splits need at least one: give more documents or "
                        f"another --val_fraction")
    print(f"{source}: {n_docs:,} documents ({n_val:,} for validation), loaded in {time.time() - started:.1f} s; "
          f"tokenising with {num_proc} process(es) -> {out_dir}", flush=True)

    (out_dir / "meta.json").unlink(missing_ok=True)  # until the new files are complete, the folder is unfinished
    started = time.time()
    batches = [(start, min(start + batch_size, n_docs), is_val[start:start + batch_size])
               for start in range(0, n_docs, batch_size)]
    counts = {"train": 0, "val": 0}
    try:
        with token_writer(out_dir / "train.bin", GPT2_META) as train_out, \
                token_writer(out_dir / "val.bin", GPT2_META) as val_out, \
                progress(total=n_docs, desc="tokenising", unit="doc", unit_scale=True) as bar:
            for train_ids, val_ids, docs in tokenised(batches, dataset, text_field, codec, num_proc):
                train_out.write(train_ids)
                val_out.write(val_ids)
                counts["train"] += train_ids.size
                counts["val"] += val_ids.size
                bar.update(docs)
                tokens_per_second = (counts["train"] + counts["val"]) / max(time.time() - started, 1e-9)
                bar.set_postfix_str(f"{tokens_per_second / 1e6:.2f}M tokens/s", refresh=False)
        write_meta(out_dir, GPT2_META)
    except OSError as e:
        raise UserError(f"cannot write the token files to {out_dir}: {e.strerror}; free some space or choose "
                        f"another --out_dir") from None
    seconds = time.time() - started
    total = counts["train"] + counts["val"]
    print(f"{n_docs:,} documents: train {counts['train']:,} tokens, val {counts['val']:,} tokens (GPT-2 BPE); "
          f"{total / max(seconds, 1e-9):,.0f} tokens/s with {num_proc} process(es), {seconds:.1f} s -> {out_dir}")
    return counts


def check_out_dir(out_dir, overwrite):
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file; give a folder")
    held = [name for name in ("train.bin", "val.bin") if (out_dir / name).exists()]
    if held and not overwrite:
        raise UserError(f"{out_dir} already holds prepared data ({', '.join(held)}); pass --overwrite to replace "
                        f"it, or choose another --out_dir")


# ----------------------------------------------------------------------------- reading

def load_documents(path, name, data_files, text_field, num_proc, cache_dir):
    """(the documents as a memory-mapped datasets.Dataset holding only text_field, a name for them)."""
    import datasets

    if data_files:
        files, kind = local_files(data_files)
        source = f"{len(files):,} {kind} file(s)"
        print(f"reading {source} (--data_files)", flush=True)
        # a .txt file is one document, and a byte-order mark is not a character of it
        options = {"sample_by": "document", "encoding": "utf-8-sig"} if kind == "text" else {}
        try:
            with quiet_libraries():
                dataset = datasets.load_dataset(kind, data_files=files, split="train", cache_dir=cache_dir,
                                                num_proc=min(num_proc, len(files)) if num_proc > 1 else None,
                                                **options)
        except Exception as e:  # a malformed file, reported by whichever library read it
            cause = e.__cause__ if isinstance(e, datasets.exceptions.DatasetGenerationError) and e.__cause__ else e
            raise UserError(f"cannot read the --data_files as {kind} ({reason(cause, 200)}); check that they "
                            f"are {kind} files") from None
    else:
        source = path + (f" ({name})" if name else "")
        print(f"loading {source} from the Hugging Face Hub (or its cache)", flush=True)
        try:
            with quiet_libraries():
                dataset = datasets.load_dataset(path, name, split="train", cache_dir=cache_dir,
                                                num_proc=num_proc if num_proc > 1 else None)
        except Exception as e:  # offline, unknown name, full disk: the Hub's errors come in many types
            raise UserError(f"could not download {source} from the Hugging Face Hub ({reason(e, 200)}); pass "
                            f"--data_files with local json/jsonl/parquet/txt files, or connect to the internet "
                            f"(and check --path and --name)") from None
    if text_field not in dataset.column_names:
        raise UserError(f"{source} has no field {text_field!r} (its columns: {', '.join(dataset.column_names)}); "
                        f"name the one holding the text with --text_field")
    feature = dataset.features[text_field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise UserError(f"{source}: field {text_field!r} holds {feature}, not text; name the one holding the "
                        f"text with --text_field")
    return dataset.select_columns([text_field]), source


def local_files(patterns):
    """(the files that paths or globs name, in the order given and each glob sorted; their one kind)."""
    files = []
    for pattern in patterns:
        matches = [m for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if os.path.isfile(m)]
        if not matches:
            what = "is a folder; give its files, e.g. 'folder/*.jsonl'" if os.path.isdir(pattern) else "matches no file"
            raise UserError(f"--data_files {pattern} {what}")
        files.extend(m for m in matches if m not in files)
    kinds = {}
    for file in files:
        stem = file[:-3] if file.lower().endswith(".gz") else file
        kind = FILE_KINDS.get(os.path.splitext(stem)[1].lower())
        if kind is None:
            raise UserError(f"{file}: --data_files takes .json, .jsonl, .parquet or .txt files "
                            f"(json and txt may be gzipped)")
        kinds.setdefault(kind, file)
    if len(kinds) > 1:
        raise UserError(f"--data_files mixes kinds of file ({', '.join(f'{k}: {f}' for k, f in kinds.items())}); "
                        f"give files of one kind")
    return files, next(iter(kinds))


@contextmanager
def quiet_libraries():
    """The Hub retries a failed request five times with a warning each time, datasets logs a bad file
    before raising, and draws its progress bars into log files: a failure here is reported once, as
    one line, and a log stays free of bars."""
    import datasets

    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels, bars_were_on = [logger.level for logger in loggers], not datasets.are_progress_bars_disabled()
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars_were_on:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- tokenising

class Tokeniser:
    """Tokens for a range of documents, split into train and val: one in each worker process,
    which reads its documents from the memory-mapped dataset itself."""

    def __init__(self, dataset, text_field, codec):
        self.dataset, self.text_field, self.encode = dataset, text_field, codec.encoding.encode_ordinary

    def __call__(self, batch):
        start, stop, is_val = batch
        ids = {False: [], True: []}
        for text, in_val in zip(self.dataset[start:stop][self.text_field], is_val):
            ids[bool(in_val)].extend(self.encode(text or ""))  # a null text is an empty document
            ids[bool(in_val)].append(EOT)
        return np.array(ids[False], dtype=np.uint16), np.array(ids[True], dtype=np.uint16), stop - start


_worker_tokeniser = None


def _start_worker(dataset, text_field, codec):
    global _worker_tokeniser
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which ends the workers quietly
    _worker_tokeniser = Tokeniser(dataset, text_field, codec)


def _tokenise_in_worker(batch):
    return _worker_tokeniser(batch)


def tokenised(batches, dataset, text_field, codec, num_proc):
    """Each batch's (train ids, val ids, documents), in order. Workers read the text themselves (the
    main process only writes), and at most a few batches per worker are under way at once, so a
    slow disk cannot pile up tokens in memory."""
    if num_proc == 1:
        yield from map(Tokeniser(dataset, text_field, codec), batches)
        return
    import multiprocessing
    from collections import deque

    with multiprocessing.Pool(num_proc, _start_worker, (dataset, text_field, codec)) as pool:
        pending = deque()
        for batch in batches:
            pending.append(pool.apply_async(_tokenise_in_worker, (batch,)))
            if len(pending) >= 4 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ----------------------------------------------------------------------------- command line

def corpus_main(doc, argv, path, out_dir, name=None, val_fraction=0.0005):
    """The command line of a corpus script: its source and folder as defaults, every one a flag."""
    parser = ArgumentParser(doc)
    parser.add_argument("--out_dir", default=out_dir, help=f"where to write the token files (default: {out_dir})")
    parser.add_argument("--path", default=path, help=f"the Hugging Face dataset (default: {path})")
    parser.add_argument("--name", default=name, help=f"its subset, if it has several (default: {name})")
    parser.add_argument("--data_files", nargs="+", metavar="FILE",
                        help="local .json/.jsonl/.parquet/.txt files or globs, instead of the download "
                             "(a .txt file is one document)")
    parser.add_argument("--text_field", default="text", help="the field holding each document's text")
    parser.add_argument("--val_fraction", type=float, default=val_fraction,
                        help=f"the share of documents for validation (default: {val_fraction})")
    parser.add_argument("--seed", type=int, default=2357, help="seeds the choice of validation documents")
    parser.add_argument("--num_proc", type=int, default=default_num_proc(),
                        help="processes that tokenise (and download) at once (default: all CPUs)")
    parser.add_argument("--cache_dir", help="where datasets keeps downloads and Arrow files "
                                            "(default: ~/.cache/huggingface/datasets)")
    parser.add_argument("--overwrite", action="store_true", help="replace the token files already in --out_dir")
    args = parser.parse_args(argv)
    prepare_corpus(**vars(args))
