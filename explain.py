"""Look inside a GPT: what the explanations of transformers describe, for any model.

    python explain.py summary configs/gpt3/175b.py --untied     # parameters by kind, memory, FLOPs per token
    python explain.py summary --out_dir=out-shakespeare-char    # the same for a trained model
    python explain.py next --start='ROMEO:\nWhat light is th'   # the likeliest next tokens at 3 temperatures
    python explain.py attention --start='ROMEO:' --position=-1  # every layer's and head's attention weights
    python explain.py embeddings --token=e --analogy=T,t,s      # nearest tokens, T - t + s, a 2-D map
    python explain.py lens --start='ROMEO:'                     # the logit lens: the guess after each layer
    python explain.py serve --port=8000                         # all of them live, in a web page

Each view prints a table and writes a picture (--out, default explain_VIEW.png); serve serves a
local page instead, until Ctrl-C. The model is read from out_dir/best.pt (else ckpt.pt) or
--checkpoint, as sample.py reads it, or --init_from=gpt2 (or a Hugging Face folder); summary
reads training config files too, and builds the model on the meta device: any size, no memory.
"""

import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.nn import functional as F

from gptkit.checkpoint import find_checkpoint, load_checkpoint
from gptkit.data import dataset_meta, is_prepared, model_vocab_size
from gptkit.hardware import flops_per_token, resolve_device
from gptkit.hf import pretrained_folder, read_config
from gptkit.inside import (analogy, attention_weights, embedding_table, label, logit_lens, map_tokens, nearest,
                           next_token_probs, pca_2d, trace)
from gptkit.plots import figure, picture_fonts, save_png
from gptkit.sampling import check_init_from, check_sampling, load_chosen, prompt_file, read_prompt, unescape
from gptkit.serve import Explorer, serve
from gptkit.settings import UserError, load_settings, run_cli, settings_from, split_arguments
from gptkit.train_settings import TrainConfig
from model import GPT, GPTConfig


@dataclass
class ExplainConfig:
    init_from: str = "resume"  # 'resume': the model in out_dir; or GPT-2's weights ('gpt2', ...) or a Hugging Face folder
    out_dir: str = "out-shakespeare-char"  # the folder train.py wrote
    checkpoint: Optional[str] = None  # a checkpoint file; default: out_dir/best.pt, else out_dir/ckpt.pt
    out: Optional[str] = None  # the picture to write; default: explain_VIEW.png
    start: str = "\n"  # next, attention, lens: the prompt, text or FILE:path
    top: int = 5  # how many tokens a table lists
    temperatures: str = "0.5,1,2"  # next: the temperatures to compare, comma-separated (0: greedy)
    top_k: Optional[int] = None  # next: keep only the k most likely tokens, as sample.py does
    top_p: Optional[float] = None  # next: keep the most likely tokens whose probabilities sum to p
    position: int = -1  # attention: the prompt token whose attention the table lists (-1: the last)
    token: Optional[str] = None  # embeddings: list the tokens nearest this one (its text, or its id: #12)
    analogy: Optional[str] = None  # embeddings: 'a,b,c' lists the tokens nearest a - b + c
    points: int = 150  # embeddings: tokens on the map (BPE: the first merges after the 256 bytes)
    untied: bool = False  # summary: count an unembedding of its own (vocab x width), not tied to the embedding
    vocab_size: Optional[int] = None  # summary: for a config file that leaves vocab_size to its data
    host: str = "127.0.0.1"  # serve: the address to listen on (0.0.0.0: every network the machine is on)
    port: int = 8000  # serve: the port to listen on (0: any free one)
    device: str = "auto"

    def __post_init__(self):
        self.start = unescape(self.start) if prompt_file(self.start) is None else self.start
        self.token = unescape(self.token) if self.token else self.token
        for temperature in temperature_list(self.temperatures):
            check_sampling(temperature, self.top_k, self.top_p)
        if self.top < 1 or self.points < 3:
            raise ValueError(f"top must be at least 1 and points at least 3, got {self.top} and {self.points}")
        if self.analogy is not None and len(self.analogy.split(",")) != 3:
            raise ValueError(f"analogy takes three tokens a,b,c (for a - b + c), got {self.analogy!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0 to 65535 (0: any free one), got {self.port}")
        check_init_from(self.init_from)


def temperature_list(text):
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"temperatures must be numbers separated by commas, e.g. 0.5,1,2; got {text!r}") from None


# ----------------------------------------------------------------------------- tokens and tables

def picture_label(codec, token):
    """label(codec, token, picture=True), a lone $ escaped (it is not maths to matplotlib)."""
    return label(codec, token, picture=True).replace("$", r"\$")


def token_id(codec, text, setting):
    """The id of the one token named by text (its text, or #id); a UserError naming the setting otherwise."""
    if re.fullmatch(r"#\d+", text):
        if int(text[1:]) >= codec.vocab_size:
            raise UserError(f"--{setting}: {text} is outside the vocabulary (ids 0 to {codec.vocab_size - 1})")
        return int(text[1:])
    try:
        ids = codec.encode(text)
    except UserError:
        raise UserError(f"--{setting}: {text!r} is not in the model's vocabulary; name one of its "
                        f"tokens, or a token's id as #N") from None
    if len(ids) != 1:
        raise UserError(f"--{setting}: {text!r} is {len(ids)} tokens in this vocabulary, not one; "
                        f"name a single token, or a token's id as #N")
    return ids[0]


def display_width(text):
    """Columns text takes on a terminal: two for each wide character (Chinese, Japanese, Korean)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def format_table(header, rows, align=None):
    """Columns that line up on a terminal, wide characters included; align holds 'l' or 'r' a
    column (default: the first left, the rest right)."""
    rows = [[str(cell) for cell in row] for row in [header] + rows]
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def pad(cell, width, a):
        room = " " * (width - display_width(cell))
        return cell + room if a == "l" else room + cell
    return "\n".join("  ".join(pad(cell, w, a) for cell, w, a in zip(row, widths, align)).rstrip() for row in rows)


def human(number, unit=""):
    """12,288 -> '12.29k', 175e9 -> '175B'; bytes (unit='B') in binary units: '326.4 GiB'."""
    if unit == "B":
        steps, base = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024
    else:
        steps, base = ["", "k", "M", "B", "T"], 1000
    i = 0
    while abs(number) >= base and i < len(steps) - 1:
        number, i = number / base, i + 1
    return f"{number:.4g}{' ' if unit else ''}{steps[i]}"


# ----------------------------------------------------------------------------- summary

KINDS = {  # kind of parameter: the shape of its matrices (for the table)
    "token embedding": "vocab x width",
    "position embedding": "context x width",
    "query": "layers x width x width",
    "key": "layers x width x width",
    "value": "layers x width x width",
    "attention output": "layers x width x width",
    "MLP up": "layers x width x 4 width",
    "MLP down": "layers x 4 width x width",
    "unembedding": "width x vocab",
    "layer norms": "gain and bias, 2 a layer + 1",
    "biases": "of the linear layers",
}
MATRICES = [kind for kind in KINDS if kind not in ("position embedding", "layer norms", "biases")]
PARAMETER_KINDS = [  # (a pattern a parameter's name matches, its kind); the first match decides
    (r"\.ln_|\.attn\.[qk]_norm\.", "layer norms"),  # with qk_norm: each head's query and key norms too
    (r"\.bias$", "biases"),
    (r"\.wte\.weight$", "token embedding"),  # tied: also the unembedding, one tensor counted once
    (r"\.wpe\.weight$", "position embedding"),
    (r"\.attn\.c_attn\.weight$", "query"),  # (3 width, width): query, key and value stacked, a third each
    (r"\.attn\.c_proj\.weight$", "attention output"),
    (r"\.mlp\.c_fc\.weight$", "MLP up"),
    (r"\.mlp\.c_proj\.weight$", "MLP down"),
    (r"^lm_head\.weight$", "unembedding"),
]
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def meta_model(config):
    """The GPT of a GPTConfig built on the meta device: shapes without memory, any size."""
    with torch.device("meta"):
        return GPT(config)


def parameter_counts(model, untied=False):
    """{kind: parameters} over model's parameters, each counted once. A tied unembedding is the
    token embedding's tensor, counted there; an untied model's (tie_embeddings=False) is counted as
    'unembedding'. untied=True adds vocab x width to 'unembedding', as an untied one would."""
    counts = dict.fromkeys(KINDS, 0)
    for name, p in model.named_parameters():
        kind = next((kind for pattern, kind in PARAMETER_KINDS if re.search(pattern, name)), None)
        if kind is None:
            raise ValueError(f"parameter {name} is of no kind explain.py knows: add it to PARAMETER_KINDS")
        if kind == "query":
            for part in ("query", "key", "value"):
                counts[part] += p.numel() // 3
        else:
            counts[kind] += p.numel()
    if untied:
        counts["unembedding"] += model.config.vocab_size * model.config.n_embd
    return counts


def kind_shapes(model):
    """{kind: the shape of its matrices, in words} for this model (KINDS gives GPT-2's)."""
    c = model.config
    params = dict(model.named_parameters())

    def word(size):
        if size == c.n_embd:
            return "width"
        if size % c.n_embd == 0:
            return f"{size // c.n_embd} width"
        return f"{size:,}"

    shapes = dict(KINDS)
    up, down = params["transformer.h.0.mlp.c_fc.weight"], params["transformer.h.0.mlp.c_proj.weight"]
    if c.activation == "swiglu":  # a gate and a value, side by side
        shapes["MLP up"] = f"layers x width x 2 x {word(up.size(0) // 2)} (gate and value)"
    else:
        shapes["MLP up"] = f"layers x width x {word(up.size(0))}"
    shapes["MLP down"] = f"layers x {word(down.size(1))} x width"
    norm = "gain and bias" if "transformer.ln_f.bias" in params else "gain"
    shapes["layer norms"] = f"{norm}, 2 a layer + 1" + (", and each head's query and key gain" if c.qk_norm else "")
    return shapes


def summary_config(config, files):
    """The GPTConfig to summarise: that of the training config files, else the checkpoint's."""
    if not files and config.init_from != "resume":
        return read_config(pretrained_folder(config.init_from)), config.init_from
    if not files:
        path = find_checkpoint(config.out_dir, config.checkpoint)
        saved = load_checkpoint(path, mmap=True)["model_config"]
        try:
            return GPTConfig(**saved), str(path)
        except (TypeError, ValueError) as e:
            raise UserError(f"{path} does not hold a model this code can build ({e})") from None
    settings = load_settings(TrainConfig, files)
    vocab_size = config.vocab_size if config.vocab_size is not None else settings.vocab_size
    data_dir = Path(settings.data_dir) / settings.dataset
    if vocab_size is None and is_prepared(data_dir):  # as train.py would size it (BPE padded up)
        vocab_size = model_vocab_size(dataset_meta(data_dir))
    if vocab_size is None:
        raise UserError(f"{files[-1]} leaves vocab_size to its data, and {data_dir} holds none prepared; "
                        f"give --vocab_size=N (65 for shakespeare_char, 50304 for GPT-2's BPE padded)")
    try:
        return settings.model_config(vocab_size), " ".join(files)
    except ValueError as e:
        raise UserError(f"--vocab_size: {e}") from None


def summary(config, files):
    model_config, source = summary_config(config, files)
    model = meta_model(model_config)
    c = model_config
    untied = config.untied or not c.tie_embeddings
    counts = parameter_counts(model, untied=config.untied and c.tie_embeddings)
    total = sum(counts.values())
    print(f"{source}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd:,} wide, context {c.block_size:,}, "
          f"vocabulary {c.vocab_size:,}; unembedding {'untied' if untied else 'tied'}\n")
    rows = []
    for kind, shape in kind_shapes(model).items():
        count = f"{counts[kind]:,}"
        if kind == "unembedding" and not untied:
            count, shape = "tied", "the token embedding's matrix, read the other way (no parameters of its own)"
        rows.append([kind, count, f"{counts[kind] / total:.2%}" if counts[kind] else "", shape])
    matrices = sum(counts[kind] for kind in MATRICES)
    rows += [["weight matrices", f"{matrices:,}", f"{matrices / total:.2%}", "all but position embedding, layer norms and biases"],
             ["total", f"{total:,}", "100.00%", human(total)]]
    print(format_table(["parameters", "count", "share", "shape"], rows, "lrrl") + "\n")
    memory = {dtype: [total * size, total * size, 2 * total * size] for dtype, size in BYTES.items()}
    print(format_table(["memory", "weights", "gradients", "AdamW (m, v)", "total"],
                       [[dtype, *(human(b, "B") for b in parts), human(sum(parts), "B")]
                        for dtype, parts in memory.items()]))
    print("train.py keeps weights, gradients and AdamW state in fp32 (autocast computes in bf16 or fp16): "
          "its need is the fp32 row, plus the activations\n")
    flops = flops_per_token(model)  # an untied unembedding is a matmul like the tied one: the same N
    weights = flops["sampling"][0] // 2
    print(format_table(["FLOPs per token", f"matmuls (N = {human(weights)})",
                        f"attention (T = {c.block_size:,})", "total"],
                       [[f"{name} ({'6N + 12 L T C' if name == 'training' else '2N + 4 L T C'})",
                         f"{m:.4g}", f"{a:.4g}", f"{m + a:.4g}"] for name, (m, a) in flops.items()]))
    return summary_figure(counts, memory, f"{source}: {human(total)} parameters"
                                          f"{', unembedding untied' if untied else ''}")


def summary_figure(counts, memory, title):
    """Parameters by kind (horizontal bars), and the memory of training in each dtype (stacked bars)."""
    fig = figure(10, 4.2)
    kinds_axis, memory_axis = fig.subplots(1, 2, width_ratios=[3, 2])
    kinds = [kind for kind in KINDS if counts[kind]][::-1]  # top to bottom in the table's order
    total = sum(counts.values())
    bars = kinds_axis.barh(kinds, [counts[kind] for kind in kinds], color="tab:blue")
    kinds_axis.bar_label(bars, [f" {human(counts[k])} ({counts[k] / total:.1%})" for k in kinds], fontsize=8)
    kinds_axis.set_xlim(0, max(counts.values()) * 1.35)  # room for the labels
    kinds_axis.xaxis.set_major_formatter(lambda x, _: human(x))
    kinds_axis.set_xlabel("parameters")
    kinds_axis.set_title(title, fontsize=10)
    bottom = [0.0] * len(memory)
    for i, part in enumerate(["weights", "gradients", "AdamW (m, v)"]):
        gib = [parts[i] / 2**30 for parts in memory.values()]
        memory_axis.bar(list(memory), gib, bottom=bottom, label=part, color=f"C{i + 1}")
        bottom = [b + g for b, g in zip(bottom, gib)]
    for x, height in enumerate(bottom):
        memory_axis.text(x, height, human(height * 2**30, "B"), ha="center", va="bottom", fontsize=8)
    memory_axis.set_ylim(0, max(bottom) * 1.12)
    memory_axis.set_ylabel("GiB")
    memory_axis.set_title("memory to train (no activations)", fontsize=10)
    memory_axis.legend(fontsize=8, loc="upper right")
    return fig


# ----------------------------------------------------------------------------- the model and the prompt

def prompt_ids(model, codec, config):
    """The prompt as (1, T) ids; it must fit the model's context, which these views show whole."""
    ids = read_prompt(config.start, codec)
    if len(ids) > model.config.block_size:
        raise UserError(f"the prompt is {len(ids)} tokens, longer than the model's context "
                        f"({model.config.block_size}); shorten --start")
    return torch.tensor([ids], device=next(model.parameters()).device)


def load(config):
    _, model, codec = load_chosen(config.init_from, config.out_dir, config.checkpoint, resolve_device(config.device))
    return model, codec


# ----------------------------------------------------------------------------- next

def next_view(config, files):
    model, codec = load(config)
    # A prompt longer than the context is read as the sampler reads it: its last block_size tokens.
    idx = torch.tensor([read_prompt(config.start, codec)], device=next(model.parameters()).device)
    temperatures = temperature_list(config.temperatures)
    logits, probs = next_token_probs(model, idx, temperatures, config.top_k, config.top_p, codec.vocab_size)
    tokens = logits.topk(min(config.top, logits.size(0))).indices.tolist()  # the same order at every T > 0
    rows = [[label(codec, t)] + [f"{p:.4f}" for p in probs[:, t].tolist()] for t in tokens]
    rest = 1 - probs[:, tokens].sum(dim=1)
    rows.append([f"(the other {probs.size(1) - len(tokens):,})"] + [f"{p:.4f}" for p in rest.clamp(min=0).tolist()])
    cut = "".join([f", top_k={config.top_k}" if config.top_k else "", f", top_p={config.top_p}" if config.top_p else ""])
    print(f"after {prompt_tail(codec, idx[0].tolist())!r}: the probabilities sample.py draws the next token "
          f"with{cut}")
    print(format_table(["next token"] + [f"T={t:g}" for t in temperatures], rows))
    return next_figure(probs[:, tokens], temperatures, [picture_label(codec, t) for t in tokens],
                       f"the next token after {prompt_tail(codec, idx[0].tolist())!r}{cut}")


def prompt_tail(codec, ids, length=40):
    text = codec.decode(ids)
    return text if len(text) <= length else "…" + text[-length:]


def next_figure(probs, temperatures, labels, title):
    """probs (len(temperatures), K): the K tokens' probabilities, one bar group a token."""
    fig = figure(max(6, 0.7 * len(labels) * (1 + 0.3 * len(temperatures))), 4)
    ax = fig.add_subplot()
    width = 0.8 / len(temperatures)
    for i, (temperature, row) in enumerate(zip(temperatures, probs.tolist())):
        offset = (i - (len(temperatures) - 1) / 2) * width
        bars = ax.bar([x + offset for x in range(len(labels))], row, width, label=f"temperature {temperature:g}")
        ax.bar_label(bars, [f"{p:.2f}" for p in row], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=11)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title.replace("$", r"\$"), fontsize=10)
    return fig


# ----------------------------------------------------------------------------- attention

def attention_view(config, files):
    model, codec = load(config)
    idx = prompt_ids(model, codec, config)
    ids = idx[0].tolist()
    T = len(ids)
    if not -T <= config.position < T:
        raise UserError(f"--position={config.position} is outside the prompt's {T} tokens "
                        f"(0 to {T - 1}, or -1 for the last)")
    position = config.position % T
    weights = attention_weights(model, idx).cpu()
    count = min(config.top, position + 1)
    print(f"token {position} of the prompt, {label(codec, ids[position])}: the earlier tokens each head "
          f"attends to most (position token weight)")
    rows = []
    for layer, head in [(l, h) for l in range(weights.size(0)) for h in range(weights.size(1))]:
        top = weights[layer, head, position].topk(count)
        rows.append([f"layer {layer + 1} head {head + 1}"] + [f"{j} {label(codec, ids[j])} {w:.2f}" for w, j in
                                                              zip(top.values.tolist(), top.indices.tolist())])
    print(format_table(["layer, head"] + [f"#{i + 1}" for i in range(count)], rows))
    return attention_figure(weights, [picture_label(codec, t) for t in ids], position)


def attention_figure(weights, labels, position):
    """weights (n_layer, n_head, T, T) -> a heatmap per layer (rows) and head (columns), the
    prompt's tokens on both axes; the chosen position's row framed."""
    from matplotlib.patches import Rectangle

    layers, heads, T, _ = weights.shape
    panel = max(1.5, min(2.8, 12 / heads))  # inches
    fig = figure(heads * panel + 1.2, layers * panel + 0.7)
    axes = fig.subplots(layers, heads, squeeze=False, sharex=True, sharey=True)
    font = max(4, min(9, 0.75 * 72 * panel / T))  # a row's height in points, less a little
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(weights[layer, head].numpy(), cmap="Blues", vmin=0, vmax=1)
            ax.add_patch(Rectangle((-0.5, position - 0.5), T, 1, fill=False, edgecolor="tab:red", linewidth=1.5))
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks(range(T), labels, fontsize=font, rotation=90 if max(map(len, labels)) > 2 else 0)
            ax.set_yticks(range(T), labels, fontsize=font)
            ax.tick_params(length=0, pad=1)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    fig.suptitle(f"attention weights: each row a token (the query), the earlier tokens it reads from in its "
                 f"columns; framed: token {position} ({labels[position]})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- embeddings

def embeddings_view(config, files):
    model, codec = load(config)
    table = embedding_table(model, codec)  # (V, C)
    marked = {}  # id -> its colour on the map
    if config.token is not None:
        token = token_id(codec, config.token, "token")
        close = nearest(table, table[token], config.top, exclude={token})
        print(f"nearest {label(codec, token)} (cosine similarity of the token embeddings):")
        print(format_table(["token", "cosine"], [[label(codec, i), f"{s:.3f}"] for i, s in close]) + "\n")
        marked.update({i: "tab:orange" for i, _ in close} | {token: "tab:red"})
    if config.analogy is not None:
        a, b, c = [token_id(codec, unescape(text), "analogy") for text in config.analogy.split(",")]
        found = analogy(table, a, b, c, config.top)
        print(f"nearest {label(codec, a)} - {label(codec, b)} + {label(codec, c)} (a, b and c left out):")
        print(format_table(["token", "cosine"], [[label(codec, i), f"{s:.3f}"] for i, s in found]) + "\n")
        marked.update({a: "tab:green", b: "tab:green", c: "tab:green"} | {i: "tab:purple" for i, _ in found[:1]})
    shown = sorted(set(map_tokens(codec, config.points)) | set(marked))
    points, variance = pca_2d(table[shown])
    print(f"{len(shown)} token embeddings ({table.size(1)} numbers each) projected on their 2 principal "
          f"axes, which hold {variance[0]:.1%} and {variance[1]:.1%} of the variance")
    return embeddings_figure(points, [picture_label(codec, t) for t in shown],
                             [marked.get(t, "tab:blue") for t in shown], variance)


LEGEND = {"tab:red": "--token", "tab:orange": "its nearest", "tab:green": "--analogy's a, b, c",
          "tab:purple": "nearest a - b + c"}


def embeddings_figure(points, labels, colours, variance):
    """points (N, 2): each token's label at its place on the map."""
    fig = figure(9, 7)
    ax = fig.add_subplot()
    ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=6, c=colours, alpha=0.5)
    for colour, meaning in LEGEND.items():
        if colour in colours:
            ax.scatter([], [], s=20, c=colour, label=meaning)
    if len(set(colours)) > 1:
        ax.legend(fontsize=8)
    for (x, y), text, colour in zip(points.tolist(), labels, colours):
        ax.annotate(text, (x, y), fontsize=8 if len(labels) <= 100 else 7, color=colour,
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"principal axis 1 ({variance[0]:.1%} of the variance)")
    ax.set_ylabel(f"principal axis 2 ({variance[1]:.1%} of the variance)")
    ax.set_title("token embeddings, projected to 2-D (PCA); tokens near each other are used alike", fontsize=10)
    ax.grid(alpha=0.2)
    return fig


# ----------------------------------------------------------------------------- lens

def lens_view(config, files):
    model, codec = load(config)
    idx = prompt_ids(model, codec, config)
    ids = idx[0].tolist()
    _, streams, _ = trace(model, idx)
    probs = F.softmax(logit_lens(model, streams)[..., :codec.vocab_size].float(), dim=-1).cpu()  # (L + 1, T, V)
    depths = ["embeddings"] + [f"layer {i}" for i in range(1, probs.size(0))]
    top = probs.topk(min(config.top, probs.size(-1)), dim=-1)
    print("the logit lens: the next token the model would predict from the residual stream after each layer")
    for t in range(len(ids)):
        nxt = f", next in the prompt {label(codec, ids[t + 1])}" if t + 1 < len(ids) else ""
        print(f"\nposition {t}, {label(codec, ids[t])}{nxt}")
        print("\n".join(f"  {depth:>10}  " + "  ".join(f"{label(codec, i)} {p:.2f}" for i, p in
                                                      zip(top.indices[d, t].tolist(), top.values[d, t].tolist()))
                        for d, depth in enumerate(depths)))
    return lens_figure(top.values[..., 0], top.indices[..., 0], ids, depths,
                       lambda token: picture_label(codec, token))


def lens_figure(probs, guesses, ids, depths, name):
    """probs (D, T): the top guess's probability at each depth (embeddings at the bottom) and
    position; guesses (D, T) its id, named in the cell (name(id) -> text), bold where it is the
    prompt's own next token; the prompt's ids (T) along the bottom, each next one along the top."""
    D, T = probs.shape
    widest = max(display_width(name(i)) for i in guesses.flatten().tolist())
    column = max(0.62, 0.085 * widest)  # inches: room for the guesses
    fig = figure(max(6, column * T + 1.8), 0.42 * D + 2.1)  # at least the title's width
    ax = fig.add_subplot()
    image = ax.imshow(probs.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for d in range(D):
        for t in range(T):
            hit = t + 1 < T and guesses[d, t] == ids[t + 1]
            ax.text(t, d, name(guesses[d, t].item()), ha="center", va="center", fontsize=9,
                    color="white" if probs[d, t] > 0.6 else "black", fontweight="bold" if hit else "normal")
    ax.set_xticks(range(T), [name(token) for token in ids], fontsize=9)
    ax.set_yticks(range(D), depths, fontsize=8)
    ax.set_xlabel("the input at each position")
    ax.tick_params(length=0)
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(T - 1), [name(token) for token in ids[1:]], fontsize=9)
    top.set_xlabel("the prompt's own next token", fontsize=8)
    top.tick_params(length=0)
    fig.colorbar(image, ax=ax, label="probability of the top guess", shrink=0.8)
    ax.set_title("logit lens: the likeliest next token read from each layer\n(bold: the prompt's own next token)",
                 fontsize=10)
    return fig


# ----------------------------------------------------------------------------- serve

def serve_view(config, files):
    """The live page (gptkit/serve.py) until Ctrl-C: no picture to write."""
    path, model, codec = load_chosen(config.init_from, config.out_dir, config.checkpoint,
                                     resolve_device(config.device))
    serve(Explorer(model, codec, path, config.points), config.host, config.port)


# ----------------------------------------------------------------------------- the command line

VIEWS = {"summary": summary, "next": next_view, "attention": attention_view, "embeddings": embeddings_view,
         "lens": lens_view, "serve": serve_view}


def explain(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not argv or argv[0] not in VIEWS:
        got = f"got {argv[0]!r}" if argv else "got none"
        raise UserError(f"name a view first: python explain.py {{{','.join(VIEWS)}}} [--key=value ...] ({got})")
    view = argv[0]
    files, overrides = split_arguments(ExplainConfig, argv[1:])  # files: training configs, for summary
    if files and view != "summary":
        raise UserError(f"{view} reads a checkpoint (--out_dir=... or --checkpoint=...), not a file: {files[0]}")
    config = settings_from(ExplainConfig, [], overrides)
    if view == "serve":  # a page, not a picture
        return serve_view(config, files)
    with picture_fonts(out=sys.stdout):  # the text's own characters, Chinese, Japanese or Korean included
        picture = VIEWS[view](config, files)
        path = config.out or f"explain_{view}.png"
        try:
            save_png(picture, path)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}; choose another --out") from None
    print(f"\nwrote {path}")


def main(argv=None):
    return run_cli(explain, argv)


if __name__ == "__main__":
    sys.exit(main())
