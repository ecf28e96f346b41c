"""The package `l2l`: installed from a clone into a fresh environment and used from anywhere.

`pip install <clone>` must put one package, `l2l` (the library's modules and the shipped
optimizers), into site-packages and nothing else: no `util` or `datasets` of its own. In a clone,
`l2l` and the top-level modules must be the same objects, never two copies of one file. The
build's rewriting of imports is checked without installing.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import venv

import pytest

import setup as build  # The repository's setup.py: setup() runs only as a script.
import weights_file
from conftest import REPO_ROOT


def _env():
    """The environment without what would point Python at the clone or elsewhere."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_TARGET", "PIP_USER")}


def test_the_build_rewrites_imports_of_project_modules_only():
    source = textwrap.dedent('''\
        """Imports in strings stay: import networks."""
        import os, sys
        import util
        import meta as meta_module  # A comment stays.
        from networks import Update, factory
        def later():
            import problems; import json
        text = "import util"
        ''')
    project = {"util", "meta", "networks", "problems", "cli"}
    rewritten = build.rewrite_imports(source, "x.py", {"util", "meta", "networks", "problems"},
                                      project)
    assert rewritten == textwrap.dedent('''\
        """Imports in strings stay: import networks."""
        import os, sys
        from l2l import util
        from l2l import meta as meta_module  # A comment stays.
        from l2l.networks import Update, factory
        def later():
            from l2l import problems; import json
        text = "import util"
        ''')
    with pytest.raises(RuntimeError, match="x.py:2 imports cli, which the package does not "
                                           "hold; add it to l2l.MODULES"):
        build.rewrite_imports("import os\nimport cli\n", "x.py", {"util"}, project)
    with pytest.raises(RuntimeError, match="x.py:1 imports project and other modules"):
        build.rewrite_imports("import os, util\n", "x.py", {"util"}, project)


def test_the_package_holds_every_module_its_modules_import():
    modules = build.package_modules()
    assert {"learned_optimizer", "meta", "problems", "networks", "util"} <= set(modules)
    for name in modules:  # Raises on an import of a top-level module the package lacks.
        path = REPO_ROOT / f"{name}.py"
        build.rewrite_imports(path.read_text(encoding="utf-8"), str(path), modules)


def test_the_package_requires_the_versions_the_clone_installs():
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    pinned = {line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    required = project["dependencies"] + project["optional-dependencies"]["datasets"]
    assert set(required) <= pinned, set(required) - pinned


_ONE_COPY = textwrap.dedent("""
    import sys
    if sys.argv[1] == "l2l_first":
        import l2l, keras, learned_optimizer, networks
    else:
        import keras, learned_optimizer, networks, l2l
    import l2l.meta
    from l2l.networks import CoordinateWiseDeepLSTM
    optimizer = learned_optimizer.LearnedOptimizer("quadratic")
    print(l2l.networks is networks, l2l.meta is sys.modules["meta"],
          CoordinateWiseDeepLSTM is networks.CoordinateWiseDeepLSTM,
          isinstance(optimizer, l2l.LearnedOptimizer),
          keras.saving.get_registered_object("l2l>LearnedOptimizer") is l2l.LearnedOptimizer,
          sorted(m for m in sys.modules if m.startswith("l2l.")) == sorted(
              "l2l." + m for m in l2l.MODULES))
""")


@pytest.mark.parametrize("order", ["l2l_first", "modules_first"])
def test_in_a_clone_l2l_and_the_top_level_modules_are_one_copy(tmp_path, order):
    # A second copy of networks.py would make a second LearnedOptimizer class: isinstance false
    # across the two, and Keras' registry holding whichever came last.
    result = subprocess.run([sys.executable, "-c", _ONE_COPY, order], cwd=tmp_path,
                            env=dict(_env(), PYTHONPATH=str(REPO_ROOT)), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True"] * 6


def _copy_of_the_repository(destination):
    """The repository's files as a clone has them (tracked and new files, not ignored ones)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                                timeout=60, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"needs the repository's git work tree ({e})")
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # Not a file deleted in the work tree.
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


_USER_SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    from l2l import LearnedOptimizer, shipped_optimizers
    import l2l

    keras.utils.set_random_seed(0)
    x = (np.random.default_rng(0).random([512, 784]) < 0.1).astype(np.float32)
    y = (x @ np.random.default_rng(1).normal(size=[784, 10])).argmax(axis=1)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, activation="sigmoid"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=LearnedOptimizer("mnist"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = model.fit(x, y, batch_size=128, epochs=8, verbose=0).history["loss"]
    quadratic = LearnedOptimizer("quadratic").network
    try:
        LearnedOptimizer("mnsit")
        unknown = None
    except ValueError as e:
        unknown = str(e)
    print(json.dumps({
        "package": l2l.__file__, "losses": losses, "names": shipped_optimizers(),
        "quadratic": [type(quadratic).__name__, quadratic.options], "unknown": unknown,
        "bare_modules": sorted(set(sys.modules) & set(sys.argv[1].split(","))),
        "registered": keras.saving.get_registered_object("l2l>LearnedOptimizer")
                      is LearnedOptimizer}))
""")


def test_a_clone_installs_into_a_fresh_environment_and_trains_a_model_from_anywhere(tmp_path):
    clone, environment, elsewhere = tmp_path / "clone", tmp_path / "venv", tmp_path / "mine"
    _copy_of_the_repository(clone)
    # A fresh environment that reuses this one's installed packages (no download: TensorFlow
    # is 600 MB): a .pth file adds this interpreter's site-packages after its own.
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    with open(os.path.join(site, "reuse_dependencies.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({ours!r})\n")
    # The README's install command, offline: the build backend (setuptools) is already here.
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--no-cache-dir", "--ignore-installed",
                              "--disable-pip-version-check", "-q", str(clone)],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = sorted(os.listdir(site))
    # One package: none of the repository's top-level modules (util, datasets, meta, cli, ...)
    # is a module of its own in the user's environment.
    assert [n for n in installed if not n.endswith((".dist-info", ".pth"))] == ["l2l"], installed
    package = sorted(os.listdir(os.path.join(site, "l2l")))
    assert {f"{m}.py" for m in build.package_modules()} | {"__init__.py", "saved_optimizers",
                                                          "data"} <= set(package)
    assert not {"train.py", "cli.py", "training.py", "setup.py"} & set(package)

    elsewhere.mkdir()
    (elsewhere / "train_mine.py").write_text(_USER_SCRIPT)
    project = ",".join(sorted(build.top_level_modules()))
    result = subprocess.run([python, "train_mine.py", project], cwd=elsewhere, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["package"] == os.path.join(site, "l2l", "__init__.py")
    assert report["bare_modules"] == [] and report["registered"]
    # The shipped MNIST optimizer trains the user's model: measured 2.27 -> 0.06 in 8 epochs.
    losses = report["losses"]
    assert losses[-1] < 0.2 and losses[-1] < 0.1 * losses[0], losses
    assert {"mnist", "quadratic", "fashion_mnist", "mnist/cwlearned"} <= set(report["names"])
    shipped = weights_file.load(str(REPO_ROOT / "saved_optimizers" / "quadratic" / "cw.l2l"))
    assert report["quadratic"] == [shipped.net, shipped.net_options]
    assert "no shipped optimizer has that name (they are fashion_mnist, general, mnist," in (
        report["unknown"])
