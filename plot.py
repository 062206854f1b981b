"""Loss curves: one run's out_dir/loss.png (train.py refreshes it at each evaluation), and
any number of runs on one picture, or in the terminal, to compare experiments.

    python plot.py out-a out-b                      # compare.png: val loss (and train loss, faint) of each run
    python plot.py out-* --label learning_rate      # label each run by a setting (from its ckpt.pt)
    python plot.py out-a out-b --terminal           # the same curves as text, for a machine with no display
    python plot.py out-char out-bpe --y bpb         # val bits per byte: runs with different tokenizers compare
"""

import sys
from pathlib import Path

from gptkit.checkpoint import load_checkpoint
from gptkit.plots import compare_figure, picture_fonts, save_png, terminal_chart
from gptkit.runlog import read_metrics
from gptkit.settings import ArgumentParser, UserError, run_cli


def run_label(out_dir, keys):
    """The run's folder name, or key=value for each named setting, read from its checkpoint."""
    if not keys:
        return str(out_dir)
    settings = load_checkpoint(Path(out_dir) / "ckpt.pt", mmap=True)["train_config"]
    unknown = [k for k in keys if k not in settings]
    if unknown:
        raise UserError(f"--label: {out_dir} has no setting {unknown[0]!r}")
    return " ".join(f"{k}={settings[k]}" for k in keys)


def main(argv=None):
    parser = ArgumentParser(__doc__)
    parser.add_argument("runs", nargs="+", help="out_dir folders, each holding a metrics.jsonl")
    parser.add_argument("--out", default="compare.png", help="the picture to write (default: compare.png)")
    parser.add_argument("--label", default="", help="comma-separated settings to label runs by, e.g. learning_rate")
    parser.add_argument("--terminal", action="store_true", help="draw the curves as text instead of a picture")
    parser.add_argument("--y", choices=["loss", "bpb"], default="loss",
                        help="loss, or bpb: val bits per byte, for runs with different tokenizers")

    def compare(args):
        args = parser.parse_args(args)
        keys = [k for k in args.label.split(",") if k]
        runs = {}
        for out_dir in args.runs:
            path = Path(out_dir) / "metrics.jsonl"
            if not path.is_file():
                raise UserError(f"no metrics.jsonl in {out_dir}; name folders that train.py wrote (its out_dir)")
            label = run_label(out_dir, keys)
            runs[label if label not in runs else f"{label} ({out_dir})"] = read_metrics(path)  # never one over another
        if args.terminal:
            print(terminal_chart(runs))
            return
        try:
            with picture_fonts():  # run labels in any language
                save_png(compare_figure(runs, args.y), args.out)
        except OSError as e:
            raise UserError(f"cannot write {args.out}: {e.strerror}; choose another --out") from None
        print(f"wrote {args.out}: {len(runs)} runs")

    return run_cli(compare, argv)


if __name__ == "__main__":
    sys.exit(main())
