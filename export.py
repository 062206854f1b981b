"""Write a trained model as a Hugging Face folder: GPT-2's layout for GPT-2's parts, Llama's for
rotary + RMSNorm + SwiGLU without biases, Qwen3's for those with QK-norm. Any other mix of parts
is refused in one line naming the part.

    python export.py --out_dir=out-shakespeare --to=hf/shakespeare

The folder holds config.json and model.safetensors, and the model's tokenizer (GPT-2's BPE:
vocab.json, merges.txt; a BPE of the data's own, or characters: tokenizer.json; each with
tokenizer_config.json), so that transformers loads it and gives the same logits:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf/shakespeare")
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gptkit.checkpoint import find_checkpoint
from gptkit.hf import export_hf
from gptkit.sampling import load_model
from gptkit.settings import UserError, load_settings, run_cli


@dataclass
class ExportConfig:
    out_dir: str = "out"  # the folder train.py wrote
    checkpoint: Optional[str] = None  # a checkpoint file; default: out_dir/best.pt, else out_dir/ckpt.pt
    to: Optional[str] = None  # the folder to write (it must not hold a model already)


def export(config):
    if not config.to:
        raise UserError("--to is missing: name the folder to write, e.g. --to=hf/my-model")
    path = find_checkpoint(config.out_dir, config.checkpoint)
    model, codec = load_model(path, "cpu")
    export_hf(model, codec, config.to)
    files = ", ".join(sorted(path.name for path in Path(config.to).iterdir()))
    print(f"{path} -> {config.to} ({files}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(config.to)!r})")


def main(argv=None):
    return run_cli(lambda args: export(load_settings(ExportConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
