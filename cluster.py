"""A multi-worker run's cluster (`TF_CONFIG`), checked before TensorFlow joins it.

TensorFlow reads a bad `TF_CONFIG` as a bug (a traceback), waits without a word (and, for a
peer that never starts, forever), and lets workers of different commands train side by side.
So before it starts its server, every task of the cluster:

- `from_environment`: reads `TF_CONFIG` and checks it (its task's type and index, the addresses
  and hosts), each problem one line naming TF_CONFIG;
- `rendezvous`: listens on its own address (a port in use is one line) and exchanges a hello
  with every other task, each saying what defines the run (the values of the flags that must
  agree, the cluster, the run found in --save_path): a difference is one line naming the flag,
  on every task. A task that does not answer is waited for, saying so, up to a bounded time.

Then the port is free again for TensorFlow's server, which finds every peer up.
"""

import errno
import hashlib
import json
import os
import socket
import threading
import time
from typing import NamedTuple, Tuple

import util

# The jobs of a MultiWorkerMirroredStrategy cluster, in the order of their tasks.
JOBS = ("chief", "worker")
_HELLO_BYTES = 2**20  # A hello is a JSON line of a few kilobytes.
_WAITING_AFTER = 2.0  # Seconds before saying what the rendezvous waits for.


class ClusterError(util.UserError):
    """A cluster that cannot run, or a peer that is gone; the message names TF_CONFIG or the
    flag. TensorFlow's collectives may be stuck: the CLIs leave at once after saying so."""

    teardown_unsafe = True


class Cluster(NamedTuple):
    """This task of a checked TF_CONFIG."""
    tasks: Tuple[Tuple[str, int, str], ...]  # `(type, index, "host:port")`, chief first.
    task_type: str
    task_index: int

    @property
    def address(self):
        return next(a for t, i, a in self.tasks if (t, i) == (self.task_type, self.task_index))

    @property
    def chief(self):
        """Whether this task writes the run folder: the chief, else worker 0."""
        has_chief = any(t == "chief" for t, _, _ in self.tasks)
        return self.task_type == "chief" or (not has_chief and self.task_index == 0)

    def name(self, task_type=None, task_index=None):
        """`worker 1 (host:port)`: a task, for a message (default: this one)."""
        key = (self.task_type if task_type is None else task_type,
               self.task_index if task_index is None else task_index)
        address = next(a for t, i, a in self.tasks if (t, i) == key)
        return f"{key[0]} {key[1]} ({address})"


def from_environment(environ=None):
    """This task of the cluster in the environment variable TF_CONFIG.

    Raises:
      ClusterError: no TF_CONFIG, or one that cannot run (one line naming what to fix).
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    where = "see README, 'Several devices or machines'"
    if not text.strip():
        raise ClusterError(f"--strategy=multi_worker needs the cluster in the environment "
                           f"variable TF_CONFIG ({where}).")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({str(e)[:100]}); {where}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ClusterError(f"TF_CONFIG has no \"cluster\" object of jobs and their addresses; "
                           f"{where}.")
    spec = config["cluster"]
    for job, addresses in spec.items():
        if job not in JOBS:
            raise ClusterError(f"TF_CONFIG's cluster has a {str(job)[:40]!r} job; "
                               f"--strategy=multi_worker runs {' and '.join(JOBS)} tasks only.")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) for a in addresses)):
            raise ClusterError(f"TF_CONFIG's {job} job must be a list of \"host:port\" "
                               f"addresses, got {json.dumps(addresses)[:80]}.")
        for address in addresses:
            _split_address(address)
    if "worker" not in spec:
        raise ClusterError("TF_CONFIG's cluster has no worker job; give it "
                           "\"worker\": [\"host:port\", ...].")
    if len(spec.get("chief", [])) > 1:
        raise ClusterError(f"TF_CONFIG's cluster has {len(spec['chief'])} chief tasks; a "
                           f"cluster has at most one.")
    tasks = tuple((job, i, address) for job in JOBS for i, address in enumerate(spec.get(job, ())))
    addresses = [a for _, _, a in tasks]
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise ClusterError(f"TF_CONFIG's cluster gives {repeated[0]} to several tasks; give "
                           f"each its own host:port.")
    task = config.get("task")
    if not isinstance(task, dict) or not task.get("type"):
        raise ClusterError(f"TF_CONFIG has no task type; give this process's task as "
                           f"\"task\": {{\"type\": \"worker\", \"index\": N}}.")
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in spec:
        raise ClusterError(f"TF_CONFIG's task type {str(task_type)[:40]!r} is not a job of its "
                           f"cluster ({', '.join(sorted(spec))}).")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ClusterError(f"TF_CONFIG's task index must be a whole number, got "
                           f"{json.dumps(index)[:40]}.")
    if not 0 <= index < len(spec[task_type]):
        raise ClusterError(f"TF_CONFIG's task index {index} is out of range: the cluster has "
                           f"{len(spec[task_type])} {task_type} task(s), index 0 to "
                           f"{len(spec[task_type]) - 1}.")
    return Cluster(tasks, task_type, index)


def _split_address(address):
    """`(host, port)` of `host:port` (or `[v6]:port`)."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"TF_CONFIG's address {address[:80]!r} is not host:port with a port "
                           f"from 1 to 65535.")
    return host, int(port)


def _resolve(cluster, timeout=5.0):
    """Every task's host resolves (within `timeout` seconds each)."""
    for task_type, index, address in cluster.tasks:
        host, port = _split_address(address)
        found = []
        thread = threading.Thread(target=lambda: found.append(_lookup(host, port)), daemon=True)
        thread.start()  # A thread bounds the lookup, which has no timeout of its own.
        thread.join(timeout)
        if not (found and found[0]):
            raise ClusterError(f"TF_CONFIG's host {host!r} of {task_type} {index} cannot be "
                               f"resolved; fix its address in every task's TF_CONFIG.")


def _lookup(host, port):
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None


def digest(value):
    """A short digest of a JSON-able value, to compare without sending it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rendezvous(cluster, run, timeout, log=None):
    """Meets every other task of `cluster` and checks that they run what this one does.

    Each task listens on its own address and greets every other one there; it is done once it
    has heard every other task and been heard by each (so that none is left waiting for it).

    Args:
      cluster: this task (`from_environment`).
      run: `{what: value}` that every task must have alike: `{"--flag": value}` for flags (named
        so in messages), and other entries whose key says what they are.
      timeout: seconds to wait for the other tasks, in all.
      log: `line -> None`, to say what it waits for (once); default: print it.

    Raises:
      ClusterError: this task's port is in use, a host does not resolve, a task did not answer
        within `timeout`, or a task runs with other values (every task raises for them).
    """
    log = log or (lambda line: print(line, flush=True))
    _resolve(cluster)
    others = {(t, i): a for t, i, a in cluster.tasks
              if (t, i) != (cluster.task_type, cluster.task_index)}
    if not others:
        return
    mine = {"task": [cluster.task_type, cluster.task_index], "cluster": digest(cluster.tasks),
            "run": {key: digest(value) for key, value in run.items()}}
    hello = (json.dumps(mine) + "\n").encode()
    _, port = _split_address(cluster.address)
    try:
        server = socket.create_server(("", port))
    except OSError as e:
        why = ("is in use by another process" if e.errno == errno.EADDRINUSE else
               f"cannot be listened on ({os.strerror(e.errno)})" if e.errno else
               "cannot be listened on")
        raise ClusterError(f"TF_CONFIG gives this task {cluster.name()}, but its port {port} "
                           f"{why}; free it, or give the task another port in every task's "
                           f"TF_CONFIG.") from None
    start = time.monotonic()
    heard, served = {}, set()  # Hellos this task got back; tasks that got this one's.
    done = threading.Event()
    listener = threading.Thread(target=_answer, args=(server, hello, served, done), daemon=True)
    listener.start()
    waiting_said = False
    try:
        while time.monotonic() < start + timeout:
            for key, address in others.items():
                if key not in heard:
                    reply = _greet(address, hello)
                    if reply is not None:
                        heard[key] = reply
            missing = [key for key in others if key not in heard or key not in served]
            if not missing:
                break
            if not waiting_said and time.monotonic() > start + _WAITING_AFTER:
                log(f"Waiting for {', '.join(cluster.name(*key) for key in missing)} to start "
                    f"(up to {timeout:g} s, --cluster_timeout).")
                waiting_said = True
            time.sleep(0.2)
    finally:
        # The port is TensorFlow's next: closed only once the listener no longer uses it.
        done.set()
        listener.join()
        server.close()
    missing = [key for key in others if key not in heard or key not in served]
    if missing:
        raise ClusterError(f"Gave up after {timeout:g} s (--cluster_timeout): "
                           f"{', '.join(cluster.name(*key) for key in missing)} did not answer; "
                           f"start every task of TF_CONFIG with the same command, or check its "
                           f"addresses.")
    for key in sorted(heard):
        _compare(cluster, mine, heard[key], cluster.name(*key))


def _greet(address, hello):
    """Sends `hello` to the task at `address`; its hello, or None if it is not up yet."""
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=2.0) as connection:
            connection.sendall(hello)
            return _read_hello(connection)
    except (OSError, ValueError):
        return None


def _answer(server, hello, served, done):
    """Answers the other tasks' hellos with this one's until `done` is set; adds each task
    answered to `served`."""
    server.settimeout(0.2)
    while not done.is_set():
        try:
            connection, _ = server.accept()
        except OSError:  # Timed out: nobody yet.
            continue
        with connection:
            connection.settimeout(2.0)
            try:
                theirs = _read_hello(connection)
                connection.sendall(hello)
            except (OSError, ValueError):
                continue
            served.add(tuple(theirs["task"]))


def _read_hello(connection):
    """A hello line from `connection`, parsed; ValueError if it is not one."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk or len(data) > _HELLO_BYTES:
            raise ValueError("not a hello")
        data += chunk
    hello = json.loads(data)
    if not (isinstance(hello, dict) and isinstance(hello.get("run"), dict)
            and isinstance(hello.get("task"), list)):
        raise ValueError("not a hello")
    return hello


def _compare(cluster, mine, theirs, who):
    """One line naming what `who` runs otherwise (its flag), else nothing."""
    if theirs.get("cluster") != mine["cluster"]:
        raise ClusterError(f"{who} has another cluster in its TF_CONFIG; give every task the "
                           f"same \"cluster\", only \"task\" differs.")
    differ = sorted(key for key in set(mine["run"]) | set(theirs["run"])
                    if mine["run"].get(key) != theirs["run"].get(key))
    if differ:
        raise ClusterError(f"{who} and {cluster.name()} run with different {', '.join(differ)}; "
                           f"every task of TF_CONFIG must run the same command (only TF_CONFIG's "
                           f"task differs) on the same --save_path.")
