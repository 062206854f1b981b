"""Tiny Shakespeare at the character level: every distinct character is a token.

    python prepare/shakespeare_char.py                 # data/shakespeare_char/input.txt, downloaded if missing
    python prepare/shakespeare_char.py --input PATH    # the same file from elsewhere (your own text: prepare/text.py)

Writes train.bin and val.bin (90/10 split) and meta.json (the vocabulary) beside it.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prepare.download import find_or_download, prepare_from_source
from prepare.text import prepare_text
from settings import run_cli

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def prepare(out_dir="data/shakespeare_char", input_path=None, val_fraction=0.1):
    out_dir = Path(out_dir)
    source = find_or_download(out_dir, "input.txt", URL, input_path,
                              script=f"prepare/shakespeare_char.py --out_dir {out_dir}")
    prepare_text(out_dir, source, tokenizer="char", val_fraction=val_fraction)


def main(argv=None):
    prepare_from_source(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
