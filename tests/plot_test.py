"""Tests for plot.py: tables and plots of evaluation histories, diverged or of one epoch, and
output paths that cannot be written."""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cli
import plot
import util
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
    assert plot.label("optimizer=L2L problem=mnist path=saved_optimizers/general/cw.l2l "
                      "sha256=ab step_scale=5.0 chosen from step_scales=1,5 on tune_epochs=5 "
                      "validation epochs") == "general/cw.l2l, step scale 5"
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


def _paired_tables(tmp_path, histories):
    """plot.py --table on `histories` ({file name: (header, losses)}): its paired sections,
    each as (its first line, {optimizer: (mean, standard error, standard errors)})."""
    paths = [_history(tmp_path / name, header, losses)
             for name, (header, losses) in histories.items()]
    result = _run(f"--histories={','.join(paths)}", "--table")
    assert result.returncode == 0, result.stderr
    sections = []
    for section in result.stdout.split("Against ")[1:]:
        rows = {}
        for line in section.splitlines():
            if line.startswith("| ") and "±" in line:
                name, _, last, ratio = [c.strip() for c in line.strip("|").split("|")]
                mean, error = map(float, last.split(" ± "))
                rows[name] = (mean, error, float(ratio))
        sections.append((section.splitlines()[0], rows))
    return result.stdout, sections


def _paired_difference(losses, reference):
    difference = losses[:, -1] - reference[:, -1]
    return np.mean(difference), np.std(difference, ddof=1) / np.sqrt(len(difference))


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
    output, sections = _paired_tables(tmp_path, histories)
    assert len(sections) == 1
    title, rows = sections[0]
    assert title.startswith("NAG lr 1, the best hand-designed optimizer")
    mean, error, ratio = rows["L2L (LSTM)"]
    expected = _paired_difference(histories["l2l.csv"][1], histories["nag.csv"][1])
    assert (mean, error) == pytest.approx(expected, abs=1e-4)
    # Paired, the 0.05 lead is many standard errors; unpaired, the shared luck would hide it.
    assert ratio < -10
    # To two decimals, so that 2.98 is not read as the 3 a claim needs.
    assert ratio == pytest.approx(expected[0] / expected[1], abs=0.006)
    assert rows["Adam lr 0.03"][0] == pytest.approx(0.1, abs=1e-4)
    assert "learned lambda" not in rows and "| learned lambda | 40 |" in output


def test_table_pairs_the_lambda_optimizers_with_l2l(tmp_path):
    rng = np.random.default_rng(2)
    luck = rng.uniform(0.0, 1.0, [30, 100])
    histories = {"nag.csv": ("optimizer=NAG learning_rate=1 seed=0", luck + 0.20),
                 "l2l.csv": ("optimizer=L2L path=x seed=0", luck + 0.15),
                 "learned.csv": ("optimizer=learned path=y seed=0",
                                 luck + 0.17 + rng.normal(0, 0.01, [30, 100])),
                 "fixed.csv": ("optimizer=fixed path=z fixed_lambda=0.01 seed=0",
                               luck + 0.10)}
    _, sections = _paired_tables(tmp_path, histories)
    assert len(sections) == 2
    title, rows = sections[1]
    assert title.startswith("L2L (LSTM), the LSTM without lambda")
    assert set(rows) == {"learned lambda", "fixed lambda 0.01"}
    mean, error, ratio = rows["learned lambda"]
    expected = _paired_difference(histories["learned.csv"][1], histories["l2l.csv"][1])
    assert (mean, error) == pytest.approx(expected, abs=1e-4)
    assert ratio > 10  # 0.02 behind, paired: many standard errors.
    assert rows["fixed lambda 0.01"][0] == pytest.approx(-0.05, abs=1e-4)


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


def test_baselines_are_the_configurations():
    import configs  # pylint: disable=import-outside-toplevel
    assert plot.BASELINES is configs.BASELINES


def _curve(tmp_path):
    losses = np.exp(-np.linspace(0, 3, 20))[None] * np.linspace(1, 2, 3)[:, None]
    return cli.read_history(_history(tmp_path / "h.csv", "optimizer=SGD learning_rate=0.1",
                                     losses))


def test_output_paths_that_cannot_be_written_are_one_line(tmp_path):
    history = _curve(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    for output, message in (
            (tmp_path / "afile" / "p.png", r"Cannot write plot .*afile/p.png: .*afile is a "
                                           r"regular file, not a folder; choose another path"),
            (tmp_path / "dir.png", r"Cannot write plot .*dir.png: it is a directory"),
            (tmp_path / "fifo.png", r"Cannot write plot .*fifo.png: it is a FIFO")):
        with pytest.raises(util.FileFormatError, match=message):
            plot.plot([history], ["SGD"], str(output), "t")
    result = _run(f"--histories={tmp_path / 'h.csv'}", f"--output={tmp_path / 'afile' / 'p.png'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "afile is a regular file, not a folder" in result.stderr


def test_output_is_written_to_exactly_its_name_and_through_a_link(tmp_path):
    history = _curve(tmp_path)
    plot.plot([history], ["SGD"], str(tmp_path / "curve"), "t")  # No suffix: a PNG named so.
    assert (tmp_path / "curve").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "curve.png").exists()
    target = tmp_path / "target.svg"
    target.write_text("old")
    target.chmod(0o640)
    (tmp_path / "link.svg").symlink_to(target)
    plot.plot([history], ["SGD"], str(tmp_path / "link.svg"), "t")
    assert (tmp_path / "link.svg").is_symlink()
    assert target.read_bytes()[:5] == b"<?xml" and (target.stat().st_mode & 0o777) == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(util.TEMP_PREFIX)]


def test_diverged_histories_and_single_epochs_without_warnings(tmp_path):
    finite = _curve(tmp_path)
    diverged = ("optimizer=SGD learning_rate=1e+38", np.full([2, 20], np.inf))
    one_epoch = ("optimizer=Adam learning_rate=abc", np.full([1, 20], 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No RuntimeWarning (mean of inf, std of one value).
        with pytest.raises(util.FileFormatError, match="Nothing to plot: no history has a step "
                                                       "with a finite positive mean loss"):
            plot.plot([diverged], ["SGD lr 1e+38"], str(tmp_path / "none.png"), "t")
        assert not (tmp_path / "none.png").exists()
        notes = plot.plot([finite, diverged], ["SGD lr 0.1", "SGD lr 1e+38"],
                          str(tmp_path / "some.png"), "t")
        assert notes == ["SGD lr 1e+38: no step with a finite positive mean loss (2 of 2 epochs "
                         "diverged); left out of the plot."]
        assert (tmp_path / "some.png").stat().st_size > 10_000
        lines = plot.table([diverged, one_epoch], [plot.label(h) for h, _ in
                                                   (diverged, one_epoch)])
    assert lines[2] == "| SGD lr 1e+38 | 2 | n/a | inf (step 20) |"
    assert lines[3] == "| Adam lr abc | 1 | n/a | 0.500 (step 20) |"  # No "± nan".
    # The paired table of one epoch: the difference alone, no ratio.
    lines = plot.table([one_epoch, ("optimizer=L2L path=x", np.full([1, 20], 0.25))],
                       ["Adam", "L2L"])
    assert lines[-1] == "| L2L | n/a | -0.2500 | n/a |"


def test_table_pairs_the_learned_optimizers_with_kerass_default_too(tmp_path):
    rng = np.random.default_rng(3)
    luck = rng.uniform(0.0, 1.0, [30, 100])
    histories = {"adam.csv": ("optimizer=Adam learning_rate=0.01 seed=0", luck + 0.20),
                 "default.csv": ("optimizer=Adam learning_rate=0.001 seed=0", luck + 0.30),
                 "general.csv": ("optimizer=L2L path=g seed=0",
                                 luck + 0.18 + rng.normal(0, 0.01, [30, 100]))}
    _, sections = _paired_tables(tmp_path, histories)
    assert [title.split(",")[0] for title, _ in sections] == ["Adam lr 0.01", "Adam lr 0.001"]
    title, rows = sections[1]
    assert "Keras' default optimizer" in title
    assert set(rows) == {"L2L (LSTM)"}  # Only the learned optimizers, not the other baseline.
    mean, error, _ = rows["L2L (LSTM)"]
    expected = _paired_difference(histories["general.csv"][1], histories["default.csv"][1])
    assert (mean, error) == pytest.approx(expected, abs=1e-4)
    assert mean == pytest.approx(-0.12, abs=0.01)
    # When the default is the best, one section only.
    histories["adam.csv"] = ("optimizer=Adam learning_rate=0.01 seed=0", luck + 0.40)
    _, sections = _paired_tables(tmp_path, histories)
    assert len(sections) == 1
