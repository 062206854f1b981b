"""Tiny Shakespeare with GPT-2's byte-pair encoding (tiktoken), for finetuning GPT-2.

    python prepare/shakespeare.py                 # data/shakespeare/input.txt, downloaded if missing
    python prepare/shakespeare.py --input PATH    # the same file from elsewhere

Writes train.bin and val.bin (the first 90% of the text and the rest, as nanoGPT splits it)
and meta.json beside it.
"""

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prepare.download import find_or_download, prepare_from_source, read_text
from prepare.shakespeare_char import URL
from prepare.tokens import TiktokenCodec, write_dataset
from settings import run_cli


def prepare(out_dir="data/shakespeare", input_path=None, val_fraction=0.1):
    out_dir = Path(out_dir)
    source = find_or_download(out_dir, "input.txt", URL, input_path,
                              script=f"prepare/shakespeare.py --out_dir {out_dir}")
    text = read_text(source)
    codec = TiktokenCodec("gpt2")
    split = int(len(text) * (1 - val_fraction))
    train, val = (np.array(codec.encoding.encode_ordinary(part), dtype=np.uint16)
                  for part in (text[:split], text[split:]))
    write_dataset(out_dir, train, val, {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": codec.vocab_size})
    print(f"{source}: {len(text):,} characters; train {len(train):,} tokens, val {len(val):,} tokens "
          f"(GPT-2 BPE) -> {out_dir}")


def main(argv=None):
    prepare_from_source(prepare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
