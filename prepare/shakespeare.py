"""Tiny Shakespeare with GPT-2's byte-pair encoding (tiktoken), for finetuning GPT-2.

    python prepare/shakespeare.py                 # the text that ships in data/tinyshakespeare.txt
    python prepare/shakespeare.py --input PATH    # the same file from elsewhere

Writes train.bin and val.bin (the first 90% of the text and the rest, as nanoGPT splits it)
and meta.json to data/shakespeare/.
"""

import sys

from gptkit.datasets import prepare_from_source, prepare_shakespeare
from gptkit.settings import run_cli


def main(argv=None):
    prepare_from_source(prepare_shakespeare, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
