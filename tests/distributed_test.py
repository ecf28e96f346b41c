"""train.py across devices and processes: MirroredStrategy and MultiWorkerMirroredStrategy.

Each run is its own process (TensorFlow's devices and cluster are fixed when it starts). The
workers of the multi-worker test talk over 127.0.0.1 on ports free at run time.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

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
    """Two train.py processes of one multi-worker cluster; stopped when the test ends."""

    def __init__(self, tmp, *args):
        ports = _free_ports(2)
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        self.processes = []
        for index in range(2):
            config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            scratch = os.path.join(tmp, f"scratch{index}")
            os.makedirs(scratch, exist_ok=True)
            self.processes.append(subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "train.py"), "--strategy=multi_worker", *args],
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
        for returncode, out, err in outputs:
            self.assertEqual(returncode, 0, err[-3000:])
            self.assertIn("Epoch 4", out)
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
        workers = _Workers(tmp, *args)
        try:
            _read_until(workers.processes[0], "Epoch 3")
            workers.processes[killed].send_signal(signal.SIGKILL)
            # The other cannot go on without its peer: it fails or waits; end it as well.
            time.sleep(2)
        finally:
            workers.stop()
        workers = _Workers(tmp, *args)
        try:
            outputs = workers.wait()
        finally:
            workers.stop()
        for returncode, out, err in outputs:
            self.assertEqual(returncode, 0, err[-3000:])
            self.assertRegex(out, r"Resuming from epoch [1-7] of 8")
            self.assertIn("Epoch 8", out)
        reference = self._reference(8)
        chief = _weights(os.path.join(save_path, "checkpoints"))
        for name in reference:
            self.assertAllClose(chief[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


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
