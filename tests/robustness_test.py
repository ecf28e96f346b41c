"""Nothing lost, nothing hung, no traceback: crafted files, damaged runs and concurrent use.

One test per class of defect: data loss (resume without checkpoint, two runs on one folder and
its lock file, the best set saved as one unit and what a killed save leaves, atomic writes, a
damaged best optimizer or its metadata), non-finite values, crafted or damaged files (a table of
headers, members and `.npy` headers loaded under a memory limit), non-regular files, damaged or
unwritable checkpoints and their state file, damaged run records, gzip bombs, empty histories,
flags out of bounds (memory), which errors are the user's, and a distributed run's folder.
"""

import contextlib
import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from unittest import mock
import zipfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import configs
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


def _small_optimizer():
    return meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                  "net_options": {"layers": (2,)}}, adam={"net": "Adam"})


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

    def test_2_a_lock_file_that_is_a_link_or_a_fifo_is_refused_and_nothing_written(self):
        directory = self.get_temp_dir()
        precious = os.path.join(directory, "precious")
        with open(precious, "w") as f:
            f.write("precious\n")
        for name, make, kind in (("link", lambda lock: os.symlink(precious, lock),
                                  "a symbolic link"),
                                 ("fifo", os.mkfifo, r"a FIFO \(named pipe\)")):
            path = os.path.join(directory, name)
            os.makedirs(path)
            make(os.path.join(path, run_folder.LOCK_FILE))
            with self.assertRaisesRegex(util.FlagError, f"its lock file .*/.lock is {kind}, "
                                        f"not a regular file; remove it"):
                run_folder.RunFolder.open(path, {"problem": "quadratic"})
            self.assertFalse(os.path.exists(os.path.join(path, run_folder.RUN_FILE)))
        with open(precious) as f:
            self.assertEqual(f.read(), "precious\n")  # Not truncated, no PID written into it.

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

    def test_3_what_a_killed_save_left_is_removed_and_nothing_else(self):
        path = os.path.join(self.get_temp_dir(), "leftovers")
        folder = run_folder.RunFolder.open(path, {"problem": "simple-multi"})
        optimizer = _small_optimizer()
        try:
            folder.save_best(optimizer, 1, {"run_id": folder.run_id, "evaluation": 2.0})
            folder.save_best(optimizer, 2, {"run_id": folder.run_id, "evaluation": 1.0})
            current = os.readlink(os.path.join(path, run_folder.BEST_LINK))
            self.assertCountEqual(os.listdir(path), [".lock", "run.json", "best", current,
                                                     "cw.l2l", "adam.l2l"])
        finally:
            folder.close()
        # A kill at each step of a save: a new set not switched in, its temporary link, the
        # temporary files of util.atomic_write; and the user's own files of similar names.
        ours = [".best-000003-0123abcd", "best.tmp-89abcdef", "cw.l2l.tmp-01234567",
                util.TEMP_PREFIX + "link0123", util.TEMP_PREFIX + "x1_y2"]
        users = [".best-notes", "best.tmp-mine", "notes.tmp", ".best-3-old"]
        os.mkdir(os.path.join(path, ours[0]))
        os.symlink(ours[0], os.path.join(path, ours[1]))
        os.symlink("best/cw.l2l", os.path.join(path, ours[2]))
        os.symlink(ours[0], os.path.join(path, ours[3]))
        with open(os.path.join(path, ours[4]), "w") as f:
            f.write("partial")
        for name in users:
            os.mkdir(os.path.join(path, name)) if name.startswith(".best") else open(
                os.path.join(path, name), "w").close()
        folder = run_folder.RunFolder.open(path, {"problem": "simple-multi"})
        try:
            self.assertCountEqual(os.listdir(path), [".lock", "run.json", "best", current,
                                                     "cw.l2l", "adam.l2l"] + users)
            self.assertEqual(folder.best_evaluation(), (1.0, None))
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
        # The replaced file keeps its mode; a missing folder is made on request, and a file in
        # the way of one is named.
        os.chmod(target, 0o640)
        util.atomic_write(target, b"newer")
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o640)
        nested = os.path.join(directory, "a", "b", "h.csv")
        util.atomic_write(nested, b"x", create_folder=True)
        self.assertEqual(open(nested).read(), "x")
        for create_folder in (False, True):
            with self.assertRaisesRegex(util.FileFormatError, r"Cannot write history file "
                                        r".*target.csv/h.csv: .*target.csv is a regular file, "
                                        r"not a folder; choose another path"):
                util.atomic_write(os.path.join(target, "h.csv"), b"x", what="history file",
                                  create_folder=create_folder)
        self.assertFalse([f for f in os.listdir(directory) if f.startswith(util.TEMP_PREFIX)])
        result = _run("evaluate.py", "--problem=simple", "--optimizer=SGD", "--num_epochs=1",
                      "--num_steps=2", "--history_path=/dev/null")
        _one_line_error(self, result, r"Cannot write history file /dev/null: it is a device")

    def test_5_a_damaged_best_optimizer_is_reported_and_replaced_whatever_its_value(self):
        # At this learning rate the evaluation after the first is worse: only because the damaged
        # best bounds nothing does it replace it.
        args = [*RUN[:-4], "--learning_rate=0.1", "--evaluation_period=1", "--mode=graph"]
        save_path = os.path.join(self.get_temp_dir(), "damaged_best")
        self.assertEqual(_run("train.py", *args, "--num_epochs=1",
                              f"--save_path={save_path}").returncode, 0)
        first = weights_file.load(os.path.join(save_path, "cw.l2l")).metadata["evaluation"]
        best = os.path.realpath(os.path.join(save_path, "cw.l2l"))
        with open(best, "r+b") as f:
            f.truncate(100)
        result = _run("train.py", *args, "--num_epochs=2", f"--save_path={save_path}")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("the saved best optimizer is damaged", result.stdout)
        self.assertIn("the next evaluation will replace it", result.stdout)
        saved = weights_file.load(os.path.join(save_path, "cw.l2l")).metadata
        self.assertEqual(saved["epoch"], 2)
        self.assertGreater(saved["evaluation"], first)
        self.assertIn("Best evaluation: epoch 2,", result.stdout)

    def test_5_a_damaged_best_left_so_is_said_and_exits_1(self):
        import training  # pylint: disable=import-outside-toplevel
        folder = run_folder.RunFolder.open(os.path.join(self.get_temp_dir(), "left"), {})
        try:
            folder.save_best(_small_optimizer(), 1, {"run_id": folder.run_id, "evaluation": 2.0,
                                                     "epoch": 1})
            with open(os.path.join(folder.path, "cw.l2l"), "r+b") as f:
                f.truncate(100)
            state = training._counters()
            state["best_evaluation"].assign(1.0)  # What the checkpoint says; the file is gone.
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                self.assertIsNone(folder.best_evaluation())
                self.assertEqual(training._summary(state, folder), 1)
            self.assertRegex(output.getvalue(), r"is still damaged .*train further "
                                                r"\(--num_epochs, --evaluation_period\)")
            self.assertNotIn("saved in", output.getvalue())
        finally:
            folder.close()


class BestMetadataTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("abc", 1), (float("nan"), 1), (True, 1), ([1.0], 1),
                              (1.0, "x"), (1.0, -1), (1.0, 2.5), (1.0, True))
    def test_8_bad_metadata_of_this_run_makes_the_best_damaged(self, evaluation, epoch):
        folder = run_folder.RunFolder.open(os.path.join(self.get_temp_dir(), "meta"), {})
        try:
            optimizer = _small_optimizer()
            folder.save_best(optimizer, 1, {"run_id": folder.run_id, "evaluation": evaluation,
                                            "epoch": epoch})
            with contextlib.redirect_stdout(io.StringIO()) as output:
                self.assertIsNone(folder.best_evaluation())
            self.assertRegex(folder.damaged_best, r"records evaluation .* at epoch .*, not a "
                                                  r"finite loss at an epoch")
            self.assertIn("the next evaluation will replace it", output.getvalue())
            folder.save_best(optimizer, 2, {"run_id": folder.run_id, "evaluation": 0.5,
                                            "epoch": 3})
            self.assertIsNone(folder.damaged_best)
            self.assertEqual(folder.best_evaluation(), (0.5, 3))
            # Another run's files bound nothing, and are not damaged either.
            folder.run_id = "another"
            self.assertIsNone(folder.best_evaluation())
            self.assertIsNone(folder.damaged_best)
        finally:
            folder.close()


class NonFiniteTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("train.py", "--learning_rate=inf", "--learning_rate must be"),
                              ("train.py", "--learning_rate=nan", "--learning_rate must be"),
                              ("train.py", "--lambda_max=-inf", "--lambda_max must be"),
                              ("evaluate.py", "--fixed_lambda=nan", "--fixed_lambda must be"),
                              # Finite, but inf once a float32 tensor.
                              ("train.py", "--learning_rate=1e300",
                               "--learning_rate must be a finite number of magnitude at most"))
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


def _npy_header_bomb(good, declared=200 * 2**20):
    """A `.npy` member whose header says it is `declared` bytes long, and is (spaces, deflated to
    a few hundred kB): numpy's reader would allocate and tokenize all of it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("__header__.json", _header())
        for name, data in good.items():
            if name != "linear/b.npy":
                archive.writestr(name, data)
        with archive.open("linear/b.npy", "w") as member:
            member.write(b"\x93NUMPY\x02\x00" + declared.to_bytes(4, "little"))
            chunk = b" " * 2**20
            for _ in range(declared // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def _patch(data, member, flags=0, method=None):
    """A zip with `member`'s flag bits or compression method changed in both its headers
    (zipfile writes neither an encrypted member nor an unknown method itself)."""
    data, name = bytearray(data), member.encode()
    # Signature, offsets of the flags, method and name length, and the header's fixed length.
    for signature, flag_at, method_at, length_at, fixed in ((b"PK\x03\x04", 6, 8, 26, 30),
                                                            (b"PK\x01\x02", 8, 10, 28, 46)):
        start = data.find(signature)
        while start >= 0:
            length = int.from_bytes(data[start + length_at:start + length_at + 2], "little")
            if data[start + fixed:start + fixed + length] == name:
                old = int.from_bytes(data[start + flag_at:start + flag_at + 2], "little")
                data[start + flag_at:start + flag_at + 2] = (old | flags).to_bytes(2, "little")
                if method is not None:
                    data[start + method_at:start + method_at + 2] = method.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    return bytes(data)


READER, NETWORK = "reader", "network"  # Which check refuses a crafted file.


def _crafted():
    """`(name, bytes, expected message, refused by)` of crafted and damaged optimizer files.

    READER cases never get past `weights_file.load`; NETWORK cases are well-formed files whose
    options or weights do not make a network, refused by `networks.factory`.
    """
    good = {f"{layer}/{name}.npy": _npy(value) for layer, variables in
            networks.CoordinateWiseDeepLSTM(layers=(2,)).get_weights().items()
            for name, value in variables.items()}
    huge_npy = _npy(np.zeros(1, np.float32)).replace(b"(1,)", b"(1000000000000,)")
    # What numpy's tokenizer cannot read: an unterminated expression (and code, never run).
    bad_npy_header = b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os').system('true')}"

    whole = _zip({"__header__.json": _header(), **good})

    def options(**net_options):
        return _zip({"__header__.json": _header(net_options={"layers": [2], **net_options}),
                     **good})

    return [
        ("header_list", _zip({"__header__.json": "[1, 2]", **good}), "its header is a list",
         READER),
        ("header_null", _zip({"__header__.json": "null", **good}), "its header is a NoneType",
         READER),
        ("header_number", _zip({"__header__.json": "3", **good}), "its header is a int", READER),
        ("header_deep", _zip({"__header__.json": _deep(100000), **good}), "nested too deeply",
         READER),
        ("net_dict", _zip({"__header__.json": _header(net={"a": 1}), **good}),
         "header field 'net' is a dict", READER),
        ("options_null", _zip({"__header__.json": _header(net_options=None), **good}),
         "header field 'net_options' is a NoneType", READER),
        ("options_string", _zip({"__header__.json": _header(net_options="abc"), **good}),
         "header field 'net_options' is a str", READER),
        ("options_missing", _zip({"__header__.json": json.dumps(
            {"format": "l2l-weights", "version": 2, "net": "CoordinateWiseDeepLSTM"}), **good}),
         "its header has no 'net_options'", READER),
        ("metadata_int", _zip({"__header__.json": _header(metadata=3), **good}),
         "header field 'metadata' is a int", READER),
        ("version_true", _zip({"__header__.json": _header(version=True), **good}),
         r"version True; this code reads 'l2l-weights' versions \[1, 2\]", READER),
        ("version_float", _zip({"__header__.json": _header(version=2.0), **good}),
         r"version 2.0; this code reads", READER),
        ("layers_float", _zip({"__header__.json": _header(net_options={"layers": [2.5]}),
                               **good}), "layers must be whole numbers", NETWORK),
        ("layers_huge", _zip({"__header__.json": _header(net_options={"layers": [10000, 10000]}),
                              **good}), r"layers must lie in \[1, 4096\]", NETWORK),
        ("unknown_option", options(colour=1), "unexpected keyword argument 'colour'", NETWORK),
        ("string_scale", options(scale="big"), "scale must be a finite number", NETWORK),
        ("dtype_option", options(dtype="float64"), "dtype 'float64' is not an option of "
         "optimizer files or --net_options", NETWORK),
        ("clamp_string", options(preprocess_name="Clamp", preprocess_options={"min_value": "a"}),
         "min_value must be a finite number, got 'a'", NETWORK),
        ("clamp_reversed", options(preprocess_name="Clamp",
                                   preprocess_options={"min_value": 1, "max_value": -1}),
         "Clamp needs min_value <= max_value", NETWORK),
        ("weights_missing", _zip({"__header__.json": _header()}), r"holds weights \{\}", NETWORK),
        ("huge_member", _zip({"__header__.json": _header(), **good,
                              "linear/b.npy": huge_npy}), r"declares shape \(1000000000000,\)",
         READER),
        ("bomb", _zip({"__header__.json": _header(), **good,  # 100 kB inflating to 100 MB.
                       "linear/w.npy": _npy(np.zeros((2, 1), np.float32)) + b"\0" * 10**8},
                      zipfile.ZIP_DEFLATED), r"declares shape \(2, 1\) but holds 100000008 bytes",
         READER),
        ("npy_header_bomb", _npy_header_bomb(good),
         r"linear/b.npy declares a .npy header of 209715200 bytes", READER),
        ("npy_bad_header", _zip({"__header__.json": _header(), **good,
                                 "linear/b.npy": bad_npy_header}),
         r"linear/b.npy has an unreadable .npy header \(SyntaxError\)", READER),
        ("not_zip", b"PK\x03\x04garbage", "damaged optimizer file", READER),
        # Members zipfile opens only with an exception of its own (RuntimeError,
        # NotImplementedError): refused before they are opened.
        ("header_encrypted", _patch(whole, "__header__.json", flags=0x1),
         r"__header__.json is encrypted\)", READER),
        ("member_encrypted", _patch(whole, "linear/b.npy", flags=0x1),
         r"linear/b.npy is encrypted\)", READER),
        ("header_strongly_encrypted", _patch(whole, "__header__.json", flags=0x40),
         "__header__.json is strongly encrypted", READER),
        ("header_patch_data", _patch(whole, "__header__.json", flags=0x20),
         "__header__.json holds patch data", READER),
        ("header_method_99", _patch(whole, "__header__.json", method=99),
         "__header__.json uses compression method 99, not stored or deflated", READER),
        ("member_method_99", _patch(whole, "linear/w.npy", method=99),
         "linear/w.npy uses compression method 99", READER),
        ("header_lzma", _zip({"__header__.json": _header(), **good}, zipfile.ZIP_LZMA),
         "__header__.json uses compression method 14", READER),
        # Finite in the file, infinite in the network's float32 step.
        ("float64_beyond_float32", _zip({"__header__.json": _header(), **good,
                                         "linear/b.npy": _npy(np.array([1e300]))}),
         r"linear/b holds 1e\+300, beyond float32's range", NETWORK),
        ("pickle_code", b"\x80\x04cos\nsystem\n.", "not a safe legacy .l2l file", READER),
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
        for name, data, _, _ in cases:
            paths.append(os.path.join(directory, f"{name}.l2l"))
            with open(paths[-1], "wb") as f:
                f.write(data)
        result = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(REPO_ROOT), *paths],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        lines = result.stdout.splitlines()
        self.assertLess(int(lines[-1].split()[1]), 300 * 1024)  # Peak RSS under 300 MiB.
        # The reader refuses its cases in one line (no newline in the message) and reads the
        # well-formed files whose networks the options cannot make.
        expected = [f"REFUSED {path} 0" if refused_by == READER else f"LOADED {path}"
                    for (_, _, _, refused_by), path in zip(cases, paths)]
        self.assertEqual(lines[:-1], expected)
        # Every case is one clear error from the network's loader.
        for (name, _, message, _), path in zip(cases, paths):
            with self.assertRaisesRegex(util.WeightsFileError, message, msg=name) as caught:
                networks.factory("CoordinateWiseDeepLSTM", net_path=path)
            self.assertNotIn("\n", str(caught.exception))
        # And from the command line: one line, exit 1.
        messages = {name: message for name, _, message, _ in cases}
        for name in ("layers_huge", "huge_member", "npy_header_bomb"):
            result = _run("evaluate.py", "--problem=quadratic", "--num_epochs=1",
                          "--num_steps=2", f"--path={directory}/{name}.l2l",
                          f"--history_path={directory}/h.csv")
            _one_line_error(self, result, messages[name])
        result = _run("convert.py", f"--path={directory}/npy_bad_header.l2l",
                      f"--output_dir={directory}/converted")
        _one_line_error(self, result, messages["npy_bad_header"])
        self.assertFalse(os.path.exists(f"{directory}/converted"))

    def test_7_a_dtype_is_chosen_in_code_never_by_a_file(self):
        path = os.path.join(self.get_temp_dir(), "cw.l2l")
        single = networks.CoordinateWiseDeepLSTM(layers=(2,))
        networks.save(single, path)
        double = networks.factory("CoordinateWiseDeepLSTM", {"dtype": tf.float64}, path)
        gradient = tf.constant([0.5, -1.0, 2.0], tf.float64)
        step = double.update(gradient, double.initial_state_for_inputs(gradient)).step
        gradient = tf.cast(gradient, tf.float32)
        expected = single.update(gradient, single.initial_state_for_inputs(gradient)).step
        self.assertEqual(step.dtype, tf.float64)
        self.assertAllClose(step, expected, rtol=1e-6)
        self.assertNotIn("dtype", weights_file.load(path).net_options)
        with self.assertRaisesRegex(util.OptionError, "dtype 'float64' is not an option"):
            networks.CoordinateWiseDeepLSTM(layers=(2,), dtype="float64")

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


def _in_thread(test, function, timeout=60):
    """`function()` in a thread: a read that blocks (on a FIFO) fails the test, not the suite."""
    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except Exception as e:  # pylint: disable=broad-except
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    test.assertFalse(thread.is_alive(), "blocked (reading a FIFO?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# How each damage to a folder of two checkpoints (ckpt-1 holds 1.0, ckpt-2 2.0) is survived:
# `(name, damage(directory), checkpoint restored, what is said, what the manager then keeps)`.
def _fifo_instead(name):
    def damage(directory):
        os.remove(os.path.join(directory, name))
        os.mkfifo(os.path.join(directory, name))
    return damage


def _write(name, data):
    def damage(directory):
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return damage


def _zero_state(directory):
    os.remove(os.path.join(directory, "checkpoint"))
    os.symlink("/dev/zero", os.path.join(directory, "checkpoint"))


def _stray_index(directory):
    shutil.copy(os.path.join(directory, "ckpt-2.index"), os.path.join(directory,
                                                                       "ckpt-backup.index"))


_BOTH = ["ckpt-1", "ckpt-2"]
_CHECKPOINT_DAMAGE = [
    ("index_fifo", _fifo_instead("ckpt-2.index"), 1,
     r"unusable \(ckpt-2.index is a FIFO \(named pipe\), not a regular file\)", _BOTH),
    ("data_fifo", _fifo_instead("ckpt-2.data-00000-of-00001"), 1,
     r"ckpt-2.data-00000-of-00001 is a FIFO \(named pipe\)", _BOTH),
    ("state_fifo", _fifo_instead("checkpoint"), 2, r"Ignoring the checkpoints' state file "
     r"\(Checkpoint state file .* is a FIFO \(named pipe\), not a regular file.\); finding",
     _BOTH),
    ("state_empty", _write("checkpoint", b""), 2, r"Ignoring .* \(Invalid checkpoint state",
     _BOTH),
    ("state_garbage", _write("checkpoint", b"garbage {{{ ::\n"), 2,
     r"Ignoring .* is not a checkpoint state\); finding", _BOTH),
    ("state_zero", _zero_state, 2, r"Ignoring .* is a device, not a regular file", _BOTH),
    ("state_and_index_fifo", lambda directory: [_fifo_instead(name)(directory) for name in (
        "checkpoint", "ckpt-2.index")], 1, r"Ignoring .*\n.*unusable \(ckpt-2.index is a FIFO",
     ["ckpt-1"]),
    ("stray_index", _stray_index, 2, r"^$", _BOTH),
]


class CheckpointTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(*_CHECKPOINT_DAMAGE)
    def test_5_6_non_regular_checkpoint_files_and_a_bad_state_file(self, damage, restored,
                                                                   said, kept):
        import training  # pylint: disable=import-outside-toplevel
        folder = run_folder.RunFolder.open(os.path.join(self.get_temp_dir(), "ckpt"), {})
        try:
            variable = tf.Variable(0.0)
            checkpoint = tf.train.Checkpoint(v=variable)
            manager = tf.train.CheckpointManager(checkpoint, folder.checkpoint_dir, max_to_keep=2)
            for value in (1.0, 2.0):
                variable.assign(value)
                manager.save()
            variable.assign(0.0)
            damage(folder.checkpoint_dir)
            output = io.StringIO()
            # Said once, on stdout; not in TensorFlow's own warning lines as well.
            with contextlib.redirect_stdout(output), self.assertNoLogs("tensorflow", "WARNING"):
                path = _in_thread(self, lambda: training._restore(checkpoint, folder))
            self.assertEqual(os.path.basename(path), f"ckpt-{restored}")
            self.assertEqual(variable.numpy(), float(restored))
            self.assertRegex(output.getvalue().strip(), said)
            # What the run's own manager then reads: a regular state file listing the
            # checkpoints found (so that it deletes them in their turn), no FIFO left.
            manager = _in_thread(self, lambda: tf.train.CheckpointManager(
                checkpoint, folder.checkpoint_dir, max_to_keep=2))
            self.assertEqual([os.path.basename(p) for p in manager.checkpoints], kept)
            for name in os.listdir(folder.checkpoint_dir):
                self.assertTrue(os.path.isfile(os.path.join(folder.checkpoint_dir, name)), name)
            # The next save follows the restored one (over the name of a damaged newer one).
            self.assertEqual(os.path.basename(manager.save()), f"ckpt-{restored + 1}")
        finally:
            folder.close()

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


class DistributedFolderTest(tf.test.TestCase):

    def test_13_a_worker_follows_restart_and_leaves_no_scratch_folder(self):
        import training  # pylint: disable=import-outside-toplevel
        path = os.path.join(self.get_temp_dir(), "cluster")
        chief = run_folder.RunFolder.open(path, {"problem": "quadratic"})
        chief.close()
        for restart, resuming, run_id in ((True, False, None), (False, True, chief.run_id)):
            worker = run_folder.RunFolder.open(path, {"problem": "quadratic"}, restart=restart,
                                               chief=False)
            scratch = worker.checkpoint_write_dir
            try:
                self.assertEqual((worker.resuming, worker.run_id), (resuming, run_id))
                self.assertNotEqual(scratch, worker.checkpoint_dir)
                self.assertTrue(os.path.isdir(scratch))
                state = training._counters()
                state["best_evaluation"].assign(0.5)
                with contextlib.redirect_stdout(io.StringIO()) as output:
                    self.assertEqual(training._summary(state, worker), 0)
                self.assertIn(f"the chief saves it in {path}.", output.getvalue())
                self.assertNotIn("saved in", output.getvalue())
                self.assertEqual(worker.save_best(_small_optimizer(), 1, {}), [])
            finally:
                worker.close()
            self.assertFalse(os.path.exists(scratch))
        # The worker changed nothing in the chief's folder.
        self.assertCountEqual(os.listdir(path), [".lock", "run.json"])


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

    def test_17_an_unroll_too_long_for_memory_is_refused_before_the_folder_changes(self):
        import training  # pylint: disable=import-outside-toplevel
        for length, rematerialize in ((training.MAX_UNROLL_LENGTH, None), (1000, "chunks")):
            training.check_flags(types.SimpleNamespace(unroll_length=length,
                                                       rematerialize=rematerialize))
        save_path = os.path.join(self.get_temp_dir(), "long")
        _one_line_error(self, _run("train.py", "--problem=quadratic", "--num_steps=10000",
                                   "--unroll_length=10000", f"--save_path={save_path}"),
                        r"--unroll_length=10000 is more than the 1000 steps a meta-gradient can "
                        r"keep in memory")
        self.assertFalse(os.path.exists(save_path))

    def test_17_a_meta_gradient_larger_than_memory_is_refused_before_the_folder_changes(self):
        limit = util.memory_headroom()
        self.assertGreater(limit, 2**28)  # This machine's: it has at least 256 MiB.
        # Per instance and step: 1280 coordinates of state h and c for two layers of 1024.
        per_instance = 200 * (1280 * 2 * 2048 * 4 + 1280 * 4)
        instances = limit // per_instance + 1
        if instances > 1024:
            self.skipTest(f"{limit / 2**30:.0f} GiB: no --meta_batch_size exceeds it")
        save_path = os.path.join(self.get_temp_dir(), "large")
        start = time.monotonic()
        _one_line_error(self, _run("train.py", "--problem=quadratic", "--num_steps=200",
                                   "--unroll_length=200", f"--meta_batch_size={instances}",
                                   '--net_options={"layers": [1024, 1024]}', "--mode=graph",
                                   f"--save_path={save_path}"),
                        rf"^train.py: error: --unroll_length=200 with --meta_batch_size="
                        rf"{instances} keeps at least {instances * per_instance / 2**30:.1f} GiB "
                        rf"for the meta-gradient, more than the [\d.]+ GiB this process can "
                        rf"still take; lower --unroll_length, --meta_batch_size or the layers of "
                        rf"--net_options, or --rematerialize=chunks")
        self.assertLess(time.monotonic() - start, 60)  # Refused before anything is compiled.
        self.assertFalse(os.path.exists(save_path))

    def test_17_invalid_network_options_leave_no_run_folder_to_restart_over(self):
        save_path = os.path.join(self.get_temp_dir(), "typo")
        _one_line_error(self, _run("train.py", *RUN, "--num_epochs=1",
                                   '--net_options={"preprocess_name": "Nope"}',
                                   f"--save_path={save_path}"),
                        r"The optimizer's options are invalid \(Unknown preprocess_name 'Nope'")
        self.assertFalse(os.path.exists(save_path))
        corrected = _run("train.py", *RUN, "--num_epochs=2",  # One evaluation: a best file.
                         '--net_options={"preprocess_name": "identity"}',
                         f"--save_path={save_path}")
        self.assertEqual(corrected.returncode, 0, corrected.stderr[-2000:])
        self.assertTrue(os.path.exists(os.path.join(save_path, "cw.l2l")))

    def test_17_running_out_of_memory_is_one_line_naming_the_flags_to_lower(self):
        import training  # pylint: disable=import-outside-toplevel
        for error in (tf.errors.ResourceExhaustedError(
                None, None, "Out of memory while trying to allocate 3.91GiB.\nmore"),
                      MemoryError("std::bad_alloc")):
            with mock.patch.object(training, "_train", side_effect=error):
                with self.assertRaisesRegex(util.OutOfMemoryError,
                                            r"^Out of memory \((Out of memory while trying to "
                                            r"allocate 3.91GiB.|std::bad_alloc)\); lower "
                                            r"--unroll_length, --meta_batch_size or the layers "
                                            r"of --net_options.$"):
                    training.train(None, None, None, None)

    def _build(self, net_options):
        import training  # pylint: disable=import-outside-toplevel
        flags = types.SimpleNamespace(
            which_aml="L2L", fixed_lambda=0.01, lambda_mode="per_coordinate", lambda_max=0.1,
            net_options=net_options, initial_path=None, meta_batch_size=1, strategy="none",
            problem="quadratic", data_dir=None, unroll_length=2, learning_rate=0.001,
            second_derivatives=False, state_reset_period=0, mode="graph", num_steps=4,
            rematerialize=None, save_path=None, net=None, estimator="tbptt", perturbations=8,
            es_std=0.01)
        return training._build(flags, configs.get_config("quadratic"), "train", None)

    def test_17_14_network_options_are_the_users_errors_and_bugs_keep_their_traceback(self):
        for options, message in (
                ('{"layers": [4096, 4096]}', r"Network 'cw' would have 67125248 weights in "
                                             r"lstm_1/w_gates, more than the 16777216 an "
                                             r"optimizer file holds in one array"),
                ('{"layers": [0]}', r"layers must lie in \[1, 4096\]"),
                ('{"dtype": "float64"}', r"dtype 'float64' is not an option of optimizer files "
                                         r"or --net_options"),
                ('{"preprocess_name": "Clamp", "preprocess_options": {"min_value": "a"}}',
                 r"min_value must be a finite number")):
            with self.assertRaisesRegex(util.FlagError, rf"^The optimizer's options are invalid "
                                        rf"\({message}.*\); check --net_options"):
                self._build(options)
        # A ValueError that is not an option check is a bug: it stays a ValueError (traceback).
        with mock.patch.object(meta, "MetaOptimizer", side_effect=ValueError("a bug")):
            with self.assertRaises(ValueError) as caught:
                self._build(None)
        self.assertNotIsInstance(caught.exception, util.UserError)

    def test_17_logdir_naming_a_file(self):
        blocker = os.path.join(self.get_temp_dir(), "file")
        with open(blocker, "w") as f:
            f.write("x")
        _one_line_error(self, _run("train.py", *RUN[:-2], "--num_epochs=1", f"--logdir={blocker}"),
                        r"--logdir .* is a file")

    def test_a_history_below_a_file_and_an_unknown_initializer_are_user_errors(self):
        import cli  # pylint: disable=import-outside-toplevel
        blocker = os.path.join(self.get_temp_dir(), "afile")
        with open(blocker, "w") as f:
            f.write("mine")
        with self.assertRaisesRegex(util.FileFormatError, "afile"):
            cli.write_history(os.path.join(blocker, "h.csv"), "header", [[1.0]])
        with open(blocker) as f:
            self.assertEqual(f.read(), "mine")
        for spec, message in (("foo", "Unknown initializer 'foo'"),
                              (object(), "Cannot use object as the initializer")):
            with self.assertRaisesRegex(util.UserError, message):
                networks.factory("CoordinateWiseDeepLSTM", {"layers": (2,), "initializer": spec})

    def test_messages_name_the_file_and_the_fix(self):
        _one_line_error(self, _run("evaluate.py", "--problem=simple", "--optimizer=SGD",
                                   "--num_epochs=1", "--num_steps=2",
                                   f"--history_path={self.get_temp_dir()}"),
                        r"Cannot write history file .*: it is a directory; choose a file path")


if __name__ == "__main__":
    tf.test.main()
