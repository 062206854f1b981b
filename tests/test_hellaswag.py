"""HellaSwag: the scores checked against losses computed by hand with transformers' GPT-2, the
script, its one-line refusals, the scores logged during training, and torchrun's split."""

import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import hellaswag
import train
from conftest import SHARED_TIKTOKEN
from gptkit.data import TiktokenCodec
from gptkit.datasets import prepare_text
from gptkit.hellaswag import HELLASWAG_URL, HellaSwag, ending_losses, read_examples
from gptkit.hf import load_gpt2
from gptkit.settings import UserError
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "data" / "hellaswag_val_sample.jsonl"  # 5 examples in the real file's format


def gpt2_folder(folder, n_positions=128):
    """A random GPT2LMHeadModel of GPT-2's vocabulary saved as save_pretrained writes it. Its
    weights are spread wider than at initialisation, so that the endings' losses differ."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2, bos_token_id=50256,
        eos_token_id=50256, initializer_range=0.2)).eval()
    model.save_pretrained(folder)
    return model


def by_hand(model, encoding, example):
    """(summed, mean) loss of each ending's tokens after the context, one forward per ending."""
    context = encoding.encode_ordinary(example["ctx"])
    summed, mean = [], []
    for ending in example["endings"]:
        ending = encoding.encode_ordinary(" " + ending)
        with torch.no_grad():
            logits = model(torch.tensor([context + ending])).logits[0]
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        # token j of the ending is predicted at the position before it
        losses = [-log_probs[len(context) + j - 1, token].item() for j, token in enumerate(ending)]
        summed.append(sum(losses))
        mean.append(sum(losses) / len(losses))
    return summed, mean


def argmin(values):
    return min(range(len(values)), key=values.__getitem__)


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory):
    """(a GPT-2 folder, [(summed, mean) loss of each ending] of each example), made once."""
    with pytest.MonkeyPatch.context() as monkeypatch:  # conftest's gpt2_codec, for the module
        if not os.environ.get("TIKTOKEN_CACHE_DIR") and SHARED_TIKTOKEN.is_dir():
            monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_TIKTOKEN))
        try:
            encoding = TiktokenCodec("gpt2").encoding
        except UserError as e:
            pytest.skip(f"GPT-2 BPE files not available offline (set TIKTOKEN_CACHE_DIR): {e}")
    folder = tmp_path_factory.mktemp("hellaswag") / "gpt2-local"
    theirs = gpt2_folder(folder)
    return folder, [by_hand(theirs, encoding, example) for example in read_examples(EXAMPLES)]


def relabelled(examples, labels, path):
    """A copy of the examples file with other labels."""
    rows = [json.loads(line) for line in examples.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "label": label}) + "\n" for row, label in zip(rows, labels)))
    return path


def score(*args):
    return hellaswag.score(hellaswag.load_settings(hellaswag.HellaSwagConfig, [*map(str, args), "--device=cpu",
                                                                               "--dtype=float32"]))


def test_ending_losses_are_the_losses_of_the_ending_tokens(gpt2_model, gpt2_codec):
    folder, expected = gpt2_model
    ours = load_gpt2(folder).eval()
    benchmark = HellaSwag(EXAMPLES, gpt2_codec, block_size=128, max_tokens=4 * 2 * 60)  # about 2 examples a batch
    assert len(benchmark.batches) > 1
    summed, mean = [], []
    with torch.no_grad():
        for tokens, mask, _ in benchmark.batches:
            batch_summed, batch_mean = ending_losses(ours, tokens, mask)
            summed += batch_summed.tolist()
            mean += batch_mean.tolist()
    torch.testing.assert_close(torch.tensor(summed), torch.tensor([s for s, _ in expected]).flatten().float())
    torch.testing.assert_close(torch.tensor(mean), torch.tensor([m for _, m in expected]).flatten().float())


def test_acc_takes_the_lowest_summed_loss_and_acc_norm_the_lowest_mean(gpt2_model, tmp_path, gpt2_codec, capsys):
    folder, expected = gpt2_model
    by_sum = [argmin(summed) for summed, _ in expected]
    by_mean = [argmin(mean) for _, mean in expected]
    agree = sum(a == b for a, b in zip(by_sum, by_mean)) / len(expected)
    assert agree < 1  # the model tells the two apart, so a mix-up of sum and mean would show
    labels = [example["label"] for example in read_examples(EXAMPLES)]
    assert score(f"--init_from={folder}", f"--hellaswag_file={EXAMPLES}") == {
        "acc": sum(a == b for a, b in zip(by_sum, labels)) / 5,
        "acc_norm": sum(a == b for a, b in zip(by_mean, labels)) / 5, "examples": 5}
    # labelled with the answers of either rule, the file gets every answer of that rule right
    assert score(f"--init_from={folder}", f"--hellaswag_file={relabelled(EXAMPLES, by_sum, tmp_path / 'sum.jsonl')}") \
        == {"acc": 1.0, "acc_norm": agree, "examples": 5}
    assert score(f"--init_from={folder}", f"--hellaswag_file={relabelled(EXAMPLES, by_mean, tmp_path / 'mean.jsonl')}") \
        == {"acc": agree, "acc_norm": 1.0, "examples": 5}
    assert f"HellaSwag acc_norm 1.0000, acc {agree:.4f} (5 examples, float32" in capsys.readouterr().out


def test_the_script_on_a_folder_and_limit(gpt2_model, gpt2_codec, capsys):
    folder, _ = gpt2_model
    assert hellaswag.main([f"--init_from={folder}", f"--hellaswag_file={EXAMPLES}", "--limit", "2",
                           "--device=cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{folder}: HellaSwag acc_norm ") and "(2 examples" in out


def test_a_row_longer_than_the_model_reads_loses_its_first_tokens(gpt2_codec):
    example = read_examples(EXAMPLES)[2]
    benchmark = HellaSwag(EXAMPLES, gpt2_codec, block_size=8, max_tokens=1, limit=3)
    tokens, mask, labels = benchmark.batches[2]
    ending = gpt2_codec.encoding.encode_ordinary(" " + example["endings"][3])
    assert len(ending) > 9 and tokens.shape[1] == 9  # block_size, and the last token only predicted
    assert tokens[3].tolist() == ending[-9:] and mask[3, 1:].all() and not mask[3, 0]
    assert labels.tolist() == [3]


def assert_one_error_line(capsys, info, *fragments):
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    for fragment in fragments:
        assert fragment in err, err


def char_checkpoint(path):
    """A checkpoint of a character model, as train.py writes one."""
    chars = "".join(sorted(set("abcdefghijklmnopqrstuvwxyz .,\n")))
    config = GPTConfig(block_size=16, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)
    state = {"model": GPT(config).state_dict(), "model_config": asdict(config), "train_config": {}, "iter_num": 0,
             "best_val_loss": 1.0, "meta": {"codec": "char", "vocab_size": len(chars), "chars": chars}}
    torch.save(state, path)


def test_a_character_model_is_refused_in_one_line(tmp_path, capsys):
    char_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--out_dir={tmp_path}", f"--hellaswag_file={EXAMPLES}", "--device=cpu"])
    assert_one_error_line(capsys, info, "ckpt.pt reads a vocabulary of 30 characters, not GPT-2's BPE")


def test_a_folder_of_another_vocabulary_is_refused_in_one_line(tmp_path, capsys):
    """What export.py writes from a character model: a GPT-2 folder of a small vocabulary."""
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=65, n_positions=16, n_embd=16, n_layer=1,
                                                         n_head=2)).save_pretrained(tmp_path / "chars")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--init_from={tmp_path / 'chars'}", f"--hellaswag_file={EXAMPLES}", "--device=cpu"])
    assert_one_error_line(capsys, info, "chars reads a vocabulary of 65 tokens, not GPT-2's BPE")


def test_no_network_and_no_file_is_one_line_naming_both(gpt2_model, gpt2_codec, tmp_path, monkeypatch, capsys):
    folder, _ = gpt2_model

    def urlopen(url, *args, **kwargs):
        raise urllib.error.URLError("no internet here")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--init_from={folder}", f"--data_dir={tmp_path / 'data'}", "--device=cpu"])
    assert_one_error_line(capsys, info, HELLASWAG_URL, str(tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl"),
                          "--hellaswag_file=PATH")
    assert not (tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl").exists()
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--init_from={folder}", f"--hellaswag_file={tmp_path / 'nope.jsonl'}", "--device=cpu"])
    assert_one_error_line(capsys, info, f"hellaswag_file not found: {tmp_path / 'nope.jsonl'}", HELLASWAG_URL)


def test_the_file_is_downloaded_once_into_data_dir(gpt2_model, gpt2_codec, tmp_path, monkeypatch, capsys):
    folder, _ = gpt2_model
    calls = []

    class Response:
        headers = {}

        def __init__(self):
            self.chunks = [EXAMPLES.read_bytes(), b""]

        def read(self, size):
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        return Response()
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    for _ in range(2):
        assert hellaswag.main([f"--init_from={folder}", f"--data_dir={tmp_path / 'data'}", "--device=cpu"]) == 0
    assert calls == [HELLASWAG_URL]
    assert (tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl").read_bytes() == EXAMPLES.read_bytes()


def test_a_file_that_is_not_hellaswag_is_one_line(gpt2_model, gpt2_codec, tmp_path, capsys):
    folder, _ = gpt2_model
    bad = tmp_path / "bad.jsonl"
    bad.write_text(EXAMPLES.read_text().splitlines()[0] + "\n" + json.dumps({"ctx": "x", "endings": ["a"]}) + "\n")
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--init_from={folder}", f"--hellaswag_file={bad}", "--device=cpu"])
    assert_one_error_line(capsys, info, f"{bad} line 2 is not a HellaSwag example")


# ----------------------------------------------------------------------------- during training

@pytest.fixture
def bpe_data(tmp_path, gpt2_codec):
    (tmp_path / "text.txt").write_text("A man scrapes the ice off the windshield of his car.\n" * 100)
    prepare_text(tmp_path / "data" / "ice", tmp_path / "text.txt", "gpt2")
    return tmp_path / "data"


def train_args(data_dir, out_dir, **extra):
    settings = {"data_dir": data_dir, "dataset": "ice", "out_dir": out_dir, "n_layer": 1, "n_head": 2, "n_embd": 16,
                "block_size": 16, "batch_size": 2, "gradient_accumulation_steps": 2, "max_iters": 4,
                "eval_interval": 2, "eval_iters": 1, "warmup_iters": 1, "lr_decay_iters": 4, "device": "cpu",
                "dtype": "float32", "hellaswag_interval": 2, "hellaswag_file": EXAMPLES, **extra}
    return [f"--{k}={v}" for k, v in settings.items() if v is not None]  # None: left out


@pytest.mark.slow
def test_training_logs_hellaswag_like_val_loss(bpe_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert train.main(train_args(bpe_data, out, max_iters=6, lr_decay_iters=6, hellaswag_interval=4)) == 0
    log = capsys.readouterr().out
    assert "hellaswag: 5 examples every 4 iterations" in log
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = {r["iter"]: r for r in rows if "hellaswag_acc" in r}
    assert sorted(scored) == [0, 4, 6]  # every 4 iterations, and at the end
    assert "hellaswag" not in next(line for line in log.splitlines() if line.startswith("step 2:"))
    assert all(r["val_loss"] is not None for r in scored.values())
    for row in scored.values():
        for key in ("hellaswag_acc", "hellaswag_acc_norm"):
            assert 0 <= row[key] <= 1 and math.isclose(row[key] * 5, round(row[key] * 5))
        assert f"step {row['iter']}: " in log
        assert f"hellaswag acc_norm {row['hellaswag_acc_norm']:.4f} (acc {row['hellaswag_acc']:.4f})" in log
    # the script scores the checkpoint as training did (rows of 17 tokens: cut to the model's 16)
    result = score(f"--checkpoint={out / 'ckpt.pt'}", f"--hellaswag_file={EXAMPLES}")
    assert (result["acc"], result["acc_norm"]) == (scored[6]["hellaswag_acc"], scored[6]["hellaswag_acc_norm"])


@pytest.mark.parametrize("extra, fragments", [
    ({"dataset": "chars"}, ["hellaswag_interval=2: {data}/chars reads a vocabulary of", "characters, not GPT-2's BPE",
                            "set hellaswag_interval=0"]),
    ({"hellaswag_interval": 3}, ["hellaswag_interval must be a multiple of eval_interval (2)"]),
    ({"hellaswag_file": "nope.jsonl"}, ["hellaswag_file not found: nope.jsonl"]),
])
def test_training_mistakes_stop_it_at_start_in_one_line(bpe_data, tmp_path, capsys, extra, fragments):
    prepare_text(bpe_data / "chars", tmp_path / "text.txt", "char")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(train_args(bpe_data, tmp_path / "out", **extra))
    assert_one_error_line(capsys, info, *(fragment.format(data=bpe_data) for fragment in fragments))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_processes_split_the_examples_and_score_as_one(bpe_data, gpt2_model, tmp_path, capsys):
    """Under torchrun each process scores examples i % 2 == rank (3 and 2 of the 5: under FSDP one
    process runs a forward more) and their counts are summed: the scores of one process. The file
    is labelled with the choices by mean loss, so acc_norm is 1 when every example counts once."""
    folder, expected = gpt2_model
    by_sum, by_mean = ([argmin(losses[k]) for losses in expected] for k in (0, 1))
    examples = relabelled(EXAMPLES, by_mean, tmp_path / "by_mean.jsonl")
    args = train_args(bpe_data, tmp_path / "out", init_from=folder, n_layer=None, n_head=None, n_embd=None,
                      eval_only=True, block_size=128, batch_size=1, hellaswag_file=examples)
    acc = sum(a == b for a, b in zip(by_sum, by_mean)) / 5
    assert train.main(args) == 0
    assert f"hellaswag acc_norm 1.0000 (acc {acc:.4f})" in capsys.readouterr().out
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *args, "--fsdp=True"]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("hellaswag acc_norm") == 1
    assert f"hellaswag acc_norm 1.0000 (acc {acc:.4f})" in result.stdout


def test_a_folder_of_its_own_bpe_as_large_as_gpt2s_is_refused(tmp_path, capsys):
    """A folder whose tokenizer.json is a BPE of its own reads other tokens than GPT-2's, however
    many it has: scored with GPT-2's BPE it would read nonsense."""
    from gptkit.data import TOKENIZER_FILE
    from gptkit.datasets import train_bpe

    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50304, n_positions=16, n_embd=16, n_layer=1,
                                                         n_head=2)).save_pretrained(tmp_path / "own")
    (tmp_path / "own" / TOKENIZER_FILE).write_text(train_bpe(["a few words of text, and more words\n" * 20], 270)[0])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        hellaswag.main([f"--init_from={tmp_path / 'own'}", f"--hellaswag_file={EXAMPLES}", "--device=cpu"])
    assert_one_error_line(capsys, info, "own reads a vocabulary of")
