"""A new user's first hour: what the command line says and keeps (the README's promises)."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from absl.testing import parameterized
import tensorflow as tf

from conftest import REPO_ROOT

QUICK = ["--num_steps=4", "--unroll_length=2", "--log_period=1", "--evaluation_period=2",
         "--evaluation_epochs=1", "--mode=graph"]


# A stand-in for the Python reproduce.sh runs: evaluate.py and plot.py without TensorFlow. It logs
# each call, writes a history whose header records its settings as evaluate.py's does, a table
# naming the histories and a "figure"; STUB_FAIL=plot makes plot.py fail.
STUB_PYTHON = """#!{python}
import hashlib, os, sys
script, args = sys.argv[1], sys.argv[2:]
with open("calls.log", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
values = dict(arg[2:].split("=", 1) for arg in args if "=" in arg)
if script == "evaluate.py":
    settings = [a[2:] for a in args if not a.startswith(("--history_path=", "--data_dir="))]
    if "path" in values:
        with open(values["path"], "rb") as f:
            settings.append("sha256=" + hashlib.sha256(f.read()).hexdigest()[:16])
    with open(values["history_path"], "w") as f:
        f.write("# " + " ".join(settings) + "\\n1,0.5\\n")
elif os.environ.get("STUB_FAIL") == "plot":
    sys.exit("plot.py failed")
elif "--table" in args:
    print("| stub table of " + values["histories"] + " |")
    for row in range(int(os.environ.get("STUB_TABLE_ROWS", "0"))):  # A long section.
        print("| row %d |" % row)
else:
    with open(values["output"], "wb") as f:
        f.write(b"stub figure")
    print("Plot written to " + values["output"])  # As plot.py says.
"""


def _sections(text):
    """`{case: its section}` of a results table, in order: split at its '### case' lines."""
    return {part.split()[1]: part for part in re.split(r"(?m)^(?=### )", text)[1:]}


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

    def _reproduce(self, folder, *cases, **env):
        """Runs reproduce.sh in `folder` with the stub Python; the evaluate.py calls it made."""
        log = os.path.join(folder, "calls.log")
        if os.path.exists(log):
            os.remove(log)
        result = subprocess.run([os.path.join(folder, "reproduce.sh"), *cases], cwd=folder,
                                env=dict(_env(), PYTHON=os.path.join(folder, "python"), **env),
                                capture_output=True, text=True, timeout=60)
        calls = open(log).read().splitlines() if os.path.exists(log) else []
        return result, [c for c in calls if c.startswith("evaluate.py")]

    def _reproduce_folder(self):
        """A copy of reproduce.sh, the committed table, empty quadratic optimizers and the stub
        Python, in a folder of its own."""
        folder = self.get_temp_dir()
        shutil.copy(REPO_ROOT / "reproduce.sh", folder)
        os.makedirs(os.path.join(folder, "results"))
        shutil.copy(REPO_ROOT / "results" / "table.md", os.path.join(folder, "results"))
        os.makedirs(os.path.join(folder, "saved_optimizers", "quadratic"))
        for name in ("cw.l2l", "cwfixed0.01.l2l", "cwlearned.l2l"):
            open(os.path.join(folder, "saved_optimizers", "quadratic", name), "w").close()
        with open(os.path.join(folder, "python"), "w") as f:
            f.write(STUB_PYTHON.format(python=sys.executable))
        os.chmod(os.path.join(folder, "python"), 0o755)
        return folder

    def test_6_a_held_out_case_runs_the_general_optimizer_against_adam(self):
        # Issue 28's held-out models: the general and the MNIST optimizer at their defaults,
        # Keras' default Adam and Adam tuned on validation, and the general optimizer with its
        # step scale tuned on validation, on the same epochs; labelled rows.
        folder = self._reproduce_folder()
        for saved in ("general", "mnist"):
            os.makedirs(os.path.join(folder, "saved_optimizers", saved))
            open(os.path.join(folder, "saved_optimizers", saved, "cw.l2l"), "w").close()
        result, evaluations = self._reproduce(folder, "heldout-mnist-cnn-500",
                                              EPOCHS_BEYOND="3")
        self.assertEqual(result.returncode, 0, result.stderr)
        common = "--seed=0 --num_epochs=3 --problem=heldout-mnist-cnn --num_steps=500"
        self.assertEqual(
            [c.split(" --history_path=")[0] for c in evaluations],
            [f"evaluate.py {common} --optimizer=L2L --path=saved_optimizers/general/cw.l2l "
             f"--state_reset_period=0",
             f"evaluate.py {common} --optimizer=L2L --path=saved_optimizers/mnist/cw.l2l "
             f"--state_reset_period=0",
             f"evaluate.py {common} --optimizer=Adam --learning_rate=0.001",
             f"evaluate.py {common} --optimizer=Adam "
             f"--learning_rates=0.0001,0.0003,0.001,0.003,0.01,0.03,0.1 --tune_epochs=5",
             # The general optimizer's one knob tuned as Adam's learning rate is.
             f"evaluate.py {common} --optimizer=L2L --path=saved_optimizers/general/cw.l2l "
             f"--state_reset_period=0 --step_scales=0.5,1,2,3,5,8 --tune_epochs=5"])
        calls = open(os.path.join(folder, "calls.log")).read()
        # Empty labels: plot.py's, from the header (the tuned learning rate and step scale).
        self.assertIn("--labels=general/cw.l2l,mnist/cw.l2l,Adam lr 0.001 (Keras' default),, ",
                      calls)
        sections = _sections(open(os.path.join(folder, "results", "table.md")).read())
        self.assertIn("### heldout-mnist-cnn-500 (500 steps)", sections["heldout-mnist-cnn-500"])
        # The tuned history, as evaluate.py writes it (the scale found, then the grid), is
        # reused; one of a scale that was not asked for (no grid) is evaluated again.
        tuned = os.path.join(folder, "results", "histories",
                             "heldout-mnist-cnn-500_general-tuned.csv")
        header = open(tuned).readline().rstrip("\n")
        for scale_fields, calls_expected in (
                ("step_scale=5.0 chosen from step_scales=0.5,1,2,3,5,8 on", 0),
                ("step_scale=5.0", 1)):
            fields = header.replace("step_scales=0.5,1,2,3,5,8", scale_fields)
            if calls_expected:
                fields = fields.replace(" tune_epochs=5", "")
            with open(tuned, "w") as f:
                f.write(fields + "\n1,0.5\n")
            result, evaluations = self._reproduce(folder, "heldout-mnist-cnn-500",
                                                  EPOCHS_BEYOND="3")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertLen(evaluations, calls_expected, fields)

    def test_6_a_subset_of_reproduce_cases_replaces_only_its_own_sections(self):
        folder = self._reproduce_folder()
        committed = _sections((REPO_ROOT / "results" / "table.md").read_text())
        self.assertGreaterEqual(len(committed), 7)  # The paper's cases at least.
        table = os.path.join(folder, "results", "table.md")

        result, evaluations = self._reproduce(folder, "quadratic")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertLen(evaluations, 7)  # L2L, fixed, learned; Adam, RMSprop, SGD, NAG.
        # No temporary path is printed, only where the figure ends up.
        self.assertNotIn(".reproduce.", result.stdout)
        self.assertEndsWith(result.stdout, "Updated results/quadratic.png and the quadratic "
                                           "section of results/table.md\n")
        sections = _sections(open(table).read())
        self.assertEqual(list(sections), list(committed))  # Every case, in the same order.
        for case in committed:
            if case != "quadratic":
                self.assertEqual(sections[case], committed[case])
        histories = ",".join(f"results/histories/quadratic_{kind}.csv" for kind in (
            "L2L", "fixed", "learned", "Adam", "RMSprop", "SGD", "NAG"))
        self.assertEqual(sections["quadratic"],
                         f"### quadratic (100 steps)\n\n| stub table of {histories} |\n\n")
        self.assertEqual(sorted(os.listdir(os.path.join(folder, "results"))),
                         ["histories", "quadratic.png", "table.md"])  # No temporary left.
        after_first_run = open(table).read()

        # Histories of the settings asked for are reused, also after the optimizer file was
        # touched; a replaced optimizer file or other settings run again.
        result, evaluations = self._reproduce(folder, "quadratic")
        self.assertEqual((result.returncode, evaluations), (0, []), result.stderr)
        self.assertEqual(open(table).read(), after_first_run)
        shipped = os.path.join(folder, "saved_optimizers", "quadratic", "cw.l2l")
        later = time.time() + 10
        os.utime(shipped, (later, later))
        result, evaluations = self._reproduce(folder, "quadratic")
        self.assertEqual((result.returncode, evaluations), (0, []), result.stderr)
        earlier = time.time() - 3600  # Replaced by an older file: mtimes would miss it.
        with open(shipped, "w") as f:
            f.write("another optimizer")
        os.utime(shipped, (earlier, earlier))
        result, evaluations = self._reproduce(folder, "quadratic")
        self.assertLen(evaluations, 1)
        self.assertIn("--optimizer=L2L", evaluations[0])
        result, evaluations = self._reproduce(folder, "quadratic", EPOCHS="5")
        self.assertLen(evaluations, 7)
        self.assertTrue(all("--num_epochs=5" in call for call in evaluations))

        # A failure before the table is complete keeps the table and the figure as they were.
        result, _ = self._reproduce(folder, "quadratic", EPOCHS="6", STUB_FAIL="plot")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(open(table).read(), after_first_run)
        self.assertEqual(sorted(os.listdir(os.path.join(folder, "results"))),
                         ["histories", "quadratic.png", "table.md"])

    def test_reproduce_reuses_only_a_history_of_exactly_the_cases_settings(self):
        # Issue 31, class 9: a history of another split or reset period was reused as the
        # table's (the quadratic L2L row went from 0.085 to 1.162).
        folder = self._reproduce_folder()
        result, evaluations = self._reproduce(folder, "quadratic")
        self.assertEqual((result.returncode, len(evaluations)), (0, 7), result.stderr)
        self.assertIn("--state_reset_period=0", evaluations[0])  # Spelled out: it is recorded.
        history = os.path.join(folder, "results", "histories", "quadratic_L2L.csv")
        header, rows = open(history).read().split("\n", 1)
        for other in ("split=validation", "state_reset_period=1"):
            with open(history, "w") as f:  # evaluate.py's header of another evaluation.
                f.write(header.replace(" state_reset_period=0", "" if "reset" in other else
                                       " state_reset_period=0") + f" {other}\n" + rows)
            result, evaluations = self._reproduce(folder, "quadratic")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertLen(evaluations, 1, other)
            self.assertIn("--optimizer=L2L", evaluations[0])
        # What the header says of how it ran, or what it found, is no setting.
        with open(history) as f:
            header, rows = f.read().split("\n", 1)
        with open(history, "w") as f:
            f.write(header + " mode=graph fixed_lambda=0.01\n" + rows)
        self.assertEqual(self._reproduce(folder, "quadratic")[1], [])

    def test_reproduce_runs_at_once_keep_every_section_and_splice_long_ones_at_once(self):
        # Issue 31, class 10: two runs lost a section (no lock); a 200,000-line section took
        # over 200 s to splice (a string copied at every line).
        folder = self._reproduce_folder()
        table = os.path.join(folder, "results", "table.md")
        committed = _sections(open(table).read())
        rows = 100000
        start = time.monotonic()
        runs = [subprocess.Popen([os.path.join(folder, "reproduce.sh"), case], cwd=folder,
                                 env=dict(_env(), PYTHON=os.path.join(folder, "python"),
                                          STUB_TABLE_ROWS=str(rows)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for case in ("quadratic", "mnist", "mnist-40")]
        for run in runs:
            out, err = run.communicate(timeout=120)
            self.assertEqual(run.returncode, 0, err)
        self.assertLess(time.monotonic() - start, 60)
        sections = _sections(open(table).read())
        self.assertEqual(list(sections), list(committed))
        for case in committed:
            if case in ("quadratic", "mnist", "mnist-40"):
                self.assertEqual(sections[case].count("\n| row "), rows, case)
                self.assertIn(f"| row {rows - 1} |\n\n", sections[case])
            else:
                self.assertEqual(sections[case], committed[case])
        self.assertEqual(sorted(os.listdir(os.path.join(folder, "results"))),
                         ["histories", "mnist-40.png", "mnist.png", "quadratic.png", "table.md"])

    def test_7_histories_are_named_by_their_settings(self):
        directory = self.get_temp_dir()
        common = ["--problem=quadratic", "--num_epochs=1", "--num_steps=4"]
        for args in (["--optimizer=Adam", "--learning_rate=0.1"],
                     ["--optimizer=Adam", "--learning_rate=0.3"],
                     ["--optimizer=L2L", "--untrained"],
                     ["--optimizer=Adam", "--learning_rates=0.1,0.3", "--tune_epochs=1"],
                     ["--optimizer=Adam", "--learning_rates=0.1,1", "--tune_epochs=1"]):
            result = _run(directory, "evaluate.py", *common, *args)
            self.assertEqual(result.returncode, 0, result.stderr)
        # A tuned baseline is named by a digest of its grid, and by --tune_epochs off default.
        tuned = [f"quadratic_Adam_tuned-{hashlib.sha1(repr(grid).encode()).hexdigest()[:6]}_"
                 f"numsteps4_numepochs1_tuneepochs1.csv" for grid in ([0.1, 0.3], [0.1, 1.0])]
        self.assertCountEqual(os.listdir(os.path.join(directory, "saved_histories")), [
            "quadratic_Adam_lr0.1_numsteps4_numepochs1.csv",
            "quadratic_Adam_lr0.3_numsteps4_numepochs1.csv",
            "quadratic_L2L_untrained_numsteps4_numepochs1.csv", *tuned])

    @parameterized.parameters(
        ("evaluate.py", ["--optimizer=Adam", "--path=x"], "--path: it does not apply to "
                                                         "--optimizer=Adam"),
        ("evaluate.py", ["--optimizer=L2L", "--learning_rate=0.1"],
         "--learning_rate: it does not apply to --optimizer=L2L"),
        ("evaluate.py", ["--optimizer=L2L", "--fixed_lambda=0.1"],
         "--fixed_lambda: it does not apply to --optimizer=L2L"),
        ("evaluate.py", ["--optimizer=learned", "--path=x", "--lambda_max=0.2"],
         "--lambda_max: a saved learned optimizer records it"),
        ("evaluate.py", ["--optimizer=learned", "--path=x", "--fixed_lambda=0.1"],
         "--fixed_lambda: a saved learned optimizer records it"),
        ("evaluate.py", ["--optimizer=Adam", "--eval_batch_size=2"],
         "--eval_batch_size: it does not apply to --optimizer=Adam"),
        ("evaluate.py", ["--optimizer=Adam", "--tune_epochs=5"],
         "--tune_epochs: it applies to a --learning_rates grid only"),
        ("evaluate.py", ["--optimizer=Adam", "--learning_rate=0.1", "--learning_rates=0.1,1"],
         "--learning_rate: --learning_rates chooses the learning rate"),
        ("train.py", ["--which_aml=fixed", "--lambda_mode=scalar"],
         "--lambda_mode does not apply to --which_aml=fixed"),
        ("train.py", ["--checkpoint_period=5"], "--checkpoint_period needs --save_path"),
        # An untrained network only on purpose (issue 30, item 7).
        ("evaluate.py", ["--problem=quadratic"], r"--optimizer=L2L needs --path, a saved "
                                                 r"optimizer \(a folder of .l2l files or one file, "
                                                 r"such as .*saved_optimizers/quadratic\); pass "
                                                 r"--untrained to evaluate untrained networks on "
                                                 r"purpose\.$"),
        ("evaluate.py", ["--problem=iris", "--optimizer=fixed"],
         r"--optimizer=fixed needs --path, a saved optimizer \(a folder of .l2l files or one "
         r"file\); pass --untrained"),
        ("evaluate.py", ["--optimizer=Adam", "--untrained"],
         "--untrained: it does not apply to --optimizer=Adam; remove it."),
        ("evaluate.py", ["--path=x", "--untrained"], "--untrained: --path loads trained weights"),
    )
    def test_7_flags_that_do_not_apply_are_refused(self, script, args, message):
        result = _run(self.get_temp_dir(), script, *args)
        self.assertEqual(result.returncode, 1)
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertRegex(result.stderr, f"^{script}: error: {message}")

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


class FrictionTest(tf.test.TestCase, parameterized.TestCase):
    """What a newcomer met on a fresh clone (issue 30, items 5 to 10)."""

    @parameterized.parameters('{"layers": [4,', "[1, 2]", "")
    def test_malformed_net_options_answer_before_tensorflow_and_any_other_output(self, options):
        start = time.monotonic()
        result = _run(self.get_temp_dir(), "train.py", f"--net_options={options}")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")  # Not after "Meta-objective: ...".
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertRegex(result.stderr, r"^train.py: error: --net_options (is not valid JSON|"
                                        r"must be a JSON object)")
        self.assertLess(time.monotonic() - start, 4)  # TensorFlow alone takes 4 s or more.

    @parameterized.parameters("train.py", "evaluate.py")
    def test_a_missing_data_dir_answers_at_once(self, script):
        missing = os.path.join(self.get_temp_dir(), "typo")
        start = time.monotonic()
        result = _run(self.get_temp_dir(), script, "--problem=mnist", "--optimizer=Adam"
                      if script == "evaluate.py" else "--num_epochs=1", f"--data_dir={missing}")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr, f"{script}: error: --data_dir {missing} does not exist; "
                                        f"fix the path, or create the folder for "
                                        f"tensorflow_datasets to download into.\n")
        self.assertLess(time.monotonic() - start, 4)  # Not after TensorFlow and tfds.

    @parameterized.parameters("train.py", "evaluate.py")
    def test_help_never_breaks_a_problem_name_across_lines(self, script):
        import configs  # pylint: disable=import-outside-toplevel
        for help_flag in ("--help", "--helpfull"):
            result = _run(self.get_temp_dir(), script, help_flag)
            self.assertEqual(result.returncode, 0, result.stderr)
            for name in configs.CONFIGS:  # e.g. "cifar-" / "multi" before.
                self.assertRegex(result.stdout, rf"(?<![\w-]){re.escape(name)}(?![\w-])",
                                 f"{script} {help_flag}")
            # Every flag absl lists is still there, with its default.
            self.assertIn("--problem: <cifar | cifar-mlp | cifar-multi", result.stdout)
            self.assertIn("(default: 'simple')", result.stdout)
            self.assertEqual("--helpfull" in help_flag, "--flagfile:" in result.stdout)
            self.assertEqual("--helpfull" in help_flag, "-v,--verbosity:" in result.stdout)

    def test_plot_help_example_has_no_run_of_spaces(self):
        result = _run(self.get_temp_dir(), "plot.py", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("mnist_Adam_tuned.csv \\\n        --output=figures/mnist.pdf",
                      result.stdout)
        self.assertNotRegex(result.stdout, r"\S {3,}\S")


if __name__ == "__main__":
    tf.test.main()
