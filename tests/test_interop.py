"""What users of nanoGPT and llm.c already have on disk works here, and is never written over."""

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from gptkit.checkpoint import load_checkpoint
from gptkit.data import (GPT2_META, BatchSampler, dataset_meta, is_prepared, magic, read_meta, read_split,
                         read_tokens, split_files, write_tokens)
from gptkit.datasets import ensure_data
from gptkit.settings import UserError, load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun
from tests.test_cli import assert_one_error_line, tiny_args


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def as_nanogpt(ours, folder, with_meta_pkl=True):
    """The same data as nanoGPT's prepare.py writes it: raw uint16 files and meta.pkl."""
    folder.mkdir(parents=True)
    meta = read_meta(ours)
    for split in ("train", "val"):
        np.asarray(read_tokens(ours / f"{split}.bin")).astype(np.uint16).tofile(folder / f"{split}.bin")
    if with_meta_pkl:
        chars = meta["chars"]
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                         "stoi": {ch: i for i, ch in enumerate(chars)}}, f)
    return folder


def as_llmc_shards(tokens, folder, name, pieces):
    """llm.c's shard format: 256 int32 (magic 20240520, version 1, count), then uint16 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, piece in enumerate(np.array_split(np.asarray(tokens), pieces)):
        header = np.zeros(256, dtype="<i4")
        header[:3] = [20240520, 1, len(piece)]
        with open(folder / f"fineweb_{name}_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.write(piece.astype("<u2").tobytes())


def final_weights(out_dir):
    return load_checkpoint(Path(out_dir) / "ckpt.pt")["model"]


# ----------------------------------------------------------------------------- nanoGPT data

def test_nanogpt_char_data_trains_like_ours_and_is_left_alone(char_data, tmp_path, monkeypatch, capsys):
    """nanoGPT's data/shakespeare_char (raw train.bin, val.bin, meta.pkl): train.py reads it as
    it is (no prepare script runs over it) and the run equals one on the same tokens in our format."""
    monkeypatch.chdir(tmp_path)
    nano = as_nanogpt(char_data / "tiny", tmp_path / "nano" / "shakespeare_char")
    before = digest(nano)
    train.main(tiny_args(char_data, "tiny", tmp_path / "ours"))
    train.main(tiny_args(tmp_path / "nano", "shakespeare_char", tmp_path / "theirs"))
    assert "running prepare" not in capsys.readouterr().out
    assert digest(nano) == before  # nothing added, nothing rewritten
    ours, theirs = final_weights(tmp_path / "ours"), final_weights(tmp_path / "theirs")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "theirs" / "ckpt.pt")["meta"] == read_meta(char_data / "tiny")


def test_nanogpt_bpe_data_without_meta_is_read_as_gpt2(tmp_path, capsys):
    folder = tmp_path / "openwebtext"
    folder.mkdir()
    tokens = np.arange(0, 50000, 7, dtype=np.uint16)
    tokens.tofile(folder / "train.bin")
    tokens[:300].tofile(folder / "val.bin")
    assert dataset_meta(folder) == GPT2_META
    assert "GPT-2 BPE" in capsys.readouterr().out
    train_files = read_split(folder, "train", GPT2_META)
    assert len(train_files) == 1 and train_files[0].tolist() == tokens.tolist()


def test_meta_pkl_runs_no_code(tmp_path):
    """A meta.pkl that would run a command when unpickled is refused, and the command never runs."""
    planted = tmp_path / "planted"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": Exploit()}, f)
    with pytest.raises(UserError) as info:
        dataset_meta(folder)
    assert "meta.pkl" in str(info.value) and "refused" in str(info.value)
    assert not planted.exists()


@pytest.mark.parametrize("data, fragment", [
    ({"vocab_size": 3, "itos": {0: "a", 1: "b"}}, "KeyError"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "a"}}, "distinct"),
    ({"vocab_size": 2, "itos": {0: "ab", 1: "c"}}, "single characters"),
    (["not", "a", "dict"], "TypeError"),
])
def test_meta_pkl_damaged(tmp_path, data, fragment):
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(UserError) as info:
        dataset_meta(tmp_path)
    assert fragment in str(info.value) and "meta.pkl" in str(info.value)


def test_raw_file_of_odd_length_is_refused(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\x01\x02\x03")
    (tmp_path / "val.bin").write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="odd number of bytes"):
        read_split(tmp_path, "train", GPT2_META)


def test_our_unfinished_prepare_is_prepared_again_but_foreign_data_is_not(char_data, tmp_path, monkeypatch):
    """Our own train.bin without meta.json is a prepare that stopped part-way: train.py runs the
    prepare script again. nanoGPT's raw files without meta.json are data, used as they are."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(char_data / "tiny", data / "shakespeare_char")
    shutil.copy(tmp_path / "input.txt", data / "shakespeare_char" / "input.txt")
    (data / "shakespeare_char" / "meta.json").unlink()
    assert not is_prepared(data / "shakespeare_char")
    assert ensure_data(str(data), "shakespeare_char")
    assert (data / "shakespeare_char" / "meta.json").is_file()
    nano = as_nanogpt(char_data / "tiny", tmp_path / "nano" / "shakespeare_char", with_meta_pkl=False)
    assert is_prepared(nano)


# ----------------------------------------------------------------------------- token-file metadata

def test_token_files_are_in_llmc_format(char_data):
    path = char_data / "tiny" / "train.bin"
    header = np.fromfile(path, dtype="<i4", count=256)  # as llm.c's and modded-nanogpt's loaders read it
    count = int(header[2])
    assert list(header[:2]) == [20240520, 1] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * count
    text_ids = np.fromfile(path, dtype="<u2", offset=1024)
    np.testing.assert_array_equal(read_tokens(path, read_meta(char_data / "tiny")), text_ids)
    assert count == len(text_ids) > 0


def old_format(path, tokens, vocab_size, name):
    """A token file as this project wrote them before llm.c's format: 128 int64 (magic 20261123,
    version 1, count, 2 bytes a token, vocabulary size), the tokenizer's name at byte 64."""
    header = np.zeros(128, dtype="<i8")
    header[:5] = [20261123, 1, len(tokens), 2, vocab_size]
    raw = bytearray(header.tobytes())
    raw[64 : 64 + len(name)] = name.encode()
    path.write_bytes(bytes(raw) + np.asarray(tokens, dtype="<u2").tobytes())


def test_token_files_in_the_earlier_format_are_still_read(char_data, tmp_path, monkeypatch):
    meta = read_meta(char_data / "tiny")
    for split in ("train", "val"):
        tokens = np.asarray(read_tokens(char_data / "tiny" / f"{split}.bin"))
        old_format(char_data / "tiny" / f"{split}.bin", tokens, meta["vocab_size"], "char")
        np.testing.assert_array_equal(read_tokens(char_data / "tiny" / f"{split}.bin", meta), tokens)
    with pytest.raises(UserError) as info:
        read_tokens(char_data / "tiny" / "train.bin", GPT2_META)
    assert "holds char tokens" in str(info.value) and "gpt2" in str(info.value)
    monkeypatch.chdir(tmp_path)
    assert train.main(tiny_args(char_data, "tiny", tmp_path / "out", max_iters=2, eval_interval=2)) == 0
    assert magic(char_data / "tiny" / "train.bin") == 20261123  # trained on as it is, never prepared over


def test_train_refuses_token_files_of_another_vocabulary(char_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tokens = np.asarray(read_tokens(char_data / "tiny" / "train.bin")).copy()
    tokens[5] = 1000  # a BPE id beside meta.json's 33 characters
    write_tokens(char_data / "tiny" / "train.bin", tokens)
    with pytest.raises(SystemExit) as excinfo:
        train.main(tiny_args(char_data, "tiny", tmp_path / "out"))
    assert_one_error_line(capsys, excinfo, "train.bin holds token id 1,000, but meta.json beside it says char "
                                           "with a vocabulary of 33", "prepare the data again")


def test_write_tokens_refuses_ids_outside_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        write_tokens(tmp_path / "t.bin", [0, 65], {"codec": "char", "chars": "ab", "vocab_size": 65})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- llm.c shards

def test_llmc_shards_are_read_and_windows_stay_inside_one(tmp_path):
    folder = tmp_path / "fineweb10B"
    train_tokens = np.arange(1000, dtype=np.uint16)
    as_llmc_shards(train_tokens, folder, "train", 3)
    as_llmc_shards(np.arange(100, dtype=np.uint16), folder, "val", 1)
    assert [p.name for p in split_files(folder)["train"]] == [f"fineweb_train_00000{i}.bin" for i in range(3)]
    assert is_prepared(folder)
    meta = dataset_meta(folder)
    sampler = BatchSampler(folder, meta, block_size=8, batch_size=4000, seed=0)
    x, y = sampler.batch("train")
    assert (y[:, :-1] == x[:, 1:]).all()
    assert (x[:, 1:] - x[:, :-1] == 1).all(), "a window crossed from one shard into the next"
    shard_starts = {0, 334, 667}  # np.array_split of 1000 into 3
    first = set(x[:, 0].tolist())
    assert shard_starts <= first, "some shard's first window is never drawn"
    assert max(first) == 999 - 8 and 333 - 8 in first


def test_llmc_shard_of_another_version_or_truncated(tmp_path):
    as_llmc_shards(np.arange(100, dtype=np.uint16), tmp_path, "train", 1)
    as_llmc_shards(np.arange(100, dtype=np.uint16), tmp_path, "val", 1)
    path = tmp_path / "fineweb_train_000000.bin"
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match="truncated"):
        read_split(tmp_path, "train", GPT2_META)
    data[4:8] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="version 2"):
        read_split(tmp_path, "train", GPT2_META)


@pytest.mark.slow
def test_train_on_llmc_shards_from_the_command_line(tmp_path):
    folder = tmp_path / "data" / "fineweb10B"
    rng = np.random.default_rng(0)
    as_llmc_shards(rng.integers(0, 50257, 3000), folder, "train", 2)
    as_llmc_shards(rng.integers(0, 50257, 500), folder, "val", 1)
    args = tiny_args(tmp_path / "data", "fineweb10B", tmp_path / "out", max_iters=2, eval_interval=2)
    result = subprocess.run([sys.executable, str(Path(train.__file__)), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(tmp_path / "out" / "ckpt.pt")
    assert state["meta"] == GPT2_META and state["model_config"]["vocab_size"] == 50304


def test_a_corpus_is_never_downloaded_unasked(tmp_path, monkeypatch, capsys):
    """train.py prepares a small data set by itself, but tells the user to run a corpus's script."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        train.main(tiny_args(tmp_path / "data", "openwebtext", tmp_path / "out"))
    assert_one_error_line(capsys, excinfo, "python prepare/openwebtext.py")
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- nanoGPT checkpoints

NANOGPT_ORDER = ("transformer.wte.", "transformer.wpe.", "transformer.h.", "transformer.ln_f.", "lm_head.")


def as_nanogpt_checkpoint(state, dataset, compiled=True):
    """Our checkpoint in the form nanoGPT's train.py saves: its module order, the causal-mask
    buffers, '_orig_mod.' before every name when the model was compiled, model_args and config,
    and the optimizer's parameters listed in nanoGPT's order (matrices, then vectors)."""
    ours = state["model"]
    names = sorted(ours, key=lambda k: next(i for i, p in enumerate(NANOGPT_ORDER) if k.startswith(p)))
    model = {}
    for name in names:
        model[name] = ours[name]
        if name.endswith("attn.c_proj.bias"):
            model[name.replace("c_proj.bias", "bias")] = torch.ones(1, 1, 16, 16).tril()
    prefix = "_orig_mod." if compiled else ""
    model = {prefix + k: v for k, v in model.items()}
    # our optimizer's order: named_parameters (wte, h..., ln_f, wpe), matrices then vectors
    our_params = [k for k in ours if k != "lm_head.weight"]
    our_params = sorted(our_params, key=lambda k: k.startswith("transformer.wpe"))
    ours_order = [k for k in our_params if ours[k].dim() >= 2] + [k for k in our_params if ours[k].dim() < 2]
    params = [k for k in names if k != "lm_head.weight"]
    theirs_order = [k for k in params if ours[k].dim() >= 2] + [k for k in params if ours[k].dim() < 2]
    optimizer = state["optimizer"]
    moved = {theirs_order.index(name): optimizer["state"][i] for i, name in enumerate(ours_order)}
    groups, start = [], 0
    for group in optimizer["param_groups"]:
        groups.append({**group, "params": list(range(start, start + len(group["params"])))})
        start += len(group["params"])
    args = {k: state["model_config"][k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias",
                                                  "vocab_size", "dropout")}
    return {"model": model, "optimizer": {"state": moved, "param_groups": groups}, "model_args": args,
            "iter_num": state["iter_num"], "best_val_loss": torch.tensor(state["best_val_loss"]),
            "config": {**state["train_config"], "dataset": dataset}}


@pytest.mark.parametrize("compiled", [True, False])
def test_nanogpt_checkpoint_samples_and_resumes(char_data, tmp_path, monkeypatch, compiled):
    """nanoGPT's ckpt.pt (exact GELU, its names and order) gives sample.py the same model, and
    init_from=resume carries its weights, optimizer moments and iteration on."""
    from gptkit import sampling

    monkeypatch.chdir(tmp_path)
    train.main(tiny_args(char_data, "tiny", tmp_path / "ours", activation="gelu_exact"))
    ours = load_checkpoint(tmp_path / "ours" / "ckpt.pt")
    as_nanogpt(char_data / "tiny", tmp_path / "data" / "shakespeare_char")  # nanoGPT's data/, beside the run
    nano = tmp_path / "out-nano"
    nano.mkdir()
    torch.save(as_nanogpt_checkpoint(ours, "shakespeare_char", compiled), nano / "ckpt.pt")

    model, codec = sampling.load_model(nano / "ckpt.pt", "cpu")
    reference, _ = sampling.load_model(tmp_path / "ours" / "ckpt.pt", "cpu")
    idx = torch.randint(0, codec.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx)[0], rtol=0, atol=0)
    assert codec.chars == read_meta(char_data / "tiny")["chars"]

    config = load_settings(TrainConfig, tiny_args(tmp_path / "data", "shakespeare_char", nano,
                                                  init_from="resume", max_iters=25))
    run = TrainingRun(config)
    assert run.iter_num == ours["iter_num"]
    resumed = run.optimizer.state_dict()
    for i, moments in ours["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(resumed["state"][i][key], moments[key], rtol=0, atol=0)
    run.close()
    train.train(config)
    assert load_checkpoint(nano / "ckpt.pt")["iter_num"] == 25


def test_nanogpt_checkpoint_without_its_vocabulary(char_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train.main(tiny_args(char_data, "tiny", tmp_path / "ours"))
    torch.save(as_nanogpt_checkpoint(load_checkpoint(tmp_path / "ours" / "ckpt.pt"), "gone"), tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="data/gone/meta.pkl, which holds it, is missing"):
        load_checkpoint(tmp_path / "ckpt.pt")
