"""Builds the package `l2l` from the repository's top-level modules (metadata: pyproject.toml).

The library's modules live at the repository's top level, where train.py, evaluate.py and the
tests import them by their bare names (`import networks`). Installed, they must not: `util`,
`datasets` or `meta` in site-packages would shadow (or be shadowed by) the user's own modules and
well-known packages. So the wheel holds one package, `l2l`: `l2l/__init__.py`, the modules it
lists in `MODULES`, the shipped optimizers (`saved_optimizers/*/*.l2l`) and the data the library
reads (`data/iris.csv`), each at the same path relative to the modules as in a clone. Each
module's imports of the others are rewritten on the way (`import networks` -> `from l2l import
networks`, `from meta import x` -> `from l2l.meta import x`): the statements are found with `ast`
(strings and docstrings are left alone) and replaced within their line, so line numbers in
tracebacks are the source's. An import of a top-level module the package does not hold fails
the build, naming it.

Not editable (`pip install -e`): the package's files are rewritten copies; run the clone itself
or re-install after a change. (setuptools reports an error in a customised build step of an
editable install as a warning and installs anyway, so the refusal is `import l2l`'s: see
`l2l/__init__.py`.)
"""

import ast
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "l2l"
# Files the library reads beside its modules, as globs relative to the repository's root.
DATA = ("saved_optimizers/*/*.l2l", "data/iris.csv")


def package_modules():
    """`l2l.MODULES`, read without importing the package (which imports TensorFlow)."""
    path = os.path.join(ROOT, PACKAGE, "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "MODULES"):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError(f"{path} has no MODULES tuple.")


def top_level_modules():
    """The repository's top-level module names (`networks`, `cli`, `train`, ...)."""
    return {name[:-3] for name in os.listdir(ROOT) if name.endswith(".py")}


def rewrite_imports(source, filename, modules, project=None):
    """`source` with its imports of `modules` made imports from the package.

    Raises:
      RuntimeError: it imports a top-level module (of `project`) that `modules` does not hold,
        or spreads an import of one over several lines.
    """
    project = top_level_modules() if project is None else project
    edits = []  # (line, start, end, text), byte offsets within the line.
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            ours = [name for name in names if name.split(".")[0] in project]
            if not ours:
                continue
            if len(ours) != len(names):
                raise RuntimeError(f"{filename}:{node.lineno} imports project and other modules "
                                   f"in one statement; split it.")
            text = f"from {PACKAGE} import " + ", ".join(
                alias.name + (f" as {alias.asname}" if alias.asname else "")
                for alias in node.names)
        elif (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
              and node.module.split(".")[0] in project):
            names = [node.module]
            text = f"from {PACKAGE}.{node.module} import " + ", ".join(
                alias.name + (f" as {alias.asname}" if alias.asname else "")
                for alias in node.names)
        else:
            continue
        missing = [name for name in names if name not in modules]
        if missing:
            raise RuntimeError(f"{filename}:{node.lineno} imports {', '.join(missing)}, which "
                               f"the package does not hold; add it to {PACKAGE}.MODULES.")
        if node.end_lineno != node.lineno:
            raise RuntimeError(f"{filename}:{node.lineno} spreads an import of a project module "
                               f"over several lines; write it on one.")
        edits.append((node.lineno - 1, node.col_offset, node.end_col_offset, text))
    lines = source.splitlines(keepends=True)
    # From the right, so that an edit does not move the offsets of the next.
    for line, start, end, text in sorted(edits, reverse=True):
        encoded = lines[line].encode("utf-8")  # ast's offsets count UTF-8 bytes.
        lines[line] = (encoded[:start] + text.encode("utf-8") + encoded[end:]).decode("utf-8")
    return "".join(lines)


class BuildPackage(build_py):
    """build_py, then the listed modules rewritten into the package and its data copied."""

    def run(self):
        target = os.path.join(self.build_lib, PACKAGE)
        # A build folder left by an earlier install would ship the files it had.
        shutil.rmtree(target, ignore_errors=True)
        super().run()
        modules, project = package_modules(), top_level_modules()
        sources = {"__init__": os.path.join(ROOT, PACKAGE, "__init__.py")}
        sources.update((name, os.path.join(ROOT, f"{name}.py")) for name in modules)
        for name, path in sources.items():
            with open(path, encoding="utf-8") as f:
                source = f.read()
            with open(os.path.join(target, f"{name}.py"), "w", encoding="utf-8") as f:
                f.write(rewrite_imports(source, path, modules, project))
        for pattern in DATA:
            for path in _glob(pattern):
                destination = os.path.join(target, os.path.relpath(path, ROOT))
                os.makedirs(os.path.dirname(destination), exist_ok=True)
                shutil.copyfile(path, destination)


def _glob(pattern):
    found = sorted(glob.glob(os.path.join(ROOT, pattern)))
    if not found:
        raise RuntimeError(f"No file matches {pattern} in {ROOT}.")
    return found


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPackage})
