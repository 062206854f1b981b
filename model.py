"""The whole GPT in one file.

A GPT reads a sequence of token ids and, at every position, predicts a distribution over
the next token. Reading top to bottom: the configuration, the cache that makes sampling
fast, the three parts of a transformer block (attention, MLP, the block itself), and the
model. How a next token is drawn from its scores (temperature, top-k, top-p) is
gptkit/sampling.py's.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F


class ReLU2(nn.Module):
    """relu(x)^2, the MLP nonlinearity of Primer (So et al., 2021) and modded-nanogpt."""

    def forward(self, x):
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """silu(a) * b of the two halves (a, b) of its input: a gate and a value (Shazeer, 2020)."""

    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return F.silu(a) * b


# GPT-2 used the tanh approximation of GELU, so its weights load exactly with 'gelu';
# nanoGPT's models were trained with the exact form.
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(approximate="tanh"),
    "gelu_exact": nn.GELU,
    "relu": nn.ReLU,
    "relu2": ReLU2,
    "swiglu": SwiGLU,
}


@dataclass
class GPTConfig:
    block_size: int = 1024  # the longest context the model reads, in tokens
    vocab_size: int = 50304  # GPT-2's 50257 tokens, padded up to a multiple of 64 for speed
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # 0 for pretraining; 0.1+ helps small data sets
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    # 'learned' (GPT-2), 'sinusoidal' (fixed, added to the embedding, as in Attention Is All You
    # Need) or 'rope' (rotary: queries and keys turned by their position, as in most newer GPTs)
    pos_encoding: str = "learned"
    # MLP nonlinearity: 'gelu' (GPT-2's tanh form), 'gelu_exact' (nanoGPT's), 'relu', 'relu2'
    # (relu squared) or 'swiglu' (gated; its hidden layer 8/3 wide, for the parameters of 4x)
    activation: str = "gelu"
    norm: str = "layernorm"  # 'layernorm' (GPT-2) or 'rmsnorm' (scale only, no mean subtracted)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before their dot product
    tie_embeddings: bool = True  # the output layer is the token embedding (GPT-2), or a matrix of its own
    logit_softcap: float = 0.0  # > 0: logits = c * tanh(logits / c), bounded by c (Gemma 2); 0: off

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in ("learned", "sinusoidal", "rope"):
            raise ValueError(f"pos_encoding must be 'learned', 'sinusoidal' or 'rope', got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_encoding='rope' turns pairs of channels: the head size n_embd / n_head "
                             f"({self.n_embd // self.n_head}) must be even")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if not self.logit_softcap >= 0:
            raise ValueError(f"logit_softcap must be >= 0 (0 turns it off), got {self.logit_softcap}")


def make_norm(config, size=None):
    """The normalisation the config names, over the last `size` channels (default n_embd)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size or config.n_embd, eps=1e-5)
    return nn.LayerNorm(size or config.n_embd, bias=config.bias)


class KVCache:
    """The keys and values of every layer for the tokens seen so far.

    Sampling feeds the prompt once (prefill), then one new token per step: each layer
    appends that token's key and value here and attends over everything stored, instead of
    recomputing the whole sequence.
    """

    def __init__(self, config):
        self.config = config
        self.keys = self.values = None  # (n_layer, B, nh, block_size, hs), made on first use
        self.length = 0  # tokens stored, the same in every layer; GPT.forward advances it

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after the cached tokens; return all of that layer's so far."""
        if self.keys is None:  # k's dtype is the one attention computes in (autocast included)
            B, nh, _, hs = k.shape
            shape = (self.config.n_layer, B, nh, self.config.block_size, hs)
            self.keys = torch.zeros(shape, device=k.device, dtype=k.dtype)
            self.values = torch.zeros(shape, device=v.device, dtype=v.dtype)
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Every position makes a query, a key and a value. A position's output is the average of
    the values at it and before it (causal: never after), weighted by softmax(q . k / sqrt(hs)).
    n_head heads do this side by side, each in its own hs = n_embd / n_head channels."""

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # this block's index, which selects its slot in a KVCache
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm:
            self.q_norm = make_norm(replace(config, norm="rmsnorm"), config.n_embd // config.n_head)
            self.k_norm = make_norm(replace(config, norm="rmsnorm"), config.n_embd // config.n_head)

    def heads(self, x, rotary=None):
        """x (B, T, C) -> q, k, v, each (B, nh, T, hs): every head's queries, keys and values;
        queries and keys normalised (qk_norm) and turned by their positions (rotary: cos, sin)."""
        B, T, C = x.size()
        q, k, v = [t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2)]
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        return q, k, v

    def forward(self, x, rotary=None, cache=None, only_last=False):
        """x (B, T, C) -> (B, T, C), or (B, 1, C) with only_last: the last position's output
        alone (sampling needs no other), though every position still gives its key and value."""
        B, T, C = x.size()
        q, k, v = self.heads(x, rotary)  # (B, nh, T, hs) each
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)  # (B, nh, past + T, hs)
        if only_last:
            q = q[:, :, -1:]  # the last position sees every key: no mask
        Tq = q.size(2)
        mask, causal = None, past == 0 and Tq > 1  # a single query sees every key
        if past and Tq > 1:  # new token i may see the cached tokens and new tokens up to i
            mask = torch.ones(Tq, past + Tq, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = self.attend(q, k, v, mask, causal)  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask, is_causal):
        """(B, nh, Tq, hs) queries over (B, nh, Tk, hs) keys and values -> (B, nh, Tq, hs); in
        training, each attention weight is dropped with probability dropout."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              dropout_p=self.dropout if self.training else 0.0)


def rotate(x, cos, sin):
    """Rotary position embedding: each pair of channels (i, i + hs/2) of x (B, nh, T, hs) turned
    by the angle of its position times the pair's frequency (cos, sin: (T, hs/2)). A query and a
    key then meet at the angle between their positions: attention sees relative positions only."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def rotary_angles(positions, head_size, base=10000.0):
    """(T, head_size / 2): each position of positions (T,) times frequency base^(-2i / head_size).
    Made in float32 whatever the model's dtype: bfloat16 rounds an angle near 1,000 to a multiple
    of 4, which would turn the positions into noise."""
    frequency = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size)
    return positions.float()[:, None] * frequency


class MLP(nn.Module):
    """At each position on its own: widen 4x, apply the nonlinearity, project back. SwiGLU
    widens to two 8/3 halves, a gate and a value, which keeps the parameters of 4x."""

    def __init__(self, config):
        super().__init__()
        hidden = round(8 * config.n_embd / 3) if config.activation == "swiglu" else 4 * config.n_embd
        widened = 2 * hidden if config.activation == "swiglu" else hidden
        self.c_fc = nn.Linear(config.n_embd, widened, bias=config.bias)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm: normalise, transform, add back to the residual stream."""

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rotary=None, cache=None, only_last=False):
        x = (x[:, -1:] if only_last else x) + self.attn(self.ln_1(x), rotary, cache, only_last)
        x = x + self.mlp(self.ln_2(x))
        return x


def sinusoidal_positions(block_size, n_embd):
    """Fixed encodings: even channels sin(pos / 10000^(i/C)), odd channels cos, (T, C)."""
    position = torch.arange(block_size, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : n_embd // 2]
    return table


class GPT(nn.Module):
    """Token embedding + position encoding -> n_layer blocks -> final norm -> logits,
    one score per vocabulary entry for the token that comes next at every position."""

    def __init__(self, config):
        super().__init__()
        self.config = replace(config)  # its own copy: crop_block_size changes it
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos_encoding == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # the output projection IS the token embedding (one tensor)
            self.transformer.wte.weight = self.lm_head.weight
        self.make_position_tables()
        self.init_weights()

    def make_position_tables(self):
        """The fixed position table of 'sinusoidal': a function of the config, so not a parameter
        and not saved. (Rotary's angles are made as they are needed, in float32.)"""
        device = self.transformer.wte.weight.device
        if self.config.pos_encoding == "sinusoidal":
            # sin and cos have RMS 1/sqrt(2), far above the token embeddings' 0.02: scaled to
            # RMS 0.02, the position does not drown the token after the first norm.
            table = sinusoidal_positions(self.config.block_size, self.config.n_embd) * 0.02 * math.sqrt(2)
            self.register_buffer("pos_table", table.to(device), persistent=False)

    @torch.no_grad()
    def init_weights(self, normal=nn.init.normal_):
        """GPT-2's initial weights: every Linear and Embedding weight drawn from normal(0, 0.02),
        biases 0, norms 1. normal(tensor, mean, std) fills a tensor in place; a model sharded
        across processes passes one that draws each whole tensor as a single process would."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth (two such writes per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                normal(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def num_params(self, non_embedding=True):
        """Parameters, each counted once. Embeddings (lookups) are left out by default, as the usual
        model-size figures do; a tied token embedding stays in, since it is also the output."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_encoding == "learned":
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def positions(self, start, length, device):
        """What the embedding adds for positions start..start+length-1, (T, C); 0 for rope,
        which turns queries and keys instead (rotary)."""
        pos = torch.arange(start, start + length, device=device)
        if self.config.pos_encoding == "learned":
            return self.transformer.wpe(pos)
        if self.config.pos_encoding == "rope":
            return 0
        return self.pos_table[pos]

    def rotary(self, start, length):
        """(cos, sin), each (T, hs/2), of positions start..start+length-1, or None without rope."""
        if self.config.pos_encoding != "rope":
            return None
        positions = torch.arange(start, start + length, device=self.transformer.wte.weight.device)
        angles = rotary_angles(positions, self.config.n_embd // self.config.n_head)
        return angles.cos(), angles.sin()

    def forward(self, idx, targets=None, cache=None, only_last=False):
        """idx (B, T) token ids -> logits (B, T, vocab_size), or (B, 1, vocab_size) with
        only_last; loss is the mean cross-entropy against targets (B, T), -1 ignored."""
        B, T = idx.size()
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx) + self.positions(past, T, idx.device)  # (B, T, C)
        x = self.transformer.drop(x)
        rotary = self.rotary(past, T)
        for layer, block in enumerate(self.transformer.h):
            # only_last: the final block computes the last position alone (~1/n_layer of the work saved)
            x = block(x, rotary, cache, only_last=only_last and layer == self.config.n_layer - 1)
        if cache is not None:
            cache.length += T
        return self.head(self.transformer.ln_f(x), targets)

    def head(self, x, targets=None):
        """The final hidden states x (B, T, C) -> (logits (B, T, vocab_size), the mean
        cross-entropy against targets (B, T), -1 ignored, or None without targets)."""
        logits = self.lm_head(x)
        if self.config.logit_softcap:  # bounded in (-c, c), and all but linear near 0
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Use a shorter context than the model was built with (e.g. GPT-2's 1024 -> 256)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in [1, {self.config.block_size}], got {block_size}")
        self.config.block_size = block_size
        if self.config.pos_encoding == "learned":
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        elif self.config.pos_encoding == "sinusoidal":
            self.pos_table = self.pos_table[:block_size]

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, choose=None, use_cache=True):
        """Yield (token (B,), logits (B, vocab_size)) for each new token after idx (B, T).

        choose(logits) -> tokens (B,) picks each next token from the last position's logits
        (float32); None takes the most likely one. gptkit/sampling.py's TokenSampler draws with a
        temperature, top-k and top-p. With use_cache=False every step recomputes the window.

        Past block_size, the model reads the last block_size tokens, at positions 0..block_size-1.
        Sliding that window shifts every token's position, so no cached key or value stays valid:
        from then on each step re-reads the whole window without the cache, exactly as a full
        recompute does (and at its cost).
        """
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be token ids of shape (batch, length >= 1), got shape {tuple(idx.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        was_training = self.training
        self.eval()
        block_size = self.config.block_size
        cache = KVCache(self.config) if use_cache else None
        sequence = torch.empty(idx.size(0), idx.size(1) + max_new_tokens, dtype=idx.dtype, device=idx.device)
        sequence[:, : idx.size(1)] = idx  # the prompt, then each token as it is chosen
        length, unread = idx.size(1), idx  # unread: tokens the cache has not seen yet
        try:
            for _ in range(max_new_tokens):
                # inference mode: no version counters or view records, cheaper than no_grad alone
                with torch.inference_mode():
                    if cache is not None and length <= block_size:
                        logits, _ = self(unread, cache=cache, only_last=True)
                    else:
                        logits, _ = self(sequence[:, max(0, length - block_size) : length], only_last=True)
                    logits = logits[:, -1, :].float()
                    token = logits.argmax(dim=-1) if choose is None else choose(logits)
                    sequence[:, length] = token
                    length, unread = length + 1, sequence[:, length : length + 1]
                yield token.clone(), logits.clone()  # ordinary tensors again, usable anywhere (autograd too)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, choose=None, use_cache=True):
        """idx (B, T) -> (B, T + max_new_tokens): the prompt followed by the chosen tokens."""
        new = [token[:, None] for token, _ in self.generate_stream(idx, max_new_tokens, choose, use_cache)]
        return torch.cat([idx] + new, dim=1)
