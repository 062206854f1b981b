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
        assert math.isclose(row["val_bpb"], row["val_loss"] / math.log(2), rel_tol=1e-6)
        assert math.isclose(row["train_bpb"], row["train_loss"] / math.log(2), rel_tol=1e-6)


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


def by_hand(run, windows, token_bytes):
    """(bits, bytes) of windows' targets, by hand: only targets that stand for text count."""
    bits, text_bytes = 0.0, 0
    with torch.no_grad():
        for w in windows:
            x, y = w[:, :-1].long(), w[:, 1:].long()
            logits, _ = run.model(x)
            nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
            counted = [t >= 0 and token_bytes(t) > 0 for t in y.flatten().tolist()]
            bits += nats[torch.tensor(counted)].double().sum().item() / math.log(2)
            text_bytes += sum(token_bytes(t) for t, c in zip(y.flatten().tolist(), counted) if c)
    return bits, text_bytes


def gpt2_run(tmp_path, ids):
    from gptkit.data import GPT2_META, write_dataset

    write_dataset(tmp_path / "data" / "docs", ids, ids, dict(GPT2_META))
    return TrainingRun(load_settings(TrainConfig, [
        f"--data_dir={tmp_path / 'data'}", "--dataset=docs", f"--out_dir={tmp_path / 'o'}", "--n_layer=1",
        "--n_head=2", "--n_embd=16", "--block_size=24", "--batch_size=4", "--eval_iters=3", "--device=cpu",
        "--dtype=float32"]))


def test_bpb_leaves_out_end_of_text_tokens_on_both_sides(gpt2_codec, tmp_path):
    """OpenWebText and FineWeb end every document with <|endoftext|>: a token of no text, whose
    loss must not count against the bytes either."""
    eot = gpt2_codec.encoding.eot_token
    documents = [f"Document {i}: a few words about item {i * 7}, then an end.\n" for i in range(80)]
    ids = [t for doc in documents for t in gpt2_codec.encode(doc) + [eot]]
    run = gpt2_run(tmp_path, ids)
    _, bpb = train.estimate_loss(run)["val"]
    windows = run.sampler.eval_windows("val", 3)
    assert any((w[:, 1:] == eot).any() for w in windows)
    size = lambda t: 0 if t == eot else len(gpt2_codec.encoding.decode_single_token_bytes(t))  # noqa: E731
    bits, text_bytes = by_hand(run, windows, size)
    run.close()
    assert math.isclose(bpb, bits / text_bytes, rel_tol=1e-6)


def test_bpb_leaves_out_ignored_targets_on_both_sides(gpt2_codec, tmp_path, monkeypatch):
    ids = gpt2_codec.encode("Plain words, one after another, in a sentence that goes on for a while.\n" * 40)
    run = gpt2_run(tmp_path, ids)
    windows = [w.clone() for w in run.sampler.eval_windows("val", 3)]
    for w in windows:
        w[:, -1] = -1  # the last target of each row ignored (a padded batch would do this)
    monkeypatch.setattr(run.sampler, "eval_windows", lambda split, count: windows)
    loss, bpb = train.estimate_loss(run)["val"]
    size = lambda t: len(gpt2_codec.encoding.decode_single_token_bytes(t))  # noqa: E731
    bits, text_bytes = by_hand(run, windows, size)
    run.close()
    assert math.isfinite(loss) and math.isclose(bpb, bits / text_bytes, rel_tol=1e-6)
