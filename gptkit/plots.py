"""Loss curves as pictures: one run's (train.py writes out_dir/loss.png at each evaluation) and
several runs' side by side (plot.py), or as text for a machine with no display."""

import functools
import math
import sys
import warnings
from contextlib import contextmanager

from gptkit.files import atomic_write

CJK_FONTS_PACKAGE = "fonts-noto-cjk"  # Debian's and Ubuntu's: Chinese, Japanese and Korean


@functools.lru_cache
def fallback_fonts():
    """The font families a picture falls back to for characters its DejaVu Sans lacks: a sans-serif
    CJK font the system has (Noto's cover Chinese, Japanese and Korean), found once; [] if none."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist if "CJK" in f.name}
    sans = sorted(n for n in names if "Sans" in n and "Mono" not in n)
    return (sans or sorted(names))[:1]


@contextmanager
def picture_fonts(out=None):
    """Within it, pictures drawn draw the characters of any language the system has a font for
    (matplotlib falls back from DejaVu Sans to a CJK font). A character no font has is drawn as
    a box, and afterwards one line says which package brings the fonts, instead of a warning per
    glyph. Nothing outside the block changes (matplotlib's settings and the warning filters)."""
    import matplotlib

    with matplotlib.rc_context({"font.family": ["DejaVu Sans", *fallback_fonts()]}), \
            warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="Glyph .* missing from font")  # counted, every one
        yield
    missing = [w for w in caught if "missing from font" in str(w.message)]
    for w in caught:  # any other warning, as the filters outside let it through
        if w not in missing:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if missing:
        print(f"{len(missing)} character(s) drawn as boxes: no font here has them; install CJK fonts "
              f"(apt-get install {CJK_FONTS_PACKAGE}) for Chinese, Japanese and Korean", file=out or sys.stderr)


def figure(width, height):
    """A matplotlib Figure of width x height inches, laid out to fit its labels."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def split_rows(rows):
    """(training-step rows, evaluation rows) of a metrics.jsonl."""
    return [r for r in rows if r.get("loss") is not None], [r for r in rows if r.get("val_loss") is not None]


def loss_figure(rows, title=None):
    """One run: the training loss of each logged step (faint), the evaluated train and val losses,
    the best val loss marked; the learning rate on a second y axis, tokens seen on a second x axis."""
    from matplotlib.ticker import EngFormatter

    steps, evals = split_rows(rows)
    fig = figure(8, 4.5)
    ax = fig.add_subplot()
    if steps:
        ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], color="tab:blue", alpha=0.35,
                linewidth=1, label="train loss (step)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue",
                markersize=3, label="train loss (eval)")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange",
                markersize=3, label="val loss")
        best = min(evals, key=lambda r: r["val_loss"])
        bpb = f", {best['val_bpb']:.4f} bits per byte" if best.get("val_bpb") is not None else ""
        ax.plot([best["iter"]], [best["val_loss"]], "*", color="tab:red", markersize=14,
                label=f"best val {best['val_loss']:.4f} (iter {best['iter']}{bpb})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if steps:
        lr_axis = ax.twinx()
        lr_axis.plot([r["iter"] for r in steps], [r["lr"] for r in steps], color="tab:green", linewidth=1,
                     linestyle="--", label="learning rate")
        lr_axis.set_ylabel("learning rate", color="tab:green")
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    per_iter = next((r["tokens"] / r["iter"] for r in rows if r.get("iter") and r.get("tokens")), None)
    if per_iter:
        tokens_axis = ax.secondary_xaxis("top", functions=(lambda i: i * per_iter, lambda t: t / per_iter))
        tokens_axis.set_xlabel("tokens seen")
        tokens_axis.xaxis.set_major_formatter(EngFormatter())  # 500k, 1M: no offset text to clash with
    handles = sum((a.get_legend_handles_labels()[0] for a in fig.axes), [])
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def compare_figure(runs, y="loss"):
    """runs: {label: rows}. Each run's val loss (solid) and training-step loss (faint), one colour a
    run; y='bpb': val bits per byte alone, which compares runs with different vocabularies."""
    fig = figure(8, 4.5)
    ax = fig.add_subplot()
    key = "val_bpb" if y == "bpb" else "val_loss"
    for i, (label, rows) in enumerate(runs.items()):
        steps, evals = split_rows(rows)
        evals = [r for r in evals if r.get(key) is not None]  # no val_bpb: no tokenizer files to count bytes with
        color = f"C{i % 10}"
        if y == "loss":
            ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], color=color, alpha=0.25, linewidth=1)
        best = min((r[key] for r in evals), default=math.nan)
        ax.plot([r["iter"] for r in evals], [r[key] for r in evals], "o-", color=color, markersize=3,
                label=f"{label} (best val {best:.4f})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("val bits per byte" if y == "bpb" else "loss (solid: val, faint: train step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save_png(fig, path):
    """Write the figure as a PNG, atomically: a reader never sees half a picture."""
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def terminal_chart(runs, width=72, height=18):
    """runs: {label: rows} -> the val-loss curves as text: one letter a run, where curves meet '*'."""
    curves = {label: [(r["iter"], r["val_loss"]) for r in split_rows(rows)[1]] for label, rows in runs.items()}
    points = [p for curve in curves.values() for p in curve]
    if not points:
        return "no evaluations to draw yet"
    x_max = max(x for x, _ in points) or 1
    y_min, y_max = min(y for _, y in points), max(y for _, y in points)
    y_span = (y_max - y_min) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for letter, curve in zip("abcdefghijklmnopqrstuvwxyz", curves.values()):
        for (x0, y0), (x1, y1) in zip(curve, curve[1:] or curve):
            for k in range(2 * width):  # walk the segment finely, marking each cell it crosses
                x, y = x0 + (x1 - x0) * k / (2 * width), y0 + (y1 - y0) * k / (2 * width)
                column = round(x / x_max * (width - 1))
                row = round((y_max - y) / y_span * (height - 1))
                cell = grid[row][column]
                grid[row][column] = letter if cell in (" ", letter) else "*"
    lines = [f"{y_max - y_span * i / (height - 1):8.4f} |" + "".join(row) for i, row in enumerate(grid)]
    lines.append(" " * 9 + "+" + "-" * width)
    lines.append(" " * 10 + "0" + f"iteration {x_max}".rjust(width - 1))
    for letter, (label, curve) in zip("abcdefghijklmnopqrstuvwxyz", curves.items()):
        best = min((y for _, y in curve), default=math.nan)
        lines.append(f"  {letter}: {label} (val loss; best {best:.4f})")
    return "\n".join(lines)
