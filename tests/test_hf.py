"""Hugging Face's GPT-2 format, checked against transformers itself: its weights load into our
GPT with the same logits, and our models export to folders transformers loads to the same logits."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export
from gptkit.datasets import prepare_text
from gptkit.hf import export_hf, load_gpt2
from gptkit.settings import load_settings
from gptkit.train_settings import TrainConfig
from gptkit.training import TrainingRun
from model import GPT, GPTConfig
from gptkit.data import CharCodec, TiktokenCodec
from gptkit.settings import UserError

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent


def hf_model(folder, **config):
    """A randomly initialised GPT2LMHeadModel saved to folder, as save_pretrained writes it."""
    torch.manual_seed(0)
    settings = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=300, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **config})).eval()
    perturb(model)
    model.save_pretrained(folder)
    return model


def perturb(model):
    """Random biases and norms, so that a dropped one shows; MLP inputs wide enough that the
    two forms of GELU differ."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if "c_fc.weight" in name:
                p.normal_(0, 0.3)


def tokens(vocab_size, length=20, batch=2):
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits


def ours_logits(model, idx):
    with torch.no_grad():
        return model.eval()(idx)[0]


def hf_greedy(model, idx, n):
    for _ in range(n):
        idx = torch.cat([idx, hf_logits(model, idx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu"])
def test_from_pretrained_matches_transformers(tmp_path, activation):
    theirs = hf_model(tmp_path, activation_function=activation)
    ours = load_gpt2(str(tmp_path))
    idx = tokens(300)
    torch.testing.assert_close(ours_logits(ours, idx), hf_logits(theirs, idx))
    assert torch.equal(ours.generate(idx[:, :5], 20), hf_greedy(theirs, idx[:, :5], 20))


def test_from_pretrained_reads_the_hubs_layout(tmp_path):
    """The Hub's gpt2 folder was saved from the base model: no 'transformer.' prefix, and the
    old causal-mask buffers (attn.bias, attn.masked_bias) among the weights."""
    from safetensors.torch import load_file, save_file

    theirs = hf_model(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    idx = tokens(300)
    torch.testing.assert_close(ours_logits(load_gpt2(str(tmp_path)), idx), hf_logits(theirs, idx))


@pytest.mark.parametrize("options", [
    {},
    {"pos_encoding": "sinusoidal"},
    {"bias": False},
    {"activation": "relu"},
    {"activation": "gelu_exact"},
    {"pos_encoding": "sinusoidal", "bias": False, "activation": "relu"},
])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, options):
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=4, n_embd=64, **options)
    ours = GPT(config).eval()
    perturb(ours)
    codec = CharCodec("".join(chr(ord("!") + i) for i in range(60)))  # 60 tokens: the padding rows are cut
    export_hf(ours, codec, tmp_path / "hf")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.vocab_size == 60
    idx = tokens(60)
    torch.testing.assert_close(hf_logits(theirs, idx), ours_logits(ours, idx)[..., :60])
    again = load_gpt2(tmp_path / "hf")  # and back: the round trip keeps the function
    torch.testing.assert_close(ours_logits(again, idx), ours_logits(ours, idx)[..., :60])


def test_round_trip_through_transformers_format(tmp_path):
    theirs = hf_model(tmp_path / "a")
    ours = load_gpt2(str(tmp_path / "a"))
    export_hf(ours, CharCodec("".join(chr(256 + i) for i in range(300))), tmp_path / "b")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "b").eval()
    idx = tokens(300)
    torch.testing.assert_close(hf_logits(back, idx), hf_logits(theirs, idx))


def test_export_writes_gpt2_tokenizer_for_bpe_models(tmp_path, gpt2_codec):
    config = GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)
    export_hf(GPT(config), gpt2_codec, tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Hello, world! Ünïcode ✓ and spaces   here.\nO Romeo, Romeo!"
    assert tokenizer(text)["input_ids"] == gpt2_codec.encode(text)
    assert tokenizer.eos_token_id == 50256
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["vocab_size"] == 50257 and hf_config["eos_token_id"] == 50256


def test_export_never_writes_over_a_model(tmp_path):
    config = GPTConfig(block_size=8, vocab_size=8, n_layer=1, n_head=1, n_embd=8)
    export_hf(GPT(config), CharCodec("abcdefgh"), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a model"):
        export_hf(GPT(config), CharCodec("abcdefgh"), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("change, fragment", [
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"activation_function": "silu"}, "activation 'silu'"),
    ({"n_inner": 100}, "n_inner=100"),
    ({"scale_attn_by_inverse_layer_idx": True}, "attention scaled"),
    ({"tie_word_embeddings": False}, "not tied"),
])
def test_a_config_it_cannot_compute_is_refused(tmp_path, change, fragment):
    hf_model(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match=fragment):
        load_gpt2(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    hf_model(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "n_embd": 32}))
    with pytest.raises(UserError, match="do not fit its config.json"):
        load_gpt2(tmp_path)


def test_not_a_name_nor_a_folder(tmp_path):
    with pytest.raises(UserError, match="neither a GPT-2 model"):
        load_gpt2(tmp_path / "nope")


def test_offline_without_a_local_copy_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "PATH": "/usr/bin:/bin"}
    code = "import sys; from gptkit.settings import run_cli; from gptkit.hf import load_gpt2; " \
           "sys.exit(run_cli(lambda a: load_gpt2('gpt2')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot download gpt2" in lines[0] and "--init_from=FOLDER" in lines[0], result.stderr


def test_export_command_from_a_trained_checkpoint(tiny_train_args, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.chdir(tmp_path)
    train.main(tiny_train_args)
    assert export.main([f"--out_dir={tmp_path / 'out'}", f"--to={tmp_path / 'hf'}"]) in (0, None)
    assert "AutoModelForCausalLM.from_pretrained" in capsys.readouterr().out
    from gptkit.sampling import load_model

    ours, codec = load_model(tmp_path / "out" / "best.pt", "cpu")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = tokens(codec.vocab_size, length=16)
    torch.testing.assert_close(hf_logits(theirs, idx), ours_logits(ours, idx))
    with pytest.raises(SystemExit) as info:
        export.main([f"--out_dir={tmp_path / 'out'}"])
    assert info.value.code == 2 and "--to is missing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- finetuning

@pytest.fixture
def bpe_run(tmp_path, gpt2_codec, monkeypatch):
    """A local GPT-2 folder (random weights, GPT-2's vocabulary) and GPT-2 BPE data beside it."""

    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("O Romeo, Romeo! wherefore art thou Romeo?\n" * 200)
    prepare_text(tmp_path / "data" / "romeo", tmp_path / "text.txt", "gpt2")
    theirs = hf_model(tmp_path / "gpt2-local", vocab_size=50257, n_embd=32, n_head=2, n_positions=64,
                      bos_token_id=50256, eos_token_id=50256)
    return tmp_path, theirs


def finetune_args(root, **extra):
    settings = {"init_from": root / "gpt2-local", "data_dir": root / "data", "dataset": "romeo",
                "out_dir": root / "out", "block_size": 32, "batch_size": 2, "gradient_accumulation_steps": 1,
                "max_iters": 4, "eval_interval": 2, "eval_iters": 2, "learning_rate": 3e-5, "decay_lr": False,
                "device": "cpu", "dtype": "float32", "dropout": 0.1, **extra}
    return [f"--{k}={v}" for k, v in settings.items()]


def test_finetune_from_a_local_folder_then_resume_and_sample(bpe_run, capsys):
    import sample
    import train

    root, theirs = bpe_run
    start = TrainingRun(load_settings(TrainConfig, finetune_args(root))).model
    idx = tokens(50257, length=32)  # before a step: GPT-2's weights, cropped to block_size 32
    torch.testing.assert_close(ours_logits(start, idx), hf_logits(theirs.eval(), idx))

    assert train.main(finetune_args(root, max_iters=2)) in (0, None)
    state = load_checkpoint_file(root / "out" / "ckpt.pt")
    assert state["model_config"] == {**state["model_config"], "n_layer": 2, "n_embd": 32, "vocab_size": 50257,
                                     "block_size": 32, "dropout": 0.1, "activation": "gelu"}
    assert train.main(finetune_args(root, init_from="resume")) in (0, None)
    assert load_checkpoint_file(root / "out" / "ckpt.pt")["iter_num"] == 4
    capsys.readouterr()
    texts = sample.sample(sample.load_settings(sample.SampleConfig, [f"--out_dir={root / 'out'}", "--start=O Romeo",
                                                                     "--max_new_tokens=5", "--device=cpu"]))
    assert len(texts) == 1
    texts = sample.sample(sample.load_settings(sample.SampleConfig, [f"--init_from={root / 'gpt2-local'}",
                                                                     "--start=O Romeo", "--max_new_tokens=5",
                                                                     "--temperature=0", "--device=cpu"]))
    prompt = torch.tensor([TiktokenCodec("gpt2").encode("O Romeo")])
    greedy = hf_greedy(theirs, prompt, 5)[0, prompt.size(1):].tolist()
    assert texts[0] == TiktokenCodec("gpt2").decode(greedy)


def load_checkpoint_file(path):
    from gptkit.checkpoint import load_checkpoint

    return load_checkpoint(path)


@pytest.mark.parametrize("extra, fragment", [
    ({"n_layer": 3}, "holds a different model: n_layer=2"),
    ({"block_size": 128}, "block_size=64"),
    ({"dataset": "chars"}, "reads GPT-2's BPE tokens"),
    ({"init_from": "gpt3"}, "init_from must be"),
])
def test_finetune_mistakes_are_one_line(bpe_run, capsys, extra, fragment):
    import train

    root, _ = bpe_run
    prepare_text(root / "data" / "chars", root / "text.txt", "char")
    with pytest.raises(SystemExit) as info:
        train.main(finetune_args(root, **extra))
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (root / "out").exists()


def test_eval_config_evaluates_pretrained_weights_and_writes_nothing(bpe_run, capsys):
    import train

    root, theirs = bpe_run
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    args = [str(ROOT / "configs" / "eval_gpt2.py"), f"--init_from={root / 'gpt2-local'}", f"--data_dir={root / 'data'}",
            "--dataset=romeo", "--eval_iters=2", "--batch_size=2", "--block_size=32", "--device=cpu", "--dtype=float32"]
    assert train.main(args) in (0, None)
    out = capsys.readouterr().out
    assert "eval_only: nothing written" in out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    loss = float(out.split("val loss ")[1].split()[0].rstrip(";"))
    assert loss == pytest.approx(float(torch.log(torch.tensor(50257.0))), abs=0.2)  # random weights: ~uniform


def test_finetune_refuses_a_folder_of_another_vocabulary(bpe_run, capsys):
    """A folder export.py wrote from a character model has no GPT-2 vocabulary: one line, not an IndexError."""
    import train

    root, _ = bpe_run
    hf_model(root / "small-vocab")  # 300 tokens
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(finetune_args(root, init_from=root / "small-vocab"))
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "a vocabulary of 300 tokens" in err, err


def test_export_to_a_file_is_one_line(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    config = GPTConfig(block_size=8, vocab_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(UserError, match="is a file"):
        export_hf(GPT(config), CharCodec("abcdefgh"), target)
    assert target.read_text() == "keep me"


def test_from_pretrained_reads_sharded_and_older_folders(tmp_path):
    """A large model's folder holds model-0000x-of-0000y.safetensors and an index; an older
    transformers wrote pytorch_model.bin (read with weights_only: no code runs)."""
    import shutil

    theirs = hf_model(tmp_path / "first")
    theirs.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "older").mkdir()
    shutil.copy(tmp_path / "first" / "config.json", tmp_path / "older")
    torch.save(theirs.state_dict(), tmp_path / "older" / "pytorch_model.bin")
    idx = tokens(300)
    for folder in ("sharded", "older"):
        torch.testing.assert_close(ours_logits(load_gpt2(str(tmp_path / folder)), idx), hf_logits(theirs, idx))


def test_a_character_model_exports_with_its_tokenizer_and_generates_as_sample_py(tmp_path, capsys):
    """The main job's kind of model, exported: transformers' AutoTokenizer and GPT2LMHeadModel's
    greedy generate give exactly sample.py --temperature=0's text, and sample.py reads the folder."""
    import sample
    from conftest import train_tiny_char_model

    out_dir = train_tiny_char_model(tmp_path, "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 40, 32)
    assert export.main([f"--out_dir={out_dir}", f"--to={tmp_path / 'hf'}"]) == 0
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights readable as the other files are
    greedy = ["--start=ROMEO:", "--max_new_tokens=20", "--temperature=0", "--device=cpu", "--dtype=float32"]
    capsys.readouterr()
    assert sample.main([f"--out_dir={out_dir}", *greedy]) == 0
    ours = capsys.readouterr().out.split("\n---------------")[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
    assert ids.shape == (1, 6)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    generated = theirs.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert tokenizer.decode(generated[0]) == ours
    assert sample.main([f"--init_from={tmp_path / 'hf'}", *greedy]) == 0
    assert capsys.readouterr().out.split("\n---------------")[0] == ours


@pytest.mark.parametrize("qk_norm, tie, layout", [(False, True, "LlamaForCausalLM"), (False, False, "LlamaForCausalLM"),
                                                  (True, False, "Qwen3ForCausalLM")])
def test_a_model_of_the_newer_parts_exports_as_llama_or_qwen3(tmp_path, qk_norm, tie, layout):
    """Rotary + RMSNorm + SwiGLU without biases is Llama's layout (with QK-norm, Qwen3's):
    AutoModelForCausalLM loads the folder to our logits and our greedy text, and it loads back here."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=48, bias=False, pos_encoding="rope",
                       norm="rmsnorm", activation="swiglu", qk_norm=qk_norm, tie_embeddings=tie)
    ours = GPT(config).eval()
    with torch.no_grad():  # weights far from their init, so that every part matters
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    codec = CharCodec("".join(chr(65 + i) for i in range(60)))
    export_hf(ours, codec, tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == layout
    idx = tokens(60, length=20)
    torch.testing.assert_close(hf_logits(theirs, idx), ours_logits(ours, idx)[..., :60], rtol=1e-4, atol=1e-4)
    prompt = idx[:, :5]
    with torch.no_grad():
        expected = ours.generate(prompt, 20, choose=lambda logits: logits[:, :60].argmax(-1))
    assert torch.equal(theirs.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0), expected)
    again = load_gpt2(tmp_path / "hf").eval()
    torch.testing.assert_close(ours_logits(again, idx), ours_logits(ours, idx)[..., :60], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, part", [({"logit_softcap": 15.0}, "logit_softcap=15.0"),
                                          ({"activation": "relu2"}, "activation='relu2'"),
                                          ({"pos_encoding": "learned"}, "pos_encoding='learned'")])
def test_parts_no_layout_holds_are_refused_naming_the_part(tmp_path, change, part):
    config = GPTConfig(**{**dict(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=32, bias=False,
                                 pos_encoding="rope", norm="rmsnorm", activation="swiglu"), **change})
    with pytest.raises(UserError, match=f"which GPT-2's layout does not take, and {re.escape(part)}, which Llama's does not"):
        export_hf(GPT(config), CharCodec("abcdefgh"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_gpt2_folder_with_its_tokenizer_json_reads_gpt2_data(tmp_path):
    """GPT-2's folder from the Hub holds tokenizer.json beside vocab.json: it is GPT-2's BPE, whose
    data tiktoken writes, not a BPE of its own."""
    from transformers import AutoTokenizer

    from gptkit.data import GPT2_META
    from gptkit.hf import folder_meta, gpt2_meta, write_gpt2_tokenizer

    write_gpt2_tokenizer(tmp_path, 1024)
    AutoTokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    assert folder_meta(tmp_path) is None
    model = GPT(GPTConfig(block_size=8, vocab_size=50257, n_layer=1, n_head=1, n_embd=8))
    assert gpt2_meta(model, str(tmp_path)) == GPT2_META
