"""Large-corpus preparation (gptkit/corpus.py, prepare/openwebtext.py and fineweb.py), offline: small local
json, jsonl, parquet and txt files stand in for the Hugging Face download."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptkit.corpus import prepare_corpus
from gptkit.datasets import ensure_data
from prepare import fineweb
from gptkit.data import HEADER_BYTES, read_meta, read_tokens
from gptkit.settings import UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent
SHARED_TIKTOKEN = ROOT.parent / "shared" / "data" / "tiktoken_cache"
EOT = 50256

# Distinct documents, some awkward: unicode, an empty one, the end-of-text marker as plain text.
DOCS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Ünïcödé ✓ text, with ß and 日本語.\n",
    "",
    "<|endoftext|> is only text inside a document.",
    "Numbers 12345 and   spaces\tand tabs.",
    "A third of the way through.",
    "Short.",
    "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar, not to praise him.",
    "The quality of mercy is not strained;",
    "Now is the winter of our discontent",
    "Last one, no newline at its end",
]


@pytest.fixture(autouse=True)
def gpt2(monkeypatch):
    if not os.environ.get("TIKTOKEN_CACHE_DIR") and SHARED_TIKTOKEN.is_dir():
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_TIKTOKEN))
    from gptkit.data import TiktokenCodec
    try:
        return TiktokenCodec("gpt2").encoding
    except UserError as e:
        pytest.skip(f"GPT-2 BPE files not available offline (set TIKTOKEN_CACHE_DIR): {e}")


def write_corpus(folder, kind, docs=DOCS):
    """Local files holding docs, in order, of one kind; returns the --data_files naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "json":  # jsonl, gzipped jsonl and a json array together, with a field besides the text
        rows = [{"id": i, "text": doc} for i, doc in enumerate(docs)]
        (folder / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:5]))
        with gzip.open(folder / "b.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows[5:8])
        (folder / "c.json").write_text(json.dumps(rows[8:]))
        return [str(folder / "a.jsonl"), str(folder / "b.jsonl.gz"), str(folder / "c.json")]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        for part, rows in (("p1", docs[:7]), ("p2", docs[7:])):
            pq.write_table(pa.table({"url": [f"https://example.com/{i}" for i in range(len(rows))], "text": rows}),
                           folder / f"{part}.parquet")
        return [str(folder / "*.parquet")]
    for i, doc in enumerate(docs):  # txt: a file is a document
        (folder / f"doc{i:02d}.txt").write_text(doc)
    return [str(folder / "doc*.txt")]


def prepare(tmp_path, data_files, out="out", **options):
    options = {"val_fraction": 0.3, "num_proc": 1, "cache_dir": tmp_path / "hf", **options}
    prepare_corpus(tmp_path / out, "unused/offline", data_files=data_files, **options)
    return tmp_path / out


def read_split(path):
    tokens = read_tokens(path)
    assert os.path.getsize(path) == HEADER_BYTES + 2 * len(tokens)  # the header's count is the file's
    return tokens


def documents(tokens):
    """A token file cut after each end-of-text token: one list of ids per document."""
    assert len(tokens) and tokens[-1] == EOT
    return [part.tolist() for part in np.split(tokens, np.flatnonzero(tokens == EOT) + 1)[:-1]]


# ----------------------------------------------------------------------------- the token files

@pytest.mark.parametrize("kind", ["json", "parquet", "txt"])
def test_every_document_is_its_tokens_then_end_of_text(tmp_path, gpt2, kind):
    out = prepare(tmp_path, write_corpus(tmp_path / "src", kind))
    train, val = read_split(out / "train.bin"), read_split(out / "val.bin")
    expected = [gpt2.encode_ordinary(doc) + [EOT] for doc in DOCS]
    assert len(train) + len(val) == sum(map(len, expected))

    # each document lies whole in train or in val, in the corpus' order
    train_docs, val_docs = documents(train), documents(val)
    in_val = []
    for ids in expected:
        in_val.append(bool(val_docs) and val_docs[0] == ids)
        assert (val_docs if in_val[-1] else train_docs).pop(0) == ids
    assert train_docs == val_docs == []
    # the validation documents: a draw per document with the fixed seed, nanoGPT's 2357
    assert in_val == (np.random.default_rng(2357).random(len(DOCS)) < 0.3).tolist()
    assert 0 < sum(in_val) < len(DOCS)

    assert read_meta(out) == {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": 50257}
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_same_bytes_whatever_the_processes_and_batches(tmp_path):
    data_files = write_corpus(tmp_path / "src", "json", DOCS * 3)
    one = prepare(tmp_path, data_files, "one", num_proc=1, batch_size=1000)
    two = prepare(tmp_path, data_files, "two", num_proc=2, batch_size=2)
    odd = prepare(tmp_path, data_files, "odd", num_proc=1, batch_size=5)
    for name in ("train.bin", "val.bin"):
        assert (one / name).read_bytes() == (two / name).read_bytes() == (odd / name).read_bytes()
    assert len(read_tokens(two / "val.bin")) > 0


def test_another_seed_chooses_other_documents(tmp_path):
    data_files = write_corpus(tmp_path / "src", "json", DOCS * 3)
    first, second = prepare(tmp_path, data_files, "a"), prepare(tmp_path, data_files, "b", seed=1)
    assert (first / "val.bin").read_bytes() != (second / "val.bin").read_bytes()


def test_a_text_field_of_another_name(tmp_path, gpt2):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"content": DOCS}), tmp_path / "x.parquet")
    out = prepare(tmp_path, [str(tmp_path / "x.parquet")], text_field="content")
    assert len(read_tokens(out / "train.bin")) + len(read_tokens(out / "val.bin")) == \
        sum(len(gpt2.encode_ordinary(doc)) + 1 for doc in DOCS)


# ----------------------------------------------------------------------------- a user's mistakes

def test_refuses_to_overwrite_prepared_data(tmp_path):
    data_files = write_corpus(tmp_path / "src", "json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"somebody's nanoGPT tokens")
    with pytest.raises(UserError, match=f"{out} already holds prepared data .*--overwrite"):
        prepare(tmp_path, data_files)
    assert (out / "train.bin").read_bytes() == b"somebody's nanoGPT tokens"
    assert sorted(p.name for p in out.iterdir()) == ["train.bin"]

    prepare(tmp_path, data_files, overwrite=True)
    assert len(read_tokens(out / "train.bin")) and read_meta(out)["encoding"] == "gpt2"


@pytest.mark.parametrize("files, options, fragment", [
    (["nothing_here_*.jsonl"], [], "matches no file"),
    (["src"], [], "is a folder"),
    (["src/a.jsonl", "src/b.parquet"], [], "mixes kinds of file (json: "),
    (["src/notes.md"], [], "takes .json, .jsonl, .parquet or .txt"),
    (["src/broken.jsonl"], [], "cannot read the --data_files as json (JSON parse error"),
    (["src/a.jsonl"], ["--text_field", "body"],
     "has no field 'body' (its columns: text, id); name the one holding the text with --text_field"),
    (["src/a.jsonl"], ["--text_field", "id"], "field 'id' holds Value('int64'), not text"),
    (["src/a.jsonl"], ["--val_fraction", "0.0005"], "--val_fraction 0.0005 puts 0 of them in validation"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, capfd, files, options, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text("".join(json.dumps({"text": d, "id": 1}) + "\n" for d in DOCS))
    (tmp_path / "src" / "b.parquet").write_bytes(b"not really")
    (tmp_path / "src" / "notes.md").write_text("# notes")
    (tmp_path / "src" / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(SystemExit) as info:
        run_cli(fineweb.main, ["--data_files", *files, "--out_dir", "out", "--cache_dir", "hf", "--val_fraction",
                               "0.3", *options])
    err = capfd.readouterr().err
    assert info.value.code == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: ") and fragment in err, err
    assert not (tmp_path / "out").exists()


def run_script(script, *args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not env.get("TIKTOKEN_CACHE_DIR") and SHARED_TIKTOKEN.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(SHARED_TIKTOKEN)
    return subprocess.run([sys.executable, f"prepare/{script}.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.slow
def test_hub_unreachable_says_what_to_do(tmp_path):
    result = run_script("fineweb", "--out_dir", str(tmp_path / "out"),
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert "could not download HuggingFaceFW/fineweb-edu (sample-10BT)" in result.stderr
    assert "--data_files" in result.stderr and "internet" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_text_field_from_the_script(tmp_path):
    data_files = write_corpus(tmp_path / "src", "parquet")
    result = run_script("fineweb", "--data_files", *data_files, "--text_field", "body",
                        "--out_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "hf"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert "no field 'body' (its columns: url, text)" in result.stderr


# ----------------------------------------------------------------------------- the scripts

@pytest.mark.slow
@pytest.mark.parametrize("script, kind", [("openwebtext", "json"), ("fineweb", "txt")])
def test_script_prepares_local_files(tmp_path, gpt2, script, kind):
    out = tmp_path / "out"
    result = run_script(script, "--data_files", *write_corpus(tmp_path / "src", kind), "--out_dir", str(out),
                        "--cache_dir", str(tmp_path / "hf"), "--val_fraction", "0.3", "--num_proc", "2")
    assert result.returncode == 0, result.stderr
    tokens = sum(len(gpt2.encode_ordinary(doc)) + 1 for doc in DOCS)
    assert len(read_split(out / "train.bin")) + len(read_split(out / "val.bin")) == tokens
    summary = result.stdout.splitlines()[-1]
    assert f"{len(DOCS)} documents" in summary and "tokens/s" in summary and str(out) in summary


@pytest.mark.parametrize("dataset", ["openwebtext", "fineweb"])
def test_corpora_are_never_prepared_by_train(tmp_path, dataset):
    """train.py prepares a missing data set by its recipe: a download of tens of gigabytes must
    not start that way, but be named as the user's step."""
    with pytest.raises(UserError, match=f"make it first with python prepare/{dataset}.py"):
        ensure_data(tmp_path, dataset)
    assert not (tmp_path / dataset).exists()


def test_an_error_is_reported_by_its_first_meaningful_line():
    from gptkit.settings import reason

    assert reason(ValueError('"""\nSchema at index 1 was different:\ntext: string')) == \
        "Schema at index 1 was different:"
    assert reason(ValueError("")) == "ValueError"
