"""End-to-end tests of train.py and evaluate.py, each run in a subprocess as a user would."""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

from absl.testing import parameterized
import numpy as np
import pytest
import tensorflow as tf

import cli
import weights_file
from conftest import REPO_ROOT

# A few tiny epochs: enough to exercise every path of the loop.
TINY = ["--num_steps=4", "--unroll_length=2"]


def run(script, *args, timeout=300):
    env = dict(os.environ, PYTHONHASHSEED="0")
    for name in ("L2L_DEBUG", "TF_CPP_MIN_LOG_LEVEL"):  # The CLIs' own defaults, as a user's.
        env.pop(name, None)
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def stats(stdout):
    """The numbers of the stats lines the original printed."""
    errors = re.findall(r"^Log Mean Final Error: (-?\d+\.\d\d)$", stdout, re.M)
    times = re.findall(r"^Mean epoch time: (\d+\.\d\d) s$", stdout, re.M)
    return [float(e) for e in errors], [float(t) for t in times]


class CliTest(tf.test.TestCase, parameterized.TestCase):

    def test_train_saves_an_optimizer_that_evaluate_loads(self):
        save_path = os.path.join(self.get_temp_dir(), "quadratic")
        train = run("train.py", "--problem=quadratic", "--num_epochs=4", "--log_period=2",
                    "--evaluation_period=2", "--evaluation_epochs=1", f"--save_path={save_path}",
                    *TINY)
        self.assertEqual(train.returncode, 0, train.stderr)
        errors, times = stats(train.stdout)
        self.assertLen(errors, 4)  # Two log periods and two evaluations.
        self.assertLen(times, 4)
        self.assertIn("EVALUATION", train.stdout)
        self.assertIn(f"Saving meta-optimizer to {save_path}", train.stdout)
        self.assertEqual([f for f in os.listdir(save_path) if f.endswith(".l2l")], ["cw.l2l"])

        evaluate = run("evaluate.py", "--problem=quadratic", f"--path={save_path}",
                       "--num_epochs=3", "--num_steps=4",
                       f"--history_path={os.path.join(self.get_temp_dir(), 'l2l.csv')}")
        self.assertEqual(evaluate.returncode, 0, evaluate.stderr)
        self.assertIn("Epoch 3", evaluate.stdout)
        errors, times = stats(evaluate.stdout)
        self.assertLen(errors, 1)
        # The quadratic's loss starts near 30 (W, y uniform, x tiny): 10^1.5 bounds the mean.
        self.assertLess(errors[0], 1.5)

    def test_initial_path_starts_from_the_saved_optimizer(self):
        # A meta-learning rate too small to move a float32 weight: the kept optimizer is the
        # initial file's, options and weights, to the bit.
        shipped = REPO_ROOT / "saved_optimizers" / "quadratic"
        save_path = os.path.join(self.get_temp_dir(), "fine_tuned")
        train = run("train.py", "--problem=quadratic", "--num_epochs=1", "--evaluation_period=1",
                    "--evaluation_epochs=1", "--learning_rate=1e-30", f"--save_path={save_path}",
                    f"--initial_path={shipped}", "--which_aml=learned", *TINY)
        self.assertEqual(train.returncode, 0, train.stderr)
        initial = weights_file.load(str(shipped / "cwlearned.l2l"))
        kept = weights_file.load(os.path.join(save_path, "cwlearned.l2l"))
        self.assertEqual(kept.net, initial.net)
        self.assertEqual(kept.net_options, initial.net_options)
        self.assertEqual(sorted(kept.weights), sorted(initial.weights))
        for layer, variables in initial.weights.items():
            for name, value in variables.items():
                np.testing.assert_array_equal(kept.weights[layer][name], value)
        with open(os.path.join(save_path, "run.json")) as f:
            self.assertEqual(json.load(f)["flags"]["initial_path"], str(shipped))

        refused = run("train.py", "--problem=quadratic", f"--initial_path={shipped}",
                      '--net_options={"scale": 0.1}', *TINY)
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(refused.stderr.strip().splitlines(), [
            "train.py: error: --net_options does not apply with --initial_path: the network's "
            "options are those its file records."])
        missing = run("train.py", "--problem=quadratic", "--initial_path=/nonexistent/dir",
                      *TINY)
        self.assertEqual(missing.returncode, 1)
        self.assertIn("--initial_path /nonexistent/dir does not exist", missing.stderr)

    def test_validation_split_evaluates_the_epochs_the_grid_tuned_on(self):
        # The grid's validation epochs 0 and 1 are the evaluation's with --split=validation: the
        # same mean final loss; the test split's epochs are other problems.
        losses = {}
        for split in ("validation", "test"):
            history = os.path.join(self.get_temp_dir(), f"{split}.csv")
            result = run("evaluate.py", "--problem=quadratic", "--optimizer=SGD",
                         "--learning_rates=0.01", "--tune_epochs=2", "--num_epochs=2",
                         "--num_steps=20", f"--split={split}", f"--history_path={history}")
            self.assertEqual(result.returncode, 0, result.stderr)
            tuned = float(re.search(r"^learning_rate 0.01: mean final loss ([\d.e+-]+)",
                                    result.stdout, re.M).group(1))
            header, history_losses = cli.read_history(history)
            losses[split] = history_losses
            self.assertEqual(split == "validation", "split=validation" in header)
        self.assertAlmostEqual(np.mean(losses["validation"][:, -1]), tuned, delta=1e-3 * tuned)
        # Other problems from the first step on (the quadratic's W and y).
        self.assertGreater(np.min(np.abs(losses["test"][:, 0] - losses["validation"][:, 0])),
                           1e-3 * np.mean(losses["validation"][:, 0]))

    # Defaults (--seed=0, --evaluation_seed and --evaluation_num_steps unset) are the last case's
    # seeds: one run fewer in the suite.
    @parameterized.parameters((["--seed=1"], 1, 4),
                              (["--seed=1", "--evaluation_seed=0"], 0, 4),
                              (["--evaluation_num_steps=12"], 0, 12))
    def test_evaluations_run_the_held_out_epochs_of_evaluate_split_validation(self, flags,
                                                                              epochs_seed,
                                                                              steps):
        # train.py's evaluations all run validation epochs 0 .. evaluation_epochs - 1 of
        # --evaluation_seed (default --seed), --evaluation_num_steps (default --num_steps) steps
        # each, those of evaluate.py --split=validation with that --seed and --num_steps: the
        # kept optimizer's recorded evaluation is its mean final loss there.
        save_path = os.path.join(self.get_temp_dir(), "kept")
        history = os.path.join(self.get_temp_dir(), "kept.csv")
        train = run("train.py", "--problem=quadratic", "--num_epochs=3", "--evaluation_period=1",
                    "--evaluation_epochs=3", "--learning_rate=0.01", f"--save_path={save_path}",
                    *flags, *TINY)
        self.assertEqual(train.returncode, 0, train.stderr)
        recorded = weights_file.load(os.path.join(save_path, "cw.l2l")).metadata["evaluation"]
        means = {}
        for seed in (0, 1):
            evaluate = run("evaluate.py", "--problem=quadratic", f"--path={save_path}",
                           "--split=validation", "--num_epochs=3", f"--num_steps={steps}",
                           f"--seed={seed}", f"--history_path={history}")
            self.assertEqual(evaluate.returncode, 0, evaluate.stderr)
            means[seed] = np.mean(cli.read_history(history)[1][:, -1])
        with open(os.path.join(save_path, "cw.l2l"), "rb") as f:  # What reproduce.sh compares.
            self.assertIn(f" sha256={hashlib.sha256(f.read()).hexdigest()[:16]} ",
                          cli.read_history(history)[0])
        self.assertAllClose(means[epochs_seed], recorded, rtol=1e-4)
        self.assertNotAllClose(means[1 - epochs_seed], recorded, rtol=1e-3)
        if steps != 4:  # Not the --num_steps=4 loss: these epochs ran to step 12.
            evaluate = run("evaluate.py", "--problem=quadratic", f"--path={save_path}",
                           "--split=validation", "--num_epochs=3", "--num_steps=4",
                           f"--history_path={history}")
            self.assertEqual(evaluate.returncode, 0, evaluate.stderr)
            self.assertNotAllClose(np.mean(cli.read_history(history)[1][:, -1]), recorded,
                                   rtol=1e-3)

    def test_evaluate_runs_tensorflow_adam(self):
        result = run("evaluate.py", "--problem=quadratic", "--optimizer=Adam",
                     "--learning_rate=0.1", "--num_epochs=2", "--num_steps=20",
                     f"--history_path={os.path.join(self.get_temp_dir(), 'adam.csv')}")
        self.assertEqual(result.returncode, 0, result.stderr)
        errors, _ = stats(result.stdout)
        self.assertLess(errors[0], 1.0)  # Adam lowers the quadratic from ~30 within 20 steps.

    def test_learning_rate_grid_picks_the_best_on_validation_epochs(self):
        history = os.path.join(self.get_temp_dir(), "sgd.csv")
        result = run("evaluate.py", "--problem=quadratic", "--optimizer=SGD",
                     "--learning_rates=0.001,0.01,0.1", "--tune_epochs=2", "--num_epochs=2",
                     "--num_steps=20", f"--history_path={history}")
        self.assertEqual(result.returncode, 0, result.stderr)
        losses = {float(lr): float(loss) for lr, loss in re.findall(
            r"^learning_rate ([\d.e-]+): mean final loss ([\d.e+-]+)", result.stdout, re.M)}
        self.assertEqual(sorted(losses), [0.001, 0.01, 0.1])
        best = min(losses, key=losses.get)
        self.assertIn(f"Best learning rate: {best:g}", result.stdout)
        header, _ = cli.read_history(history)
        # The grid as given and its epochs, as name=value (what reproduce.sh checks to reuse it).
        self.assertIn(f"learning_rate={best!r} chosen from learning_rates=0.001,0.01,0.1 on "
                      f"tune_epochs=2 validation epochs", header)

    def test_step_scale_grid_tunes_a_learned_optimizer_on_validation_epochs(self):
        # The shipped quadratic LSTM with its steps scaled by each value of the grid on
        # validation epochs; the test epochs then run at the best, exactly as --step_scale does.
        tmp = self.get_temp_dir()
        common = ["--problem=quadratic", "--path=saved_optimizers/quadratic/cw.l2l",
                  "--num_epochs=2", "--num_steps=20"]
        tuned = run("evaluate.py", *common, "--step_scales=0.25,1,2", "--tune_epochs=2",
                    f"--history_path={os.path.join(tmp, 'tuned.csv')}")
        self.assertEqual(tuned.returncode, 0, tuned.stderr)
        losses = {float(scale): float(loss) for scale, loss in re.findall(
            r"^step_scale ([\d.e-]+): mean final loss ([\d.e+-]+)", tuned.stdout, re.M)}
        self.assertEqual(sorted(losses), [0.25, 1.0, 2.0])
        self.assertGreater(np.ptp(list(losses.values())), 1e-3)  # The scale changes the steps.
        best = min(losses, key=losses.get)
        header, tuned_losses = cli.read_history(os.path.join(tmp, "tuned.csv"))
        self.assertIn(f"step_scale={best!r} chosen from step_scales=0.25,1,2 on tune_epochs=2 "
                      f"validation epochs", header)
        direct = run("evaluate.py", *common, f"--step_scale={best}",
                     f"--history_path={os.path.join(tmp, 'direct.csv')}")
        self.assertEqual(direct.returncode, 0, direct.stderr)
        self.assertAllClose(cli.read_history(os.path.join(tmp, "direct.csv"))[1], tuned_losses,
                            rtol=1e-5)

    @parameterized.named_parameters(
        ("unknown_problem", "evaluate.py", ["--problem=cifar5"], r"--problem=cifar5.*simple"),
        ("unknown_optimizer", "evaluate.py", ["--optimizer=Adagrad"],
         r"--optimizer=Adagrad.*Adam"),
        ("missing_path", "evaluate.py", ["--problem=quadratic", "--path=/nonexistent/opt"],
         r"--path /nonexistent/opt does not exist"),
        ("bad_divisor", "train.py", ["--num_steps=10", "--unroll_length=3"],
         r"unroll_length \(3\) must be positive and divide num_steps \(10\)"),
        ("bad_learning_rate", "train.py", ["--learning_rate=-1"], r"--learning_rate must be "
                                                                  r"positive"),
        ("stray_argument", "train.py", ["quadratic"], r"Unexpected arguments: quadratic"),
        ("bad_grid", "evaluate.py", ["--problem=quadratic", "--optimizer=SGD",
                                     "--learning_rates=0.1,-1"],
         r"--learning_rates must be positive, got -1.0\."),
        ("empty_grid", "evaluate.py", ["--problem=quadratic", "--optimizer=SGD",
                                       "--learning_rates="],
         r"--learning_rates needs at least one learning rate\."),
        ("step_scale_of_a_baseline", "evaluate.py", ["--optimizer=Adam", "--step_scale=2"],
         r"--step_scale: it does not apply to --optimizer=Adam"),
        ("bad_step_scales", "evaluate.py", ["--problem=quadratic", "--untrained",
                                            "--step_scales=1,0"],
         r"--step_scales must be positive, got 0.0\."),
        ("step_scale_and_grid", "evaluate.py", ["--problem=quadratic", "--untrained",
                                                "--step_scale=2", "--step_scales=1,2"],
         r"--step_scale: --step_scales chooses the step scale; pass one of the two\."),
    )
    def test_bad_input_is_one_clear_line(self, script, args, message):
        result = run(script, *args)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr)
        self.assertRegex(result.stderr.strip().splitlines()[0], message)

    def test_epochs_at_once_are_the_epochs_one_at_a_time(self):
        # Six epochs: --eval_batch_size=4 runs them three at a time (the largest divisor of 6 up
        # to 4), as one meta-batch; the histories and the lambda line are those of one at a time.
        histories, lambda_lines = {}, {}
        for batch_size in (1, 4):
            history = os.path.join(self.get_temp_dir(), f"batch{batch_size}.csv")
            result = run("evaluate.py", "--problem=quadratic", "--optimizer=learned",
                         f"--path={REPO_ROOT / 'saved_optimizers' / 'quadratic'}",
                         "--num_epochs=6", "--num_steps=20", f"--eval_batch_size={batch_size}",
                         f"--history_path={history}")
            self.assertEqual(result.returncode, 0, result.stderr)
            histories[batch_size] = cli.read_history(history)[1]
            lambda_lines[batch_size] = re.search(r"^Lambda cw: mean (\S+) min (\S+) max (\S+)$",
                                                 result.stdout, re.M).groups()
        self.assertEqual(histories[1].shape, (6, 20))
        self.assertAllClose(histories[4], histories[1], rtol=1e-5, atol=0)
        # Printed with 6 significant digits: a rounding difference may move the last one.
        self.assertAllClose(np.array(lambda_lines[4], float), np.array(lambda_lines[1], float),
                            rtol=2e-5, atol=0)

    def test_a_bug_says_to_report_it_with_the_traceback_and_the_command(self):
        def bug(argv):
            del argv
            raise ZeroDivisionError("division by zero")

        with self.assertRaises(SystemExit) as caught, \
                contextlib.redirect_stderr(io.StringIO()) as stderr:
            cli.run(bug)(["prog"])
        self.assertIn("ZeroDivisionError", stderr.getvalue())
        self.assertEndsWith(str(caught.exception), "this is a bug, not a mistake of yours; please "
                            "report it to the project's maintainers with the traceback above and "
                            "the command you ran.")

    @parameterized.named_parameters(
        # Issue 31, class 12: messages that were long, wrong or unclear.
        ("many_files", "evaluate.py", ["--problem=quadratic", "--path={tmp}/many"],
         r"^evaluate.py: error: No L2L optimizer for network 'cw' in .*/many: expected cw.l2l, "
         r"found x0000.l2l, x0001.l2l, x0002.l2l, x0003.l2l, x0004.l2l and 2995 more\.$"),
        ("loop_path", "evaluate.py", ["--problem=quadratic", "--path={tmp}/loop"],
         r"^evaluate.py: error: --path .*/loop is a loop of symbolic links\.$"),
        ("broken_initial_path", "train.py", ["--problem=quadratic", "--initial_path={tmp}/broken"],
         r"^train.py: error: --initial_path .*/broken is a broken symbolic link \(to "
         r".*/nowhere\)\.$"),
        ("loop_save_path", "train.py", ["--problem=quadratic", "--save_path={tmp}/loop"],
         r"^train.py: error: --save_path .*/loop is a loop of symbolic links\.$"),
        ("loop_data_dir", "evaluate.py", ["--problem=mnist", "--optimizer=Adam",
                                          "--data_dir={tmp}/loop"],
         r"^evaluate.py: error: --data_dir .*/loop is a loop of symbolic links; fix the path"),
        ("loop_logdir", "train.py", ["--problem=quadratic", "--num_steps=2", "--unroll_length=2",
                                     "--num_epochs=1", "--logdir={tmp}/loop"],
         r"^train.py: error: --logdir .*/loop is a loop of symbolic links\.$"),
        ("learned_file_as_l2l", "train.py", [
            "--problem=quadratic", f"--initial_path={REPO_ROOT}/saved_optimizers/quadratic/"
                                   f"cwlearned.l2l"],
         r"^train.py: error: --initial_path .*cwlearned.l2l holds a LearnedLambdaDeepLSTM "
         r"\(--which_aml=learned\), not --which_aml=L2L's CoordinateWiseDeepLSTM; pass "
         r"--which_aml=learned\.$"),
        ("l2l_file_as_fixed", "evaluate.py", [
            "--problem=quadratic", "--optimizer=fixed",
            f"--path={REPO_ROOT}/saved_optimizers/quadratic/cw.l2l"],
         r"holds a CoordinateWiseDeepLSTM \(--optimizer=L2L\), not --optimizer=fixed's "
         r"FixedLambdaDeepLSTM; pass --optimizer=L2L\.$"),
    )
    def test_unclear_messages_are_now_one_clear_line(self, script, args, message):
        tmp = self.get_temp_dir()
        many = os.path.join(tmp, "many")
        if not os.path.isdir(many):
            os.makedirs(many)
            for i in range(3000):
                open(os.path.join(many, f"x{i:04d}.l2l"), "w").close()
            os.symlink("loop", os.path.join(tmp, "loop"))
            os.symlink(os.path.join(tmp, "nowhere"), os.path.join(tmp, "broken"))
        result = run(script, *[arg.format(tmp=tmp) for arg in args])
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertLen(result.stderr.splitlines(), 1, result.stderr)
        self.assertRegex(result.stderr, message)
        self.assertLess(len(result.stderr), 400)  # 41,000 characters for the 3,000 files.

    def test_ctrl_c_is_one_line_and_a_closed_pipe_ends_quietly(self):
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "evaluate.py"), "--problem=quadratic",
             "--optimizer=Adam", "--num_epochs=1000000", "--num_steps=100",
             f"--history_path={self.get_temp_dir()}/interrupted.csv"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)  # Inside the evaluation (TensorFlow starts in about 5 s).
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=120)
        finally:  # A failure must not leave a million epochs running beside the suite.
            if process.poll() is None:
                process.kill()
                process.communicate()
        self.assertEqual(process.returncode, 130, err)
        self.assertEqual(err, "evaluate.py: interrupted.\n")  # Was a 56-line traceback.
        self.assertFalse(os.path.exists(f"{self.get_temp_dir()}/interrupted.csv"))
        # `train.py ... | head -1`: the reader goes away, train.py stops without a traceback.
        process = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), "--problem=quadratic", *TINY,
             "--num_epochs=1000", "--log_period=1", "--mode=graph"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.assertStartsWith(process.stdout.readline(), "Meta-objective:")
        process.stdout.close()
        err = process.stderr.read()
        self.assertEqual(process.wait(timeout=120), 141, err)
        self.assertEqual(err, "")

    def test_unreadable_optimizer_file_is_one_clear_line(self):
        path = os.path.join(self.get_temp_dir(), "cw.l2l")
        with open(path, "wb") as f:
            f.write(b"not an optimizer")
        result = run("evaluate.py", "--problem=quadratic", f"--path={path}")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip(),
                         f"evaluate.py: error: {path} is not an optimizer file (neither this "
                         f"project's format nor a legacy .l2l pickle).")


if __name__ == "__main__":
    pytest.main([__file__])
