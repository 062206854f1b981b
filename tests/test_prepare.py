"""Data preparation: codecs, token files, metadata, downloads and the prepare script."""

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from gptkit import datasets
from gptkit.files import atomic_write
from gptkit.datasets import find_or_download, prepare_shakespeare, prepare_shakespeare_char, prepare_text
from prepare import shakespeare_char, text
from gptkit.data import CharCodec, read_meta, read_tokens, write_tokens
from gptkit.settings import UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent

TEXT = ("To be, or not to be, that is the question:\n"
        "Whether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\n") * 7


def decode_file(path, codec):
    return codec.decode(read_tokens(path).tolist())


# ----------------------------------------------------------------------------- CharCodec

@pytest.mark.parametrize("text", [TEXT, "héllo wörld ✓ — ünïcode\n\ttabs"])
def test_char_codec_round_trip(text):
    codec = CharCodec("".join(sorted(set(text))))
    ids = codec.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < codec.vocab_size for i in ids)
    assert codec.decode(ids) == text
    assert codec.vocab_size == len(set(text))
    assert codec.eot_token is None


def test_char_codec_rejects_unknown_character():
    codec = CharCodec("abc ")
    with pytest.raises(UserError) as info:
        codec.encode("a cab Z")
    assert "'Z'" in str(info.value)
    assert "vocabulary" in str(info.value)


# ----------------------------------------------------------------------------- prepare()

@pytest.mark.parametrize("text", [TEXT, "Ünïcödé ✓ text, with ß and 日本語.\n" * 13])
def test_prepare_splits_90_10_in_order(tmp_path, text):
    source = tmp_path / "input.txt"
    source.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "prepared"
    prepare_shakespeare_char(out_dir, str(source))

    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["codec"] == "char"
    assert meta["chars"] == "".join(sorted(set(text)))
    assert meta["vocab_size"] == len(set(text))
    assert read_meta(out_dir) == meta

    codec = CharCodec(meta["chars"])
    train_text = decode_file(out_dir / "train.bin", codec)
    val_text = decode_file(out_dir / "val.bin", codec)
    assert train_text + val_text == text
    assert abs(len(val_text) - len(text) / 10) <= 1
    assert len(train_text) > len(val_text) > 0
    assert read_tokens(out_dir / "train.bin").dtype == np.uint16
    # only the outputs, no temporary files
    assert sorted(p.name for p in out_dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_prepare_again_replaces_the_data(tmp_path):
    source = tmp_path / "input.txt"
    out_dir = tmp_path / "prepared"
    source.write_text("abcabcabcabcabcabcabcabcabcabc")
    prepare_shakespeare_char(out_dir, str(source))
    source.write_text("xyz" * 20)
    prepare_shakespeare_char(out_dir, str(source))
    meta = read_meta(out_dir)
    assert meta["chars"] == "xyz"
    codec = CharCodec(meta["chars"])
    assert decode_file(out_dir / "train.bin", codec) + decode_file(out_dir / "val.bin", codec) == "xyz" * 20


def test_read_meta_missing(tmp_path):
    with pytest.raises(UserError) as info:
        read_meta(tmp_path)
    assert str(tmp_path / "meta.json") in str(info.value)
    assert "prepare the data again" in str(info.value)


@pytest.mark.parametrize("meta, fragment", [
    ("[1, 2]", "not a JSON object"),
    ('{"codec": "char", "vocab_size": 2}', "'chars'"),
    ('{"codec": "char", "vocab_size": 5, "chars": "ab"}', "'vocab_size' must equal"),
    ('{"codec": "tiktoken", "vocab_size": 50257}', "'encoding'"),
    ('{"codec": "tiktoken", "vocab_size": "many", "encoding": "gpt2"}', "'vocab_size' must be a positive"),
    ('{"vocab_size": 2}', "unknown codec None"),
])
def test_read_meta_says_what_is_wrong(tmp_path, meta, fragment):
    (tmp_path / "meta.json").write_text(meta)
    with pytest.raises(UserError) as info:
        read_meta(tmp_path)
    assert fragment in str(info.value) and "prepare the data again" in str(info.value)


def test_prepare_into_a_place_it_cannot_write(tmp_path, capsys):
    source = tmp_path / "input.txt"
    source.write_text("hello there\n" * 20)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        run_cli(shakespeare_char.main, ["--input", str(source), "--out_dir", str(blocker / "data")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot write the prepared data" in err and "--out_dir" in err
    assert blocker.read_text() == "not a folder"


def test_input_that_is_a_folder(tmp_path, no_internet):
    with pytest.raises(UserError, match="is a folder; give it a text file"):
        find_or_download(tmp_path, "input.txt", "https://example.invalid/x", str(tmp_path))


def test_byte_order_mark_is_not_a_character(tmp_path):
    source = tmp_path / "input.txt"
    source.write_bytes(("\ufeff" + "abc\r\nab\r\n" * 10).encode("utf-8"))  # as Windows Notepad saves it
    prepare_shakespeare_char(tmp_path / "data", str(source))
    assert read_meta(tmp_path / "data")["chars"] == "\nabc"


# ----------------------------------------------------------------------------- token files

def test_token_file_round_trip(tmp_path):
    tokens = np.array([0, 1, 2, 65535, 300, 7], dtype=np.int64)
    write_tokens(tmp_path / "t.bin", tokens)
    read = read_tokens(tmp_path / "t.bin")
    assert read.dtype == np.uint16
    assert read.tolist() == tokens.tolist()
    write_tokens(tmp_path / "empty.bin", [])
    assert len(read_tokens(tmp_path / "empty.bin")) == 0


@pytest.mark.parametrize("bad", [[-1], [65536], [1, 2, 70000]])
def test_write_tokens_rejects_ids_that_do_not_fit(tmp_path, bad):
    with pytest.raises(ValueError):
        write_tokens(tmp_path / "t.bin", bad)
    assert list(tmp_path.iterdir()) == []


def assert_prepare_again(path):
    with pytest.raises(UserError) as info:
        read_tokens(path)
    message = str(info.value)
    assert str(path) in message
    assert "prepare the data again" in message
    return message


def test_read_tokens_wrong_magic(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(50))
    data = bytearray(path.read_bytes())
    data[:8] = np.array([12345], dtype="<i8").tobytes()
    path.write_bytes(bytes(data))
    assert_prepare_again(path)


def test_read_tokens_foreign_file(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(2000, dtype=np.uint16).tofile(path)  # a raw uint16 dump without the header
    assert_prepare_again(path)


@pytest.mark.parametrize("size", [0, 13, 1000])
def test_read_tokens_file_shorter_than_header(tmp_path, size):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(50))
    path.write_bytes(path.read_bytes()[:size])
    assert_prepare_again(path)


def test_read_tokens_truncated(tmp_path):
    path = tmp_path / "t.bin"
    tokens = np.arange(50)
    write_tokens(path, tokens)
    path.write_bytes(path.read_bytes()[:-6])  # three tokens short
    message = assert_prepare_again(path)
    assert "truncated" in message and str(len(tokens)) in message


def test_read_tokens_missing_file(tmp_path):
    assert_prepare_again(tmp_path / "nope.bin")


def test_read_tokens_wrong_version(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(5))
    data = bytearray(path.read_bytes())
    data[8:16] = np.array([99], dtype="<i8").tobytes()
    path.write_bytes(bytes(data))
    assert_prepare_again(path)


# ----------------------------------------------------------------------------- atomic writes

def test_write_tokens_leaves_no_temp_files(tmp_path):
    for i in range(3):
        write_tokens(tmp_path / "t.bin", np.arange(10 + i))
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(100))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half a file")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]
    assert read_tokens(path).tolist() == list(range(100))


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.txt", "w") as f:
            f.write("partial")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_the_file_instead_of_overwriting_it(tmp_path):
    """A reader of the old file (a training run's memory map) keeps seeing the old tokens whole."""
    path = tmp_path / "t.bin"
    old = np.arange(1000) % 50
    write_tokens(path, old)
    mapped = read_tokens(path)
    write_tokens(path, np.full(1000, 7))
    assert mapped.tolist() == old.tolist()
    assert read_tokens(path).tolist() == [7] * 1000


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with atomic_write(tmp_path / "atomic.txt", "w") as f:
        f.write("x")
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_atomic_write_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "t.bin"
    write_tokens(path, [1, 2, 3])
    assert read_tokens(path).tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- find_or_download

@pytest.fixture
def no_internet(monkeypatch):
    calls = []

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no internet here")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return calls


@pytest.mark.parametrize("error", [urllib.error.URLError("offline"), OSError("network unreachable")])
def test_download_failure_says_what_to_do(tmp_path, monkeypatch, error):
    def urlopen(*args, **kwargs):
        raise error
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(UserError) as info:
        find_or_download(tmp_path, "input.txt", "https://example.invalid/input.txt")
    message = str(info.value)
    assert str(tmp_path / "input.txt") in message
    assert "--input" in message
    assert not (tmp_path / "input.txt").exists()


def test_existing_file_is_used_without_download(tmp_path, no_internet):
    (tmp_path / "input.txt").write_text("hello")
    assert find_or_download(tmp_path, "input.txt", "https://example.invalid/x") == tmp_path / "input.txt"
    assert no_internet == []


def test_input_path_wins(tmp_path, no_internet):
    mine = tmp_path / "mine.txt"
    mine.write_text("mine")
    (tmp_path / "input.txt").write_text("other")
    assert find_or_download(tmp_path, "input.txt", "https://example.invalid/x", str(mine)) == mine
    assert no_internet == []


def test_missing_input_path(tmp_path, no_internet):
    missing = tmp_path / "missing.txt"
    with pytest.raises(UserError) as info:
        find_or_download(tmp_path, "input.txt", "https://example.invalid/x", str(missing))
    assert str(missing) in str(info.value)
    assert no_internet == []


def test_download_writes_the_file(tmp_path, monkeypatch):
    payload = "downloaded text\n".encode() * 20_000  # several chunks of the download's reads

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: Response(payload))
    path = find_or_download(tmp_path / "data", "input.txt", "https://example.invalid/input.txt")
    assert path == tmp_path / "data" / "input.txt"
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["input.txt"]


def test_prepare_without_internet_or_file(tmp_path, no_internet, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "SHAKESPEARE_TEXT", tmp_path / "not-shipped.txt")  # a copy without the text
    with pytest.raises(UserError) as info:
        prepare_shakespeare_char(tmp_path / "d")
    assert str(tmp_path / "d" / "input.txt") in str(info.value)
    assert not (tmp_path / "d" / "train.bin").exists()


# ----------------------------------------------------------------------------- the script

def run_script(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "prepare/shakespeare_char.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_prepare_script_runs(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text(TEXT)
    out_dir = tmp_path / "out"
    result = run_script("--input", str(source), "--out_dir", str(out_dir))
    assert result.returncode == 0, result.stderr
    meta = read_meta(out_dir)
    codec = CharCodec(meta["chars"])
    assert decode_file(out_dir / "train.bin", codec) + decode_file(out_dir / "val.bin", codec) == TEXT


def test_prepare_script_writes_the_shipped_text_in_llmc_format(tmp_path):
    out_dir = tmp_path / "shakespeare_char"
    result = run_script("--out_dir", str(out_dir))  # no --input: the text that ships, no download
    assert result.returncode == 0, result.stderr
    header = np.fromfile(out_dir / "train.bin", dtype="<i4", count=3)
    assert header[0] == 20240520 and header[1] == 1 and header[2] == 1_003_854  # 90% of 1,115,394 characters
    assert read_meta(out_dir)["vocab_size"] == 65


def test_prepare_script_missing_input(tmp_path):
    missing = tmp_path / "missing.txt"
    result = run_script("--input", str(missing), "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and str(missing) in lines[0]
    assert not (tmp_path / "out" / "train.bin").exists()


# ----------------------------------------------------------------------------- GPT-2 BPE

def test_tiktoken_codec_round_trip(gpt2_codec):
    text = "Hello, world! Ünïcode ✓ and spaces   here.\n<|endoftext|>Next document."
    ids = gpt2_codec.encode(text)
    assert gpt2_codec.decode(ids) == text
    assert gpt2_codec.eot_token == 50256
    assert gpt2_codec.eot_token in ids  # the end-of-text marker is one token
    assert gpt2_codec.vocab_size == gpt2_codec.eot_token + 1
    assert max(ids) < gpt2_codec.vocab_size <= 2**16  # fits a token file


SHAKESPEARE = ROOT / "data" / "tinyshakespeare.txt"  # ships with the project


def test_the_shipped_text_is_tiny_shakespeare():
    assert hashlib.md5(SHAKESPEARE.read_bytes()).hexdigest() == "6fb458f1232090904fb40fe944165e91"


def test_shakespeare_bpe_gives_nanogpts_counts(gpt2_codec, tmp_path):
    codec = gpt2_codec
    out_dir = tmp_path / "shakespeare"
    prepare_shakespeare(out_dir)  # from the shipped text
    train, val = read_tokens(out_dir / "train.bin"), read_tokens(out_dir / "val.bin")
    assert (len(train), len(val)) == (301_966, 36_059)  # the counts nanoGPT's data/shakespeare documents
    assert train.dtype == np.uint16
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert codec.decode(train.tolist()) + codec.decode(val.tolist()) == text
    assert read_meta(out_dir) == {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": 50257}


def test_bpe_data_trains_and_samples(gpt2_codec, monkeypatch, tmp_path):
    """GPT-2 BPE end to end: prepare, train a tiny model a few steps (its vocabulary padded to
    50304), sample text back through the BPE."""
    import sample
    import train

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "input.txt"
    source.write_text(TEXT * 20)
    prepare_shakespeare(tmp_path / "data" / "bpe", input_path=str(source))
    out = tmp_path / "out"
    assert train.main([f"--data_dir={tmp_path / 'data'}", "--dataset=bpe", f"--out_dir={out}", "--n_layer=1",
                       "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2",
                       "--gradient_accumulation_steps=1", "--max_iters=4", "--eval_interval=2", "--eval_iters=1",
                       "--warmup_iters=1", "--lr_decay_iters=4", "--device=cpu", "--dtype=float32"]) == 0
    from gptkit.checkpoint import load_checkpoint
    assert load_checkpoint(out / "ckpt.pt")["model_config"]["vocab_size"] == 50304
    texts = sample.sample(sample.SampleConfig(out_dir=str(out), start="To be", max_new_tokens=8, device="cpu"),
                          out=io.StringIO())
    assert len(texts) == 1 and texts[0]


def own_text_folder(tmp_path):
    folder = tmp_path / "texts"
    (folder / "more").mkdir(parents=True)
    (folder / "a.txt").write_text("First file.")
    (folder / "more" / "b.txt").write_text("Second file, in a subfolder.\n")
    (folder / "c.md").write_text("Third.")
    (folder / ".hidden").write_text("never read")
    return folder


def test_own_text_folder_char(tmp_path):
    prepare_text(tmp_path / "mine", own_text_folder(tmp_path), tokenizer="char")
    meta = read_meta(tmp_path / "mine")
    codec = CharCodec(meta["chars"])
    whole = decode_file(tmp_path / "mine" / "train.bin", codec) + decode_file(tmp_path / "mine" / "val.bin", codec)
    assert whole == "First file.\nThird.\nSecond file, in a subfolder.\n"  # sorted by path, a newline between
    assert len(read_tokens(tmp_path / "mine" / "train.bin")) == int(len(whole) * 0.9)


def test_own_text_char_trains_and_samples(monkeypatch, tmp_path):
    """The README's own-text recipe: prepare/text.py, then train.py on it, then sample.py."""
    import sample
    import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text(TEXT * 5)
    assert text.main(["--input", "mine.txt", "--out_dir", "data/mine"]) is None
    assert train.main(["--dataset=mine", "--out_dir=out-mine", "--n_layer=1", "--n_head=2", "--n_embd=16",
                       "--block_size=16", "--batch_size=2", "--gradient_accumulation_steps=1", "--max_iters=4",
                       "--eval_interval=2", "--eval_iters=1", "--warmup_iters=1", "--lr_decay_iters=4",
                       "--device=cpu", "--dtype=float32"]) == 0
    texts = sample.sample(sample.SampleConfig(out_dir="out-mine", start=TEXT[:3], max_new_tokens=8, device="cpu"),
                          out=io.StringIO())
    assert len(texts[0]) == 8 and set(texts[0]) <= set(TEXT)


def test_own_text_gpt2_puts_end_of_text_between_files(gpt2_codec, tmp_path):
    folder = own_text_folder(tmp_path)
    prepare_text(tmp_path / "mine", folder, tokenizer="gpt2")
    ids = np.concatenate([read_tokens(tmp_path / "mine" / f"{split}.bin") for split in ("train", "val")]).tolist()
    encode, eot = gpt2_codec.encoding.encode_ordinary, gpt2_codec.eot_token
    assert ids == encode("First file.") + [eot] + encode("Third.") + [eot] + encode("Second file, in a subfolder.\n")
    assert read_meta(tmp_path / "mine") == {"codec": "tiktoken", "encoding": "gpt2", "vocab_size": 50257}


@pytest.mark.parametrize("make_args, fragment", [
    (lambda t: ["--input", str(t / "nope"), "--out_dir", str(t / "out")], "input not found"),
    (lambda t: ["--input", str(t / "empty"), "--out_dir", str(t / "out")], "holds no files"),
    (lambda t: ["--input", str(t / "texts"), "--out_dir", str(t / "out"), "--tokenizer", "wordpiece"],
     "--tokenizer must be char, bpe or gpt2"),
    (lambda t: ["--input", str(t / "texts")], "the following arguments are required: --out_dir (see"),
    (lambda t: ["--input", str(t / "texts"), "--out_dir", str(t / "out"), "--tokenzer=gpt2"],
     "unrecognized arguments: --tokenzer=gpt2"),
])
def test_own_text_mistakes(tmp_path, capsys, make_args, fragment):
    own_text_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as info:
        run_cli(text.main, make_args(tmp_path))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "out").exists()
