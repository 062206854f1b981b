"""The shape of the house: scripts import the package, the package imports model.py, model.py
imports torch; no script imports another, and no import cycle, at any depth of a file."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"train", "sample", "explain", "export", "plot", "hellaswag"}


def project_files():
    """{module name: path} of every Python file of the project outside tests/."""
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", "data") or any(p.startswith(".") or "venv" in p for p in parts):
            continue
        name = ".".join(parts)[: -len(".py")].removesuffix(".__init__")
        files[name] = path
    return files


def imports(path):
    """Every module a file imports, inside functions too (`from a import b` counts a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_no_script_is_imported_by_another_module():
    files = project_files()
    scripts = SCRIPTS | {name for name in files if name.startswith(("prepare.", "benchmarks."))}
    offending = {name: sorted(imports(path) & scripts) for name, path in files.items()}
    assert not {name: found for name, found in offending.items() if found}


def test_the_arrows_run_one_way_with_no_cycle():
    files = project_files()
    ours = {name for name in files if name == "model" or name.startswith("gptkit")}
    graph = {name: sorted(imports(files[name]) & ours - {name}) for name in ours}
    assert graph["model"] == [], "model.py imports nothing of ours"
    assert {m.split(".")[0] for m in imports(files["model"])} <= {"torch", "math", "dataclasses", "inspect"}
    state = {}

    def visit(name, path):
        if state.get(name) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [name]))
        if state.get(name) is None:
            state[name] = "open"
            for other in graph[name]:
                visit(other, path + [name])
            state[name] = "done"

    for name in graph:
        visit(name, [])


def test_nothing_outside_tests_edits_sys_path():
    edits = [name for name, path in project_files().items() if "sys.path" in path.read_text()]
    assert edits == []


@pytest.mark.slow
def test_the_package_and_the_model_import_from_anywhere(tmp_path):
    # the README's install (-e) makes them importable outside the checkout, as in a notebook
    import subprocess
    result = subprocess.run([sys.executable, "-c", "import model, gptkit.training; print(model.__file__)"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == ROOT / "model.py"
