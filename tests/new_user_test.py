"""A new user's first hour: what the command line says and keeps (the README's promises)."""

import os
import signal
import subprocess
import sys
import time

from absl.testing import parameterized
import tensorflow as tf

from conftest import REPO_ROOT

QUICK = ["--num_steps=4", "--unroll_length=2", "--log_period=1", "--evaluation_period=2",
         "--evaluation_epochs=1", "--mode=graph"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cwd, script, *args, timeout=300):
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


class NewUserTest(tf.test.TestCase, parameterized.TestCase):

    def test_1_without_save_path_it_says_so_and_never_offers_a_resume(self):
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"),
                                    "--problem=quadratic", "--num_epochs=100000", *QUICK],
                                   cwd=self.get_temp_dir(), env=_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        lines, deadline = [], time.monotonic() + 240
        while time.monotonic() < deadline:
            lines.append(process.stdout.readline())
            if lines[-1].startswith("Epoch 2"):
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        out = "".join(lines) + out
        self.assertEqual(process.returncode, 130, err)
        self.assertIn("Nothing will be saved: pass --save_path=DIR to keep the best optimizer",
                      out.splitlines()[1])
        self.assertIn("nothing was saved (no --save_path)", out)
        self.assertNotIn("resume", out.split("Stopped by SIGINT")[1])
        self.assertRegex(out, r"Best evaluation: epoch \d+, mean final loss [\d.]+ \(log10 "
                              r"-?[\d.]+\); not saved \(no --save_path\)\.")
        self.assertEqual(os.listdir(self.get_temp_dir()), [])  # Nothing written anywhere.

    @parameterized.parameters(("iris", "learned", "validation"), ("iris", "L2L", "train"),
                              ("quadratic", "learned", "train"))
    def test_3_the_meta_objective_follows_the_recommendation_and_is_printed(
            self, problem, kind, objective):
        save_path = os.path.join(self.get_temp_dir(), f"{problem}_{kind}")
        result = _run(REPO_ROOT, "train.py", f"--problem={problem}", f"--which_aml={kind}",
                      "--num_epochs=2", *QUICK, f"--save_path={save_path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertStartsWith(result.stdout.splitlines()[0], f"Meta-objective: {objective} (")
        self.assertIn(f'"meta_objective": "{objective}"',
                      open(os.path.join(save_path, "run.json")).read())
        self.assertRegex(result.stdout, rf"Best evaluation: epoch 2, mean final loss [\d.]+ "
                                        rf"\(log10 -?[\d.]+\); saved in {save_path} \(cw")

    def test_6_an_unknown_reproduce_case_writes_nothing(self):
        table = REPO_ROOT / "results" / "table.md"
        before = table.read_bytes()
        result = subprocess.run([str(REPO_ROOT / "reproduce.sh"), "nonexistent"], cwd=REPO_ROOT,
                                env=_env(), capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown case 'nonexistent'; the cases are: quadratic mnist", result.stderr)
        self.assertEqual(table.read_bytes(), before)

    def test_7_histories_are_named_by_their_settings(self):
        directory = self.get_temp_dir()
        common = ["--problem=quadratic", "--num_epochs=1", "--num_steps=4"]
        for args in (["--optimizer=Adam", "--learning_rate=0.1"],
                     ["--optimizer=Adam", "--learning_rate=0.3"], ["--optimizer=L2L"]):
            self.assertEqual(_run(directory, "evaluate.py", *common, *args).returncode, 0)
        self.assertCountEqual(os.listdir(os.path.join(directory, "saved_histories")), [
            "quadratic_Adam_lr0.1_numsteps4_numepochs1.csv",
            "quadratic_Adam_lr0.3_numsteps4_numepochs1.csv",
            "quadratic_L2L_untrained_numsteps4_numepochs1.csv"])

    @parameterized.parameters(
        ("evaluate.py", ["--optimizer=Adam", "--path=x"], "--path: it does not apply to "
                                                         "--optimizer=Adam"),
        ("evaluate.py", ["--optimizer=L2L", "--learning_rate=0.1"],
         "--learning_rate: it does not apply to --optimizer=L2L"),
        ("evaluate.py", ["--optimizer=L2L", "--fixed_lambda=0.1"],
         "--fixed_lambda: it does not apply to --optimizer=L2L"),
        ("evaluate.py", ["--optimizer=learned", "--path=x", "--lambda_max=0.2"],
         "--lambda_max: a saved learned optimizer records it"),
        ("train.py", ["--which_aml=fixed", "--lambda_mode=scalar"],
         "--lambda_mode does not apply to --which_aml=fixed"),
        ("train.py", ["--checkpoint_period=5"], "--checkpoint_period needs --save_path"),
    )
    def test_7_flags_that_do_not_apply_are_refused(self, script, args, message):
        result = _run(self.get_temp_dir(), script, *args)
        self.assertEqual(result.returncode, 1)
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertStartsWith(result.stderr, f"{script}: error: {message}")

    @parameterized.parameters("train.py", "evaluate.py", "plot.py", "convert.py")
    def test_9_help_exits_with_status_0_at_once(self, script):
        start = time.monotonic()
        result = _run(self.get_temp_dir(), script, "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--", result.stdout)
        if script != "convert.py":  # convert.py's flags are its own module's: check one.
            self.assertIn("--problem" if script != "plot.py" else "--histories", result.stdout)
        # Before TensorFlow is imported (which alone takes 4 s or more here): under a second
        # on an idle machine, so 4 s leaves room for a loaded one.
        self.assertLess(time.monotonic() - start, 4)


if __name__ == "__main__":
    tf.test.main()
