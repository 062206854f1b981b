"""The settings loader: defaults < config files (in order) < command line, with one-line errors."""

import importlib.util
import runpy
import shutil
import subprocess
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

import pytest

import sample
import train
from sample import SampleConfig
from gptkit.settings import UserError, load_settings
from train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
DEFAULTS = TrainConfig()


def write_config(path, text):
    path.write_text(text)
    return str(path)


def assigned_settings(path):
    """The names a config file assigns, as Python sees them (helpers and imports left out)."""
    namespace = runpy.run_path(str(path))
    return {k: v for k, v in namespace.items() if not k.startswith("_")
            and not isinstance(v, types.ModuleType) and not callable(v)}


def user_error(cls, argv):
    with pytest.raises(UserError) as info:
        load_settings(cls, argv)
    return str(info.value)


# ----------------------------------------------------------------------------- the shipped configs

@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads_and_its_values_show_up(path):
    config = load_settings(TrainConfig, [str(path)])
    assigned = assigned_settings(path)
    assert assigned, f"{path} assigns no settings"
    hints = typing.get_type_hints(TrainConfig)
    for key, value in assigned.items():
        assert key in hints, f"{path.name} assigns {key!r}, which is not a TrainConfig setting"
        expected = float(value) if hints[key] is float else value
        assert getattr(config, key) == expected, key
        assert type(getattr(config, key)) is type(expected), key


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_is_overridden_by_the_command_line(path):
    assigned = assigned_settings(path)
    config = load_settings(TrainConfig, [str(path), "--seed=4242", "--out_dir=elsewhere"])
    assert config.seed == 4242 and config.out_dir == "elsewhere"
    untouched = {k: v for k, v in assigned.items() if k not in ("seed", "out_dir")}
    for key, value in untouched.items():
        assert getattr(config, key) == value


# ----------------------------------------------------------------------------- precedence

def test_defaults_when_nothing_is_given():
    config = load_settings(TrainConfig, [])
    assert config == TrainConfig()


def test_precedence_defaults_then_files_in_order_then_command_line(tmp_path):
    first = write_config(tmp_path / "first.py", "batch_size = 3\nn_layer = 5\nseed = 11\n")
    second = write_config(tmp_path / "second.py", "batch_size = 4\nseed = 12\n")
    config = load_settings(TrainConfig, [first, second, "--seed=13"])
    assert config.n_layer == 5  # only the first file sets it
    assert config.batch_size == 4  # the later file wins
    assert config.seed == 13  # the command line wins over both
    assert config.n_head == DEFAULTS.n_head  # untouched: the default
    # the command line wins even when written before the file
    assert load_settings(TrainConfig, ["--batch_size=9", first]).batch_size == 9
    # and the files apply in the order given
    assert load_settings(TrainConfig, [second, first]).batch_size == 3


def test_config_line_may_use_an_earlier_name(tmp_path):
    path = write_config(tmp_path / "cfg.py", "max_iters = 100\nlr_decay_iters = max_iters\n"
                                             "warmup_iters = 10\nlearning_rate = 1e-3\nmin_lr = learning_rate / 10\n")
    config = load_settings(TrainConfig, [path])
    assert config.max_iters == 100 and config.lr_decay_iters == 100
    assert config.min_lr == pytest.approx(1e-4)


def test_imports_and_helpers_in_a_config_are_not_settings(tmp_path):
    path = write_config(tmp_path / "cfg.py", (
        "import math\n"
        "import os.path\n"
        "from pathlib import Path\n"
        "def double(x):\n    return 2 * x\n"
        "_scratch = 7\n"
        "n_embd = double(int(math.sqrt(1024)))\n"
        "n_head = 4\n"
        "out_dir = str(Path('runs') / 'a')\n"))
    config = load_settings(TrainConfig, [path])
    assert config.n_embd == 64
    assert config.out_dir == str(Path("runs") / "a")


def test_from_import_of_a_builtin_function_is_not_a_setting(tmp_path):
    """`from math import sqrt` binds a builtin function, not a Python one: still not a setting."""
    path = write_config(tmp_path / "cfg.py", "from math import sqrt\nbatch_size = int(sqrt(16))\n")
    assert load_settings(TrainConfig, [path]).batch_size == 4


def test_a_config_file_sees_the_settings_so_far(tmp_path):
    """As in nanoGPT: a file may use a default it does not set, or an earlier file's value."""
    first = write_config(tmp_path / "first.py", "max_iters = 3000\nwarmup_iters = 10\n")
    second = write_config(tmp_path / "second.py", "lr_decay_iters = max_iters\nmin_lr = learning_rate / 10\n")
    config = load_settings(TrainConfig, [first, second, "--learning_rate=1e-3"])
    assert config.lr_decay_iters == 3000  # the first file's max_iters
    assert config.min_lr == pytest.approx(TrainConfig().learning_rate / 10)  # the default, not the later override
    assert config.explicit == {"max_iters", "warmup_iters", "lr_decay_iters", "min_lr", "learning_rate"}


def test_a_config_file_leaks_nothing_into_the_next(tmp_path):
    first = write_config(tmp_path / "first.py", "helper_value = 5\n")
    assert "unknown setting 'helper_value'" in user_error(TrainConfig, [first])
    first = write_config(tmp_path / "first.py", "_helper = 5\n")
    second = write_config(tmp_path / "second.py", "batch_size = _helper\n")
    message = user_error(TrainConfig, [first, second])
    assert str(second) in message and "_helper" in message


# ----------------------------------------------------------------------------- --key=value parsing

def test_command_line_value_types():
    config = load_settings(TrainConfig, [
        "--batch_size=7", "--learning_rate=3e-4", "--eval_only=True", "--bias=False",
        "--vocab_size=None", "--dataset=mydata"])
    assert config.batch_size == 7 and type(config.batch_size) is int
    assert config.learning_rate == 3e-4 and type(config.learning_rate) is float
    assert config.eval_only is True and config.bias is False
    assert config.vocab_size is None
    assert config.dataset == "mydata"
    assert load_settings(TrainConfig, ["--vocab_size=96"]).vocab_size == 96


def test_int_for_float_setting_becomes_float(tmp_path):
    config = load_settings(TrainConfig, ["--grad_clip=2", "--dropout=0"])
    assert config.grad_clip == 2.0 and type(config.grad_clip) is float
    assert config.dropout == 0.0 and type(config.dropout) is float
    path = write_config(tmp_path / "cfg.py", "weight_decay = 1\n")
    assert type(load_settings(TrainConfig, [path]).weight_decay) is float
    top_p = load_settings(SampleConfig, ["--top_p=1"]).top_p  # Optional[float]
    assert top_p == 1.0 and type(top_p) is float


def test_value_with_equals_sign_is_kept_whole():
    assert load_settings(TrainConfig, ["--wandb_run_name=a=b"]).wandb_run_name == "a=b"
    assert load_settings(SampleConfig, ["--start=x=y=z"]).start == "x=y=z"


def test_space_separated_values():
    config = load_settings(SampleConfig, ["--temperature", "0.8", "--num_samples", "3",
                                          "--start", "FILE:p.txt", "--top_k", "5"])
    assert config.temperature == 0.8
    assert config.num_samples == 3
    assert config.start == "FILE:p.txt"
    assert config.top_k == 5
    # a negative number is a value, not a new option: it reaches the setting's own check
    with pytest.raises(UserError, match=r"seed must be in \[0, 2\*\*32\), got -3"):
        load_settings(TrainConfig, ["--max_iters", "0", "--seed", "-3"])


def test_bare_flag_sets_a_bool():
    config = load_settings(TrainConfig, ["--eval_only", "--compile", "--batch_size=2"])
    assert config.eval_only is True and config.compile is True and config.batch_size == 2


def test_str_setting_keeps_text_as_written():
    config = load_settings(TrainConfig, ["--wandb_run_name=3", "--dataset=None", "--out_dir=[1]"])
    assert config.wandb_run_name == "3"
    assert config.dataset == "None"
    assert config.out_dir == "[1]"
    assert load_settings(SampleConfig, ["--start", "42"]).start == "42"


def test_optional_str_setting_keeps_text_as_written():
    assert load_settings(SampleConfig, ["--stop=3"]).stop == "3"
    assert load_settings(SampleConfig, ["--probs_file", "123"]).probs_file == "123"
    assert load_settings(SampleConfig, ["--stop=True"]).stop == "True"


def test_optional_str_setting_takes_text_and_none():
    assert load_settings(SampleConfig, ["--stop=abc"]).stop == "abc"
    assert load_settings(SampleConfig, ["--checkpoint=out/x.pt"]).checkpoint == "out/x.pt"
    assert load_settings(SampleConfig, ["--stop=abc", "--stop=None"]).stop is None


# ----------------------------------------------------------------------------- errors

def test_unknown_key_on_command_line_suggests_the_close_name():
    message = user_error(TrainConfig, ["--n_layers=3"])
    assert "unknown setting 'n_layers'" in message
    assert "did you mean 'n_layer'" in message


def test_unknown_key_without_close_match_has_no_suggestion():
    message = user_error(TrainConfig, ["--zzzzqqq=1"])
    assert "unknown setting 'zzzzqqq'" in message
    assert "did you mean" not in message


def test_unknown_key_in_config_file_names_the_file(tmp_path):
    path = write_config(tmp_path / "cfg.py", "batch_size = 4\nlearning_rat = 1e-3\n")
    message = user_error(TrainConfig, [path])
    assert "unknown setting 'learning_rat'" in message
    assert path in message
    assert "did you mean 'learning_rate'" in message


def test_wrong_type_on_command_line():
    message = user_error(TrainConfig, ["--batch_size=abc"])
    assert "batch_size: expected int, got 'abc'" in message
    assert "--batch_size=abc" in message
    message = user_error(SampleConfig, ["--num_samples", "x"])
    assert "num_samples: expected int, got 'x'" in message


def test_wrong_type_in_config_file_names_the_file(tmp_path):
    path = write_config(tmp_path / "cfg.py", "n_head = '4'\n")
    message = user_error(TrainConfig, [path])
    assert "n_head: expected int, got '4'" in message and path in message


@pytest.mark.parametrize("arg", ["--batch_size=True", "--max_iters=False"])
def test_bool_for_int_is_rejected(arg):
    key = arg[2:].partition("=")[0]
    assert f"{key}: expected int" in user_error(TrainConfig, [arg])


def test_other_type_mismatches_are_rejected():
    assert "expected float" in user_error(TrainConfig, ["--dropout=True"])
    assert "expected bool" in user_error(TrainConfig, ["--compile=1"])
    assert "expected int" in user_error(TrainConfig, ["--batch_size=2.5"])
    assert "expected int or None" in user_error(TrainConfig, ["--vocab_size=abc"])


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.py")
    message = user_error(TrainConfig, [path])
    assert path in message and "not found" in message


def test_config_file_with_syntax_error_names_file_and_line(tmp_path):
    path = write_config(tmp_path / "cfg.py", "batch_size = 4\nn_layer = 2\nn_head = (\n")
    message = user_error(TrainConfig, [path])
    assert path in message
    assert "syntax error" in message
    line = int(message.split(f"{path}:")[1].split(":")[0])
    assert line >= 3  # the line of the unclosed parenthesis (or the end of the file)


def test_config_file_that_raises_names_the_file(tmp_path):
    path = write_config(tmp_path / "cfg.py", "batch_size = 1 // 0\n")
    message = user_error(TrainConfig, [path])
    assert path in message and "ZeroDivisionError" in message


# ----------------------------------------------------------------------------- through the CLIs

def assert_one_error_line(capsys, excinfo, *fragments):
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, fragments", [
    (["--n_layers=3"], ["unknown setting 'n_layers'", "did you mean 'n_layer'"]),
    (["--batch_size=abc"], ["batch_size: expected int, got 'abc'", "--batch_size=abc"]),
    (["no_such_config.py"], ["no_such_config.py"]),
    (["--out_dir"], ["--out_dir needs a value", "--out_dir=VALUE"]),  # not a folder named 'True'
    (["--max_iters", "--eval_only"], ["--max_iters needs a value"]),
])
def test_train_cli_bad_settings_exit_2(capsys, monkeypatch, tmp_path, argv, fragments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        train.main(argv)
    assert_one_error_line(capsys, excinfo, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written before the settings were checked


@pytest.mark.parametrize("argv, fragments", [
    (["--temprature=0.5"], ["unknown setting 'temprature'", "did you mean 'temperature'"]),
    (["--num_samples", "many"], ["num_samples: expected int, got 'many'"]),
    (["--stop"], ["--stop needs a value", "--stop=VALUE"]),
    (["--start", "-- x"], ["--start needs a value", "--start=VALUE"]),  # the way to give it: --start="-- x"
    (["--probs_file"], ["--probs_file needs a value"]),  # not a file named 'True'
])
def test_sample_cli_bad_settings_exit_2(capsys, monkeypatch, tmp_path, argv, fragments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        sample.main(argv)
    assert_one_error_line(capsys, excinfo, *fragments)


@pytest.mark.parametrize("arg, fragments", [
    ("--batch_size=0", ["batch_size", "0"]),
    ("--block_size=0", ["block_size", "0"]),
    ("--gradient_accumulation_steps=0", ["gradient_accumulation_steps"]),
    ("--max_iters=-1", ["max_iters", "-1"]),
    ("--init_from=x", ["init_from", "'x'"]),
    ("--lr_decay_iters=10", ["lr_decay_iters", "warmup_iters"]),
    ("--grad_clip=-1", ["grad_clip must be >= 0", "0 turns clipping off"]),  # would reverse the gradient
    ("--learning_rate=-1", ["learning_rate must be >= 0"]),
    ("--min_lr=-1e-4", ["min_lr must be >= 0"]),
    ("--weight_decay=-0.1", ["weight_decay must be >= 0"]),
    ("--beta2=1.5", ["beta2 must be in [0, 1)", "1.5"]),
    ("--beta1=-0.1", ["beta1 must be in [0, 1)"]),
    ("--seed=-1", ["seed must be in [0, 2**32)", "-1"]),
    ("--seed=4294967296", ["seed must be in [0, 2**32)"]),
    ("--vocab_size=0", ["vocab_size must be at least 1"]),
    ("--out_dir=", ["out_dir must name a folder"]),
])
def test_train_config_validation_exit_2(capsys, monkeypatch, tmp_path, arg, fragments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        train.main([arg])
    assert_one_error_line(capsys, excinfo, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_lr_decay_check_is_off_without_decay():
    config = load_settings(TrainConfig, ["--decay_lr=False", "--lr_decay_iters=10"])
    assert config.lr_decay_iters == 10


@pytest.mark.parametrize("args, fragments", [
    (["--top_p=2"], ["top_p", "2"]),
    (["--top_p=0"], ["top_p"]),
    (["--temperature", "-1"], ["temperature", "-1"]),
    (["--top_k=0"], ["top_k", "0"]),
    (["--num_samples=0"], ["num_samples"]),
    (["--max_new_tokens=-1"], ["max_new_tokens"]),
    (["--stop="], ["stop"]),
    (["--seed=99999999999999999999999"], ["seed must be in [0, "]),
    (["--seed=-1"], ["seed must be in [0, "]),
])
def test_sample_config_validation_exit_2(capsys, monkeypatch, tmp_path, args, fragments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        sample.main(args)
    assert_one_error_line(capsys, excinfo, *fragments)


def test_every_setting_can_be_set_from_the_command_line():
    """Each TrainConfig field accepts its own default written as text."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        value = getattr(DEFAULTS, f.name)
        text = value if hints[f.name] is str else repr(value)
        config = load_settings(TrainConfig, [f"--{f.name}={text}"])
        assert getattr(config, f.name) == value, f.name


def test_bare_bool_flag_before_a_config_file(tmp_path):
    path = write_config(tmp_path / "cfg.py", "batch_size = 7\n")
    config = load_settings(TrainConfig, ["--compile", path, "--eval_only", "False"])
    assert config.compile is True and config.eval_only is False and config.batch_size == 7


@pytest.mark.skipif(not importlib.util.find_spec("setuptools"), reason="needs setuptools to build")
def test_installing_puts_only_the_model_and_the_package_in_site_packages(tmp_path):
    """`pip install .` makes `model` and `gptkit` importable from anywhere, and nothing else of
    ours: no `train`, `sample` or `prepare` for other programs on that Python to import by mistake."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "*venv*", "data", "out*", "tests"))
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "__pycache__"}
    assert installed == {"model.py", "gptkit"}, installed


def test_gpt3_schedule_reads_the_size_before_it():
    """configs/gpt3/schedule.py after a size: the paper's 300B tokens at that size's tokens per step."""
    gpt3 = ROOT / "configs" / "gpt3"
    config = load_settings(TrainConfig, [str(gpt3 / "175b.py"), str(gpt3 / "schedule.py")])
    tokens_per_step = 16 * 100 * 2048
    assert config.max_iters == 300_000_000_000 // tokens_per_step
    assert config.warmup_iters == 375_000_000 // tokens_per_step
    assert config.lr_decay_iters == 260_000_000_000 // tokens_per_step
    assert config.min_lr == pytest.approx(0.6e-5) and config.n_embd == 12288 and config.vocab_size == 50257
    small = load_settings(TrainConfig, [str(gpt3 / "125m.py"), str(gpt3 / "schedule.py")])
    assert small.max_iters == 300_000_000_000 // (8 * 32 * 2048)


# Every flag of nanoGPT's train.py and sample.py (karpathy/nanoGPT, master), with a value its
# users pass: its command lines run here unchanged.
NANOGPT_TRAIN_FLAGS = {
    "out_dir": "out", "eval_interval": "2000", "log_interval": "1", "eval_iters": "200", "eval_only": "False",
    "always_save_checkpoint": "True", "init_from": "scratch", "wandb_log": "False", "wandb_project": "owt",
    "wandb_run_name": "gpt2", "dataset": "openwebtext", "gradient_accumulation_steps": "40", "batch_size": "12",
    "block_size": "1024", "n_layer": "12", "n_head": "12", "n_embd": "768", "dropout": "0.0", "bias": "False",
    "learning_rate": "6e-4", "max_iters": "600000", "weight_decay": "1e-1", "beta1": "0.9", "beta2": "0.95",
    "grad_clip": "1.0", "decay_lr": "True", "warmup_iters": "2000", "lr_decay_iters": "600000", "min_lr": "6e-5",
    "backend": "nccl", "device": "cpu", "dtype": "float16", "compile": "False",
}
NANOGPT_SAMPLE_FLAGS = {
    "init_from": "resume", "out_dir": "out", "start": "FILE:prompt.txt", "num_samples": "10",
    "max_new_tokens": "500", "temperature": "0.8", "top_k": "200", "seed": "1337", "device": "cpu",
    "dtype": "float16", "compile": "True",
}


@pytest.mark.parametrize("flag, value", NANOGPT_TRAIN_FLAGS.items())
def test_every_flag_of_nanogpts_train_py_is_a_setting(flag, value):
    config = load_settings(TrainConfig, [f"--{flag}={value}"])
    assert flag in config.explicit and str(getattr(config, flag)) in (value, str(float(value)) if
                                                                      value[0].isdigit() else value)


@pytest.mark.parametrize("flag, value", NANOGPT_SAMPLE_FLAGS.items())
def test_every_flag_of_nanogpts_sample_py_is_a_setting(flag, value):
    config = load_settings(sample.SampleConfig, [f"--{flag}={value}"])
    assert flag in config.explicit


def test_sampling_with_nanogpts_compile_flag_says_why_it_does_not_apply(tiny_train_args, tmp_path, capsys):
    assert train.main(tiny_train_args + ["--max_iters=2", "--eval_interval=2"]) == 0
    capsys.readouterr()
    assert sample.main([f"--out_dir={tmp_path / 'out'}", "--compile=True", "--max_new_tokens=3", "--device=cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compile=True: sampling here runs uncompiled"), err
