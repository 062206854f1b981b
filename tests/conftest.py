"""Shared fixtures: a tiny model config and tiny token files made on the fly."""

import os
import signal
from pathlib import Path

import pytest
import torch

from model import GPTConfig
from gptkit.datasets import prepare_shakespeare_char

# A shell starts a background job (`pytest &`, nohup) with SIGINT ignored, which the programs the
# tests start and interrupt with it would inherit; with Python's own handler here, they start
# with the default, as from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

# The models here are tiny: more threads only add overhead, and contend with each other on a busy machine.
torch.set_num_threads(1)

# A few thousand characters of text with a small vocabulary: enough for a model to learn from.
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


@pytest.fixture
def tiny_config():
    """2 layers, 2 heads, 32 wide, context 16."""
    return GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)


@pytest.fixture
def char_data(tmp_path):
    """A prepared character-level data set: data_dir/tiny/{train,val}.bin and meta.json."""
    text_file = tmp_path / "input.txt"
    text_file.write_text(TEXT)
    data_dir = tmp_path / "data"
    prepare_shakespeare_char(data_dir / "tiny", input_path=str(text_file))
    return data_dir


@pytest.fixture
def tiny_train_args(char_data, tmp_path):
    """Command-line settings for a training run of a few seconds on the tiny data set."""
    return [f"--data_dir={char_data}", "--dataset=tiny", f"--out_dir={tmp_path / 'out'}",
            "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
            "--gradient_accumulation_steps=1", "--max_iters=20", "--eval_interval=10", "--eval_iters=2",
            "--log_interval=5", "--warmup_iters=2", "--lr_decay_iters=20", "--learning_rate=1e-3",
            "--device=cpu", "--dtype=float32", "--dropout=0.0"]


SHARED_TIKTOKEN = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tiktoken_cache"


@pytest.fixture
def gpt2_codec(monkeypatch):
    """GPT-2's BPE; offline it needs tiktoken's cached files (TIKTOKEN_CACHE_DIR, or ../shared)."""
    if not os.environ.get("TIKTOKEN_CACHE_DIR") and SHARED_TIKTOKEN.is_dir():
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_TIKTOKEN))
    from gptkit.data import TiktokenCodec
    from gptkit.settings import UserError

    try:
        return TiktokenCodec("gpt2")
    except UserError as e:
        pytest.skip(f"GPT-2 BPE files not available offline (set TIKTOKEN_CACHE_DIR): {e}")


@pytest.fixture
def serve_page():
    """start(explorer) -> the base URL of gptkit.serve's page for it, served from a thread until
    the test ends."""
    import threading

    from gptkit.serve import make_server

    servers = []

    def start(explorer):
        server = make_server(explorer, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def train_tiny_char_model(root, text, block_size):
    """Train a 2-layer character model on text for 10 steps, as train.py writes it: its out_dir."""
    import train

    (root / "input.txt").write_text(text)
    prepare_shakespeare_char(root / "data" / "tiny", str(root / "input.txt"))
    args = [f"--data_dir={root / 'data'}", "--dataset=tiny", f"--out_dir={root / 'out'}", "--n_layer=2",
            "--n_head=2", "--n_embd=32", f"--block_size={block_size}", "--batch_size=4", "--gradient_accumulation_steps=1",
            "--max_iters=10", "--eval_interval=10", "--eval_iters=1", "--warmup_iters=2", "--lr_decay_iters=10",
            "--device=cpu", "--dtype=float32"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert train.main(args) == 0
    return root / "out"
