"""OpenWebText (Skylion007/openwebtext on the Hugging Face Hub, nanoGPT's GPT-2 corpus) with
GPT-2's byte-pair encoding, for training GPT-2 (124M) from scratch.

    python prepare/openwebtext.py                        # download, then tokenise with every CPU
    python prepare/openwebtext.py --num_proc 8 --cache_dir /big/disk/hf
    python prepare/openwebtext.py --data_files 'owt/*.parquet'    # files you have already

Writes data/openwebtext/train.bin (~9B tokens, ~17 GB) and val.bin (~4M tokens, ~8 MB): every
document followed by the end-of-text token, and 0.05% of the 8M documents, chosen with a fixed
seed, for validation, as nanoGPT does. meta.json comes last: a folder without it is unfinished.

Disk: ~54 GB for the Hugging Face cache (the download and its Arrow copy; --cache_dir puts it
elsewhere, and it may be deleted afterwards) plus ~17 GB of token files.
Time: the download and its Arrow copy, then tokenising (the rate measured, and what it makes of
OpenWebText: docs/performance.md#tokenising-a-corpus, docs/data.md).
This script never runs by itself from train.py: run it once, then
    python train.py --dataset=openwebtext ...
Every flag: python prepare/openwebtext.py --help; the code is gptkit/corpus.py.
"""

import sys

from gptkit.corpus import corpus_main
from gptkit.settings import run_cli


def main(argv=None):
    corpus_main(__doc__, argv, path="Skylion007/openwebtext", out_dir="data/openwebtext", val_fraction=0.0005)


if __name__ == "__main__":
    sys.exit(run_cli(main))
