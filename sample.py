"""Sample text from a trained GPT.

    python sample.py --temperature 0.8                       # from out-shakespeare-char/
    python sample.py --out_dir=out --start "FILE:prompt.txt" --num_samples 3 --top_p 0.9
    python sample.py --show_probs 5 --max_new_tokens 40     # the candidates behind each token
    python sample.py --init_from=gpt2 --start "The meaning of life is"    # OpenAI's GPT-2 weights

Settings: the defaults below, then config files, then --key=value (or --key value).
"""

import json
import math
import re
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.nn import functional as F

from checkpoint import atomic_write, find_checkpoint, load_checkpoint
from hardware import keep_freed_memory, resolve_device, resolve_dtype, sampling_precision
from model import GPT, GPTConfig
from hf_gpt2 import PRETRAINED, gpt2_meta, is_pretrained
from prepare.tokens import codec_from_meta, meta_problem
from progress import progress
from settings import UserError, load_settings, reason, run_cli


@dataclass
class SampleConfig:
    # 'resume': the model train.py wrote in out_dir; or GPT-2's weights: 'gpt2', 'gpt2-medium', 'gpt2-large',
    # 'gpt2-xl', or a folder in Hugging Face's GPT-2 format
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

    def __post_init__(self):
        # A shell passes "\n" as a backslash and an n: read \n, \t and \\ as escapes in prompt and stop.
        self.start = unescape(self.start) if prompt_file(self.start) is None else self.start
        self.stop = unescape(self.stop) if self.stop else self.stop
        check_sampling(self.temperature, self.top_k, self.top_p)
        if self.init_from != "resume" and not is_pretrained(self.init_from):
            raise ValueError(f"init_from must be 'resume' (the checkpoint in out_dir), a GPT-2 model "
                             f"({', '.join(PRETRAINED)}) or a folder holding one in Hugging Face's format, "
                             f"got {self.init_from!r}")
        if self.num_samples < 1 or self.max_new_tokens < 0 or self.show_probs < 0:
            raise ValueError("num_samples must be >= 1, max_new_tokens and show_probs >= 0")
        if self.stop == "":
            raise ValueError("stop must be a non-empty string (or unset)")
        if not 0 <= self.seed <= 2**63 - self.num_samples:  # sample i uses seed + i, a 64-bit seed
            raise ValueError(f"seed must be in [0, {2**63 - self.num_samples}], got {self.seed}")


def check_sampling(temperature, top_k, top_p):
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no cut), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None for no cut), got {top_p}")


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution the next token is drawn from: logits (B, V) -> probabilities (B, V).

    Applied in this order: temperature divides the logits (0 means greedy: all mass on the
    argmax); top-k keeps the k largest; top-p keeps the smallest set of most likely tokens
    whose probabilities sum to at least p. A token tied with the last one kept is kept too,
    so the result never depends on how ties happen to be sorted.
    """
    check_sampling(temperature, top_k, top_p)
    return _filtered_probs(logits, temperature, top_k, top_p)


def _filtered_probs(logits, temperature, top_k, top_p):
    """sampling_probs for settings already checked."""
    logits = logits.float()
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    # Shift the best logit to 0 first: then even a tiny temperature gives 0 and -inf, never inf - inf.
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs = probs.sort(dim=-1, descending=True).values
        # Tokens before the first place where the running sum reaches top_p (1e-6 absorbs float
        # rounding, so 0.5 + 0.3 reaches 0.8), plus that one: its probability is the cut.
        before = ((sorted_probs.cumsum(dim=-1) < top_p - 1e-6).sum(dim=-1, keepdim=True))
        cut = sorted_probs.gather(-1, before.clamp(max=probs.size(-1) - 1))
        probs = probs.masked_fill(probs < cut, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


class TokenSampler:
    """Draws each next token from sampling_probs of the model's logits: pass it to
    model.generate(idx, n, TokenSampler(temperature=0.8, top_k=50)).

    generators: one torch.Generator per row, so row i draws the same tokens whether it is
    sampled alone or in a batch. vocab_limit: draw only ids below it (the rows that pad a
    vocabulary are no tokens). The settings are checked once, here, not at every token.
    """

    def __init__(self, temperature=1.0, top_k=None, top_p=None, generators=None, vocab_limit=None):
        check_sampling(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators, self.vocab_limit = generators, vocab_limit

    def __call__(self, logits):
        """logits (B, V) -> tokens (B,)"""
        if self.generators is not None and len(self.generators) != logits.size(0):
            raise ValueError(f"need one generator per row of idx: got {len(self.generators)} "
                             f"for {logits.size(0)} rows")
        probs = _filtered_probs(logits[:, :self.vocab_limit], self.temperature, self.top_k, self.top_p)
        if self.generators is None:
            return torch.multinomial(probs, 1).squeeze(1)
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])


def unescape(text):
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def load_model(path, device):
    """A GPT and its codec from a checkpoint written by train.py."""
    state = load_checkpoint(path, device)
    try:
        model = GPT(GPTConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} does not hold a model this code can build ({reason(e, 120)})") from None
    problem = meta_problem(state["meta"])
    codec = None if problem else codec_from_meta(state["meta"])
    if codec and codec.vocab_size > model.config.vocab_size:
        problem = f"a vocabulary of {codec.vocab_size} tokens for a model of {model.config.vocab_size}"
    if problem:
        raise UserError(f"{path} is not a checkpoint of this project ({problem}); use one written by train.py")
    return model.to(device).eval(), codec


def load_pretrained(name_or_path, device):
    """GPT-2's weights (see hf_gpt2.PRETRAINED) and GPT-2's BPE."""
    model = GPT.from_pretrained(name_or_path)
    return model.to(device).eval(), codec_from_meta(gpt2_meta(model, name_or_path))


def prompt_file(start):
    """The file --start=FILE:path names, or None for a prompt given as text."""
    return start[len("FILE:"):] if start.startswith("FILE:") else None


def read_prompt(start, codec):
    path = prompt_file(start)
    if path is not None:
        if not path:
            raise UserError("--start=FILE: needs a file's path after FILE:")
        try:
            start = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read the prompt file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"the prompt file {path} is not UTF-8 text; save it as UTF-8") from None
    ids = codec.encode(start)
    if not ids:
        raise UserError("the prompt is empty; give --start some text")
    return ids


class Sample:
    """One sample's text as it grows, cut at the stop string or the end-of-text token. Each
    new token is decoded on its own (with any unfinished character before it), so a long
    sample costs the same per token as a short one."""

    def __init__(self, codec, stop):
        self.codec, self.stop = codec, stop
        self.ids, self.done, self.shown = [], False, 0
        self.full, self.pending = "", []  # the text of ids up to its last whole character, then the rest
        self.cut = None  # where the stop string begins, once it has appeared

    def add(self, token):
        if self.done:
            return
        if token == self.codec.eot_token:
            self.done = True
            return
        self.ids.append(token)
        self.pending.append(token)
        piece = self.codec.decode(self.pending)
        if piece.endswith("\ufffd"):  # part of a character (BPE): wait for the rest of it
            return
        searched = max(0, len(self.full) - len(self.stop) + 1) if self.stop else 0
        self.full, self.pending = self.full + piece, []
        if self.stop and (at := self.full.find(self.stop, searched)) >= 0:
            self.cut, self.done = at, True

    def text(self, cut=True):
        if cut and self.cut is not None:
            return self.full[:self.cut]
        return self.full + (self.codec.decode(self.pending) if self.pending else "")

    def unshown(self):
        """New text safe to print now: held back are a partial character and any ending that
        could still grow into the stop string."""
        text = self.text() if self.done else self.full
        end = len(text)
        if not self.done and self.stop:
            end -= max((n for n in range(1, len(self.stop)) if text.endswith(self.stop[:n])), default=0)
        new, self.shown = text[self.shown:end], max(self.shown, end)
        return new


def candidates(probs, token, count, codec):
    """The count most likely tokens of probs (V,) as dicts, and the drawn token's own."""
    top = torch.topk(probs, min(count, probs.size(0)))
    rows = [{"token": int(i), "text": codec.decode([int(i)]), "prob": float(p)} for p, i in zip(*top)]
    drawn = {"token": token, "text": codec.decode([token]), "prob": float(probs[token])}
    return rows, drawn


def token_label(token, text):
    """A token as a table shows it: its text quoted ('\\n', ' the'), or, when it is part of a
    character (BPE), its id: #94."""
    return f"#{token}" if "\ufffd" in text else repr(text)


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


def sampling_context(model, idx, device, dtype, measure):
    """hardware.sampling_precision for sampling from idx (B, T); with measure (dtype auto), a CPU
    keeps bfloat16 only where 8 greedy tokens after idx's last one come faster in it. On a CPU,
    freed memory is also kept for reuse (hardware.keep_freed_memory)."""
    if device == "cpu":
        keep_freed_memory()
    trial = (lambda: model.generate(idx[:1, -1:], 8)) if measure else None
    return sampling_precision(model, device, dtype, trial)


def sample(config, out=None):
    out = out or sys.stdout
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if config.init_from == "resume":
        path = find_checkpoint(config.out_dir, config.checkpoint)
        model, codec = load_model(path, device)
    else:
        path, (model, codec) = Path(config.init_from), load_pretrained(config.init_from, device)
    prompt = read_prompt(config.start, codec)
    idx = torch.tensor([prompt] * config.num_samples, dtype=torch.long, device=device)
    generators = [torch.Generator(device=device).manual_seed(config.seed + i) for i in range(config.num_samples)]
    samples = [Sample(codec, config.stop) for _ in range(config.num_samples)]
    stream = config.num_samples == 1 and not config.show_probs  # print text as it comes
    count = config.show_probs or 10
    table = [[] for _ in samples]
    choose = TokenSampler(config.temperature, config.top_k, config.top_p, generators, vocab_limit=codec.vocab_size)
    steps = model.generate_stream(idx, config.max_new_tokens, choose, config.use_cache)
    with ExitStack() as stack:
        keep = [path] + ([Path(prompt_file(config.start))] if prompt_file(config.start) else [])
        probs_file = open_probs_file(config.probs_file, stack, keep) if config.probs_file else None
        stack.enter_context(sampling_context(model, idx, device, dtype, measure=config.dtype == "auto"))
        if stream:
            out.write(codec.decode(prompt))
        if config.show_probs:
            print(f" step    drawn  the {count} most likely next tokens, with their probabilities after "
                  f"temperature{' (greedy: at 1)' if config.temperature == 0 else ''}; * = drawn", file=out)
        bar = stack.enter_context(progress(total=config.max_new_tokens, desc="sampling", unit="tok",
                                           disable=stream or config.num_samples == 1))
        for step, (tokens, logits) in enumerate(steps):
            bar.update()
            # --show_probs shows probabilities after temperature, before top-k and top-p (greedy: at 1)
            if config.show_probs or probs_file:
                probs = _filtered_probs(logits[:, :codec.vocab_size], config.temperature or 1.0, None, None)
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
