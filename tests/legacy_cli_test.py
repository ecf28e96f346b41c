"""evaluate.py on the published TF1-era optimizers (skipped where ../shared is absent)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import cli
from conftest import REPO_ROOT, shared_path


def _evaluate(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG")}
    return subprocess.run([sys.executable, str(REPO_ROOT / "evaluate.py"), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quadratic_l2l_reset_every_step_ends_near_the_forks_0_214(tmp_path):
    # The fork evaluated with the LSTM state reset before every step; its published mean loss
    # after 100 steps over 100 epochs is about 0.214.
    legacy = shared_path("legacy", "saved_optimizers", "quadratic")
    history = tmp_path / "h.csv"
    result = _evaluate("--problem=quadratic", "--optimizer=L2L", f"--path={legacy}",
                       "--state_reset_period=1", "--num_epochs=100",
                       f"--history_path={history}")
    assert result.returncode == 0, result.stderr
    _, losses = cli.read_history(str(history))
    assert losses.shape == (100, 100)
    assert 0.19 < np.mean(losses[:, -1]) < 0.24


def test_fixed_lambda_file_is_chosen_by_lambda(tmp_path):
    legacy = shared_path("legacy", "saved_optimizers", "quadratic")
    unchosen = _evaluate("--problem=quadratic", "--optimizer=fixed", f"--path={legacy}")
    assert unchosen.returncode == 1
    assert ("several fixed-lambda optimizers (cwfixed0.0001.l2l, cwfixed0.001.l2l, "
            "cwfixed0.01.l2l, cwfixed0.1.l2l, cwfixed1e-05.l2l); choose one with --fixed_lambda"
            in unchosen.stderr)
    history = tmp_path / "fixed.csv"
    chosen = _evaluate("--problem=quadratic", "--optimizer=fixed", f"--path={legacy}",
                       "--fixed_lambda=1e-5", "--num_epochs=2", "--num_steps=20",
                       f"--history_path={history}")
    assert chosen.returncode == 0, chosen.stderr
    header, losses = cli.read_history(str(history))
    assert "fixed_lambda=1e-05" in header and losses.shape == (2, 20)


def test_legacy_mnist_optimizer_on_mnist(tmp_path):
    legacy = shared_path("legacy", "saved_optimizers", "mnist")
    data = shared_path("data", "mnist")
    history = tmp_path / "mnist.csv"
    result = _evaluate("--problem=mnist", f"--data_dir={data}", "--optimizer=L2L",
                       f"--path={legacy}", "--num_epochs=2", "--num_steps=50",
                       f"--history_path={history}")
    assert result.returncode == 0, result.stderr
    _, losses = cli.read_history(str(history))
    # From ln(10) = 2.30 at the start, the fork's optimizer gets well below 1 in 50 steps.
    assert np.mean(losses[:, -1]) < 0.8
