"""FineWeb-Edu (HuggingFaceFW/fineweb-edu on the Hugging Face Hub), or plain FineWeb, with
GPT-2's byte-pair encoding: a cleaner and larger corpus than OpenWebText for training from scratch.

    python prepare/fineweb.py                                  # fineweb-edu, subset sample-10BT
    python prepare/fineweb.py --name sample-100BT --out_dir data/fineweb100B
    python prepare/fineweb.py --path HuggingFaceFW/fineweb --name sample-10BT    # plain FineWeb
    python prepare/fineweb.py --data_files 'shards/*.parquet'  # files you have already

The subset (--name) sets the size: sample-10BT is ~10B GPT-2 tokens, which makes ~20 GB of token
files in data/fineweb (train.bin, and val.bin with 0.05% of the documents, chosen with a fixed
seed); every document is followed by the end-of-text token. meta.json comes last: a folder
without it is unfinished.

Disk: the download (Hub parquet files) and the Arrow copy datasets makes of it; for sample-10BT
expect several tens of GB in the Hugging Face cache (--cache_dir puts it elsewhere; it may be
deleted afterwards), plus the ~20 GB of token files. sample-100BT needs ten times as much.
Time: the download and its Arrow copy, then tokenising (the rate measured, and what it makes of
sample-10BT: docs/performance.md#tokenising-a-corpus, docs/data.md).
This script never runs by itself from train.py: run it once, then
    python train.py --dataset=fineweb ...
Every flag: python prepare/fineweb.py --help; the code is gptkit/corpus.py.
"""

import sys

from gptkit.corpus import corpus_main
from gptkit.settings import run_cli


def main(argv=None):
    corpus_main(__doc__, argv, path="HuggingFaceFW/fineweb-edu", name="sample-10BT", out_dir="data/fineweb",
                val_fraction=0.0005)


if __name__ == "__main__":
    sys.exit(run_cli(main))
