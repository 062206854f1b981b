"""Score a model on HellaSwag: the accuracy at choosing each context's ending, as llm.c and
build-nanogpt compute it (gptkit/hellaswag.py).

    python hellaswag.py --init_from=gpt2                   # OpenAI's GPT-2 124M (its figures: docs/hellaswag.md)
    python hellaswag.py --out_dir=out-gpt2                 # a model train.py wrote (in GPT-2's BPE)
    python hellaswag.py --init_from=gpt2 --limit=100       # the first 100 examples: a quick check

Settings: the defaults below, then config files, then --key=value (or --key value). The
validation file is downloaded to data/hellaswag/ the first time (docs/hellaswag.md).
"""

import sys
import time
from dataclasses import dataclass
from typing import Optional

from gptkit.checkpoint import find_checkpoint
from gptkit.cpu import use_cpu_kernels
from gptkit.data import GPT2_META, TiktokenCodec
from gptkit.hardware import autocast_context, resolve_device, resolve_dtype
from gptkit.hellaswag import HellaSwag, check_vocabulary, hellaswag_file, not_gpt2_bpe
from gptkit.hf import PRETRAINED, folder_meta, is_pretrained, load_gpt2
from gptkit.runlog import duration
from gptkit.sampling import load_model
from gptkit.settings import load_settings, run_cli


@dataclass
class HellaSwagConfig:
    # 'resume': the model train.py wrote in out_dir; or GPT-2's weights: 'gpt2', 'gpt2-medium', 'gpt2-large',
    # 'gpt2-xl'; or a Hugging Face folder in GPT-2's BPE (GPT-2's, Llama's or Qwen3's layout)
    init_from: str = "resume"
    out_dir: str = "out"  # the folder train.py wrote
    checkpoint: Optional[str] = None  # a checkpoint file; default: out_dir/best.pt, else out_dir/ckpt.pt
    hellaswag_file: Optional[str] = None  # default: data_dir/hellaswag/hellaswag_val.jsonl, downloaded the first time
    data_dir: str = "data"
    limit: Optional[int] = None  # score the first N examples only
    batch_tokens: int = 4096  # tokens a forward reads (4 rows an example, padded to the longest); memory grows with it
    device: str = "auto"
    dtype: str = "auto"  # float32 gives exactly the figures of build-nanogpt's script; bfloat16 is faster

    def __post_init__(self):
        if self.init_from != "resume" and not is_pretrained(self.init_from):
            raise ValueError(f"init_from must be 'resume' (the checkpoint in out_dir), a GPT-2 model "
                             f"({', '.join(PRETRAINED)}) or a folder holding one in Hugging Face's format, "
                             f"got {self.init_from!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 (or None for every example), got {self.limit}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {self.batch_tokens}")


def load(config, device):
    """(model, codec, what it is) of the settings; only a model in GPT-2's BPE."""
    if config.init_from == "resume":
        path = find_checkpoint(config.out_dir, config.checkpoint)
        model, codec = load_model(path, device)
        check_vocabulary(codec, path)
        return model, codec, str(path)
    model = load_gpt2(config.init_from).to(device).eval()
    own = folder_meta(config.init_from) if config.init_from not in PRETRAINED else None  # its own tokenizer
    if own is not None or model.config.vocab_size < GPT2_META["vocab_size"]:  # e.g. export.py's folders
        raise not_gpt2_bpe(f"init_from={config.init_from}", f"{(own or {}).get('vocab_size', model.config.vocab_size):,} tokens")
    return model, TiktokenCodec("gpt2"), config.init_from


def score(config):
    """{'acc', 'acc_norm', 'examples'} of the model the settings name, printed as one line."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    model, codec, source = load(config, device)
    if device == "cpu":
        use_cpu_kernels(model)
    path = hellaswag_file(config.hellaswag_file, config.data_dir)
    benchmark = HellaSwag(path, codec, model.config.block_size, config.batch_tokens, config.limit)
    started = time.perf_counter()
    correct, correct_norm, examples = benchmark.count_correct(model, device, autocast_context(device, dtype))
    result = {"acc": correct / examples, "acc_norm": correct_norm / examples, "examples": examples}
    print(f"{source}: HellaSwag acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f} ({examples:,} examples, "
          f"{dtype}, {duration(time.perf_counter() - started)})")
    return result


def main(argv=None):
    return run_cli(lambda args: score(load_settings(HellaSwagConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
