"""The source text of a data set: a file the user names, one already in place, or a download."""

import inspect
import os
import urllib.request
from pathlib import Path

from checkpoint import atomic_write
from progress import progress
from settings import ArgumentParser, UserError


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
            f"put the file at {path}, or run: python {script} --input PATH") from None
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


def prepare_from_source(prepare, doc, argv=None):
    """The command line of a data-set script made from one source file: --input (else the file
    in place, or downloaded) and --out_dir (default: prepare's own)."""
    parser = ArgumentParser(doc)
    parser.add_argument("--input", help="the source file, if you have it already")
    default_out_dir = inspect.signature(prepare).parameters["out_dir"].default
    parser.add_argument("--out_dir", default=default_out_dir, help="where to write the token files")
    args = parser.parse_args(argv)
    prepare(args.out_dir, args.input)
