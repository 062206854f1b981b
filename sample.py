"""Sample text from a trained GPT.

    python sample.py --temperature 0.8                       # from out-shakespeare-char/
    python sample.py --out_dir=out --start "FILE:prompt.txt" --num_samples 3 --top_p 0.9
    python sample.py --show_probs 5 --max_new_tokens 40     # the candidates behind each token
    python sample.py --init_from=gpt2 --start "The meaning of life is"    # OpenAI's GPT-2 weights

Settings: the defaults below, then config files, then --key=value (or --key value).
"""

import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from gptkit.files import atomic_write
from gptkit.hardware import resolve_device, resolve_dtype
from gptkit.runlog import progress
from gptkit.sampling import (GREEDY_BELOW, Sample, TokenSampler, candidates, check_init_from, check_sampling, filtered_probs,
                             load_chosen, prompt_file, read_prompt, sampling_context, token_label, unescape,
                             utf8_guard)
from gptkit.settings import UserError, load_settings, run_cli


@dataclass
class SampleConfig:
    # 'resume': the model train.py wrote in out_dir; or GPT-2's weights: 'gpt2', 'gpt2-medium', 'gpt2-large',
    # 'gpt2-xl'; or a Hugging Face folder (GPT-2's, Llama's or Qwen3's layout): its own tokenizer, else GPT-2's
    init_from: str = "resume"
    out_dir: str = "out-shakespeare-char"  # the folder train.py wrote
    checkpoint: Optional[str] = None  # a checkpoint file; default: out_dir/best.pt, else out_dir/ckpt.pt
    start: str = "\n"  # the prompt: text, or FILE:path to read it from a file
    num_samples: int = 1  # drawn together in one batch; sample i uses seed + i
    max_new_tokens: int = 500
    temperature: float = 0.8  # < 1 sharper, > 1 more random, 0 greedy
    top_k: Optional[int] = None  # keep only the k most likely tokens
    top_p: Optional[float] = None  # keep the most likely tokens whose probabilities sum to p
    stop: Optional[str] = None  # end a sample where this text appears (BPE models also end at <|endoftext|>)
    show_probs: int = 0  # print the K most likely candidates for each new token, the drawn one marked
    probs_file: Optional[str] = None  # write each token's candidates (show_probs of them, or 10) as JSON lines
    use_cache: bool = True  # reuse keys and values across steps (False: recompute the window each step)
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False  # nanoGPT's flag, accepted; sampling here is not compiled (see sample())

    def __post_init__(self):
        # A shell passes "\n" as a backslash and an n: read \n, \t and \\ as escapes in prompt and stop.
        self.start = unescape(self.start) if prompt_file(self.start) is None else self.start
        self.stop = unescape(self.stop) if self.stop else self.stop
        check_sampling(self.temperature, self.top_k, self.top_p)
        check_init_from(self.init_from)
        if self.num_samples < 1 or self.max_new_tokens < 0 or self.show_probs < 0:
            raise ValueError("num_samples must be >= 1, max_new_tokens and show_probs >= 0")
        if self.stop == "":
            raise ValueError("stop must be a non-empty string (or unset)")
        if not 0 <= self.seed <= 2**63 - self.num_samples:  # sample i uses seed + i, a 64-bit seed
            raise ValueError(f"seed must be in [0, {2**63 - self.num_samples}], got {self.seed}")


def format_candidates(step, rows, drawn):
    def label(entry):
        return token_label(entry["token"], entry["text"])
    cells = [f"{'*' if r['token'] == drawn['token'] else ' '}{label(r):>8} {r['prob']:.3f}" for r in rows]
    if all(r["token"] != drawn["token"] for r in rows):
        cells.append(f"| drawn {label(drawn)} {drawn['prob']:.3f}")
    return f"{step:5d} {label(drawn):>8}  " + "  ".join(cells)


def open_probs_file(path, stack, keep):
    """The --probs_file, written beside path and renamed over it only when sampling ends
    (Ctrl-C or an error leaves any earlier file as it was); never one of the files in keep."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"probs_file {path} is a folder; name a file")
    clash = [k for k in keep if path.exists() and k.exists() and path.samefile(k)]
    if clash:
        raise UserError(f"probs_file {path} is the file sampling reads ({clash[0]}); choose another path")
    try:
        return stack.enter_context(atomic_write(path, "w"))
    except OSError as e:
        raise UserError(f"cannot write probs_file {path}: {e.strerror}") from None


def sample(config, out=None):
    out = out or sys.stdout
    if config.compile:  # each token's step has a new shape of cache: compiling would recompile, not speed up
        print("compile=True: sampling here runs uncompiled (each step's cache has a new length, which a "
              "compiled model would recompile for); the KV cache is what makes it fast", file=sys.stderr)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    path, model, codec = load_chosen(config.init_from, config.out_dir, config.checkpoint, device)
    prompt = read_prompt(config.start, codec)
    idx = torch.tensor([prompt] * config.num_samples, dtype=torch.long, device=device)
    generators = [torch.Generator(device=device).manual_seed(config.seed + i) for i in range(config.num_samples)]
    samples = [Sample(codec, config.stop) for _ in range(config.num_samples)]
    stream = config.num_samples == 1 and not config.show_probs  # print text as it comes
    count = config.show_probs or 10
    table = [[] for _ in samples]
    choose = TokenSampler(config.temperature, config.top_k, config.top_p, generators, vocab_limit=codec.vocab_size,
                          utf8=utf8_guard(codec), prompt=idx.tolist())
    steps = model.generate_stream(idx, config.max_new_tokens, choose, config.use_cache)
    with ExitStack() as stack:
        keep = [path] + ([Path(prompt_file(config.start))] if prompt_file(config.start) else [])
        probs_file = open_probs_file(config.probs_file, stack, keep) if config.probs_file else None
        stack.enter_context(sampling_context(model, device, dtype, auto=config.dtype == "auto"))
        if stream:
            out.write(codec.decode(prompt))
        if config.show_probs:
            print(f" step    drawn  the {count} most likely next tokens, with their probabilities after "
                  f"temperature{' (greedy: at 1)' if config.temperature < GREEDY_BELOW else ''}; * = drawn", file=out)
        bar = stack.enter_context(progress(total=config.max_new_tokens, desc="sampling", unit="tok",
                                           disable=stream or config.num_samples == 1))
        for step, (tokens, logits) in enumerate(steps):
            bar.update()
            # --show_probs shows probabilities after temperature, before top-k and top-p (temperature 0: at 1)
            if config.show_probs or probs_file:
                shown = config.temperature if config.temperature >= GREEDY_BELOW else 1.0
                probs = filtered_probs(logits[:, :codec.vocab_size], shown, None, None)
            for i, (s, token) in enumerate(zip(samples, tokens.tolist())):
                if s.done:
                    continue
                s.add(token)
                if config.show_probs or probs_file:
                    rows, drawn = candidates(probs[i], token, count, codec)
                    if config.show_probs:
                        table[i].append(format_candidates(step, rows, drawn))
                        if config.num_samples == 1:
                            print(table[i][-1], file=out, flush=True)
                    if probs_file:
                        probs_file.write(json.dumps({"sample": i, "step": step, **drawn, "candidates": rows}) + "\n")
            if stream:
                out.write(samples[0].unshown())
                out.flush()
            if all(s.done for s in samples):
                break
    for i, s in enumerate(samples):
        s.done = True  # generation is over: nothing held back can still become the stop string
        if stream:
            out.write(s.unshown() + "\n")
        else:
            if config.show_probs and config.num_samples > 1:
                out.write("\n".join(table[i]) + "\n")
            out.write(codec.decode(prompt) + s.text() + "\n")
        out.write("---------------\n")
    out.flush()
    return [s.text() for s in samples]


def main(argv=None):
    return run_cli(lambda args: sample(load_settings(SampleConfig, args)), argv)


if __name__ == "__main__":
    sys.exit(main())
