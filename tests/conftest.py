"""Shared test setup: quiet TensorFlow, the repository root, and the optional offline data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# `../shared` beside the clone holds offline data on the project's machines; a fresh clone
# elsewhere has none, and the tests that need it skip. L2L_SHARED_DIR points elsewhere.
SHARED_DIR = pathlib.Path(os.environ.get("L2L_SHARED_DIR", REPO_ROOT.parent / "shared"))


def shared_path(*parts):
    """A path under the shared data folder, or a pytest skip naming what is missing."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"offline data {path} is absent (set L2L_SHARED_DIR to the shared folder)")
    return path


def pytest_collection_modifyitems(config, items):
    """Drops `tf.test.TestCase.test_session`, which TensorFlow marks "Not a test" (a skip per
    class that would only be noise in the count)."""
    kept = [item for item in items if item.name != "test_session"]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.name == "test_session"])
        items[:] = kept
