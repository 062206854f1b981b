"""What sampling needs, for sample.py, explain.py and the benchmarks: a model and its codec
from a checkpoint or a Hugging Face folder, the distribution each token is drawn from
(temperature, top-k, top-p, only tokens that keep a byte-level text valid UTF-8), the prompt,
and the text as it grows."""

import math
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch.nn import functional as F

from gptkit.checkpoint import find_checkpoint, load_checkpoint
from gptkit.cpu import keep_freed_memory, sampling_precision, use_cpu_kernels
from gptkit.hardware import cpu_auto_dtype
from gptkit.data import codec_from_meta, meta_problem
from gptkit.hf import PRETRAINED, gpt2_meta, is_pretrained, load_gpt2
from gptkit.settings import UserError, reason
from model import GPT, GPTConfig


# A temperature below this is greedy: the logits divided by it would leave float32's range (and
# below ~1e-45 the temperature itself is 0 in float32), and the result is greedy all the same.
GREEDY_BELOW = 1e-4


def check_sampling(temperature, top_k, top_p):
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0, or anything below {GREEDY_BELOW:g}: greedy), "
                         f"got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (or None for no cut), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None for no cut), got {top_p}")


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution the next token is drawn from: logits (B, V) -> probabilities (B, V).

    Applied in this order: temperature divides the logits (0, or below GREEDY_BELOW, means
    greedy: all mass on the argmax); top-k keeps the k largest; top-p keeps the smallest set of most likely tokens
    whose probabilities sum to at least p. A token tied with the last one kept is kept too,
    so the result never depends on how ties happen to be sorted.
    """
    check_sampling(temperature, top_k, top_p)
    return filtered_probs(logits, temperature, top_k, top_p)


def filtered_probs(logits, temperature, top_k, top_p):
    """sampling_probs for settings already checked."""
    logits = logits.float()
    if temperature < GREEDY_BELOW:
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


# Where a byte-level text stands: (continuation bytes still awaited, the range the next one must
# be in). UTF-8's second byte is narrower after E0, ED, F0 and F4 (no overlong forms, no
# surrogates, nothing past U+10FFFF).
UTF8_STATES = [(0, 0, 0), (1, 0x80, 0xBF), (2, 0x80, 0xBF), (3, 0x80, 0xBF),
               (2, 0xA0, 0xBF), (2, 0x80, 0x9F), (3, 0x90, 0xBF), (3, 0x80, 0x8F)]
UTF8_LEAD = {**{b: 1 for b in range(0xC2, 0xE0)}, 0xE0: 4, **{b: 2 for b in range(0xE1, 0xF0)}, 0xED: 5,
             0xF0: 6, 0xF1: 3, 0xF2: 3, 0xF3: 3, 0xF4: 7}  # a lead byte -> the state after it


def utf8_after(state, data):
    """The state after bytes data follow text in state, or None if they break UTF-8. A special
    token (data None) may come only between characters."""
    if data is None:
        return 0 if state == 0 else None
    for byte in data:
        need, low, high = UTF8_STATES[state]
        if need:
            if not low <= byte <= high:
                return None
            state = need - 1  # the states of 0, 1 and 2 bytes awaited in the full range are 0, 1, 2
        elif byte >= 0x80:
            state = UTF8_LEAD.get(byte)
            if state is None:  # a continuation byte with nothing to continue, or a byte UTF-8 never has
                return None
    return state


class Utf8Guard:
    """For a byte-level vocabulary (GPT-2's BPE, a BPE of the data's own), the tokens that may
    come next so that the text stays valid UTF-8: a byte token that would break a character is
    never drawn, so no sample holds U+FFFD. Made once for a codec: for each state and token,
    whether it may follow, and the state after it."""

    def __init__(self, raw_bytes):
        after = [[utf8_after(state, data) for data in raw_bytes] for state in range(len(UTF8_STATES))]
        self.allowed = torch.tensor([[a is not None for a in row] for row in after])  # (states, V)
        self.after = torch.tensor([[a or 0 for a in row] for row in after])

    def states(self, rows):
        """(B,) the state after each row of token ids (the prompt)."""
        result = []
        for row in rows:
            state = 0
            for token in row:
                state = int(self.after[state, token]) if self.allowed[state, token] else 0  # a broken prompt: start afresh
            result.append(state)
        return torch.tensor(result)


def utf8_guard(codec):
    """The codec's Utf8Guard (made once), or None for a codec of whole characters."""
    if not hasattr(codec, "raw_bytes"):
        return None
    if getattr(codec, "utf8_guard", None) is None:
        codec.utf8_guard = Utf8Guard(codec.raw_bytes())
    return codec.utf8_guard


class TokenSampler:
    """Draws each next token from sampling_probs of the model's logits: pass it to
    model.generate(idx, n, TokenSampler(temperature=0.8, top_k=50)).

    generators: one torch.Generator per row, so row i draws the same tokens whether it is
    sampled alone or in a batch. vocab_limit: draw only ids below it (the rows that pad a
    vocabulary are no tokens). The settings are checked once, here, not at every token.
    """

    def __init__(self, temperature=1.0, top_k=None, top_p=None, generators=None, vocab_limit=None, utf8=None,
                 prompt=None):
        check_sampling(temperature, top_k, top_p)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators, self.vocab_limit = generators, vocab_limit
        self.utf8 = utf8  # a Utf8Guard: only tokens that keep the text valid UTF-8 are drawn
        self.states = None if utf8 is None else utf8.states(prompt)  # prompt: the rows of ids drawn after

    def __call__(self, logits):
        """logits (B, V) -> tokens (B,)"""
        if self.generators is not None and len(self.generators) != logits.size(0):
            raise ValueError(f"need one generator per row of idx: got {len(self.generators)} "
                             f"for {logits.size(0)} rows")
        logits = logits[:, :self.vocab_limit]
        if self.utf8 is not None:
            allowed = self.utf8.allowed[self.states][:, :logits.size(1)].to(logits.device)
            logits = logits.masked_fill(~allowed, float("-inf"))
        probs = filtered_probs(logits, self.temperature, self.top_k, self.top_p)
        if self.generators is None:
            tokens = torch.multinomial(probs, 1).squeeze(1)
        else:
            tokens = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        if self.utf8 is not None:
            self.states = self.utf8.after[self.states, tokens.cpu()]
        return tokens


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
    """The weights of a GPT-2 name (see hf.PRETRAINED) or a Hugging Face folder, and the codec
    they read: the folder's own tokenizer, else GPT-2's BPE (hf.gpt2_meta)."""
    model = load_gpt2(name_or_path)
    return model.to(device).eval(), codec_from_meta(gpt2_meta(model, name_or_path))


def check_init_from(init_from):
    if init_from != "resume" and not is_pretrained(init_from):
        raise ValueError(f"init_from must be 'resume' (the checkpoint in out_dir), a GPT-2 model "
                         f"({', '.join(PRETRAINED)}) or a folder holding one in Hugging Face's format, "
                         f"got {init_from!r}")


def load_chosen(init_from, out_dir, checkpoint, device):
    """(the file or folder read, model, codec) of the settings every script that samples takes:
    init_from 'resume' reads out_dir's checkpoint (or the checkpoint named), else a GPT-2 name or
    a Hugging Face folder."""
    if init_from == "resume":
        path = find_checkpoint(out_dir, checkpoint)
        return (path, *load_model(path, device))
    return (Path(init_from), *load_pretrained(init_from, device))


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
        """The text so far, without a character left unfinished at its end (which, when sampling
        stops there, never will be: it would print as U+FFFD)."""
        if cut and self.cut is not None:
            return self.full[:self.cut]
        return self.full

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


@contextmanager
def sampling_context(model, device, dtype, auto):
    """cpu.sampling_precision for sampling; with auto (dtype auto), a CPU with bfloat16 keeps it
    only for a model that runs faster in it (cpu_auto_dtype's rule). On a CPU, the CPU's kernels
    are swapped in and freed memory is kept for reuse while sampling (cpu.py)."""
    with ExitStack() as scope:
        if device == "cpu":
            use_cpu_kernels(model)
            scope.enter_context(keep_freed_memory())
            if auto and dtype == "bfloat16":
                dtype, _ = cpu_auto_dtype(model.config.n_embd, work="sampling")
        scope.enter_context(sampling_precision(model, device, dtype))
        yield
