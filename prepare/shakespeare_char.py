"""Tiny Shakespeare at the character level: every distinct character is a token.

    python prepare/shakespeare_char.py                 # the text that ships in data/tinyshakespeare.txt
    python prepare/shakespeare_char.py --input PATH    # the same file from elsewhere (your own text: prepare/text.py)

Writes train.bin and val.bin (90/10 split) and meta.json (the vocabulary) to data/shakespeare_char/.
"""

import sys

from gptkit.datasets import prepare_from_source, prepare_shakespeare_char
from gptkit.settings import run_cli


def main(argv=None):
    prepare_from_source(prepare_shakespeare_char, __doc__, argv)


if __name__ == "__main__":
    sys.exit(run_cli(main))
