"""The reference (README.md, docs/*.md) kept true to the code:

1. every error message docs/errors.md quotes, and the three README.md's "When something is
   wrong" shows, is the line its command prints: each is provoked here (ERRORS) and compared;
2. every setting in the docs' tables of settings exists with the default the doc gives;
3. every command shown that runs one of our scripts parses with that script's own parsing,
   stopped where its work would begin, and the config files it names exist;
4. every relative link and picture resolves, an #anchor to a heading of its file;
5. the outputs quoted as what a command prints are what it prints.

Every test's name starts with test_docs_, so `pytest -k docs` runs these and only these.
"""

import argparse
import errno
import importlib
import io
import os
import re
import shlex
import shutil
import socket
import tempfile
import typing
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed

import explain
import export
import hellaswag
import plot
import sample
import train
from gptkit import data, datasets, serve, settings
from gptkit.checkpoint import load_checkpoint
from gptkit.datasets import prepare_shakespeare_char, prepare_text
from gptkit.hf import is_pretrained
from gptkit.settings import UserError, run_cli
from gptkit.train_settings import TrainConfig
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *(f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md")))]
SHARED_TIKTOKEN = ROOT.parent / "shared" / "data" / "tiktoken_cache"

# A text of tiny Shakespeare's 65 characters, short enough to train on in a second.
SHAKESPEARE = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
CHARS = "".join(sorted(set(SHAKESPEARE)))
TEXT = SHAKESPEARE[:6000] + CHARS
CPU = ["--device=cpu", "--dtype=float32", "--compile=False"]
# The shared run's settings (4 layers: the doc's "n_layer=4 (settings: 6)"); a resume repeats them.
RUN = ["--n_layer=4", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
       "--gradient_accumulation_steps=1", "--max_iters=10", "--eval_interval=10", "--eval_iters=2",
       "--log_interval=5", "--warmup_iters=2", "--lr_decay_iters=10", "--learning_rate=1e-3", *CPU]


# ----------------------------------------------------------------------------- reading markdown

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


def read(name):
    return (ROOT / name).read_text(encoding="utf-8")


def split_markdown(text):
    """(prose, blocks): the text with its fenced code blanked out (line numbers kept), and each
    fenced block as (the line number of its first line, its lines)."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block = (number + 1, [])
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block[1].append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def code_spans(prose):
    """(line number, text) of each inline code span; a line break in one is a space."""
    for match in CODE_SPAN.finditer(prose):
        text = match.group(2).replace("\n", " ")
        if text.startswith(" ") and text.endswith(" ") and text.strip():
            text = text[1:-1]
        yield prose.count("\n", 0, match.start()) + 1, text


def tables(prose):
    """(header cells, [(line number, cells)]) of each table; `\\|` in a cell is a |."""
    found, rows = [], None
    for number, line in enumerate(prose.splitlines() + [""], 1):
        if not line.startswith("|"):
            rows = None
            continue
        if re.fullmatch(r"[|\-: ]+", line.strip()):
            continue  # the rule under the header
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if rows is None:
            rows = []
            found.append((cells, rows))
        else:
            rows.append((number, cells))
    return found


def section(text, heading):
    """The text under a heading, to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n") + len(heading) + 1
    end = re.search(rf"^#{{1,{level}}} ", text[start:], re.M)
    return text[start:start + end.start()] if end else text[start:]


# ----------------------------------------------------------------------------- 1. error messages

def quoted_errors():
    """[(where, quote)]: each message docs/errors.md's table quotes (a code span starting with
    `error:`, or a longer part of one, given in parentheses), and each README.md shows."""
    quotes = []
    prose, _ = split_markdown(read("docs/errors.md"))
    for _, rows in tables(prose):
        for number, cells in rows:
            quotes += [(f"docs/errors.md:{number}", quote) for _, quote in code_spans(cells[-1])
                       if quote.startswith("error: ") or len(quote) >= 40]
    _, blocks = split_markdown(section(read("README.md"), "## When something is wrong"))
    quotes += [("README.md (When something is wrong)", line) for line in blocks[0][1] if line.startswith("error: ")]
    return quotes


def pattern(quote):
    """A quote as a regular expression: an ellipsis (…) in it stands for text left out."""
    return ".+?".join(map(re.escape, quote.split("…")))


class Commands:
    """Runs our scripts in a folder of their own, the working directory (the doc's paths are
    relative), each to the one line its mistake prints; the helpers make there what a command
    needs first."""

    def __init__(self, folder, monkeypatch, capsys, trained):
        self.folder, self.monkeypatch, self.capsys, self.trained = folder, monkeypatch, capsys, trained
        monkeypatch.chdir(folder)

    def error(self, main, *args):
        """The one line main(args) prints on stderr, with exit status 2."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in args])
        err = self.capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), \
            f"exit status {exit_info.value.code}, stderr:\n{err}"
        return err.rstrip("\n")

    def train(self, *args):
        return self.error(train.main, *CPU, *args)

    def train_on(self, dataset, *args):
        """train.py with the shared run's settings, on a data set in the shared run's folder."""
        return self.train(*RUN, f"--data_dir={self.trained / 'data'}", f"--dataset={dataset}", *args)

    def sample(self, *args):
        return self.error(sample.main, "--device=cpu", "--max_new_tokens=5", *args)

    def explain(self, *args):
        return self.error(explain.main, *args, "--device=cpu")

    def export(self, *args):
        return self.error(export.main, *args)

    def hellaswag(self, *args):
        return self.error(hellaswag.main, "--device=cpu", *args)

    def plot(self, *args):
        return self.error(plot.main, *args)

    def prepare_text(self, *args):
        """prepare/text.py, named as its command line names it (argparse's messages say the name)."""
        self.monkeypatch.setattr("sys.argv", ["prepare/text.py"])
        return self.error(lambda argv: run_cli(importlib.import_module("prepare.text").main, argv), *args)

    def run(self, out_dir="out"):
        """The shared run's out_dir, copied here as out_dir."""
        shutil.copytree(self.trained / "out", self.folder / out_dir)
        return out_dir

    def file(self, name, content=""):
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
        return name

    def char_data(self, dataset, text=TEXT):
        prepare_shakespeare_char(self.folder / "data" / dataset, self.file(f"{dataset}.txt", text))
        return dataset

    def token_data(self, dataset, train_tokens, val_tokens):
        """data/dataset of 65 characters, its train.bin and val.bin holding these many tokens."""
        tokens = lambda n: np.arange(n, dtype=np.uint16) % len(CHARS)
        data.write_dataset(self.folder / "data" / dataset, tokens(train_tokens), tokens(val_tokens),
                           {"codec": "char", "vocab_size": len(CHARS), "chars": CHARS})
        return dataset

    def gpt2_data(self, dataset):
        """data/dataset in GPT-2's BPE (tiktoken's files are needed offline: skipped without them)."""
        if not os.environ.get("TIKTOKEN_CACHE_DIR") and SHARED_TIKTOKEN.is_dir():
            self.monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_TIKTOKEN))
        text = self.file("ice.txt", "A man scrapes the ice off the windshield of his car.\n" * 50)
        try:
            prepare_text(self.folder / "data" / dataset, text, "gpt2")
        except UserError as e:
            pytest.skip(f"GPT-2 BPE files not available offline (set TIKTOKEN_CACHE_DIR): {e}")
        return dataset

    def no_internet(self):
        self.monkeypatch.setattr(urllib.request, "urlopen", raises(urllib.error.URLError("no internet in this test")))
        self.monkeypatch.setattr("huggingface_hub.snapshot_download", raises(OSError("no internet in this test")))

    def disk_full(self, target, name):
        """target.name raises what a full disk raises."""
        self.monkeypatch.setattr(target, name, raises(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))

    def torchrun(self, world_size=2, rank=0):
        """What torchrun tells process `rank` of world_size on one node. The process group is not
        joined: no other process is there to join it."""
        for key, value in {"WORLD_SIZE": world_size, "RANK": rank, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": world_size,
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}.items():
            self.monkeypatch.setenv(key, str(value))
        self.monkeypatch.setattr(torch.distributed, "init_process_group", lambda *args, **kwargs: None)


def raises(exception):
    def fail(*args, **kwargs):
        raise exception
    return fail


def no_shipped_text(c):
    """A copy of the project without data/tinyshakespeare.txt, and no internet."""
    c.monkeypatch.setattr(datasets, "SHAKESPEARE_TEXT", c.folder / "not-shipped.txt")
    c.no_internet()
    return c.train("--dataset=shakespeare_char")


def truncated_token_file(c):
    c.token_data("x", 1000, 1000)
    c.file("data/x/train.bin", data.token_header(1_003_854) + bytes(1000))
    return c.train(*RUN, "--dataset=x")


def gpt2_offline(c):
    c.no_internet()
    return c.train("--init_from=gpt2")


def gpt2_on_char_data(c):
    """GPT-2's weights as the download gives them (stood in for by a small model of GPT-2's vocabulary)."""
    c.monkeypatch.setattr("gptkit.training.load_gpt2", lambda name, dropout=0.0: GPT(GPTConfig(
        block_size=32, vocab_size=50257, n_layer=1, n_head=1, n_embd=8)))
    return c.train("--init_from=gpt2", "--dataset", c.char_data("shakespeare_char"), "--block_size=16")


def under_torchrun(*args, train_on=None):
    def provoke(c):
        c.torchrun()
        return c.train_on(train_on, *args) if train_on else c.train(*args)
    return provoke


def more_processes_than_gpus(c):
    c.torchrun(world_size=16, rank=8)
    c.monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    c.monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    return c.train("--device=auto")


def resume_with(*args, train_on=None):
    """train.py --init_from=resume in a copy of the shared run."""
    def provoke(c):
        c.run()
        return c.train_on(train_on, "--init_from=resume", *args) if train_on else c.train("--init_from=resume", *args)
    return provoke


def disk_full_while_saving(c):
    c.disk_full(torch, "save")
    return resume_with("--max_iters=12", train_on="tiny")(c)


def other_data(c):
    c.run()
    return c.train(*RUN, "--init_from=resume", "--dataset", c.char_data("mydata", "a few other characters\n" * 40))


def truncated_checkpoint(c):
    path = Path(c.run()) / "ckpt.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return c.train(*RUN, "--init_from=resume")


def not_a_checkpoint(c):
    torch.save({"weights": torch.zeros(1)}, "x.pt")
    return c.sample("--checkpoint=x.pt")


def broken_metadata(c):
    state = load_checkpoint(c.trained / "out" / "best.pt")
    state["meta"] = {"codec": "char", "vocab_size": 3, "chars": ""}
    torch.save(state, "x.pt")
    return c.sample("--checkpoint=x.pt")


def model_no_layout_holds(c):
    """A checkpoint of the shared run's shape with configs/shakespeare_bpe_cpu.py's parts."""
    state = load_checkpoint(c.trained / "out" / "best.pt")
    parts = settings.load_settings(TrainConfig, [str(ROOT / "configs" / "shakespeare_bpe_cpu.py")])
    config = GPTConfig(**{**state["model_config"], **{name: getattr(parts, name) for name in (
        "pos_encoding", "norm", "qk_norm", "activation", "tie_embeddings", "logit_softcap")}})
    state["model"], state["model_config"] = GPT(config).state_dict(), asdict(config)
    Path("out-shakespeare-bpe-cpu").mkdir()
    torch.save(state, "out-shakespeare-bpe-cpu/best.pt")
    return c.export("--out_dir=out-shakespeare-bpe-cpu", "--to=hf/shakespeare")


def prepared_data_on_a_full_disk(c):
    c.disk_full(data, "write_tokens")
    return c.prepare_text("--input", c.file("my.txt", "some text\n" * 20), "--out_dir", "data/mine")


def hellaswag_offline(c):
    c.no_internet()
    return c.train(*RUN, "--dataset", c.gpt2_data("ice"), "--hellaswag_interval=10")


def wandb_without_login(c):
    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        c.monkeypatch.delenv(key)
    for key, value in {"HOME": c.folder, "WANDB_DIR": c.folder, "WANDB_MODE": "online"}.items():
        c.monkeypatch.setenv(key, str(value))
    return c.train_on("tiny", "--wandb_log=True", "--out_dir=out")


def port_in_use(c):
    c.run()
    c.monkeypatch.setattr(serve.PageServer, "serve_forever", lambda *args: pytest.fail("port 8000 was free"))
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 8000))
            taken.listen()
        except OSError as e:  # another program has it: in use all the same
            assert e.errno == errno.EADDRINUSE, e
        return c.explain("serve", "--out_dir=out", "--port=8000")


def bpe_of(text, *vocab_size):
    return lambda c: c.prepare_text("--input", c.file("my.txt", text), "--out_dir", "data/mine", "--tokenizer", "bpe",
                                    *vocab_size)


# (a fragment that identifies the quoted message, how to provoke it): every quote in the docs
# is claimed by exactly one fragment, and equals the line its provocation prints.
ERRORS = [
    ("unknown setting 'n_layers'", lambda c: c.train("--n_layers=4")),
    ("batch_size: expected int", lambda c: c.train("--batch_size=abc")),
    ("--out_dir needs a value", lambda c: c.train("--out_dir")),
    ("grad_clip must be >= 0", lambda c: c.train("--grad_clip=-1")),
    ("must be divisible by n_head", lambda c: c.train("--n_embd=384", "--n_head=5")),
    ("config file not found", lambda c: c.train("configs/nope.py")),
    ("no prepared data in data/mydata", lambda c: c.train("--dataset=mydata")),
    ("--vocab_size must be from", bpe_of("some text\n" * 20, "--vocab_size", "100")),
    ("pairs worth merging", bpe_of("abcd\n" * 100, "--vocab_size", "1024")),
    ("--tokenizer bpe needs --vocab_size", bpe_of("some text\n" * 20)),
    ("input.txt (…); put the file at", no_shipped_text),
    ("is empty; give it some text", lambda c: c.prepare_text("--input", c.file("my.txt"), "--out_dir", "data/mine")),
    ("val.bin has 0 tokens", lambda c: c.train(*RUN, "--dataset", c.token_data("x", 1000, 0), "--block_size=64")),
    ("train.bin has 2 tokens", lambda c: c.train(*RUN, "--dataset", c.token_data("tiny", 2, 1000), "--block_size=64")),
    ("is truncated: its header", truncated_token_file),
    ("smaller than the data's vocabulary", lambda c: c.train(*RUN, "--dataset", c.char_data("mydata"),
                                                              "--vocab_size=10")),
    ("device=cuda but CUDA", lambda c: pytest.skip("CUDA is available here") if torch.cuda.is_available() else
     c.train("--device=cuda")),
    ("batch_size must be at least 1", lambda c: c.train("--batch_size=0")),
    ("cannot download gpt2", gpt2_offline),
    ("reads GPT-2's BPE tokens, but", gpt2_on_char_data),
    ("no prepared data in data/openwebtext", lambda c: c.train("--dataset=openwebtext")),
    ("is the total across processes", under_torchrun("--gradient_accumulation_steps=3")),
    ("dtype=float16 needs a gradient scaler", under_torchrun("--gradient_accumulation_steps=2", "--fsdp=True",
                                                             "--dtype=float16", train_on="tiny")),
    ("device=cuda:1 under torchrun", under_torchrun("--device=cuda:1")),
    ("more processes on this node than it has GPUs", more_processes_than_gpus),
    ("init_from=resume but there is no checkpoint", lambda c: c.train("--init_from=resume")),
    ("already holds a run", lambda c: c.train_on("tiny", "--out_dir", c.run("out-shakespeare-char"))),
    ("trained on other data", other_data),
    ("holds a different model", resume_with("--n_layer=6")),
    ("is not a readable checkpoint", truncated_checkpoint),
    ("is not a checkpoint of this project (keys missing)", not_a_checkpoint),
    ("characters outside the model's vocabulary", lambda c: c.sample("--out_dir", c.run(), "--start=é")),
    ("is not UTF-8 text", lambda c: c.sample("--out_dir", c.run(), "--start=FILE:" + c.file("p.txt", b"\xff\xfe ok"))),
    ("is the file sampling reads", lambda c: c.sample("--out_dir", c.run(), "--probs_file=out/best.pt")),
    ("which Llama's does not", model_no_layout_holds),
    ("is a folder; name a checkpoint file", lambda c: c.sample("--checkpoint", c.run())),
    ("'chars' must be a non-empty string", broken_metadata),
    ("top_p must be in (0, 1]", lambda c: c.sample("--top_p=1.5")),
    ("cannot create out_dir", lambda c: c.train_on("tiny", "--out_dir", c.file("file.txt", "a file") + "/out")),
    ("cannot write the prepared data", prepared_data_on_a_full_disk),
    ("could not save a checkpoint", disk_full_while_saving),
    ("hellaswag_val.jsonl (…); put the file at", hellaswag_offline),
    ("best.pt reads a vocabulary of 65 characters", lambda c: c.hellaswag("--out_dir", c.run("out-shakespeare-char"))),
    ("hellaswag_interval=1000: data/shakespeare_char reads", lambda c: c.train(
        *RUN, "--dataset", c.char_data("shakespeare_char"), "--eval_interval=1000", "--hellaswag_interval=1000")),
    ("hellaswag_interval must be a multiple", lambda c: c.train("--hellaswag_interval=250")),
    ("cannot start Weights & Biases", wandb_without_login),
    ("the following arguments are required", lambda c: c.prepare_text("--input", c.file("my.txt", "text\n"))),
    ("on 127.0.0.1 is in use", port_in_use),
    ("cannot listen on", lambda c: c.explain("serve", "--out_dir", c.run(), "--host=10.9.9.9")),
    ("no metrics.jsonl in", lambda c: c.plot("out-x")),
    # a learning rate of inf: the first step's weights are inf, the next step's loss nan
    ("the loss is nan at iteration", resume_with("--learning_rate=1e999", "--decay_lr=False", "--max_iters=20",
                                                 train_on="tiny")),
    ("no checkpoint was saved yet", lambda c: c.train_on("tiny", "--learning_rate=1e999", "--decay_lr=False",
                                                          "--out_dir=out")),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of RUN's settings on 65 characters, as tiny Shakespeare's: (its folder, holding
    data/tiny and out/, and what train.py printed)."""
    root = tmp_path_factory.mktemp("trained")
    (root / "input.txt").write_text(TEXT, encoding="utf-8")
    prepare_shakespeare_char(root / "data" / "tiny", str(root / "input.txt"))
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, redirect_stdout(printed):
        monkeypatch.chdir(root)
        assert train.main([*RUN, f"--data_dir={root / 'data'}", "--dataset=tiny", f"--out_dir={root / 'out'}"]) == 0
    return root, printed.getvalue()


@pytest.mark.parametrize("fragment, provoke", ERRORS, ids=[fragment for fragment, _ in ERRORS])
def test_docs_error_message_is_what_the_command_prints(fragment, provoke, trained, tmp_path, monkeypatch, capsys):
    quotes = [(where, quote) for where, quote in quoted_errors() if fragment in quote]
    assert quotes, f"no error message quoted in docs/errors.md or README.md holds {fragment!r}"
    line = provoke(Commands(tmp_path, monkeypatch, capsys, trained[0]))
    for where, quote in quotes:
        whole = quote.startswith("error: ")  # else a part of a message, given in parentheses
        found = re.fullmatch(pattern(quote), line) if whole else re.search(pattern(quote), line)
        assert found, f"{where} quotes:\n  {quote}\nbut the command prints:\n  {line}"


def test_docs_every_quoted_error_message_is_provoked():
    quotes = quoted_errors()
    assert len(quotes) > 50, quotes
    for where, quote in quotes:
        claimed = [fragment for fragment, _ in ERRORS if fragment in quote]
        assert len(claimed) == 1, f"{where} quotes {quote!r}: claimed by {claimed or 'no entry'} of ERRORS, not one"


# ----------------------------------------------------------------------------- 2. settings

SETTINGS = {  # a doc's table of settings -> the dataclass that holds them
    "docs/settings.md": TrainConfig,
    "docs/explain.md": explain.ExplainConfig,
    "docs/sampling.md": sample.SampleConfig,
    "docs/hellaswag.md": hellaswag.HellaSwagConfig,
}
WORDS = {"none": "None", "newline": "\n"}  # a default the doc gives in words
NAMED_NONE = {("docs/explain.md", "out"): "explain_VIEW.png"}  # None, given as what it stands for


def documented_defaults(doc):
    """[(line number, setting, default as the doc writes it)] of the doc's tables headed
    setting (or option) | default: `a`, `b` | 1, 2 gives each its own; `a`, `b` | 1 both the same."""
    prose, _ = split_markdown(read(doc))
    found = []
    for header, rows in tables(prose):
        if header[:2] not in (["setting", "default"], ["option", "default"]):
            continue
        for number, cells in rows:
            names = [name.strip("` ").removeprefix("--") for name in cells[0].split(",")]
            values = [value.strip() for value in cells[1].split(",")] if len(names) > 1 else [cells[1]]
            values = values * len(names) if len(values) == 1 else values
            assert len(values) == len(names), f"{doc}:{number}: {len(names)} settings, {len(values)} defaults"
            found += [(number, name, value) for name, value in zip(names, values)]
    return found


def same(documented, default):
    """Equal and of one type (an int is taken for a float, as the command line takes it)."""
    if isinstance(default, float) and type(documented) is int:
        return documented == default
    return type(documented) is type(default) and documented == default


@pytest.mark.parametrize("doc", SETTINGS)
def test_docs_settings_have_the_defaults_the_doc_gives(doc):
    config = SETTINGS[doc]
    types = typing.get_type_hints(config)
    defaults = {f.name: f.default for f in fields(config)}
    rows = documented_defaults(doc)
    assert rows, f"{doc}: no table of settings and their defaults found"
    wrong = []
    for number, name, written in rows:
        if name not in defaults:
            wrong.append(f"{doc}:{number}: {name} is not a setting of {config.__name__}")
            continue
        text = written.strip("`")
        if (doc, name) in NAMED_NONE:
            documented = None if text == NAMED_NONE[doc, name] else text
        else:
            documented = settings._parse(WORDS.get(text, text), types[name])  # as the command line reads it
        if not same(documented, defaults[name]):
            wrong.append(f"{doc}:{number}: {name}: the doc says {written}, {config.__name__} has {defaults[name]!r}")
    assert not wrong, "\n".join(wrong)


def test_docs_settings_table_names_every_training_setting():
    named = {name for _, name, _ in documented_defaults("docs/settings.md")}
    missing = [f.name for f in fields(TrainConfig) if f.name not in named]
    assert not missing, f"docs/settings.md's 'Every training setting' leaves out {missing}"


# ----------------------------------------------------------------------------- 3. commands

NOT_OURS = {  # a fragment of each command shown that runs another project's script -> why
    "config/train_shakespeare_char.py": "nanoGPT's own train.py and config, run in a nanoGPT checkout",
}
OURS = {  # our settings scripts -> (the function that does the work, the settings it takes)
    "train": ("train", TrainConfig),
    "sample": ("sample", sample.SampleConfig),
    "export": ("export", export.ExportConfig),
    "hellaswag": ("score", hellaswag.HellaSwagConfig),
}
TRAINING_EXTRAS = {  # argparse scripts that pass what they do not parse to train.py -> its config files
    "benchmarks/train_speed.py": lambda parsed: [parsed.config],
    "benchmarks/options_table.py": lambda parsed: [parsed.config, "configs/gpt2_parts.py"],
}


class Parsed(Exception):
    """Raised where a script's parsing ends and its work would begin."""


def stop(*args, **kwargs):
    raise Parsed()


def shown_commands(doc):
    """[(line number, command, the error line shown after it, or None)] of each command in the
    doc's code blocks and inline code that runs a script: python X.py ..., torchrun ... X.py ..."""
    prose, blocks = split_markdown(read(doc))
    commands = []
    for first, lines in blocks:
        for i, line in enumerate(lines):
            line = line.strip().removeprefix("$ ")
            if re.match(r"(python|torchrun)\s", line):
                after = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("error: ") else None
                commands.append((first + i, line, after))
    commands += [(number, text, None) for number, text in code_spans(prose) if re.match(r"(python|torchrun)\s", text)]
    return commands


def is_placeholder(word):
    """CONFIG, DIR, N, LR/10: a word in capitals that the reader replaces."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*(?:/\d+)?", word) is not None


def script_and_args(command):
    """(script, arguments) of a command shown, or None where it runs no script; a shell comment,
    a pipe and [optional parts] left out."""
    words = shlex.split(command, comments=True)
    words = words[:next((i for i, word in enumerate(words) if word in ("|", "&&", ";", ">")), len(words))]
    script = next((i for i, word in enumerate(words) if word.endswith(".py")), None)
    if script is None:
        return None
    args, optional = [], False
    for word in words[script + 1:]:
        optional = optional or word.startswith("[")
        if not optional:
            args.append(word)
        optional = optional and not word.endswith("]")
    return words[script], args


def filled(args, config=None):
    """args with each placeholder value replaced by one the setting takes (its default, or 1
    for argparse); a config file named by a placeholder is left out."""
    defaults = {f.name: f.default for f in fields(config)} if config else {}
    out = []
    for arg in args:
        key, has_value, value = arg.partition("=")
        if arg.startswith("--") and has_value and is_placeholder(value):
            out.append(f"{key}={defaults.get(key[2:], 1)}")
        elif is_placeholder(arg) and out and out[-1].startswith("--") and "=" not in out[-1]:
            out.append(str(defaults.get(out[-1][2:], 1)))
        elif not (is_placeholder(arg) and config):
            out.append(arg)
    return out


def user_folder(arg, folders):
    """--init_from naming a Hugging Face folder the user has: such a folder, made in folders."""
    key, _, value = arg.partition("=")
    if key != "--init_from" or value in ("resume", "scratch", "auto") or is_pretrained(value) or is_placeholder(value):
        return arg
    folder = folders / f"folder{len(list(folders.iterdir()))}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return f"--init_from={folder}"


def parse(script, args):
    """Parse a command line as the script does, in the repo's folder, stopped where its work
    would begin: None if it parses, else what is wrong."""
    module_name = script.removesuffix(".py").replace("/", ".")
    module = importlib.import_module(module_name)
    stderr, summary_files = io.StringIO(), []
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as folders:
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr("sys.stderr", stderr)
        monkeypatch.setattr("sys.stdout", io.StringIO())
        args = [user_folder(arg, Path(folders)) for arg in args]
        try:
            if module_name in OURS:
                work, config = OURS[module_name]
                monkeypatch.setattr(module, work, stop)
                module.main(filled(args, config))
            elif module_name == "explain":
                def view(config, files):
                    summary_files.extend(files)
                    raise Parsed()
                for name in explain.VIEWS:
                    monkeypatch.setitem(explain.VIEWS, name, view)
                monkeypatch.setattr(explain, "serve_view", view)
                explain.main(args[:1] + filled(args[1:], explain.ExplainConfig))
            else:
                return parse_argparse(script, module, args, monkeypatch)
        except Parsed:
            return summary_problem(summary_files)
        except SystemExit as e:
            if e.code in (0, None):  # --help
                return None
            return stderr.getvalue().strip().removeprefix("error: ") or f"exit status {e.code}"
        except UserError as e:
            return str(e)
    return f"{script} did not stop where its work begins"


def summary_problem(files):
    """What is wrong with the training config files given to explain.py summary, which reads
    them as train.py does, or None."""
    try:
        settings.load_settings(TrainConfig, files) if files else None
    except UserError as e:
        return str(e)
    return None


def parse_argparse(script, module, args, monkeypatch):
    """parse() for a script with an argparse command line: its own parser, stopped once parsed."""
    parsed = []
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        parsed.append(original(self, args, namespace))
        raise Parsed()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
    monkeypatch.setattr(argparse.ArgumentParser, "error", lambda self, message: raises(UserError(message))())
    try:
        module.main(filled(args))
    except Parsed:
        pass
    if not parsed:
        return f"{script} did not parse its command line"
    namespace, extras = parsed[0]
    if script in TRAINING_EXTRAS:
        files = [file for file in TRAINING_EXTRAS[script](namespace) if not is_placeholder(file)]
        settings.load_settings(TrainConfig, [*files, *filled(extras, TrainConfig)])
    elif extras:
        return f"unrecognized arguments: {' '.join(extras)}"
    return None


def command_problems(doc):
    problems = []
    for number, command, error in shown_commands(doc):
        found = script_and_args(command)
        if found is None or any(fragment in command for fragment in NOT_OURS):
            continue
        script, args = found
        problem = parse(script, args) if (ROOT / script).is_file() else f"no script {script} in the repo"
        if error is not None:  # the doc shows this command's mistake: it must be that one
            if f"error: {problem}" != error:
                problems.append(f"{doc}:{number}: {command}\n    the doc shows {error!r} after it, but it gives "
                                + (f"error: {problem}" if problem else "no error"))
        elif problem is not None:
            problems.append(f"{doc}:{number}: {command}\n    {problem}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_docs_commands_parse(doc):
    problems = command_problems(doc)
    assert not problems, "commands that do not parse:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- 4. links

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading):
    """GitHub's anchor of a heading: lower case, spaces to -, punctuation but - and _ dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    prose, _ = split_markdown(path.read_text(encoding="utf-8"))
    seen, found = {}, set()
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", prose, re.M):
        base = slug(match.group(1))
        found.add(base if base not in seen else f"{base}-{seen[base]}")  # a repeated heading: -1, -2, ...
        seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_docs_links_resolve(doc):
    prose, _ = split_markdown(read(doc))
    prose = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), prose)  # a link shown as code is not one
    broken = []
    for match in LINK.finditer(prose):
        target = match.group(1)
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        number = prose.count("\n", 0, match.start()) + 1
        file, _, anchor = target.partition("#")
        path = (ROOT / doc).parent / file if file else ROOT / doc
        if not path.exists():
            broken.append(f"{doc}:{number}: {target}: there is no {os.path.relpath(path, ROOT)}")
        elif anchor and anchor not in anchors(path):
            broken.append(f"{doc}:{number}: {target}: {os.path.relpath(path, ROOT)} has no heading #{anchor}")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


# ----------------------------------------------------------------------------- 5. sample outputs

NUMBER = r"\d[\d,.:]*(?:e[+-]\d+)?"  # 2,048  0.35  1.047e+12  2:23


def shape(line):
    """A printed line as a regular expression that it matches with any other figures."""
    parts = re.split(f"({NUMBER})", line)
    return "".join(NUMBER if i % 2 else re.escape(part) for i, part in enumerate(parts))


def test_docs_watching_log_lines_are_what_train_prints(trained):
    _, printed = trained
    _, blocks = split_markdown(read("docs/watching.md"))
    quoted = blocks[0][1]
    assert quoted and all(line.startswith(("iter ", "step ")) for line in quoted), quoted
    for line in quoted:
        assert any(re.fullmatch(shape(line), printed_line) for printed_line in printed.splitlines()), \
            f"docs/watching.md quotes\n  {line}\nbut train.py printed no line of that form:\n{printed}"


def test_docs_explain_summary_is_what_the_command_prints(tmp_path, monkeypatch, capsys):
    _, blocks = split_markdown(read("docs/explain.md"))
    quoted = next(lines for _, lines in blocks if any(line.startswith("parameters ") for line in lines))
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    assert explain.main(["summary", "configs/gpt3/175b.py", "--untied", f"--out={tmp_path / 'summary.png'}"]) == 0
    printed = capsys.readouterr().out.replace(str(tmp_path / "summary.png"), "explain_summary.png").splitlines()
    assert quoted == printed, ("docs/explain.md's summary of GPT-3 175B is not what `python explain.py summary "
                               "configs/gpt3/175b.py --untied` prints, which is:\n" + "\n".join(printed))


def test_docs_readme_results_table_is_the_one_results_py_writes():
    # The README's results table is made by benchmarks/results.py from its rows' commands: the
    # commands shown are the ones it runs, in its order, and rewriting the table keeps the rest.
    results = importlib.import_module("benchmarks.results")
    readme = read("README.md")
    block = readme[readme.index(results.BEGIN) + len(results.BEGIN): readme.index(results.END)]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| what ")]
    shown = [re.findall(r"`([^`]+)`", row.split(" | ")[1])[-1] for row in rows]
    assert shown == [command for _, command, _ in results.ROWS.values()], \
        "README.md's results table and benchmarks/results.py's ROWS differ: run python benchmarks/results.py"
    assert block.strip().startswith("`python benchmarks/results.py"), "the table's machine line is missing"
    rewritten = results.replace_table(readme, "NEW")
    assert rewritten.replace(results.BEGIN + "\nNEW\n", results.BEGIN + block) == readme
