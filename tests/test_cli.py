"""End to end on the CPU: train.py on a tiny data set, then sample.py from what it wrote."""

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import sample
import train
from gptkit.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from gptkit.datasets import prepare_shakespeare_char
from gptkit.data import read_meta

ROOT = Path(__file__).resolve().parent.parent
SEPARATOR = "---------------\n"
NEW_TOKENS = 50

# A small text (its own, not conftest's) for the runs this module makes itself.
TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
        "It is the east, and Juliet is the sun.\n\n") * 30




def arg_value(args, key):
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{key}="))


def tiny_args(data_dir, dataset, out_dir, **extra):
    args = [f"--data_dir={data_dir}", f"--dataset={dataset}", f"--out_dir={out_dir}",
            "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
            "--gradient_accumulation_steps=1", "--max_iters=20", "--eval_interval=10", "--eval_iters=2",
            "--log_interval=5", "--warmup_iters=2", "--lr_decay_iters=20", "--learning_rate=1e-3",
            "--device=cpu", "--dtype=float32", "--dropout=0.0"]
    return args + [f"--{k}={v}" for k, v in extra.items()]


def assert_one_error_line(capsys, excinfo, *fragments):
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- training

def test_train_end_to_end(tiny_train_args, char_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train.main(tiny_train_args) == 0
    capsys.readouterr()
    out = Path(arg_value(tiny_train_args, "out_dir"))
    max_iters = int(arg_value(tiny_train_args, "max_iters"))
    for name in ("ckpt.pt", "best.pt", "metrics.jsonl"):
        assert (out / name).is_file(), name

    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in entries if "val_loss" in e]
    steps = [e for e in entries if "loss" in e]
    assert evals[0]["iter"] == 0 and evals[-1]["iter"] == max_iters
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]  # the same eval batches each time
    assert steps[-1]["iter"] == max_iters
    assert steps[-1]["loss"] < steps[0]["loss"]

    state = load_checkpoint(out / "ckpt.pt")
    for key in CHECKPOINT_KEYS + ("optimizer",):
        assert key in state, key
    assert state["iter_num"] == max_iters
    assert state["best_val_loss"] == pytest.approx(min(e["val_loss"] for e in evals))
    assert state["meta"] == read_meta(Path(arg_value(tiny_train_args, "data_dir")) / "tiny")
    assert state["train_config"]["max_iters"] == max_iters
    for key in ("n_layer", "n_head", "n_embd", "block_size"):
        assert state["model_config"][key] == int(arg_value(tiny_train_args, key))
    assert state["model_config"]["vocab_size"] == state["meta"]["vocab_size"]
    assert all(torch.isfinite(t).all() for t in state["model"].values())

    best = load_checkpoint(out / "best.pt")
    best_eval = min((e for e in evals if e["iter"] > 0), key=lambda e: e["val_loss"])
    assert best["iter_num"] == best_eval["iter"]
    assert best["best_val_loss"] == pytest.approx(best_eval["val_loss"])
    assert not list(tmp_path.glob("*.pt"))  # nothing written into the working folder


def test_train_prepares_missing_data(tmp_path, monkeypatch, capsys):
    def urlopen(*args, **kwargs):
        raise urllib.error.URLError("no internet in tests")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    (data_dir / "shakespeare_char").mkdir(parents=True)
    (data_dir / "shakespeare_char" / "input.txt").write_text(TEXT)
    args = tiny_args(data_dir, "shakespeare_char", tmp_path / "out", max_iters=2, eval_interval=2,
                     eval_iters=1, lr_decay_iters=2, warmup_iters=0)
    assert train.main(args) == 0
    prepared = data_dir / "shakespeare_char"
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (prepared / name).is_file(), name
    meta = read_meta(prepared)
    assert meta["chars"] == "".join(sorted(set(TEXT)))
    assert load_checkpoint(tmp_path / "out" / "ckpt.pt")["iter_num"] == 2


def test_train_prepares_tiny_shakespeare_offline_from_the_shipped_text(tmp_path, monkeypatch):
    def urlopen(*args, **kwargs):
        raise urllib.error.URLError("no internet in tests")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path / "data", "shakespeare_char", tmp_path / "out", max_iters=1, eval_interval=1,
                     eval_iters=1, lr_decay_iters=1, warmup_iters=0)
    assert train.main(args) == 0
    text = (ROOT / "data" / "tinyshakespeare.txt").read_text()
    meta = read_meta(tmp_path / "data" / "shakespeare_char")
    assert meta["chars"] == "".join(sorted(set(text))) and meta["vocab_size"] == 65
    assert not (tmp_path / "data" / "shakespeare_char" / "input.txt").exists()  # read in place, not copied


@pytest.mark.parametrize("dataset", ["my_text", "text", "tokens"])  # names of no data-set recipe
def test_missing_data_without_prepare_script(tmp_path, monkeypatch, capsys, dataset):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iter": 0, "loss": 1.0}\n')  # an earlier run's
    with pytest.raises(SystemExit) as excinfo:
        train.main(tiny_args(tmp_path / "data", dataset, out))
    assert_one_error_line(capsys, excinfo, str(tmp_path / "data" / dataset),
                          f"python prepare/text.py --input YOUR.txt --out_dir {tmp_path / 'data' / dataset}")
    assert (out / "metrics.jsonl").read_text() == '{"iter": 0, "loss": 1.0}\n'  # left alone
    assert not (tmp_path / "data" / dataset).exists()


@pytest.mark.parametrize("length", [15, 40])
def test_data_shorter_than_block_size(tmp_path, monkeypatch, capsys, length):
    monkeypatch.chdir(tmp_path)
    text = TEXT[:length]
    source = tmp_path / "short.txt"
    source.write_text(text)
    prepare_shakespeare_char(tmp_path / "data" / "short", str(source))
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        train.main(tiny_args(tmp_path / "data", "short", tmp_path / "out"))
    line = assert_one_error_line(capsys, excinfo, "block_size=16")
    train_tokens = int(length * 0.9)
    short_split = "train" if train_tokens <= 16 else "val"
    assert f"{short_split}.bin" in line
    assert f"has {train_tokens if short_split == 'train' else length - train_tokens:,} tokens" in line


# ----------------------------------------------------------------------------- sampling

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained once for the sampling tests: (out_dir, vocabulary)."""
    root = tmp_path_factory.mktemp("trained")
    source = root / "input.txt"
    source.write_text(TEXT)
    prepare_shakespeare_char(root / "data" / "tiny", str(source))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert train.main(tiny_args(root / "data", "tiny", root / "out")) == 0
    return root / "out", set(read_meta(root / "data" / "tiny")["chars"])


@pytest.fixture
def run_sample(trained, capsys, monkeypatch):
    """sample.main(base settings + extra) -> what it printed."""
    out_dir, _ = trained
    monkeypatch.chdir(out_dir.parent)

    def run(*extra, seed=1):
        capsys.readouterr()
        assert sample.main([f"--out_dir={out_dir}", f"--max_new_tokens={NEW_TOKENS}", f"--seed={seed}",
                            "--device=cpu", "--dtype=float32", *extra]) == 0
        return capsys.readouterr().out
    return run


def generated(output, prompt="\n"):
    """The text after the prompt of a single streamed sample."""
    assert output.startswith(prompt) and output.endswith("\n" + SEPARATOR), repr(output)
    return output[len(prompt):-len("\n" + SEPARATOR)]


def test_sample_prints_text_from_the_vocabulary(trained, run_sample):
    _, vocab = trained
    first = run_sample()
    text = generated(first)
    assert len(text) == NEW_TOKENS  # one character per token
    assert set(text) <= vocab
    assert run_sample() == first  # same seed, same text
    assert run_sample(seed=2) != first


def test_sample_several(run_sample):
    outputs = run_sample("--num_samples", "3").split(SEPARATOR)
    assert len(outputs) == 4 and outputs[-1] == ""
    samples = outputs[:3]
    assert all(s.startswith("\n") and len(s) == 1 + NEW_TOKENS + 1 for s in samples)
    assert len(set(samples)) == 3
    # sample i uses seed + i: the same text as when drawn alone
    assert samples[0] + SEPARATOR == run_sample()
    assert samples[1] + SEPARATOR == run_sample(seed=2)


def test_greedy_sampling_is_deterministic(run_sample):
    greedy = run_sample("--temperature", "0")
    assert run_sample("--temperature", "0") == greedy
    assert run_sample("--temperature=0", seed=99) == greedy  # the seed plays no part
    assert len(generated(greedy)) == NEW_TOKENS


def test_prompt_from_file(trained, run_sample, tmp_path):
    prompt = TEXT[:30]
    path = tmp_path / "prompt.txt"
    path.write_text(prompt)
    output = run_sample("--start", f"FILE:{path}")
    assert len(generated(output, prompt)) == NEW_TOKENS
    assert run_sample(f"--start={prompt}") == output


def test_prompt_errors(trained, run_sample, tmp_path, capsys):
    _, vocab = trained
    with pytest.raises(SystemExit) as excinfo:
        run_sample("--start", f"FILE:{tmp_path / 'missing.txt'}")
    assert_one_error_line(capsys, excinfo, str(tmp_path / "missing.txt"))
    prompt = "Zebra #"
    unknown = "".join(sorted(set(prompt) - vocab))
    assert unknown  # the prompt must hold characters the model does not know
    with pytest.raises(SystemExit) as excinfo:
        run_sample(f"--start={prompt}")
    assert_one_error_line(capsys, excinfo, repr(unknown))
    with pytest.raises(SystemExit) as excinfo:
        run_sample("--start=")
    assert_one_error_line(capsys, excinfo, "prompt is empty")


def test_prompt_file_errors(run_sample, tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SystemExit) as excinfo:
        run_sample("--start", f"FILE:{path}")
    assert_one_error_line(capsys, excinfo, str(path), "not UTF-8", "save it as UTF-8")
    with pytest.raises(SystemExit) as excinfo:
        run_sample("--start=FILE:")
    assert_one_error_line(capsys, excinfo, "FILE: needs a file's path")


def test_checkpoint_setting_given_a_folder(trained, run_sample, capsys):
    out_dir, _ = trained
    with pytest.raises(SystemExit) as excinfo:
        run_sample(f"--checkpoint={out_dir}")
    assert_one_error_line(capsys, excinfo, "is a folder", f"--out_dir={out_dir}")


def test_probs_file_is_replaced_only_when_sampling_ends(trained, run_sample, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or any failure) part-way leaves an earlier probs file as it was, and no temp file."""
    path = tmp_path / "probs.jsonl"
    path.write_text("an earlier run's data\n")
    real, calls = sample.candidates, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(sample, "candidates", interrupted)
    with pytest.raises(SystemExit) as excinfo:
        run_sample(f"--probs_file={path}")
    assert excinfo.value.code == 130 and "Traceback" not in capsys.readouterr().err
    assert path.read_text() == "an earlier run's data\n"
    assert [p.name for p in tmp_path.iterdir()] == ["probs.jsonl"]
    monkeypatch.setattr(sample, "candidates", real)
    run_sample(f"--probs_file={path}")
    assert len(path.read_text().splitlines()) == NEW_TOKENS


def test_probs_file_never_overwrites_what_sampling_reads(trained, run_sample, tmp_path, capsys):
    out_dir, _ = trained
    checkpoint = out_dir / "best.pt"
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(TEXT[:20])
    before = checkpoint.read_bytes()
    for args in ([f"--checkpoint={checkpoint}", f"--probs_file={checkpoint}"],
                 [f"--start=FILE:{prompt}", f"--probs_file={prompt}"]):
        with pytest.raises(SystemExit) as excinfo:
            run_sample(*args)
        assert_one_error_line(capsys, excinfo, "is the file sampling reads", "choose another path")
    assert checkpoint.read_bytes() == before and prompt.read_text() == TEXT[:20]


@pytest.mark.parametrize("meta, fragment", [
    (None, "not a JSON object"),
    ({"codec": "char", "vocab_size": 3}, "'chars'"),
    ({"codec": "char", "vocab_size": 4, "chars": "abca"}, "distinct"),
    ({"codec": "char", "vocab_size": 9, "chars": "abc"}, "'vocab_size' must equal"),
    ({"codec": "tiktoken", "vocab_size": 50257}, "'encoding'"),
    ({"codec": "bytes", "vocab_size": 256}, "unknown codec 'bytes'"),
    ("more characters than the model has", "a vocabulary of"),
])
def test_checkpoint_with_broken_metadata(trained, tmp_path, monkeypatch, capsys, meta, fragment):
    out_dir, _ = trained
    state = load_checkpoint(out_dir / "best.pt")
    if meta == "more characters than the model has":
        chars = state["meta"]["chars"] + "".join(chr(0x400 + i) for i in range(100))
        meta = {"codec": "char", "vocab_size": len(chars), "chars": chars}
    state["meta"] = meta
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        sample.main([f"--checkpoint={path}", "--device=cpu", "--max_new_tokens=3"])
    assert_one_error_line(capsys, excinfo, str(path), "not a checkpoint of this project", fragment)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "closed pipe"])
def test_sample_script_ends_quietly(trained, how):
    """Ctrl-C, or a reader that stops reading (| head), ends sample.py with the shell's usual
    status and no traceback."""
    out_dir, _ = trained
    args = [sys.executable, "sample.py", f"--out_dir={out_dir}", "--max_new_tokens=100000", "--device=cpu",
            "--dtype=float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.read(200)  # it is generating
    if how == "ctrl-c":
        process.send_signal(signal.SIGINT)
    else:
        process.stdout.close()
    try:  # communicate() keeps reading what is left, so the program never waits on a full pipe
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == (130 if how == "ctrl-c" else 141)
    assert "Traceback" not in err.decode()


def test_show_probs(run_sample):
    plain = run_sample()
    output = run_sample("--show_probs", "3")
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(f"{0:5d} "))  # after any header
    table, rest = lines[first:first + NEW_TOKENS], "\n".join(lines[first + NEW_TOKENS:]) + "\n"
    for step, line in enumerate(table):
        assert line.startswith(f"{step:5d} "), line
        assert line.count(" 0.") + line.count(" 1.") >= 3  # three candidates with probabilities
    # one line per token: no other line is numbered (the text has no digits)
    assert sum(bool(re.match(r"\s*\d+ ", line)) for line in lines) == NEW_TOKENS
    assert rest == plain  # showing the candidates does not change what is drawn


def test_probs_file(trained, run_sample, tmp_path):
    _, vocab = trained
    plain = generated(run_sample())
    path = tmp_path / "probs.jsonl"
    run_sample(f"--probs_file={path}")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == NEW_TOKENS
    assert [r["step"] for r in rows] == list(range(NEW_TOKENS))
    assert "".join(r["text"] for r in rows) == plain
    for r in rows:
        candidates = r["candidates"]
        assert len(candidates) == min(10, len(vocab))
        probs = [c["prob"] for c in candidates]
        assert probs == sorted(probs, reverse=True)
        assert 0 < r["prob"] and sum(probs) <= 1 + 1e-5
        assert all(c["text"] in vocab for c in candidates)
    greedy_path = tmp_path / "greedy.jsonl"
    run_sample("--temperature=0", "--show_probs=4", f"--probs_file={greedy_path}")
    for r in map(json.loads, greedy_path.read_text().splitlines()):
        assert len(r["candidates"]) == 4
        # greedy draws the most likely token; probabilities are shown at temperature 1
        assert r["token"] == r["candidates"][0]["token"] and r["prob"] == r["candidates"][0]["prob"] < 1


def letters_pair(text):
    return next(text[i:i + 2] for i in range(len(text) - 1) if text[i:i + 2].isalpha())


def test_stop_cuts_the_text(run_sample):
    plain = generated(run_sample())
    stop = letters_pair(plain)
    output = run_sample(f"--stop={stop}")
    assert generated(output) == plain.split(stop)[0]


def test_stop_that_never_appears_changes_nothing(run_sample):
    """The end of the text is printed even where it could have begun the stop string."""
    plain = generated(run_sample())
    stop = plain[-1] + "~"  # '~' is not in the vocabulary: the stop string cannot appear
    assert stop not in plain
    assert generated(run_sample(f"--stop={stop}")) == plain


def test_missing_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        sample.main([f"--out_dir={tmp_path / 'none'}", "--device=cpu"])
    assert_one_error_line(capsys, excinfo, str(tmp_path / "none"))


def test_sample_main_writes_to_current_stdout(trained, capsys):
    """Output goes to sys.stdout as it is at call time (captured, redirected), not at import."""
    out_dir, _ = trained
    sample.main([f"--out_dir={out_dir}", "--max_new_tokens=5", "--device=cpu", "--dtype=float32"])
    assert capsys.readouterr().out.endswith(SEPARATOR)


@pytest.mark.slow
def test_sample_script(trained, run_sample):
    out_dir, _ = trained
    args = [f"--out_dir={out_dir}", f"--max_new_tokens={NEW_TOKENS}", "--seed=1", "--device=cpu",
            "--dtype=float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: threads only contend with the tests
    result = subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_sample()


@pytest.mark.parametrize("script", ["train", "sample", "export", "hellaswag"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_setting_with_its_default_and_exits_0(script, flag):
    import dataclasses

    result = subprocess.run([sys.executable, str(ROOT / f"{script}.py"), flag], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"usage: python {script}.py [CONFIG.py ...] [--key=value ...]")
    cls = {"train": "TrainConfig", "sample": "SampleConfig", "export": "ExportConfig", "hellaswag": "HellaSwagConfig"}
    module = __import__(script) if script != "train" else __import__("gptkit.train_settings", fromlist=["x"])
    for field in dataclasses.fields(getattr(module, cls[script])):
        assert re.search(rf"^{field.name}: .* = ", result.stdout, re.M), field.name
