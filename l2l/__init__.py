"""l2l: learned optimizers (Andrychowicz et al., 2016) for your own Keras models.

    pip install /path/to/a/clone    # or: pip install git+<the repository's URL>

    from l2l import LearnedOptimizer
    model.compile(optimizer=LearnedOptimizer("mnist"), loss=...)

`shipped_optimizers()` lists the optimizers shipped with the package, `shipped_path(name)` gives
a name's file. The library's modules come with it (`l2l.meta`, `l2l.problems`, `l2l.networks`,
...): `problems.keras_problem` and `meta.MetaOptimizer` meta-train on a model of your own.

The package is the repository's top-level modules listed in `MODULES`. Installed, they are this
package's submodules, and nothing else goes into site-packages (setup.py's build rewrites their
imports of each other, `import meta` into `from l2l import meta`). In a clone they stay top-level
modules, as train.py, evaluate.py and the tests import them (`import networks`); importing `l2l`
there makes `l2l.networks` the very module `networks`, never a second copy of it (which would
make a second `LearnedOptimizer` class: `isinstance` failing across the two, Keras' serializable
registered twice).
"""

import sys

# The modules of the package: the Keras optimizer and what it and meta-training need. setup.py
# reads this tuple (without importing the package) and ships these files.
MODULES = ("util", "legacy", "weights_file", "datasets", "task_families", "configs", "networks",
           "problems", "meta", "estimators", "learned_optimizer")

try:
    import util  # noqa: E402  pylint: disable=wrong-import-position
except ModuleNotFoundError as error:
    if error.name != "util":
        raise
    # A clone's l2l/ reached without the clone on sys.path: what `pip install -e` makes.
    raise ImportError("l2l cannot be used as an editable install (pip install -e): install it "
                      "with `pip install <clone>`, or run your script with the clone on "
                      "PYTHONPATH.") from None
util.import_tensorflow()  # Before Keras and Sonnet import TensorFlow, so that it starts quietly.

import configs  # noqa: E402  pylint: disable=wrong-import-position
import datasets  # noqa: E402  pylint: disable=wrong-import-position
import estimators  # noqa: E402  pylint: disable=wrong-import-position
import learned_optimizer  # noqa: E402  pylint: disable=wrong-import-position
import legacy  # noqa: E402  pylint: disable=wrong-import-position
import meta  # noqa: E402  pylint: disable=wrong-import-position
import networks  # noqa: E402  pylint: disable=wrong-import-position
import problems  # noqa: E402  pylint: disable=wrong-import-position
import task_families  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position
from learned_optimizer import DivergenceWarning, LearnedOptimizer  # noqa: E402
from learned_optimizer import shipped_optimizers, shipped_path  # noqa: E402

if learned_optimizer.__name__ == "learned_optimizer":
    # A clone: the imports above are the top-level modules. `import l2l.meta` and
    # `from l2l.meta import x` must find those same objects, not load the files a second time.
    for _name in MODULES:
        sys.modules[f"{__name__}.{_name}"] = sys.modules[_name]
    del _name

__all__ = ["DivergenceWarning", "LearnedOptimizer", "shipped_optimizers", "shipped_path",
           "MODULES", "configs",
           "datasets", "estimators", "learned_optimizer", "legacy", "meta", "networks",
           "problems", "task_families", "util", "weights_file"]
