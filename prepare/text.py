"""Your own text: a file, or a folder of files, into train and val token files.

    python prepare/text.py --input my_text.txt --out_dir data/mine                    # one token per character
    python prepare/text.py --input my_folder/ --out_dir data/mine --tokenizer gpt2    # GPT-2's BPE

Then: python train.py configs/shakespeare_cpu.py --dataset=mine --out_dir=out-mine

The first 90% of the tokens are for training, the rest for validation. From a folder every
file is read (sorted by path, hidden ones skipped), each must be UTF-8; with gpt2, an
end-of-text token separates one file from the next, and with char a newline does.
"""

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from prepare.download import read_text
from prepare.tokens import CharCodec, TiktokenCodec, write_dataset
from settings import ArgumentParser, UserError, run_cli


def source_files(path):
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input not found: {path}; give a text file or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"{path} holds no files; give a text file or a folder of them")
    return files


def tokenize(texts, tokenizer):
    """(token ids as uint16, metadata) for a list of documents."""
    if tokenizer == "char":
        text = "".join(t if t.endswith("\n") else t + "\n" for t in texts[:-1]) + texts[-1]
        codec = CharCodec("".join(sorted(set(text))))
        if codec.vocab_size > 2**16:
            raise UserError(f"the text has {codec.vocab_size:,} distinct characters; at most 65,536 fit a "
                            f"token file: use --tokenizer gpt2")
        return np.array(codec.encode(text), dtype=np.uint16), {"codec": "char", "vocab_size": codec.vocab_size,
                                                                "chars": codec.chars}
    codec = TiktokenCodec("gpt2")
    ids = []
    for i, text in enumerate(texts):
        ids.extend(([codec.eot_token] if i else []) + codec.encoding.encode_ordinary(text))
    return np.array(ids, dtype=np.uint16), {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": codec.vocab_size}


# Named prepare_text, not prepare: it makes no data set of its own, so train.py never runs it by itself.
def prepare_text(out_dir, input_path, tokenizer="char", val_fraction=0.1):
    """input_path (a file or a folder) -> out_dir/train.bin, val.bin and meta.json."""
    if tokenizer not in ("char", "gpt2"):
        raise UserError(f"--tokenizer must be char or gpt2, got {tokenizer!r}")
    files = source_files(input_path)
    ids, meta = tokenize([read_text(f) for f in files], tokenizer)
    split = int(len(ids) * (1 - val_fraction))
    write_dataset(out_dir, ids[:split], ids[split:], meta)
    print(f"{input_path}: {len(files):,} file(s), {len(ids):,} tokens ({tokenizer}), vocabulary of "
          f"{meta['vocab_size']:,}; train {split:,} tokens, val {len(ids) - split:,} tokens -> {out_dir}")


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("--input", required=True, help="a text file, or a folder of text files")
    parser.add_argument("--out_dir", required=True, help="where to write the token files, e.g. data/mine")
    parser.add_argument("--tokenizer", default="char", help="char (one token per character) or gpt2 (BPE)")
    args = parser.parse_args(argv)
    prepare_text(args.out_dir, args.input, args.tokenizer)


if __name__ == "__main__":
    sys.exit(run_cli(main))
