"""A BPE of the data's own (prepare/text.py --tokenizer bpe): learned with Hugging Face's
tokenizers from the training text alone, written beside the token files, and used by every
script downstream: training, resume, sampling, explain, export and bits per byte."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import explain
import export
import sample
import train
from gptkit.checkpoint import load_checkpoint
from gptkit.data import BPECodec, codec_from_meta, read_meta, read_tokens, token_bytes
from gptkit.datasets import prepare_text
from gptkit.sampling import load_model
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun

ROOT = Path(__file__).resolve().parent.parent

# Non-ASCII text of 2-, 3- and 4-byte characters; "Ω" (2 bytes) occurs only in the last 10%.
TRAIN_PART = ("Naïve café owners sang déjà vu — “quoted” ünïcödé and 日本語, plain words too. "
              "The river flows; the rivers flowed over stones.\n") * 40
VAL_PART = "Ω Ω Ω ΩΩΩ and the river. " * 20
TEXT = TRAIN_PART + VAL_PART


def prepare_bpe(root, vocab_size=300, text=TEXT, name="bpe"):
    (root / "text.txt").write_text(text, encoding="utf-8")
    prepare_text(root / "data" / name, root / "text.txt", "bpe", vocab_size=vocab_size)
    return root / "data" / name


def test_a_bpe_round_trips_any_text_and_agrees_with_its_files(tmp_path):
    data = prepare_bpe(tmp_path)
    meta = read_meta(data)
    assert json.loads((data / "meta.json").read_text()) == {"codec": "bpe", "vocab_size": 300}
    assert meta["tokenizer"] == (data / "tokenizer.json").read_text(encoding="utf-8")
    codec = codec_from_meta(meta)
    assert codec.vocab_size == 300 and codec.eot_token == 299  # <|endoftext|> last, as GPT-2's
    for text in (TEXT, "never seen: 🙂 ßœ Ж ı\x00\t\r\n", "<|endoftext|> as plain words"):
        assert codec.decode(codec.encode(text)) == text
    files = [read_tokens(data / f"{split}.bin", meta).tolist() for split in ("train", "val")]
    assert codec.decode(files[0] + files[1]) == TEXT
    assert len(codec.encode(TRAIN_PART)) < len(TRAIN_PART.encode("utf-8")) / 1.5  # it learned merges
    # the tokenizer learned from the first 90% alone: "Ω" occurs only after it, so stays 2 bytes
    assert len(TEXT) * 0.9 < len(TRAIN_PART)
    assert len(codec.encode("Ω")) == 2 and len(codec.encode(" river")) == 1


def test_documents_of_a_folder_are_separated_by_end_of_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TRAIN_PART, encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("the river " * 50, encoding="utf-8")
    (tmp_path / "docs" / "c.txt").write_text(VAL_PART, encoding="utf-8")
    prepare_text(tmp_path / "out", tmp_path / "docs", "bpe", vocab_size=280)
    meta = read_meta(tmp_path / "out")
    codec = codec_from_meta(meta)
    ids = read_tokens(tmp_path / "out" / "train.bin", meta).tolist() + read_tokens(tmp_path / "out" / "val.bin", meta).tolist()
    pieces = codec.decode(ids).split("<|endoftext|>")
    assert pieces == [TRAIN_PART, "the river " * 50, VAL_PART]
    assert ids.count(codec.eot_token) == 2


@pytest.mark.parametrize("args, fragment", [
    (["--vocab_size=100"], "--vocab_size must be from 257"),
    (["--vocab_size=70000"], "to 65,535"),
    (["--vocab_size=5000"], "give a smaller --vocab_size or more text"),
    ([], "--tokenizer bpe needs --vocab_size N"),
])
def test_bpe_mistakes_are_one_line(tmp_path, args, fragment):
    (tmp_path / "text.txt").write_text(TRAIN_PART, encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "prepare" / "text.py"), "--input", str(tmp_path / "text.txt"),
                             "--out_dir", str(tmp_path / "out"), "--tokenizer=bpe", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, fragment", [("", "is empty"), ("x", "too short to split")])
def test_too_little_text_is_one_line(tmp_path, text, fragment):
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "prepare" / "text.py"), "--input", str(tmp_path / "text.txt"),
                             "--out_dir", str(tmp_path / "out"), "--tokenizer=bpe", "--vocab_size=300"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and fragment in result.stderr, result.stderr


def run_args(data, out_dir, **extra):
    settings = {"data_dir": data.parent, "dataset": data.name, "out_dir": out_dir, "n_layer": 2, "n_head": 2,
                "n_embd": 32, "block_size": 32, "batch_size": 4, "gradient_accumulation_steps": 1, "max_iters": 20,
                "eval_interval": 10, "eval_iters": 2, "log_interval": 5, "warmup_iters": 2, "lr_decay_iters": 20,
                "learning_rate": 3e-3, "device": "cpu", "dtype": "float32", "dropout": 0.0, **extra}
    return [f"--{key}={value}" for key, value in settings.items()]


@pytest.mark.slow
def test_train_resume_sample_explain_and_export_a_bpe_model(tmp_path, monkeypatch, capsys):
    import transformers

    monkeypatch.chdir(tmp_path)
    data = prepare_bpe(tmp_path)
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    assert train.main(run_args(data, straight)) == 0
    assert train.main(run_args(data, pieces, max_iters=10)) == 0
    assert train.main(run_args(data, pieces, init_from="resume")) == 0
    a, b = load_checkpoint(straight / "ckpt.pt"), load_checkpoint(pieces / "ckpt.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model, codec = load_model(straight / "best.pt", "cpu")  # what sample.py and export.py read
    assert isinstance(codec, BPECodec) and model.config.vocab_size == 320  # 300 padded to a multiple of 64
    capsys.readouterr()

    # sample.py streams whole characters: what it prints is the text of the tokens it drew
    assert sample.main([f"--out_dir={straight}", "--start=Naïve café", "--max_new_tokens=40", "--num_samples=1",
                        "--seed=3", f"--probs_file={tmp_path / 'drawn.jsonl'}", "--device=cpu"]) in (0, None)
    drawn = [json.loads(line)["token"] for line in (tmp_path / "drawn.jsonl").read_text().splitlines()]
    drawn = drawn[:drawn.index(codec.eot_token)] if codec.eot_token in drawn else drawn
    printed = capsys.readouterr().out
    assert printed.split("\n---------------")[0] == codec.decode(codec.encode("Naïve café") + drawn)

    # explain.py shows tokens as their text
    assert explain.main(["next", f"--out_dir={straight}", "--start=The river", "--device=cpu",
                         f"--out={tmp_path / 'next.png'}"]) in (0, None)
    table = capsys.readouterr().out
    assert "(the other 29" in table and (tmp_path / "next.png").is_file()

    # export: transformers loads the tokenizer and the model, the same tokens and logits as ours
    assert export.main([f"--out_dir={straight}", f"--to={tmp_path / 'hf'}"]) in (0, None)
    assert "tokenizer.json" in capsys.readouterr().out
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    for text in (TEXT[:200], "never seen: 🙂 Ж"):
        ids = codec.encode(text)
        assert tokenizer(text)["input_ids"] == ids and tokenizer.decode(ids) == text
        idx = torch.tensor([ids[:32]])
        with torch.no_grad():
            ours = model(idx)[0][..., :codec.vocab_size]
            torch.testing.assert_close(theirs(idx).logits, ours)
    assert tokenizer.eos_token_id == codec.eot_token == theirs.config.eos_token_id


def test_resume_refuses_data_with_another_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = prepare_bpe(tmp_path)
    assert train.main(run_args(data, tmp_path / "out", max_iters=2, eval_interval=2)) == 0
    prepare_bpe(tmp_path, vocab_size=290)
    with pytest.raises(SystemExit) as info:
        train.main(run_args(data, tmp_path / "out", init_from="resume", max_iters=4))
    assert info.value.code == 2 and "data" in capsys.readouterr().err


def test_bits_per_byte_on_a_bpe_of_its_own(tmp_path):
    data = prepare_bpe(tmp_path)
    meta = read_meta(data)
    table = token_bytes(meta)
    # the table counts every byte of the text once: the whole token files cover the whole text
    all_ids = read_tokens(data / "train.bin", meta).tolist() + read_tokens(data / "val.bin", meta).tolist()
    assert int(table[all_ids].sum()) == len(TEXT.encode("utf-8"))
    assert int(table[codec_from_meta(meta).eot_token]) == 0

    config = load_settings(TrainConfig, run_args(data, tmp_path / "o", block_size=12, batch_size=3))
    run = TrainingRun(config)
    (_, bpb), bits, text_bytes = train.estimate_loss(run)["val"], 0.0, 0
    with torch.no_grad():
        for x, y in run.sampler.eval_batches("val", 2):
            logits, _ = run.model(x.long())
            bits += F.cross_entropy(logits.flatten(0, 1), y.long().flatten(), reduction="sum").item() / math.log(2)
            text_bytes += int(table[y.long().flatten()].sum())
    run.close()
    assert text_bytes > y.numel() * 2  # tokens of more than a byte on average: counting tokens would not do
    assert math.isclose(bpb, bits / text_bytes, rel_tol=1e-6)


def test_the_shakespeare_bpe_recipe_is_prepared_on_first_use(tmp_path):
    from gptkit.datasets import SHAKESPEARE_TEXT, ensure_data

    folder = ensure_data(tmp_path / "data", "shakespeare_bpe")
    meta = read_meta(folder)
    codec = codec_from_meta(meta)
    text = SHAKESPEARE_TEXT.read_text(encoding="utf-8")
    split = int(len(text) * 0.9)
    assert meta["vocab_size"] == codec.vocab_size == 1024
    assert codec.decode(read_tokens(folder / "train.bin", meta).tolist()) == text[:split]
    assert codec.decode(read_tokens(folder / "val.bin", meta).tolist()) == text[split:]
    assert (folder / "train.bin").stat().st_size < 1024 + 2 * len(text) / 2  # about 2.4 characters a token
