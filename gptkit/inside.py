"""What happens inside a GPT, computed for explain.py's tables and pictures and for its live
page (serve.py): one forward pass recorded, each head's attention weights, the logit lens, the
next-token distribution the sampler draws from, and the token embeddings (nearest, a 2-D map)."""

import torch
from torch.nn import functional as F

from gptkit import attention
from gptkit.data import CharCodec
from gptkit.sampling import sampling_probs, token_label


def label(codec, token, picture=False):
    """A token as text to show: quoted in a table ('\\n', ' the'), in a picture with a visible
    space (␣the); a token that is part of a character (BPE) shows as its id: #94."""
    shown = token_label(token, codec.decode([token]))
    if not picture or shown.startswith("#"):
        return shown
    return shown[1:-1].replace(" ", "␣")


def trace(model, idx):
    """Run the model's own forward pass on idx (1, T) and record, through hooks, what flows
    through it: logits (T, V); streams (n_layer + 1, T, C), the residual stream into the first
    block and out of each block; inputs, each block's attention input (1, T, C) (after ln_1)."""
    blocks = model.transformer.h
    streams, inputs = [], []
    hooks = [blocks[0].register_forward_pre_hook(lambda module, args: streams.append(args[0]))]
    for block in blocks:
        hooks.append(block.register_forward_hook(lambda module, args, out: streams.append(out)))
        hooks.append(block.attn.register_forward_pre_hook(lambda module, args: inputs.append(args[0])))
    try:
        with torch.no_grad():
            logits, _ = model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return logits[0], torch.cat(streams), inputs


def head_weights(model, inputs, layers=None):
    """inputs, each block's attention input (1, T, C) as trace records them -> (n_layer, n_head,
    T, T): each layer's and head's attention weights, row i the distribution over positions
    0..i that the forward pass averages the values with. layers: only these (indices), in order."""
    rotary = model.rotary(0, inputs[0].size(1))
    layers = range(len(inputs)) if layers is None else layers
    with torch.no_grad():
        return torch.cat([attention.attention_weights(*model.transformer.h[i].attn.heads(inputs[i], rotary)[:2],
                                                      is_causal=True) for i in layers])


def attention_weights(model, idx):
    """(n_layer, n_head, T, T): head_weights of the forward pass on idx (1, T)."""
    return head_weights(model, trace(model, idx)[2])


def logit_lens(model, streams):
    """streams (n_layer + 1, T, C) -> logits (n_layer + 1, T, V): what the model would predict from
    the residual stream at each depth, through the final norm and the unembedding as forward
    applies them after the last block (so the last row is the model's own logits)."""
    with torch.no_grad():
        logits = model.lm_head(model.transformer.ln_f(streams))
        cap = model.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


def next_token_probs(model, idx, temperatures, top_k=None, top_p=None, vocab_limit=None):
    """(logits (V,), probs (len(temperatures), V)): the distributions sample.py draws the token
    after idx (1, T) from, its logits taken as its sampler takes them (model.generate_stream)."""
    _, logits = list(model.generate_stream(idx, 1))[0]
    logits = logits[:, :vocab_limit]  # ids past the codec's vocabulary pad the model's: never drawn
    return logits[0], torch.cat([sampling_probs(logits, t, top_k, top_p) for t in temperatures])


def nearest(table, vector, count, exclude=()):
    """[(id, cosine similarity)] of the count rows of table (V, C) nearest vector (C,), best first,
    leaving out the ids in exclude."""
    similarity = F.cosine_similarity(table, vector[None], dim=-1)
    similarity[list(exclude)] = -float("inf")
    top = similarity.topk(min(count, table.size(0) - len(set(exclude))))
    return list(zip(top.indices.tolist(), top.values.tolist()))


def analogy(table, a, b, c, count):
    """The tokens nearest table[a] - table[b] + table[c] (king - man + woman), a, b and c left out."""
    return nearest(table, table[a] - table[b] + table[c], count, exclude={a, b, c})


def embedding_table(model, codec):
    """(V, C): the token embeddings of the codec's tokens, float32 on the CPU."""
    return model.transformer.wte.weight[:codec.vocab_size].detach().float().cpu()


def map_tokens(codec, count):
    """The ids an embedding map shows: a character model's first count characters; a BPE
    model's first count merges after the 256 single bytes, the pairs most common in its training
    text (short words and pieces of words), rather than bytes most of which never occur alone."""
    first = 0 if isinstance(codec, CharCodec) or codec.vocab_size < 256 + 3 else 256
    return list(range(first, min(first + count, codec.vocab_size)))


def pca_2d(vectors):
    """(N, C) -> ((N, 2), the share of the variance each of the two axes holds): the vectors
    projected onto their two directions of greatest variance."""
    centred = vectors - vectors.mean(dim=0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T, (s[:2] ** 2 / (s ** 2).sum()).tolist()
