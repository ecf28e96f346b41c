"""Tests for plot.py: tables and plots of evaluation histories."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cli
import plot
from conftest import REPO_ROOT


def _history(path, header, losses):
    cli.write_history(str(path), header, losses)
    return str(path)


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "plot.py"), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_labels_say_what_each_optimizer_is():
    assert plot.label("optimizer=Adam problem=mnist learning_rate=0.03") == "Adam lr 0.03"
    assert plot.label("optimizer=fixed problem=mnist path=x fixed_lambda=0.01") == \
        "fixed lambda 0.01"
    assert plot.label("optimizer=L2L problem=mnist path=x state_reset_period=0") == "L2L (LSTM)"
    assert plot.label("optimizer=learned problem=mnist path=x") == "learned lambda"
    assert plot.label("optimizer=L2L problem=mnist path=None") == "L2L (LSTM) (untrained)"
    assert plot.title(["optimizer=L2L problem=mnist num_steps=200 num_epochs=100 seed=0",
                       "optimizer=NAG problem=mnist num_steps=200 num_epochs=100 seed=0"]) == \
        "mnist, 200 steps, 100 epochs, seed 0"


def test_table_gives_means_and_standard_errors(tmp_path):
    rng = np.random.default_rng(0)
    adam = rng.uniform(0.2, 0.4, [10, 120])
    l2l = rng.uniform(0.1, 0.3, [10, 120])
    paths = [_history(tmp_path / "adam.csv", "optimizer=Adam learning_rate=0.03", adam),
             _history(tmp_path / "l2l.csv", "optimizer=L2L path=x", l2l)]
    result = _run(f"--histories={','.join(paths)}", "--table")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\| (.+?) \| (\d+) \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \(step "
                      r"(\d+)\) \|$", result.stdout, re.M)
    assert [r[0] for r in rows] == ["Adam lr 0.03", "L2L (LSTM)"]
    for row, losses in zip(rows, (adam, l2l)):
        assert int(row[1]) == 10 and int(row[6]) == 120
        assert float(row[2]) == pytest.approx(np.mean(losses[:, 99]), abs=6e-4)
        se = np.std(losses[:, 99], ddof=1) / np.sqrt(10)
        assert float(row[3]) == pytest.approx(se, abs=6e-4)
        assert float(row[4]) == pytest.approx(np.mean(losses[:, -1]), abs=6e-4)


def test_table_pairs_every_optimizer_with_the_best_baseline(tmp_path):
    rng = np.random.default_rng(1)
    luck = rng.uniform(0.0, 1.0, [40, 100])  # What the epochs share: networks and batches.
    histories = {"adam.csv": ("optimizer=Adam learning_rate=0.03 seed=0", luck + 0.30),
                 "nag.csv": ("optimizer=NAG learning_rate=1 seed=0", luck + 0.20),
                 "l2l.csv": ("optimizer=L2L path=x seed=0",
                             luck + 0.15 + rng.normal(0, 0.01, [40, 100])),
                 # Other epochs (the validation split): in the table, never paired.
                 "learned.csv": ("optimizer=learned path=y seed=0 split=validation",
                                 luck + 0.1)}
    paths = [_history(tmp_path / name, header, losses)
             for name, (header, losses) in histories.items()]
    result = _run(f"--histories={','.join(paths)}", "--table")
    assert result.returncode == 0, result.stderr
    assert "Against NAG lr 1, the best hand-designed optimizer" in result.stdout
    paired = result.stdout.split("Against")[1]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")]
             for line in paired.splitlines() if line.startswith("| ") and "±" in line)}
    difference = histories["l2l.csv"][1][:, -1] - histories["nag.csv"][1][:, -1]
    mean, error = map(float, rows["L2L (LSTM)"][1].split(" ± "))
    assert mean == pytest.approx(np.mean(difference), abs=1e-4)
    assert error == pytest.approx(np.std(difference, ddof=1) / np.sqrt(40), abs=1e-4)
    # Paired, the 0.05 lead is many standard errors; unpaired, the shared luck would hide it.
    assert float(rows["L2L (LSTM)"][2]) < -10
    assert float(rows["Adam lr 0.03"][1].split(" ± ")[0]) == pytest.approx(0.1, abs=1e-4)
    assert "learned lambda" not in rows and "| learned lambda | 40 |" in result.stdout


def test_vector_output_and_title(tmp_path):
    losses = np.exp(-np.linspace(0, 3, 50))[None] * np.linspace(1, 2, 4)[:, None]
    path = _history(tmp_path / "h.csv", "optimizer=SGD learning_rate=0.1 problem=quadratic", losses)
    for suffix, magic in ((".pdf", b"%PDF"), (".svg", b"<?xml")):
        output = tmp_path / f"curve{suffix}"
        result = _run(f"--histories={path}", f"--output={output}")
        assert result.returncode == 0, result.stderr
        assert output.read_bytes()[:len(magic)] == magic
    assert b"quadratic" in (tmp_path / "curve.svg").read_bytes()  # The title, from the header.


def test_plot_writes_a_png(tmp_path):
    losses = np.exp(-np.linspace(0, 3, 50))[None] * np.linspace(1, 2, 4)[:, None]
    path = _history(tmp_path / "h.csv", "optimizer=SGD learning_rate=0.1", losses)
    output = tmp_path / "figures" / "curve.png"
    result = _run(f"--histories={path}", f"--output={output}", "--title=test")
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert output.stat().st_size > 10_000  # Axes, a curve and its band, not an empty canvas.


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    result = _run(f"--histories={bad}", "--table")
    assert result.returncode == 1
    assert "is not a history file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
