"""Attention written out: the weights softmax(q . k / sqrt(hs)) that model.py's fused
scaled_dot_product_attention never forms. The CPU's training path drops some of them
(cpu.py), and explain.py shows them."""

import math

import torch
from torch.nn import functional as F


def attention_weights(q, k, mask=None, is_causal=False):
    """Queries (B, nh, Tq, hs) over keys (B, nh, Tk, hs) -> (B, nh, Tq, Tk), each row a
    distribution. mask (Tq, Tk), True where a query may see a key, as scaled_dot_product_attention
    takes it; is_causal: query i sees keys 0..i."""
    # SDPA's default scale, on the queries (Tq, hs) rather than the scores (Tq, Tk): fewer to scale
    scores = (q / math.sqrt(k.size(-1))) @ k.transpose(-2, -1)
    if is_causal:
        mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-1)
