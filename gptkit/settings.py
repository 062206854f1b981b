"""Settings: dataclass defaults, then config files, then --key=value, typed and checked.

    python train.py configs/shakespeare.py --batch_size=32 --device=cpu

A user's mistake raises UserError; run_cli turns it into one line and exit status 2.
"""

import argparse
import ast
import difflib
import inspect
import os
import runpy
import sys
import textwrap
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix: reported as one line, with exit status 2."""


def reason(error, limit=150):
    """What a library's error says, in one line: its first line that says something (a quote
    mark alone does not), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if len(line.strip().strip("\"'")) > 3]
    return (lines or [type(error).__name__])[0][:limit]


def run_cli(main, argv=None):
    """Run main(argv) (default: the command line) and return exit status 0; a UserError
    becomes one line on stderr and exit status 2. Ctrl-C, and a reader that closed the pipe
    (`python sample.py | head`), end the program quietly, with a shell's usual statuses."""
    try:
        main(sys.argv[1:] if argv is None else argv)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        raise SystemExit(141) from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the small scripts, whose mistakes are UserErrors like every other: one
    line and exit status 2, not a usage block."""

    def __init__(self, description):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def load_settings(cls, argv):
    """Build the dataclass cls from its defaults, then config files (in order), then the
    command line: `file.py`, `--key=value` or `--key value` (a bare `--flag` sets a bool).
    The result's `explicit` attribute names the settings that a file or the command line gave.
    --help (or -h) prints the settings and exits."""
    if any(arg in ("--help", "-h") for arg in argv):
        print(settings_help(cls))
        raise SystemExit(0)
    return settings_from(cls, *split_arguments(cls, argv))


def settings_help(cls):
    """What --help prints: how a command line is read, then cls's settings as its source gives
    them, each with its type, default and comment."""
    lines = inspect.getsource(cls).splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("class ")) + 1:]
    body = []
    for line in lines:
        if line.strip().startswith(("def ", "@")):
            break
        if line.strip() and not line.strip().startswith('"""'):
            body.append(line.rstrip())
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "the script"
    return (f"usage: python {program} [CONFIG.py ...] [--key=value ...]\n\n"
            f"Each setting is its default below, then what each config file sets, then --key=value.\n\n"
            + textwrap.dedent("\n".join(body)))


def split_arguments(cls, argv):
    """(config files, [(key, raw value, where it came from)]) of a command line for cls."""
    types_ = typing.get_type_hints(cls)
    files, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, has_value, raw = arg[2:].partition("=")
        if not arg.startswith("--"):
            files.append(arg)
        elif has_value:
            overrides.append((key, raw, f"from {arg}"))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and (
                bool not in _allowed(types_.get(key)) or argv[i + 1] in ("True", "False")):
            overrides.append((key, argv[i + 1], f"from {arg} {argv[i + 1]}"))
            i += 1
        elif key in types_ and bool not in _allowed(types_[key]):
            raise UserError(f"--{key} needs a value: --{key}=VALUE")
        else:
            overrides.append((key, "True", f"from {arg}"))
        i += 1
    return files, overrides


def settings_from(cls, files, overrides):
    """cls from its defaults, then the files, then the overrides (as split_arguments gives them)."""
    types_ = typing.get_type_hints(cls)
    values = {}
    for path in files:
        # A file sees the settings so far (nanoGPT's files use defaults they do not set:
        # `min_lr = learning_rate / 10`) and gives back what it assigns.
        for key, value in _run_config_file(path, {**asdict(cls()), **values}).items():
            values[key] = _check(cls, types_, key, value, path)
    for key, raw, source in overrides:
        values[key] = _check(cls, types_, key, _parse(raw, types_.get(key)), source)
    try:
        config = cls(**values)
    except ValueError as e:
        raise UserError(str(e)) from None
    config.explicit = frozenset(values)
    return config


def _allowed(annotation):
    """The types a setting takes: (int,) for int, (float, NoneType) for Optional[float]."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)


def _run_config_file(path, settings):
    """The public names a config file assigns, run in a fresh namespace that starts with
    settings (nothing leaks between files or into the program)."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        assigned = {node.id for node in ast.walk(ast.parse(Path(path).read_bytes(), path))
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        namespace = runpy.run_path(path, init_globals=settings)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise UserError(f"{path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType) and not callable(v)
            and (k in assigned or k not in settings)}


def _parse(raw, annotation):
    allowed = _allowed(annotation)
    if str in allowed:  # a string setting takes the text as written ('3' stays '3'), or None
        return None if raw == "None" and type(None) in allowed else raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _check(cls, types_, key, value, source):
    """Return value if it suits setting `key` of cls, else raise a UserError naming source
    (a config file's path, or 'from --key=value')."""
    if key not in types_:
        close = difflib.get_close_matches(key, [f.name for f in fields(cls)], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown setting '{key}' ({source}){hint}")
    allowed = _allowed(types_[key])
    if value is None and type(None) in allowed:
        return value
    for kind in allowed:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    names = " or ".join("None" if k is type(None) else k.__name__ for k in allowed)
    raise UserError(f"{key}: expected {names}, got {value!r} ({source})")
