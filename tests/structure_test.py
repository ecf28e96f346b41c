"""The code's shape: quiet imports without side effects, no import cycle, errors by kind."""

import ast
import io
import os
import subprocess
import sys
from contextlib import redirect_stderr

import pytest

import cli
import util
from conftest import REPO_ROOT

MODULES = sorted(path.stem for path in REPO_ROOT.glob("*.py"))


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                            "L2L_DEBUG")}


@pytest.mark.parametrize("first", ["meta", "networks", "problems", "legacy", "datasets",
                                   "learned_optimizer", "configs", "util", "l2l"])
def test_importing_the_project_prints_nothing_whichever_module_comes_first(first):
    others = [m for m in ("meta", "networks", "problems", "legacy", "datasets") if m != first]
    result = subprocess.run([sys.executable, "-c", f"import {first}, {', '.join(others)}"],
                            cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_util_and_configs_import_without_tensorflow_or_side_effects():
    code = ("import os, sys; before = dict(os.environ); import util, configs, cli, weights_file;"
            " print('tensorflow' in sys.modules, dict(os.environ) == before)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "True"], result.stderr


def _project_imports(module):
    """The project modules `module` imports at its top level (not inside functions)."""
    tree = ast.parse((REPO_ROOT / f"{module}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found & set(MODULES)


def test_no_import_cycle():
    graph = {m: _project_imports(m) for m in MODULES}
    visiting, done = set(), set()

    def visit(module, path):
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join(path + [module])}"
        visiting.add(module)
        for imported in graph[module]:
            visit(imported, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in MODULES:
        visit(module, [])
    assert "legacy" not in graph["networks"] and "networks" not in graph["legacy"]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    def user_error(argv):
        raise util.FlagError("--x must be positive, got -1.")

    def bug(argv):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(SystemExit) as caught:
        cli.run(user_error)(["prog"])
    assert str(caught.value).endswith("error: --x must be positive, got -1.")
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as caught:
        cli.run(bug)(["prog"])
    assert "Traceback" in stderr.getvalue() and "ZeroDivisionError" in stderr.getvalue()
    assert "this is a bug" in str(caught.value)
    # A ValueError from inside the code is a bug too, not a user error.
    with redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as caught:
        cli.run(lambda argv: int("x"))(["prog"])
    assert "this is a bug" in str(caught.value)


def test_eta_does_not_wrap_at_a_day():
    assert cli._duration(3 * 86400 + 3661) == "3d 01:01:01"
    assert cli._duration(59) == "00:00:59"
