"""Nothing lost, nothing hung, no traceback: crafted files, damaged runs and concurrent use.

One test per class of defect: data loss (resume without checkpoint, two runs on one folder, the
best set saved as one unit, atomic writes, a damaged best optimizer), non-finite values, crafted
or damaged files (a table of headers and members loaded under a memory limit), non-regular
files, damaged or unwritable checkpoints, damaged run records, gzip bombs, empty histories and
flags out of bounds.
"""

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import zipfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import datasets
import meta
import networks
import run_folder
import util
import weights_file
from conftest import REPO_ROOT

# Tiny quadratic epochs: a run of a few epochs takes seconds.
RUN = ["--problem=quadratic", "--num_steps=4", "--unroll_length=2", "--log_period=1",
       "--evaluation_period=2", "--evaluation_epochs=1", "--checkpoint_period=1", "--mode=graph"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(script, *args, timeout=300):
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _one_line_error(test, result, pattern):
    test.assertEqual(result.returncode, 1, result.stderr[-2000:])
    test.assertNotIn("Traceback", result.stderr)
    lines = result.stderr.strip().splitlines()
    test.assertLen(lines, 1, result.stderr)
    test.assertRegex(lines[0], pattern)


class DataLossTest(tf.test.TestCase):

    def test_1_resume_without_a_usable_checkpoint_never_replaces_the_best(self):
        save_path = os.path.join(self.get_temp_dir(), "run")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=4",
                              f"--save_path={save_path}").returncode, 0)
        best = os.path.join(save_path, "cw.l2l")
        before = open(best, "rb").read()
        shutil.rmtree(os.path.join(save_path, "checkpoints"))
        result = _run("train.py", *RUN, "--num_epochs=6", f"--save_path={save_path}")
        _one_line_error(self, result, r"holds a run but no checkpoint to resume it from; pass "
                                      r"--restart")
        self.assertEqual(open(best, "rb").read(), before)

    def test_2_a_second_run_on_a_live_folder_is_refused_naming_the_holder(self):
        save_path = os.path.join(self.get_temp_dir(), "live")
        first = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *RUN,
                                  "--num_epochs=100000", f"--save_path={save_path}"],
                                 cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and "Epoch 1" not in first.stdout.readline():
                pass
            second = _run("train.py", *RUN, "--num_epochs=100000", f"--save_path={save_path}")
            _one_line_error(self, second, rf"is in use by another run \(process {first.pid}\)")
        finally:
            first.kill()
            first.communicate()
        # The lock goes with the process that held it.
        again = _run("train.py", *RUN, "--num_epochs=1", f"--save_path={save_path}")
        self.assertNotIn("in use", again.stderr)

    def test_3_the_best_set_switches_as_one_unit(self):
        folder = run_folder.RunFolder.open(os.path.join(self.get_temp_dir(), "set"),
                                           {"problem": "simple-multi"})
        try:
            optimizer = meta.MetaOptimizer(
                cw={"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (2,)}},
                adam={"net": "Adam"})
            folder.save_best(optimizer, 1, {"run_id": folder.run_id, "evaluation": 2.0})
            # A kill after the new set is written but before it is switched in: simulated by
            # the switch failing.
            replace = os.replace
            switch = os.path.join(folder.path, run_folder.BEST_LINK)
            os.replace = lambda src, dst: ((_ for _ in ()).throw(KeyboardInterrupt)
                                           if dst == switch else replace(src, dst))
            try:
                with self.assertRaises(KeyboardInterrupt):
                    folder.save_best(optimizer, 2, {"run_id": folder.run_id, "evaluation": 1.0})
            finally:
                os.replace = replace
            evaluations = {weights_file.load(os.path.join(folder.path, f)).metadata["evaluation"]
                           for f in ("cw.l2l", "adam.l2l")}
            self.assertEqual(evaluations, {2.0})  # Both files from the same, older evaluation.
            self.assertEqual(folder.best_evaluation(), (2.0, None))
        finally:
            folder.close()

    def test_4_atomic_write_replaces_regular_files_only_and_follows_links(self):
        directory = self.get_temp_dir()
        fifo = os.path.join(directory, "fifo")
        os.mkfifo(fifo)
        for destination, kind in ((fifo, r"a FIFO \(named pipe\)"), (directory, "a directory"),
                                  ("/dev/null", "a device")):
            with self.assertRaisesRegex(util.FileFormatError, f"it is {kind}; choose a file"):
                util.atomic_write(destination, b"x")
        self.assertTrue(stat.S_ISFIFO(os.stat(fifo).st_mode))
        target = os.path.join(directory, "target.csv")
        link = os.path.join(directory, "link.csv")
        with open(target, "w") as f:
            f.write("old")
        os.symlink(target, link)
        util.atomic_write(link, b"new")
        self.assertTrue(os.path.islink(link))
        self.assertEqual(open(target).read(), "new")
        result = _run("evaluate.py", "--problem=simple", "--optimizer=SGD", "--num_epochs=1",
                      "--num_steps=2", "--history_path=/dev/null")
        _one_line_error(self, result, r"Cannot write history file /dev/null: it is a device")

    def test_5_a_damaged_best_optimizer_is_reported_and_replaced(self):
        save_path = os.path.join(self.get_temp_dir(), "damaged_best")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=2",
                              f"--save_path={save_path}").returncode, 0)
        best = os.path.realpath(os.path.join(save_path, "cw.l2l"))
        with open(best, "r+b") as f:
            f.truncate(100)
        result = _run("train.py", *RUN, "--num_epochs=4", f"--save_path={save_path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("the saved best optimizer is unreadable", result.stdout)
        self.assertIn("the next evaluation will replace it", result.stdout)
        saved = weights_file.load(os.path.join(save_path, "cw.l2l"))
        self.assertEqual(saved.metadata["epoch"], 4)


class NonFiniteTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("train.py", "--learning_rate=inf", "--learning_rate must be"),
                              ("train.py", "--learning_rate=nan", "--learning_rate must be"),
                              ("train.py", "--lambda_max=-inf", "--lambda_max must be"),
                              ("evaluate.py", "--fixed_lambda=nan", "--fixed_lambda must be"))
    def test_6_non_finite_flags_are_refused(self, script, flag, message):
        _one_line_error(self, _run(script, flag), message)

    def test_6_non_finite_weights_are_never_checkpointed(self):
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                           "net_options": {"layers": (2,)}})
        folder = run_folder.RunFolder.open(os.path.join(self.get_temp_dir(), "nan"), {})
        import training  # pylint: disable=import-outside-toplevel
        try:
            checkpoints = training._Checkpoints(tf.train.Checkpoint(optimizer=optimizer),
                                                folder, optimizer.trainable_variables)
            checkpoints.save()
            good = checkpoints.last_good
            optimizer.trainable_variables[0].assign(
                tf.fill(optimizer.trainable_variables[0].shape, np.nan))
            checkpoints.save()
            self.assertEqual(checkpoints.last_good, good)
            self.assertEqual(tf.train.latest_checkpoint(folder.checkpoint_dir), good)
        finally:
            folder.close()

    def test_7_lambda_flags_apply_only_to_their_kind(self):
        _one_line_error(self, _run("train.py", "--fixed_lambda=nan"),
                        "--fixed_lambda must be a finite number")
        _one_line_error(self, _run("train.py", "--fixed_lambda=0.1"),
                        "--fixed_lambda does not apply to --which_aml=L2L")
        save_path = os.path.join(self.get_temp_dir(), "l2l")
        self.assertEqual(_run("train.py", *RUN, "--num_epochs=1",
                              f"--save_path={save_path}").returncode, 0)
        with open(os.path.join(save_path, "run.json")) as f:
            self.assertNotIn("fixed_lambda", json.load(f)["flags"])

    def test_8_nan_or_integer_weights_are_refused(self):
        directory = self.get_temp_dir()
        net = networks.CoordinateWiseDeepLSTM(layers=(2,))
        for name, value, message in (("nan", np.nan, "holds NaN or infinite values"),
                                     ("int", None, "holds int64 values")):
            weights = net.get_weights()
            weights["linear"]["b"] = (np.array([value], np.float32) if value is not None
                                      else np.array([3], np.int64))
            path = os.path.join(directory, f"{name}.l2l")
            weights_file.save(path, "CoordinateWiseDeepLSTM", net.options, weights)
            with self.assertRaisesRegex(util.WeightsFileError, message):
                weights_file.load(path)


def _zip(entries, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _header(**fields):
    header = {"format": "l2l-weights", "version": 2, "net": "CoordinateWiseDeepLSTM",
              "net_options": {"layers": [2]}, "metadata": {}}
    header.update(fields)
    return json.dumps(header)


def _deep(depth):
    return "[" * depth + "]" * depth


def _crafted():
    """`(name, bytes, expected message)` of crafted and damaged optimizer files."""
    good = {f"{layer}/{name}.npy": _npy(value) for layer, variables in
            networks.CoordinateWiseDeepLSTM(layers=(2,)).get_weights().items()
            for name, value in variables.items()}
    huge_npy = _npy(np.zeros(1, np.float32)).replace(b"(1,)", b"(1000000000000,)")
    return [
        ("header_list", _zip({"__header__.json": "[1, 2]", **good}), "its header is a list"),
        ("header_null", _zip({"__header__.json": "null", **good}), "its header is a NoneType"),
        ("header_number", _zip({"__header__.json": "3", **good}), "its header is a int"),
        ("header_deep", _zip({"__header__.json": _deep(100000), **good}), "nested too deeply"),
        ("net_dict", _zip({"__header__.json": _header(net={"a": 1}), **good}),
         "header field 'net' is a dict"),
        ("options_null", _zip({"__header__.json": _header(net_options=None), **good}),
         "header field 'net_options' is a NoneType"),
        ("options_string", _zip({"__header__.json": _header(net_options="abc"), **good}),
         "header field 'net_options' is a str"),
        ("options_missing", _zip({"__header__.json": json.dumps(
            {"format": "l2l-weights", "version": 2, "net": "CoordinateWiseDeepLSTM"}), **good}),
         "its header has no 'net_options'"),
        ("metadata_int", _zip({"__header__.json": _header(metadata=3), **good}),
         "header field 'metadata' is a int"),
        ("layers_float", _zip({"__header__.json": _header(net_options={"layers": [2.5]}),
                               **good}), "layers must be whole numbers"),
        ("layers_huge", _zip({"__header__.json": _header(net_options={"layers": [10000, 10000]}),
                              **good}), r"layers must lie in \[1, 4096\]"),
        ("unknown_option", _zip({"__header__.json": _header(net_options={"layers": [2],
                                                                         "colour": 1}), **good}),
         "unexpected keyword argument 'colour'"),
        ("string_scale", _zip({"__header__.json": _header(net_options={"layers": [2],
                                                                       "scale": "big"}),
                               **good}), "scale must be a finite number"),
        ("weights_missing", _zip({"__header__.json": _header()}), r"holds weights \{\}"),
        ("huge_member", _zip({"__header__.json": _header(), **good,
                              "linear/b.npy": huge_npy}), r"declares shape \(1000000000000,\)"),
        ("bomb", _zip({"__header__.json": _header(), **good,  # 100 kB inflating to 100 MB.
                       "linear/w.npy": _npy(np.zeros((2, 1), np.float32)) + b"\0" * 10**8},
                      zipfile.ZIP_DEFLATED), r"declares shape \(2, 1\) but holds 100000008 bytes"),
        ("not_zip", b"PK\x03\x04garbage", "damaged optimizer file"),
        ("pickle_code", b"\x80\x04cos\nsystem\n.", "not a safe legacy .l2l file"),
    ]


# Loads every file given under a 1 GiB address-space limit, without TensorFlow (the reader needs
# only numpy): a file that made numpy allocate what it declares would not fit.
_LOAD_SCRIPT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    sys.path.insert(0, sys.argv[1])
    import util, weights_file
    for path in sys.argv[2:]:
        try:
            weights_file.load(path)
            print("LOADED", path)
        except util.WeightsFileError as e:
            print("REFUSED", path, str(e).count(chr(10)))
    # VmHWM, not ru_maxrss: the latter starts from the forking parent's size.
    print("PEAK_KB", next(int(line.split()[1]) for line in open("/proc/self/status")
                          if line.startswith("VmHWM")))
""")


class CraftedFilesTest(tf.test.TestCase):

    def test_9_10_crafted_headers_and_members_are_one_line_under_a_memory_limit(self):
        directory = self.get_temp_dir()
        cases = _crafted()
        paths = []
        for name, data, _ in cases:
            paths.append(os.path.join(directory, f"{name}.l2l"))
            with open(paths[-1], "wb") as f:
                f.write(data)
        result = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(REPO_ROOT), *paths],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        lines = result.stdout.splitlines()
        self.assertLess(int(lines[-1].split()[1]), 300 * 1024)  # Peak RSS under 300 MiB.
        for line in lines[:-1]:
            self.assertTrue(line.startswith(("REFUSED", "LOADED")) and line.endswith(
                ("0", ".l2l")), line)
        # What the reader lets through, the network checks: every case is one clear error.
        for (name, _, message), path in zip(cases, paths):
            with self.assertRaisesRegex(util.WeightsFileError, message, msg=name) as caught:
                networks.factory("CoordinateWiseDeepLSTM", net_path=path)
            self.assertNotIn("\n", str(caught.exception))
        # And from the command line: one line, exit 1.
        for name in ("header_list", "layers_huge", "huge_member"):
            result = _run("evaluate.py", "--problem=quadratic", "--num_epochs=1",
                          "--num_steps=2", f"--path={directory}/{name}.l2l",
                          f"--history_path={directory}/h.csv")
            _one_line_error(self, result, dict((n, m) for n, _, m in cases)[name])

    def test_11_non_regular_files_are_refused_without_blocking(self):
        directory = self.get_temp_dir()
        fifo = os.path.join(directory, "cw.l2l")
        os.mkfifo(fifo)
        zero = os.path.join(directory, "zero.l2l")
        os.symlink("/dev/zero", zero)
        for path, kind in ((fifo, r"a FIFO \(named pipe\)"), (zero, "a device")):
            with self.assertRaisesRegex(util.WeightsFileError, f"is {kind}, not a regular file"):
                weights_file.load(path)
        with self.assertRaisesRegex(util.FileFormatError, "is a FIFO"):
            util.read_file(fifo)


class CheckpointTest(tf.test.TestCase):

    def _run_with_checkpoints(self, name, epochs=3):
        save_path = os.path.join(self.get_temp_dir(), name)
        self.assertEqual(_run("train.py", *RUN, f"--num_epochs={epochs}",
                              f"--save_path={save_path}").returncode, 0)
        return save_path

    def test_12_a_damaged_newest_checkpoint_falls_back_to_the_older_one(self):
        save_path = self._run_with_checkpoints("damaged")
        checkpoints = os.path.join(save_path, "checkpoints")
        newest = tf.train.latest_checkpoint(checkpoints)
        for data in [f for f in os.listdir(checkpoints) if f.startswith(
                os.path.basename(newest) + ".data")]:
            with open(os.path.join(checkpoints, data), "r+b") as f:
                f.truncate(10)
        result = _run("train.py", *RUN, "--num_epochs=5", f"--save_path={save_path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"Checkpoint\(s\) unusable \(ckpt-\d+: .*\); resuming "
                                        r"from .*ckpt-\d+")
        self.assertIn("Epoch 5", result.stdout)

    def test_12_checkpoints_that_is_a_file_is_one_line(self):
        save_path = self._run_with_checkpoints("file")
        shutil.rmtree(os.path.join(save_path, "checkpoints"))
        with open(os.path.join(save_path, "checkpoints"), "w") as f:
            f.write("x")
        _one_line_error(self, _run("train.py", *RUN, "--num_epochs=5", f"--save_path={save_path}"),
                        r"checkpoints is not a folder of checkpoints; pass --restart")

    def test_13_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_nothing(self):
        import training  # pylint: disable=import-outside-toplevel
        directory = self.get_temp_dir()
        blocker = os.path.join(directory, "blocker")
        with open(blocker, "w") as f:
            f.write("a file where the checkpoints' folder should be")
        folder = run_folder.RunFolder.open(os.path.join(directory, "run"), {})
        try:
            folder.path = blocker  # Its checkpoints would go into a file: they cannot.
            optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                               "net_options": {"layers": (2,)}})
            checkpoints = training._Checkpoints(tf.train.Checkpoint(optimizer=optimizer),
                                                folder, optimizer.trainable_variables)
            with self.assertRaisesRegex(util.FileFormatError, "Cannot write a checkpoint in "
                                        ".*blocker/checkpoints .* The last checkpoint"):
                checkpoints.save()
        finally:
            folder.close()


class RunRecordTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters('{"run_id": "a", "flags": []}', '{"run_id": 3, "flags": {}}',
                              "[" * 50000 + "]" * 50000, '{"run_id": "a", "flags": {"x": [1]}}')
    def test_14_damaged_run_records_are_one_line(self, text):
        path = os.path.join(self.get_temp_dir(), "record")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "run.json"), "w") as f:
            f.write(text)
        with self.assertRaisesRegex(util.FileFormatError, "run.json is damaged .*pass --restart"):
            run_folder.RunFolder.open(path, {"problem": "quadratic"})

    def test_14_a_run_record_that_is_a_device_is_refused(self):
        path = os.path.join(self.get_temp_dir(), "device")
        os.makedirs(path, exist_ok=True)
        os.symlink("/dev/zero", os.path.join(path, "run.json"))
        with self.assertRaisesRegex(util.FileFormatError, "is a device, not a regular file"):
            run_folder.RunFolder.open(path, {})


class DataFileTest(tf.test.TestCase):

    def test_15_a_gzip_bomb_is_refused_from_its_header(self):
        header = (0x803).to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in (100000, 1000, 1000))
        path = os.path.join(self.get_temp_dir(), "bomb-idx3-ubyte.gz")
        with gzip.open(path, "wb") as f:
            f.write(header + b"\0" * 2**20)
        start = time.monotonic()
        with self.assertRaisesRegex(datasets.DatasetError, r"declares 100000000000 bytes"):
            datasets.read_idx(path)
        self.assertLess(time.monotonic() - start, 5)

    def test_16_an_empty_history_is_one_line(self):
        path = os.path.join(self.get_temp_dir(), "empty.csv")
        with open(path, "w") as f:
            f.write("# optimizer=Adam problem=mnist\n")
        for extra in ([f"--output={self.get_temp_dir()}/p.png"], ["--table"]):
            _one_line_error(self, _run("plot.py", f"--histories={path}", *extra),
                            "holds a header but no epochs")


class FlagBoundsTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        (["--num_steps=1000000000", "--unroll_length=1000000000"], r"--num_steps"),
        (["--seed=-1"], r"--seed"),
        (["--net_options={\"layers\": [1e400]}", "--problem=quadratic"],
         r"layers must be whole numbers"),
        (["--net_options=" + "[" * 20000 + "]" * 20000], r"--net_options is not valid JSON"),
        (["--save_path=/etc/hostname"], r"--save_path /etc/hostname is a file, not a folder"),
    )
    def test_17_flags_out_of_bounds_are_one_line_naming_the_flag(self, args, message):
        _one_line_error(self, _run("train.py", *args), message)

    def test_17_logdir_naming_a_file(self):
        blocker = os.path.join(self.get_temp_dir(), "file")
        with open(blocker, "w") as f:
            f.write("x")
        _one_line_error(self, _run("train.py", *RUN[:-2], "--num_epochs=1", f"--logdir={blocker}"),
                        r"--logdir .* is a file")

    def test_messages_name_the_file_and_the_fix(self):
        _one_line_error(self, _run("evaluate.py", "--problem=simple", "--optimizer=SGD",
                                   "--num_epochs=1", "--num_steps=2",
                                   f"--history_path={self.get_temp_dir()}"),
                        r"Cannot write history file .*: it is a directory; choose a file path")


if __name__ == "__main__":
    tf.test.main()
