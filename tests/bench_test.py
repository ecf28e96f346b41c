"""Tests of bench/bench.py: a --quick run in a subprocess prints complete, sane JSON; the
arguments its child processes get."""

import importlib.util
import json
import math
import os
import subprocess
import sys

from absl import flags
import pytest
import tensorflow as tf

import meta
from conftest import REPO_ROOT

FIELDS = ("problem", "hidden", "device", "mode", "data", "s_per_meta_iteration",
          "s_per_eval_epoch", "compile_s", "eval_compile_s", "peak_rss_mb", "train_peak_rss_mb",
          "s_per_coordinate", "s_per_unroll_step", "num_coordinates", "unroll_length",
          "num_steps", "eval_unroll_length", "iterations", "eval_epochs", "intra_op_threads",
          "inter_op_threads", "cpu_count", "tensorflow")
TIMES = ("s_per_meta_iteration", "s_per_eval_epoch", "compile_s", "eval_compile_s",
         "peak_rss_mb", "train_peak_rss_mb", "s_per_coordinate", "s_per_unroll_step")


def _mlp_size(hidden):
    """Weights and biases of the MNIST MLP 784 -> hidden -> 10."""
    return (784 + 1) * hidden + (hidden + 1) * 10


class BenchTest(tf.test.TestCase):

    def run_bench(self, *args, timeout):
        # Synthetic data whatever this machine holds: --synthetic skips the search (which could
        # download through tensorflow_datasets), and the empty folders would find nothing.
        empty = self.get_temp_dir()
        env = dict(os.environ, L2L_DATA_DIR=empty)
        for name in ("L2L_DEBUG", "TF_CPP_MIN_LOG_LEVEL"):  # The CLI's own defaults.
            env.pop(name, None)
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "bench" / "bench.py"), "--quick", "--synthetic",
             f"--data_dir={empty}", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        self.assertEqual(result.returncode, 0, result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def assert_complete(self, report, hidden=20, unroll_length=4):
        self.assertContainsSubset(FIELDS, report)
        for field in TIMES:
            self.assertTrue(math.isfinite(report[field]) and report[field] > 0,
                            f"{field} = {report[field]}")
        self.assertIn(report["mode"], meta.MODES)
        self.assertEqual(report["data"], "synthetic")
        self.assertEqual(report["tensorflow"], tf.__version__)
        self.assertEqual(report["num_coordinates"], _mlp_size(hidden))
        self.assertEqual(report["unroll_length"], unroll_length)
        self.assertEqual(report["num_steps"] % unroll_length, 0)

    def test_quick_run_prints_complete_json(self):
        report = self.run_bench(timeout=120)
        self.assert_complete(report)
        self.assertEqual(report["problem"], "mnist")
        self.assertEqual(report["mode"], meta.default_mode())
        self.assertEqual((report["num_steps"], report["iterations"], report["eval_epochs"]),
                         (8, 3, 1))
        # Every timed evaluation epoch's time and final loss, of which the field is the median.
        self.assertLen(report["eval_epoch_s"], 1)
        self.assertEqual(report["s_per_eval_epoch"], report["eval_epoch_s"][0])
        self.assertLen(report["eval_final_losses"], 1)
        self.assertBetween(report["eval_final_losses"][0], 0.5, 10.0)  # Near ln 10 after 8 steps.

    @pytest.mark.slow
    def test_quick_sweep_reports_every_configuration(self):
        report = self.run_bench("--sweep", timeout=600)
        self.assert_complete(report)
        rows = report["sweep"]
        self.assertEqual([(r["hidden"], r["unroll_length"]) for r in rows],
                         [(20, 4), (40, 4), (80, 4), (20, 2), (20, 8)])
        for row in rows:
            self.assert_complete(row, row["hidden"], row["unroll_length"])
        self.assertEqual([r["num_coordinates"] for r in rows[:3]], [15910, 31810, 63610])


@pytest.fixture
def bench():
    """bench.py imported in this process; its flags are unregistered afterwards."""
    before = set(flags.FLAGS)
    spec = importlib.util.spec_from_file_location("bench_under_test",
                                                  REPO_ROOT / "bench" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        flags.FLAGS.unparse_flags()
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)


@pytest.mark.parametrize("problem, forwards_hidden", [("quadratic", False), ("cifar", False),
                                                      ("mnist", True)])
def test_compare_modes_forwards_hidden_to_mnist_only(bench, monkeypatch, problem,
                                                     forwards_hidden):
    flags.FLAGS(["bench.py", f"--problem={problem}", "--compare_modes", "--quick",
                 "--synthetic"])
    commands = []

    def child(command, **kwargs):  # Each mode's process, answering with a row of the table.
        del kwargs
        commands.append(command[2:])
        mode = next(a for a in command if a.startswith("--mode=")).split("=")[1]
        row = {"mode": mode, "hidden": None, "unroll_length": 4, "num_coordinates": 10,
               **{field: 1.0 for field in TIMES}}
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(row) + "\n")

    monkeypatch.setattr(bench.subprocess, "run", child)
    bench.main(["bench.py"])
    assert [c for c in commands if "--problem=" + problem in c] == commands
    assert [next(a for a in c if a.startswith("--mode=")) for c in commands] == [
        f"--mode={mode}" for mode in meta.MODES]
    assert all(("--hidden=20" in c) == forwards_hidden for c in commands), commands
    assert all(any(a.startswith("--hidden") for a in c) == forwards_hidden for c in commands)


def test_importing_bench_loads_no_tensorflow_and_knows_the_default_mode(bench):
    # A parent that only runs children stays small: the children's (and the peer's) peak-RSS
    # readings start from their parent's resident size.
    script = str(REPO_ROOT / "bench" / "bench.py")
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('b', {script!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "False"
    assert bench.DEFAULT_MODE == meta.default_mode()


if __name__ == "__main__":
    tf.test.main()
