"""Shared test setup: quiet TensorFlow, the repository root, and the optional offline data."""

import os
import pathlib
import shutil
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A suite started with SIGINT ignored (`nohup`, a script's `... &`) passes the ignoring on to
# every command a test starts, and those that test Ctrl-C would then wait forever for a train.py
# or evaluate.py that never sees it: the commands start as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The offline data the real-data tests need, as the product finds it: the folder in L2L_DATA_DIR
# (with mnist/, and legacy/saved_optimizers/ in it or beside it), by default ../shared/data
# beside the clone (the project's machines). Without it those tests skip, saying so.
DATA_DIR = pathlib.Path(os.environ.get("L2L_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def shared_path(*parts):
    """`shared_path("data", "mnist")` or `shared_path("legacy", ...)`, or a pytest skip."""
    kind, rest = parts[0], parts[1:]
    candidates = ([DATA_DIR.joinpath(*rest)] if kind == "data" else
                  [DATA_DIR.joinpath(kind, *rest), DATA_DIR.parent.joinpath(kind, *rest)])
    for path in candidates:
        if path.exists():
            return path
    pytest.skip(f"offline data {candidates[0]} is absent (set L2L_DATA_DIR to the folder that "
                f"holds mnist/; see README, 'Data')")


def pytest_collection_modifyitems(config, items):
    """Drops `tf.test.TestCase.test_session`, which TensorFlow marks "Not a test" (a skip per
    class that would only be noise in the count)."""
    kept = [item for item in items if item.name != "test_session"]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.name == "test_session"])
        items[:] = kept


def pytest_sessionfinish(session, exitstatus):
    """Empties TensorFlow's test folder with shutil, which removes the run folders' symlinks
    (`best -> .best-N`) as links; TensorFlow's own cleanup follows them and fails."""
    del session, exitstatus
    if "tensorflow" not in sys.modules:
        return
    from tensorflow.python.platform import googletest  # pylint: disable=import-outside-toplevel
    directory = googletest.GetTempDir()
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, exist_ok=True)  # Left empty for TensorFlow's own cleanup.
