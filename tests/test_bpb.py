"""Bits per byte: the evaluated cross-entropy in bits over the UTF-8 bytes of the text the
predicted tokens stand for, so runs with different vocabularies compare."""

import json
import math

import torch
from torch.nn import functional as F

import train
from gptkit.datasets import prepare_text
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun


def eval_rows(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("val_loss") is not None]


def test_on_ascii_characters_bpb_is_the_loss_in_bits(tiny_train_args, tmp_path):
    assert train.main(tiny_train_args) == 0
    rows = eval_rows(tmp_path / "out")
    assert len(rows) == 3
    for row in rows:  # one byte a character
        assert math.isclose(row["val_bpb"], row["val_loss"] / math.log(2), rel_tol=1e-9)
        assert math.isclose(row["train_bpb"], row["train_loss"] / math.log(2), rel_tol=1e-9)


def test_on_bpe_bpb_is_the_bits_over_the_bytes_of_the_text(gpt2_codec, tmp_path):
    text = "Naïve café owners déjà vu — “quoted” ünïcödé, and plain words too.\n" * 60
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    prepare_text(tmp_path / "data" / "bpe", tmp_path / "text.txt", "gpt2")
    config = load_settings(TrainConfig, [f"--data_dir={tmp_path / 'data'}", "--dataset=bpe", f"--out_dir={tmp_path / 'o'}",
                                         "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=12", "--batch_size=3",
                                         "--eval_iters=2", "--device=cpu", "--dtype=float32"])
    run = TrainingRun(config)
    (loss, bpb), bits, text_bytes = train.estimate_loss(run)["val"], 0.0, 0
    with torch.no_grad():  # by hand: every target token's cross-entropy, and its bytes from the codec
        for x, y in run.sampler.eval_batches("val", 2):
            logits, _ = run.model(x.long())
            bits += F.cross_entropy(logits.flatten(0, 1), y.long().flatten(), reduction="sum").item() / math.log(2)
            text_bytes += sum(len(gpt2_codec.encoding.decode_single_token_bytes(t)) for t in y.flatten().tolist())
    run.close()
    assert text_bytes > y.numel() * 2  # BPE tokens average more than a byte: tokens would not do
    assert math.isclose(bpb, bits / text_bytes, rel_tol=1e-6)
    assert not math.isclose(bpb, loss / math.log(2), rel_tol=0.05)
