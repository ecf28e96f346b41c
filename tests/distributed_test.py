"""train.py across devices and processes: MirroredStrategy and MultiWorkerMirroredStrategy.

Each run is its own process (TensorFlow's devices and cluster are fixed when it starts). The
workers of the multi-worker test talk over 127.0.0.1 on ports free at run time.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from unittest import mock

from absl.testing import parameterized
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT

RUN = ["--problem=quadratic", "--num_steps=4", "--unroll_length=2", "--log_period=1",
       "--evaluation_period=4", "--evaluation_epochs=2", "--checkpoint_period=1",
       "--meta_batch_size=2", "--mode=graph"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG",
                                                            "TF_CONFIG")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _weights(checkpoint_dir):
    """The networks' weights in the latest checkpoint of a folder."""
    reader = tf.train.load_checkpoint(checkpoint_dir)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "optimizer/_nets" in name}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class _Workers:
    """Train.py processes of one multi-worker cluster (two by default); stopped when the test
    ends. `only` starts those tasks alone; `extra` adds arguments to a task's."""

    def __init__(self, tmp, *args, only=(0, 1), extra=None, tasks=2):
        self.ports = _free_ports(tasks)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in self.ports]}
        self.processes = []
        for index in only:
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            scratch = os.path.join(tmp, f"scratch{index}")
            os.makedirs(scratch, exist_ok=True)
            self.processes.append(subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "train.py"), "--strategy=multi_worker", *args,
                 *(extra or {}).get(index, ())],
                cwd=tmp, env=_env(TF_CONFIG=config, TMPDIR=scratch), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))

    def wait(self, timeout=300):
        outputs = []
        deadline = time.monotonic() + timeout
        for process in self.processes:
            out, err = process.communicate(timeout=max(1, deadline - time.monotonic()))
            outputs.append((process.returncode, out, err))
        return outputs

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


def _read_until(process, text, timeout=240):
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never saw {text!r}: {''.join(lines)}")


@pytest.mark.slow
class MultiWorkerTest(tf.test.TestCase):

    def _reference(self, epochs):
        path = os.path.join(self.get_temp_dir(), f"reference{epochs}")
        result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *RUN,
                                 f"--num_epochs={epochs}", f"--save_path={path}"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        return _weights(os.path.join(path, "checkpoints"))

    def test_two_workers_train_as_one_process_and_only_the_chief_writes(self):
        tmp = self.get_temp_dir()
        save_path = os.path.join(tmp, "cluster")
        workers = _Workers(tmp, *RUN, "--num_epochs=4", f"--save_path={save_path}")
        try:
            outputs = workers.wait()
        finally:
            workers.stop()
        for index, (returncode, out, err) in enumerate(outputs):
            self.assertEqual(returncode, 0, err[-3000:])
            self.assertIn("Epoch 4", out)
            self.assertIn(f"\nMeta-batch: 2 problem instances per meta-update, 1 on each of 2 "
                          f"replicas (multi_worker: 2 workers; this one, worker {index}, on "
                          f"CPU:0).\n", out)
        # The chief alone wrote the folder.
        self.assertCountEqual([f for f in os.listdir(save_path) if not f.startswith(".")],
                              ["run.json", "best", "cw.l2l", "checkpoints"])
        # The other worker's checkpoints went to a scratch folder, removed when it ended; it
        # says it saved nothing itself.
        self.assertEqual([d for d in os.listdir(os.path.join(tmp, "scratch1"))
                          if d.startswith("l2l-worker-")], [])
        self.assertIn(f"the chief saves it in {save_path}", outputs[1][1])
        # The chief's weights are those of one process (so the all-reduced steps of both
        # workers were the same).
        reference = self._reference(4)
        chief = _weights(os.path.join(save_path, "checkpoints"))
        self.assertEqual(sorted(chief), sorted(reference))
        for name in reference:
            self.assertAllClose(chief[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)

    def test_workers_that_restored_different_checkpoints_stop_in_one_line(self):
        # Issue 31, class 5: the same run (a copy of the chief's folder, taken earlier) passes
        # the rendezvous; the epochs and weights restored are compared before any epoch.
        tmp = self.get_temp_dir()
        chiefs, copy = os.path.join(tmp, "chiefs"), os.path.join(tmp, "copy")
        for epochs in (2, 4):
            result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *RUN,
                                     f"--num_epochs={epochs}", f"--save_path={chiefs}"],
                                    env=_env(), capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, result.stderr[-2000:])
            if epochs == 2:
                shutil.copytree(chiefs, copy, symlinks=True)
        workers = _Workers(tmp, *RUN, "--num_epochs=6", extra={0: [f"--save_path={chiefs}"],
                                                                1: [f"--save_path={copy}"]})
        try:
            for returncode, out, err in workers.wait():
                self.assertEqual(returncode, 1, err[-3000:])
                self.assertEqual(err, "train.py: error: The tasks of TF_CONFIG restored different "
                                      "checkpoints (epochs 2, 4, or other weights); give every "
                                      "task the chief's --save_path, a folder they share, and "
                                      "start them again.\n")
                self.assertNotIn("Epoch 5", out)
        finally:
            workers.stop()

    def test_resumes_after_a_worker_is_killed(self):
        self._resumes_after_a_kill(killed=1)

    def test_resumes_after_the_chief_is_killed(self):
        # The chief holds the folder's lock and writes the checkpoints: killed at any moment,
        # the lock goes with it and the last complete checkpoint is resumed from.
        self._resumes_after_a_kill(killed=0)

    def _resumes_after_a_kill(self, killed):
        tmp = self.get_temp_dir()
        save_path = os.path.join(tmp, "killed")
        args = [*RUN, "--num_epochs=8", f"--save_path={save_path}"]
        workers = _Workers(tmp, *args, "--cluster_timeout=60")
        try:
            _read_until(workers.processes[0], "Epoch 3")
            workers.processes[killed].send_signal(signal.SIGKILL)
            # The other cannot go on without its peer: it says so in one line, in bounded time
            # (the peer's heartbeats stop; the collectives' timeout is --cluster_timeout).
            survivor = workers.processes[1 - killed]
            _, err = survivor.communicate(timeout=120)
            self.assertEqual(survivor.returncode, 1, err[-3000:])
            self.assertRegex(err, rf"^train.py: error: worker {killed} stopped answering "
                                  rf"\(\w+Error\); start every task again with the same command: "
                                  rf"they resume from the chief's last checkpoint.\n$")
        finally:
            workers.stop()
        if killed == 1:  # Its scratch folder stays until the next worker on the machine starts.
            self.assertLen([d for d in os.listdir(os.path.join(tmp, "scratch1"))
                            if d.startswith("l2l-worker-")], 1)
        workers = _Workers(tmp, *args)
        try:
            outputs = workers.wait()
        finally:
            workers.stop()
        for returncode, out, err in outputs:
            self.assertEqual(returncode, 0, err[-3000:])
            self.assertRegex(out, r"Resuming from epoch [1-7] of 8")
            self.assertIn("Epoch 8", out)
        self.assertEqual([d for d in os.listdir(os.path.join(tmp, "scratch1"))
                          if d.startswith("l2l-worker-")], [])  # The killed one's too.
        reference = self._reference(8)
        chief = _weights(os.path.join(save_path, "checkpoints"))
        for name in reference:
            self.assertAllClose(chief[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


# A run without a save folder (RUN's --checkpoint_period needs one).
BRIEF = [arg for arg in RUN if not arg.startswith("--checkpoint_period")]


def _task_config(index=0, **changes):
    config = {"cluster": {"worker": ["127.0.0.1:24001", "127.0.0.1:24002"]},
              "task": {"type": "worker", "index": index}}
    config.update(changes)
    return json.dumps(config)


class ClusterTest(tf.test.TestCase, parameterized.TestCase):
    """Issue 31, classes 4 to 6: a cluster that cannot run, workers that disagree, a peer that
    never starts or dies: one line each, naming TF_CONFIG or the flag, in bounded time."""

    @parameterized.named_parameters(
        ("index_out_of_range", _task_config(5), r"TF_CONFIG's task index 5 is out of range: "
                                                r"the cluster has 2 worker task\(s\), index 0 "
                                                r"to 1\."),
        ("index_negative", _task_config(-1), r"TF_CONFIG's task index -1 is out of range"),
        ("index_not_a_number", _task_config("0"), r"TF_CONFIG's task index must be a whole "
                                                  r"number, got \"0\""),
        ("no_task_type", _task_config(task={"index": 0}), r"TF_CONFIG has no task type; give "
                                                          r"this process's task as \"task\""),
        ("unknown_task_type", _task_config(task={"type": "evaluator", "index": 0}),
         r"TF_CONFIG's task type 'evaluator' is not a job of its cluster \(worker\)\."),
        ("ps_job", _task_config(cluster={"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}),
         r"TF_CONFIG's cluster has a 'ps' job; --strategy=multi_worker runs chief and worker "
         r"tasks only\."),
        ("bad_address", _task_config(cluster={"worker": ["127.0.0.1"]}),
         r"TF_CONFIG's address '127.0.0.1' is not host:port"),
        ("same_address", _task_config(cluster={"worker": ["127.0.0.1:3", "127.0.0.1:3"]}),
         r"TF_CONFIG's cluster gives 127.0.0.1:3 to several tasks"),
        ("not_json", "{cluster", r"TF_CONFIG is not valid JSON"),
        ("missing", "", r"--strategy=multi_worker needs the cluster in the environment "
                        r"variable TF_CONFIG"),
    )
    def test_a_tf_config_that_cannot_run_is_one_line_at_once(self, config, message):
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"),
                                 "--strategy=multi_worker"], env=_env(TF_CONFIG=config),
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        self.assertRegex(result.stderr, rf"^train.py: error: {message}.*\n$")
        self.assertLen(result.stderr.splitlines(), 1)
        self.assertLess(time.monotonic() - start, 4)  # Before TensorFlow starts.

    def test_cluster_timeout_applies_to_multi_worker_only(self):
        result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"),
                                 "--cluster_timeout=5"], env=_env(), capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "train.py: error: --cluster_timeout applies to "
                                        "--strategy=multi_worker only; remove it.\n")

    def _one_line(self, process, pattern):
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, 1, err[-3000:])
        self.assertLen(err.splitlines(), 1, err[-3000:])
        self.assertRegex(err, pattern)
        return out

    def test_an_unresolvable_host_or_a_port_in_use_is_one_line(self):
        tmp = self.get_temp_dir()

        def start(workers):
            return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"),
                                     "--strategy=multi_worker", *BRIEF], cwd=tmp,
                                    env=_env(TF_CONFIG=_task_config(cluster={"worker": workers})),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        process = start(["127.0.0.1:1", "nohost.invalid:2"])
        self._one_line(process, r"^train.py: error: TF_CONFIG's host 'nohost.invalid' of worker "
                                r"1 cannot be resolved; fix its address in every task's "
                                r"TF_CONFIG\.\n$")
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            process = start([f"127.0.0.1:{port}", "127.0.0.1:2"])
            self._one_line(process, rf"^train.py: error: TF_CONFIG gives this task worker 0 "
                                    rf"\(127.0.0.1:{port}\), but its port {port} is in use by "
                                    rf"another process; free it, or give the task another port")

    def test_a_peer_that_never_starts_is_waited_for_saying_so_then_given_up(self):
        workers = _Workers(self.get_temp_dir(), *BRIEF, "--cluster_timeout=4", only=(0,))
        try:
            start = time.monotonic()
            out = self._one_line(
                workers.processes[0],
                rf"^train.py: error: Gave up after 4 s \(--cluster_timeout\): worker 1 "
                rf"\(127.0.0.1:{workers.ports[1]}\) did not answer; start every task of "
                rf"TF_CONFIG with the same command, or check its addresses\.\n$")
            self.assertLess(time.monotonic() - start, 60)
            self.assertIn(f"Waiting for worker 1 (127.0.0.1:{workers.ports[1]}) to start (up to "
                          f"4 s, --cluster_timeout).", out)
        finally:
            workers.stop()

    @parameterized.named_parameters(
        ("learning_rate", {1: ["--learning_rate=0.01"]}, r"different --learning_rate"),
        ("epochs", {1: ["--num_epochs=9"]}, r"different --num_epochs"),
        ("save_path", {0: ["--save_path={tmp}/run"], 1: ["--save_path={tmp}/other"]},
         r"different --save_path"))
    def test_workers_of_another_command_or_run_stop_in_one_line(self, extra, message):
        # Issue 31, class 5: a worker with another --save_path started over while the chief
        # resumed; one with another --learning_rate trained other weights, silently.
        tmp = self.get_temp_dir()
        import run_folder  # pylint: disable=import-outside-toplevel
        run_folder.RunFolder.open(os.path.join(tmp, "run"), {}).close()  # A run to resume.
        extra = {i: [a.format(tmp=tmp) for a in args] for i, args in extra.items()}
        workers = _Workers(tmp, *BRIEF, "--num_epochs=4", extra=extra)
        try:
            for index, process in enumerate(workers.processes):
                self._one_line(process, rf"^train.py: error: worker {1 - index} \(.*\) and "
                                        rf"worker {index} \(.*\) run with {message}; every task "
                                        rf"of TF_CONFIG must run the same command \(only "
                                        rf"TF_CONFIG's task differs\) on the same --save_path\.")
        finally:
            workers.stop()
        self.assertEqual(sorted(os.listdir(os.path.join(tmp, "run"))), [".lock", "run.json"])

    def test_a_killed_workers_scratch_folder_is_removed_by_the_next(self):
        import run_folder  # pylint: disable=import-outside-toplevel
        tmp = self.get_temp_dir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout.strip()
        leftover = os.path.join(tmp, f"l2l-worker-{dead}-abc123")
        alive = os.path.join(tmp, f"l2l-worker-{os.getpid()}-def456")
        other = os.path.join(tmp, "l2l-worker-notmine")
        for path in (leftover, alive, other):
            os.makedirs(path)
        with mock.patch.object(tempfile, "tempdir", tmp):
            worker = run_folder.RunFolder.open(os.path.join(tmp, "run"), {}, chief=False)
            try:
                self.assertTrue(os.path.basename(worker.checkpoint_write_dir).startswith(
                    f"l2l-worker-{os.getpid()}-"))
            finally:
                worker.close()
        self.assertCountEqual([d for d in os.listdir(tmp) if d.startswith("l2l-worker-")],
                              [os.path.basename(alive), os.path.basename(other)])


_MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["train.py"] + sys.argv[1:]
sys.path.insert(0, {root!r})
import runpy
runpy.run_path({train!r}, run_name="__main__")
"""


class RunRecordTest(tf.test.TestCase):

    def test_another_meta_batch_size_is_refused_on_resume(self):
        import run_folder  # pylint: disable=import-outside-toplevel
        import util  # pylint: disable=import-outside-toplevel
        path = os.path.join(self.get_temp_dir(), "run")
        flags_of_run = {"problem": "quadratic", "meta_batch_size": 2}
        run_folder.RunFolder.open(path, flags_of_run).close()
        with open(os.path.join(path, "run.json")) as f:
            self.assertEqual(json.load(f)["flags"]["meta_batch_size"], 2)
        with self.assertRaisesRegex(util.FlagError, "holds a run with --meta_batch_size=2; "
                                    "resume it with the same flags, or pass --restart"):
            run_folder.RunFolder.open(path, dict(flags_of_run, meta_batch_size=3))
        run_folder.RunFolder.open(path, flags_of_run).close()  # The same flags resume.


class MirroredTest(tf.test.TestCase):

    def test_two_devices_give_the_weights_of_one(self):
        tmp = self.get_temp_dir()
        script = os.path.join(tmp, "two_cpus.py")
        with open(script, "w") as f:
            f.write(_MIRRORED_SCRIPT.format(root=str(REPO_ROOT),
                                            train=str(REPO_ROOT / "train.py")))
        paths = {}
        # Each run says how the meta-batch was shared out (issue 30, item 10).
        for name, command, meta_batch in (
                ("one", [str(REPO_ROOT / "train.py")], "on one device"),
                ("two", [script, "--strategy=mirrored"], "1 on each of 2 replicas (mirrored on "
                                                         "CPU:0, CPU:1)")):
            paths[name] = os.path.join(tmp, name)
            result = subprocess.run([sys.executable, *command, *RUN, "--num_epochs=3",
                                     f"--save_path={paths[name]}"], env=_env(), cwd=tmp,
                                    capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
            self.assertIn(f"\nMeta-batch: 2 problem instances per meta-update, {meta_batch}.\n",
                          result.stdout)
        one = _weights(os.path.join(paths["one"], "checkpoints"))
        two = _weights(os.path.join(paths["two"], "checkpoints"))
        self.assertNotEmpty(one)
        for name in one:
            self.assertAllClose(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
        self.assertGreater(max(np.max(np.abs(v)) for v in one.values()), 0.01)


if __name__ == "__main__":
    tf.test.main()
