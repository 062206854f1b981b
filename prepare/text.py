"""Your own text: a file, or a folder of files, into train and val token files.

    python prepare/text.py --input my_text.txt --out_dir data/mine                    # one token per character
    python prepare/text.py --input my_folder/ --out_dir data/mine --tokenizer gpt2    # GPT-2's BPE
    python prepare/text.py --input my_text.txt --out_dir data/mine --tokenizer bpe --vocab_size 1024  # your own BPE

Then: python train.py configs/shakespeare_cpu.py --dataset=mine --out_dir=out-mine

The first 90% is for training, the rest for validation (of the text with bpe, which learns
from the training part alone; of the tokens otherwise). From a folder every
file is read (sorted by path, hidden ones skipped), each must be UTF-8; with gpt2 and bpe, an
end-of-text token separates one file from the next, and with char a newline does. bpe learns
a byte-level BPE of --vocab_size tokens (257 to 65,535) from the training text alone and
writes it as tokenizer.json beside meta.json.
"""

import sys

from gptkit.datasets import prepare_text
from gptkit.settings import ArgumentParser, run_cli


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--input", required=True, help="a text file, or a folder of text files")
    parser.add_argument("--out_dir", required=True, help="where to write the token files, e.g. data/mine")
    parser.add_argument("--tokenizer", default="char",
                        help="char (one token per character), bpe (your own BPE, learned here) or gpt2 (GPT-2's BPE)")
    parser.add_argument("--vocab_size", type=int, help="bpe: how many tokens to learn, e.g. 1024")
    args = parser.parse_args(argv)
    prepare_text(args.out_dir, args.input, args.tokenizer, vocab_size=args.vocab_size)


if __name__ == "__main__":
    sys.exit(run_cli(main))
