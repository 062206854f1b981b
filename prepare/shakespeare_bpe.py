"""Tiny Shakespeare in a byte-pair encoding of its own: 1,024 tokens learned from the training
90% of the text with Hugging Face's tokenizers (what configs/shakespeare_bpe_cpu.py trains on).

    python prepare/shakespeare_bpe.py                 # the text that ships in data/tinyshakespeare.txt
    python prepare/shakespeare_bpe.py --input PATH    # the same file from elsewhere

Writes train.bin, val.bin, meta.json and tokenizer.json to data/shakespeare_bpe/. Another size:
python prepare/text.py --input data/tinyshakespeare.txt --out_dir data/mine --tokenizer bpe --vocab_size N
"""

import sys

from gptkit.datasets import prepare_from_source, prepare_shakespeare_bpe
from gptkit.settings import run_cli


def main(argv=None):
    prepare_from_source(prepare_shakespeare_bpe, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
