"""Fault tolerance of train.py: resume after SIGKILL, SIGINT, non-finite losses, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import meta
import networks
import problems
import run_folder
import training
import util
import weights_file
from conftest import REPO_ROOT

# Tiny quadratic epochs: a run of a dozen epochs takes seconds.
RUN = ["--problem=quadratic", "--num_steps=4", "--unroll_length=2", "--log_period=1",
       "--evaluation_period=4", "--evaluation_epochs=1", "--checkpoint_period=1"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG")}
    env["PYTHONUNBUFFERED"] = "1"  # Lines as they are printed, for the tests that wait on them.
    return env


def _run(script, *args):
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)


def _start(*args):
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(process, text, timeout=240):
    """Reads the process's stdout until a line contains `text`; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    process.kill()
    raise AssertionError(f"never saw {text!r}; got {''.join(lines)}{process.stderr.read()}")


def _checkpoint(save_path):
    """`{name: value}` of the latest checkpoint in a run's folder."""
    reader = tf.train.load_checkpoint(os.path.join(save_path, "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE") and "OBJECT_GRAPH" not in name}


class ResumeTest(tf.test.TestCase):

    def test_sigkill_then_resume_ends_as_an_uninterrupted_run(self):
        reference = os.path.join(self.get_temp_dir(), "reference")
        result = _run("train.py", *RUN, "--num_epochs=12", f"--save_path={reference}")
        self.assertEqual(result.returncode, 0, result.stderr)

        killed = os.path.join(self.get_temp_dir(), "killed")
        process = _start(*RUN, "--num_epochs=12", f"--save_path={killed}")
        _wait_for(process, "Epoch 6")
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.assertEqual(process.returncode, -signal.SIGKILL)
        interrupted_at = int(_checkpoint(killed)["epoch/.ATTRIBUTES/VARIABLE_VALUE"])
        self.assertBetween(interrupted_at, 5, 11)

        resumed = _run("train.py", *RUN, "--num_epochs=12", f"--save_path={killed}")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn(f"Resuming from epoch {interrupted_at} of 12", resumed.stdout)
        self.assertIn("Epoch 12", resumed.stdout)
        self.assertNotIn(f"Epoch {interrupted_at}\n", resumed.stdout)
        # Weights, Adam's slots and counters equal those of the run that never stopped: every
        # epoch's data comes from (seed, epoch), so the replayed epochs are the same epochs.
        expected, got = _checkpoint(reference), _checkpoint(killed)
        self.assertEqual(sorted(got), sorted(expected))
        for name in expected:
            self.assertAllClose(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
        self.assertEqual(int(got["epoch/.ATTRIBUTES/VARIABLE_VALUE"]), 12)
        saved = weights_file.load(os.path.join(killed, "cw.l2l"))
        self.assertEqual(saved.metadata["epoch"] % 4, 0)  # Saved at an evaluation.
        networks.factory(saved.net, net_path=os.path.join(killed, "cw.l2l"))

    def test_sigint_writes_a_checkpoint_and_says_how_to_resume(self):
        save_path = os.path.join(self.get_temp_dir(), "interrupted")
        process = _start(*RUN[:-1], "--checkpoint_period=1000", "--num_epochs=100000",
                         f"--save_path={save_path}")
        _wait_for(process, "Epoch 3")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, 130, err)
        self.assertNotIn("Traceback", err)
        self.assertRegex(out, r"Stopped by SIGINT after epoch (\d+); checkpoint written to .*"
                              r"Run the same command again to resume.")
        stopped_at = int(out.split("Stopped by SIGINT after epoch ")[1].split(";")[0])
        self.assertEqual(int(_checkpoint(save_path)["epoch/.ATTRIBUTES/VARIABLE_VALUE"]),
                         stopped_at)

    def test_rerunning_a_complete_run_says_so_without_tensorflow_warnings(self):
        save_path = os.path.join(self.get_temp_dir(), "complete")
        first = _run("train.py", *RUN, "--num_epochs=4", f"--save_path={save_path}")
        self.assertEqual(first.returncode, 0, first.stderr)
        again = _run("train.py", *RUN, "--num_epochs=4", f"--save_path={save_path}")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("The run is complete; raise --num_epochs to train it further.",
                      again.stdout)
        # Not TensorFlow's "object ... being deleted with unrestored values" and "Value in
        # checkpoint could not be found ... save_counter" (issue 30, item 5).
        self.assertEqual(again.stderr, "")
        # Raised, the run goes on numbering its checkpoints after the restored ones.
        numbers = lambda: sorted(int(f[len("ckpt-"):-len(".index")]) for f in os.listdir(
            os.path.join(save_path, "checkpoints")) if f.endswith(".index"))
        before = numbers()
        longer = _run("train.py", *RUN, "--num_epochs=5", f"--save_path={save_path}")
        self.assertEqual((longer.returncode, longer.stderr), (0, ""))
        self.assertEqual(numbers(), [before[-1] + 1, before[-1] + 2])  # Epoch 5, and the last.

    def test_a_run_resumes_once_its_initial_path_file_is_gone(self):
        # A resume restores the checkpoint's weights: the file it started from is not needed
        # (issue 31, class 11); the networks are those run.json records.
        tmp = self.get_temp_dir()
        initial = os.path.join(tmp, "start.l2l")
        shutil.copy(REPO_ROOT / "saved_optimizers" / "quadratic" / "cwlearned.l2l", initial)
        run = [*RUN, "--which_aml=learned", "--meta_objective=train", f"--initial_path={initial}"]
        reference = os.path.join(tmp, "reference")
        self.assertEqual(_run("train.py", *run, "--num_epochs=6",
                              f"--save_path={reference}").returncode, 0)
        save_path = os.path.join(tmp, "run")
        first = _run("train.py", *run, "--num_epochs=3", f"--save_path={save_path}")
        self.assertEqual(first.returncode, 0, first.stderr)
        os.remove(initial)
        resumed = _run("train.py", *run, "--num_epochs=6", f"--save_path={save_path}")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn(f"Resuming without --initial_path {initial}, which is gone: a resume "
                      f"restores the checkpoint's weights, with the networks the run recorded.\n"
                      f"Resuming from epoch 3 of 6", resumed.stdout)
        expected, got = _checkpoint(reference), _checkpoint(save_path)
        for name in expected:
            if not name.startswith("save_counter"):  # The resume saved once more.
                self.assertAllClose(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
        # A record whose networks are not what train.py writes is damaged, said in one line.
        with open(os.path.join(save_path, "run.json"), "rb") as f:
            record = f.read()
        run_record = json.loads(record)
        run_record["networks"]["cw"] = {"net": "LearnedLambdaDeepLSTM"}
        with open(os.path.join(save_path, "run.json"), "w") as f:
            json.dump(run_record, f)
        with self.assertRaisesRegex(util.FileFormatError, r"run.json is damaged \(not a run "
                                                          r"record\); pass --restart"):
            run_folder.recorded_networks(save_path)
        with open(os.path.join(save_path, "run.json"), "wb") as f:
            f.write(record)
        # Killed before its first checkpoint and evaluation, the run has only the file's weights
        # to start from: one line, nothing changed.
        for name in os.listdir(save_path):
            if name not in ("run.json", ".lock"):
                path = os.path.join(save_path, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        lost = _run("train.py", *run, "--num_epochs=6", f"--save_path={save_path}")
        self.assertEqual(lost.returncode, 1)
        self.assertEqual(lost.stderr, f"train.py: error: --initial_path {initial} does not "
                                      f"exist.\n")
        with open(os.path.join(save_path, "run.json"), "rb") as f:
            self.assertEqual(f.read(), record)

    def test_every_run_records_its_networks_and_a_resume_rebuilds_them_from_there(self):
        # So that a network's default changed between two sessions does not change a run.
        save_path = os.path.join(self.get_temp_dir(), "run")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=2",
                              f"--save_path={save_path}").returncode, 0)
        recorded = run_folder.recorded_networks(save_path)
        self.assertEqual(recorded, {"cw": {"net": "CoordinateWiseDeepLSTM", "net_options": {
            "layers": [20, 20], "preprocess_name": "identity", "preprocess_options": {},
            "scale": 1.0}}})
        flags = lambda restart: types.SimpleNamespace(save_path=save_path, restart=restart)
        self.assertEqual(training.resumed_networks(flags(False)), recorded)
        self.assertIsNone(training.resumed_networks(flags(True)))  # It starts again.

    def test_resuming_with_other_flags_or_restarting(self):
        save_path = os.path.join(self.get_temp_dir(), "run")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=2",
                              f"--save_path={save_path}").returncode, 0)
        other = _run("train.py", *RUN, "--num_epochs=2", "--seed=5", f"--save_path={save_path}")
        self.assertEqual(other.returncode, 1)
        # --seed is the default --evaluation_seed: both change.
        self.assertIn("holds a run with --seed=0, --evaluation_seed=0; resume it with the same "
                      "flags, or pass --restart", other.stderr)
        restarted = _run("train.py", *RUN, "--num_epochs=2", "--seed=5", "--restart",
                         f"--save_path={save_path}")
        self.assertEqual(restarted.returncode, 0, restarted.stderr)
        self.assertNotIn("Resuming", restarted.stdout)
        self.assertIn("Epoch 1", restarted.stdout)

    def test_a_resume_evaluating_otherwise_is_refused_and_keeps_the_best(self):
        # The kept optimizer is the best of the run's evaluations: those of a resume on other
        # held-out epochs or another horizon are not comparable with them.
        save_path = os.path.join(self.get_temp_dir(), "run")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=4",
                              f"--save_path={save_path}").returncode, 0)
        best = os.path.join(save_path, "cw.l2l")
        with open(best, "rb") as f:
            kept = f.read()
        for flag, recorded in (("--evaluation_epochs=2", "--evaluation_epochs=1"),
                               ("--evaluation_num_steps=2", "--evaluation_num_steps=4"),
                               ("--evaluation_seed=3", "--evaluation_seed=0")):
            other = _run("train.py", *RUN, "--num_epochs=8", flag, f"--save_path={save_path}")
            self.assertEqual(other.returncode, 1, flag)
            self.assertIn(f"holds a run with {recorded}; resume it with the same flags",
                          other.stderr)
            with open(best, "rb") as f:
                self.assertEqual(f.read(), kept, flag)
        # The defaults spelled out are the same evaluations; a record from before they were
        # recorded resumes as it did.
        same = _run("train.py", *RUN, "--num_epochs=5", "--evaluation_num_steps=4",
                    "--evaluation_seed=0", f"--save_path={save_path}")
        self.assertEqual(same.returncode, 0, same.stderr)
        self.assertIn("Resuming from epoch 4 of 5", same.stdout)
        run_file = os.path.join(save_path, "run.json")
        with open(run_file) as f:
            run = json.load(f)
        for name in ("evaluation_num_steps", "evaluation_epochs", "evaluation_seed"):
            del run["flags"][name]
        with open(run_file, "w") as f:
            json.dump(run, f)
        older = _run("train.py", *RUN, "--num_epochs=6", f"--save_path={save_path}")
        self.assertEqual(older.returncode, 0, older.stderr)
        self.assertIn("Resuming from epoch 5 of 6", older.stdout)


class EvaluationBatchTest(tf.test.TestCase):

    def test_evaluation_epochs_run_in_batches_that_divide_them(self):
        import training  # pylint: disable=import-outside-toplevel
        cases = {(20, 1): 4, (40, 1): 4, (6, 1): 3, (7, 1): 1, (20, 2): 4, (12, 2): 6,
                 (6, 4): 4}  # The last: no multiple of 4 replicas divides 6, so one each.
        for (epochs, replicas), batch in cases.items():
            self.assertEqual(training.evaluation_batch(epochs, replicas), batch,
                             (epochs, replicas))


class NonFiniteTest(tf.test.TestCase):

    def test_run_epoch_stops_at_the_first_non_finite_unroll(self):
        # f(x) = x - log(x), minimal at x = 1 and NaN for x < 0.
        problem = problems.Problem(("x",), lambda seed: [tf.constant(0.5)],
                                   lambda seed, step: (),
                                   lambda params, data: params[0] - tf.math.log(params[0]))
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_options": {
            "layers": (), "initializer": {"linear": {"w": [[-0.1]], "b": [0.0]}}}})
        unroll = optimizer.meta_minimize(problem, 3, learning_rate=1e-3, mode="graph")
        # The step -0.1 g is gradient descent: x moves towards 1, everything stays finite.
        epoch = meta.run_epoch(unroll, 4, [0, 0])
        self.assertTrue(epoch.finite)
        self.assertLen(epoch.results, 4)
        # The step +2 g jumps from x = 0.5 to -1.5: the loss turns NaN in the first unroll.
        w = next(v for v in unroll.variables if v.shape == (1, 1))
        w.assign([[2.0]])
        before = [v.numpy() for v in unroll.variables]
        epoch = meta.run_epoch(unroll, 4, [0, 1])
        self.assertFalse(epoch.finite)
        self.assertLen(epoch.results, 1)  # The epoch stopped after that unroll.
        self.assertFalse(bool(epoch.results[0].applied))
        for a, b in zip(before, unroll.variables):
            self.assertAllEqual(a, b.numpy())

    def test_train_stops_after_max_nonfinite_epochs_and_keeps_the_checkpoint(self):
        save_path = os.path.join(self.get_temp_dir(), "nan")
        # A meta learning rate of 1e30 sends the first update's step size to ~1e30: x^2 then
        # overflows to inf in every later unroll.
        result = _run("train.py", "--problem=simple", "--learning_rate=1e30", "--num_epochs=50",
                      "--log_period=1", "--checkpoint_period=1", "--max_nonfinite=3",
                      f"--save_path={save_path}")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stdout.count("Non-finite meta-loss or meta-gradient"), 3)
        self.assertIn("Stopped: 3 consecutive epochs with a non-finite meta-loss. The last good "
                      "checkpoint", result.stdout)
        state = _checkpoint(save_path)
        self.assertEqual(int(state["nonfinite_epochs/.ATTRIBUTES/VARIABLE_VALUE"]), 2)
        weights = [v for k, v in state.items() if "optimizer/_nets" in k]
        self.assertTrue(weights and all(np.all(np.isfinite(w)) for w in weights))

    def test_diverging_evaluation_is_reported_not_a_crash(self):
        result = _run("evaluate.py", "--problem=quadratic", "--optimizer=SGD",
                      "--learning_rate=10", "--num_epochs=2", "--num_steps=60",
                      f"--history_path={self.get_temp_dir()}/sgd.csv")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Diverged: 2 of 2 epochs ended with a non-finite loss", result.stdout)


class BadInputTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(
        ("unroll_not_dividing", "train.py", ["--num_steps=10", "--unroll_length=4"],
         r"unroll_length \(4\) must be positive and divide num_steps \(10\)"),
        ("zero_epochs", "train.py", ["--num_epochs=0"],
         r"--num_epochs=0: 0 is not an integer in the range \[1, "),
        ("negative_learning_rate", "train.py", ["--learning_rate=0"],
         "--learning_rate must be positive"),
        ("zero_lambda_max", "train.py", ["--lambda_max=0"], "--lambda_max must be positive"),
        ("lambda_outside_bound", "train.py", ["--problem=quadratic", "--which_aml=learned",
                                              "--fixed_lambda=0.5", "--num_steps=4",
                                              "--unroll_length=2"],
         r"init_lambda must lie strictly inside \(-lambda_max, lambda_max\)"),
        ("restart_without_save_path", "train.py", ["--restart"], "--restart needs --save_path"),
        ("negative_reset_period", "evaluate.py", ["--state_reset_period=-1"],
         r"--state_reset_period=-1: -1 is not a non-negative integer"),
        ("zero_steps", "evaluate.py", ["--num_steps=0"],
         r"--num_steps=0: 0 is not an integer in the range \[1, "),
        ("unknown_problem", "train.py", ["--problem=svhn"], r"--problem=svhn.*quadratic"),
        ("unknown_optimizer", "evaluate.py", ["--optimizer=Adagrad"], r"--optimizer=Adagrad"),
    )
    def test_bad_flags(self, script, args, message):
        result = _run(script, *args)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr)
        self.assertRegex(result.stderr.strip().splitlines()[0], message)

    def _saved(self, name, net):
        directory = os.path.join(self.get_temp_dir(), name)
        os.makedirs(directory, exist_ok=True)
        networks.save(net, os.path.join(directory, name + ".l2l"))
        return directory

    def test_saved_files_that_do_not_fit(self):
        cases = [
            # A cifar-multi folder holds conv.l2l and fc.l2l, not the cw.l2l mnist needs.
            (["--problem=quadratic",
              f"--path={self._saved('conv', networks.CoordinateWiseDeepLSTM())}"],
             r"No L2L optimizer for network 'cw' in .*: expected cw.l2l, found conv.l2l"),
            # A fixed-lambda file asked for as L2L.
            (["--problem=quadratic", "--path=" + os.path.join(
                self._saved("cw", networks.FixedLambdaDeepLSTM()), "cw.l2l")],
             r"holds a FixedLambdaDeepLSTM \(--optimizer=fixed\), not --optimizer=L2L's "
             r"CoordinateWiseDeepLSTM; pass --optimizer=fixed\."),
            # A network for 5x5 kernels on a problem without them.
            (["--problem=quadratic", "--path=" + os.path.join(
                self._saved("kernel", networks.KernelDeepLSTM([5, 5])), "kernel.l2l")],
             "holds a KernelDeepLSTM, not a CoordinateWiseDeepLSTM"),
            (["--problem=quadratic", f"--path={self.get_temp_dir()}/empty_dir_missing"],
             "does not exist"),
        ]
        for args, message in cases:
            result = _run("evaluate.py", *args, "--num_epochs=1", "--num_steps=2")
            self.assertEqual(result.returncode, 1, args)
            self.assertNotIn("Traceback", result.stderr)
            self.assertRegex(result.stderr.strip(), message)
            self.assertLen(result.stderr.strip().splitlines(), 1)

    def test_save_path_with_foreign_optimizers_is_not_overwritten(self):
        directory = self._saved("cw", networks.CoordinateWiseDeepLSTM())
        before = open(os.path.join(directory, "cw.l2l"), "rb").read()
        result = _run("train.py", "--problem=quadratic", f"--save_path={directory}",
                      "--num_steps=4", "--unroll_length=2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("holds saved optimizers but no run to resume", result.stderr)
        self.assertEqual(open(os.path.join(directory, "cw.l2l"), "rb").read(), before)

    def test_damaged_run_file(self):
        save_path = os.path.join(self.get_temp_dir(), "damaged")
        os.makedirs(save_path)
        with open(os.path.join(save_path, "run.json"), "w") as f:
            f.write("{not json")
        result = _run("train.py", "--problem=quadratic", f"--save_path={save_path}",
                      "--num_steps=4", "--unroll_length=2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("run.json is damaged", result.stderr)
        self.assertIn("--restart", result.stderr)


if __name__ == "__main__":
    tf.test.main()
