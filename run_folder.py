"""A meta-training run's folder (`train.py --save_path`): nothing in it is lost or mixed up.

    DIR/run.json        the flags that define the run (a resume must match them), its id, and
                        its networks' options (a resume rebuilds them from here: it never reads
                        an --initial_path file, which may since be gone, and a network's default
                        changed since does not change the run)
    DIR/.lock           held by the live run (an exclusive lock the OS releases when it dies)
    DIR/best -> .best-N the best optimizer files of evaluation N, switched as one unit
    DIR/cw.l2l          -> best/cw.l2l (one link per network, so `--path=DIR` finds them)
    DIR/checkpoints/    TensorFlow checkpoints (the last two)

The best set is written into a new `.best-N` folder and made current by replacing the one link
`best` (an atomic rename), so a kill at any moment leaves the previous set or the new one; what a
killed save left (an older `.best-N`, a temporary link or file named `util.TEMP_PREFIX...`) is
removed when the folder is next opened. Each file records the evaluation that made it the best,
which bounds what may replace it even when the checkpoints are gone; a damaged best file bounds
nothing, and the next good evaluation replaces it. Only the chief of a distributed run writes
here; the other workers read the chief's checkpoints and write theirs to a scratch folder that
goes when the run ends (or, for a killed worker, when the next one on that machine starts).
"""

import errno
import fcntl
import json
import math
import os
import re
import shutil
import stat
import tempfile
import uuid

import util
import weights_file

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
BEST_LINK = "best"
CHECKPOINTS = "checkpoints"
_BEST_DIR = re.compile(r"\.best-\d{6,}-[0-9a-f]{8}")
# Temporary names of this module and of util.atomic_write, and those of older versions
# (`best.tmp-<hex>`, `cw.l2l.tmp-<hex>` links): only these are ever removed as leftovers.
_TEMPORARY = re.compile(re.escape(util.TEMP_PREFIX) + r"[A-Za-z0-9_]+"
                        r"|(best|[^/]+\.l2l)\.tmp-[0-9a-f]{8}")
MAX_RUN_FILE_BYTES = 2**20
# A non-chief worker's scratch folder: `l2l-worker-<process id>-<random>`.
_SCRATCH_PREFIX = "l2l-worker-"
_SCRATCH = re.compile(re.escape(_SCRATCH_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")
# Recorded in run.json since the evaluations' settings were (December 2026): the records of
# older runs lack them, and those runs resume as they did.
LATER_RUN_FLAGS = ("evaluation_num_steps", "evaluation_epochs", "evaluation_seed")


class RunFolder:
    """An open run folder; `open` checks it, locks it and says whether the run resumes."""

    def __init__(self, path, run_id, resuming, chief, lock_fd):
        self.path, self.run_id, self.resuming, self.chief = path, run_id, resuming, chief
        self._lock_fd = lock_fd
        # Why the current best set is unusable (set by `best_evaluation`), until one replaces it.
        self.damaged_best = None
        # Non-chief workers write their (required) checkpoints where nobody else reads them, in
        # a folder named by their process: what a killed one left is removed by the next.
        if not chief:
            _remove_dead_scratch()
        self._scratch = (None if chief else
                         tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-"))
        if self._scratch:
            print(f"This worker is not the chief: its checkpoints go to {self._scratch}, the "
                  f"run's to {path} (the chief's).")

    @classmethod
    def open(cls, path, flags_of_run, restart=False, chief=True, networks=None):
        """Checks, locks and (for a new run) creates `path`; returns the open folder.

        `networks` (`{key: {"net": class name, "net_options": {...}}}`), recorded for a new run,
        is what `recorded_networks` gives its resumes.

        Raises:
          util.FlagError: `path` is not a folder, is in use, or holds another run or foreign
            optimizers (the message names --restart or another folder).
          util.FileFormatError: `run.json` is damaged.
        """
        if os.path.exists(path) and not os.path.isdir(path):
            raise util.FlagError(f"--save_path {path} is a file, not a folder; choose a folder "
                                 f"(it is created if missing).")
        if not chief:
            # The chief checks, restarts or creates the run; a worker follows what it was told:
            # with --restart it must not restore the checkpoints the chief is deleting.
            resuming = not restart and _has_run(path)
            return cls(path, _read_run(path)["run_id"] if resuming else None, resuming, False,
                       None)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # A dangling or looping link says "File exists".
            reason = ((util.unreachable(path) if os.path.islink(path) else None)
                      or f"cannot be created: {e.strerror}")
            raise util.FlagError(f"--save_path {path} {reason}.") from None
        lock_fd = _lock(path)
        try:
            run_id, resuming = _open_run(path, flags_of_run, restart, networks)
            folder = cls(path, run_id, resuming, True, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        folder._remove_leftovers()  # pylint: disable=protected-access
        return folder

    def discard_unstarted(self):
        """Removes the record of a run this process created and that saved nothing (no
        checkpoint, no best optimizer), so that the command corrected (e.g. for less memory)
        starts it anew instead of having to --restart; returns whether it did (the chief only).
        """
        checkpoints = self.checkpoint_dir
        if (not self.chief or self.resuming or self.best_files()
                or (os.path.isdir(checkpoints) and os.listdir(checkpoints))):
            return False
        if os.path.isdir(checkpoints):
            os.rmdir(checkpoints)
        os.remove(os.path.join(self.path, RUN_FILE))
        return True

    def close(self):
        """Releases the lock; a worker's scratch folder (its unread checkpoints) goes."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # -- The best optimizers --------------------------------------------------------------

    def best_evaluation(self):
        """`(evaluation, epoch)` recorded in the current best files of this run, or None.

        None too for another run's files, and for a damaged set (a file unreadable, or its
        metadata not what this module writes): that is reported and kept in `damaged_best`, and
        the next good evaluation replaces the set whatever its value.
        """
        best = None
        for name in self.best_files():
            file = os.path.join(self.path, name)
            try:
                record = _best_record(file, weights_file.load(file).metadata, self.run_id)
            except util.WeightsFileError as e:
                self.damaged_best = str(e)
                print(f"Warning: the saved best optimizer is damaged ({e}); the next "
                      f"evaluation will replace it.")
                return None
            if record is None:
                return None
            best = record
        return best

    def best_files(self):
        """The optimizer files of the current best set (names in the folder)."""
        directory = os.path.join(self.path, BEST_LINK)
        if os.path.isdir(directory):
            return sorted(f for f in os.listdir(directory) if f.endswith(weights_file.SUFFIX))
        # Runs saved before the best set was one unit: plain files in the folder.
        return sorted(f for f in os.listdir(self.path) if f.endswith(weights_file.SUFFIX)
                      and os.path.isfile(os.path.join(self.path, f)))

    def save_best(self, optimizer, evaluation_number, metadata):
        """Saves every network of `optimizer` as the new best set, switched in atomically."""
        if not self.chief:
            return []
        new = os.path.join(self.path, f".best-{evaluation_number:06d}-{uuid.uuid4().hex[:8]}")
        assert _BEST_DIR.fullmatch(os.path.basename(new)), new  # Else never cleaned up.
        try:
            paths = optimizer.save(new, metadata)
            util.fsync_directory(new)
            _replace_link(os.path.join(self.path, BEST_LINK), os.path.basename(new))
            for path in paths:  # Links from the folder into the current set, made once.
                name = os.path.basename(path)
                link = os.path.join(self.path, name)
                target = os.path.join(BEST_LINK, name)
                if not (os.path.islink(link) and os.readlink(link) == target):
                    _replace_link(link, target)
            util.fsync_directory(self.path)
        except OSError as e:
            raise util.FileFormatError(f"Cannot save the best optimizer in {self.path}: "
                                       f"{e.strerror}; the previous best is intact.") from None
        self.damaged_best = None
        self._remove_leftovers()
        return [os.path.join(self.path, os.path.basename(p)) for p in paths]

    def _remove_leftovers(self):
        """Removes best sets other than the current one and temporary names a kill left.

        Only names this module or `util.atomic_write` makes are touched; the folder is locked,
        so no other process is writing them.
        """
        try:
            current = os.readlink(os.path.join(self.path, BEST_LINK))
        except OSError:
            current = None
        for name in os.listdir(self.path):
            entry = os.path.join(self.path, name)
            if _BEST_DIR.fullmatch(name) and name != current and not os.path.islink(entry):
                shutil.rmtree(entry, ignore_errors=True)
            elif _TEMPORARY.fullmatch(name) and (os.path.islink(entry)
                                                 or os.path.isfile(entry)):
                try:
                    os.remove(entry)
                except OSError:
                    pass

    # -- Checkpoints ----------------------------------------------------------------------

    @property
    def checkpoint_dir(self):
        """Where the chief's checkpoints are (every worker restores from there)."""
        return os.path.join(self.path, CHECKPOINTS)

    @property
    def checkpoint_write_dir(self):
        """Where this process writes its checkpoints."""
        return self.checkpoint_dir if self.chief else self._scratch

    def clear_checkpoints(self):
        if self.chief:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)


def _remove_dead_scratch():
    """Removes the scratch folders (in the temporary folder) of this user's workers that are
    gone: killed, they could not remove their own."""
    directory = tempfile.gettempdir()
    for name in os.listdir(directory):
        match = _SCRATCH.fullmatch(name)
        path = os.path.join(directory, name)
        if not match or os.path.islink(path) or os.lstat(path).st_uid != os.getuid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass  # Alive, someone else's; or no process id.


def _lock(path):
    """An exclusive lock on `path/.lock` for this process's lifetime; its PID is written in it.

    The lock file must be a regular file of its own: a symlink is not followed (its target would
    be truncated) and a FIFO or device is not written to.
    """
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        what = "a symbolic link" if e.errno == errno.ELOOP else None
        if what is None and os.path.lexists(lock_path):
            what = util.describe_mode(os.lstat(lock_path).st_mode)
        if what and what != "a regular file":
            raise util.FlagError(f"--save_path {path}: its lock file {lock_path} is {what}, not "
                                 f"a regular file; remove it.") from None
        raise util.FlagError(f"--save_path {path}: cannot create its lock file ({e.strerror}); "
                             f"check its permissions.") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise util.FlagError(f"--save_path {path}: its lock file {lock_path} is "
                             f"{util.describe_mode(mode)}, not a regular file; remove it.")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise util.FlagError(f"--save_path {path} is in use by another run (process "
                                 f"{holder}); wait for it to end, or choose another folder."
                                 ) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{util.command_pid()}\n".encode(), 0)  # The process the user started.
    return fd


def _has_run(path):
    return os.path.lexists(os.path.join(path, RUN_FILE))


def _read_run(path):
    """`run.json`, validated: `{"run_id": str, "flags": {name: value}}`."""
    run_file = os.path.join(path, RUN_FILE)
    data = util.read_file(run_file, MAX_RUN_FILE_BYTES, what="run file")
    try:
        run = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise util.FileFormatError(f"{run_file} is damaged ({str(e)[:100]}); pass --restart to "
                                   f"start over.") from None
    networks = run.get("networks") if isinstance(run, dict) else None
    if (not isinstance(run, dict) or not isinstance(run.get("run_id"), str)
            or not isinstance(run.get("flags"), dict)
            or not all(isinstance(v, (str, int, float, bool, type(None)))
                       for v in run["flags"].values())
            or not (networks is None or (isinstance(networks, dict) and all(
                isinstance(net, dict) and set(net) == {"net", "net_options"}
                and isinstance(net["net"], str) and isinstance(net["net_options"], dict)
                for net in networks.values())))):
        raise util.FileFormatError(f"{run_file} is damaged (not a run record); pass --restart to "
                                   f"start over.")
    return run


def current_run(path, restart=False):
    """What a run in `path` would be: the id of the run it resumes, "a new run", or "no
    --save_path" (None): what every task of a multi-worker run must see alike.

    Raises:
      util.FileFormatError: `run.json` is damaged.
    """
    if not path:
        return "no --save_path"
    if restart or not (os.path.isdir(path) and _has_run(path)):
        return "a new run"
    return _read_run(path)["run_id"]


def recorded_networks(path):
    """The networks' options the run in `path` recorded, for its resume; None without a run or
    such a record (runs recorded before it was).

    Raises:
      util.FileFormatError: `run.json` is damaged.
    """
    if not (os.path.isdir(path) and _has_run(path)):
        return None
    return _read_run(path).get("networks")


def _open_run(path, flags_of_run, restart, networks=None):
    """Checks or creates the run file; returns `(run_id, resuming)`."""
    if restart:
        shutil.rmtree(os.path.join(path, CHECKPOINTS), ignore_errors=True)
        if os.path.lexists(os.path.join(path, RUN_FILE)):
            os.remove(os.path.join(path, RUN_FILE))
    elif _has_run(path):
        run = _read_run(path)
        recorded = run["flags"]
        differ = [name for name in flags_of_run if recorded.get(name) != flags_of_run[name]
                  and (name in recorded or name not in LATER_RUN_FLAGS)]
        if differ:
            was = ", ".join(f"--{name}={recorded.get(name)}" for name in differ)
            raise util.FlagError(f"--save_path {path} holds a run with {was}; resume it with "
                                 f"the same flags, or pass --restart to start over.")
        return run["run_id"], True
    elif any(f.endswith(weights_file.SUFFIX) for f in os.listdir(path)):
        raise util.FlagError(f"--save_path {path} holds saved optimizers but no run to "
                             f"resume; choose a new folder, or pass --restart to train into it.")
    run_id = uuid.uuid4().hex
    record = {"run_id": run_id, "flags": flags_of_run}
    if networks is not None:
        record["networks"] = networks
    util.atomic_write(os.path.join(path, RUN_FILE), json.dumps(record, indent=1).encode(),
                      what="run file")
    return run_id, False


def _best_record(file, metadata, run_id):
    """`(evaluation, epoch)` from a best file's metadata; None for another run's.

    Raises:
      util.WeightsFileError: this run's metadata, but not as `save_best` writes it.
    """
    if metadata.get("run_id") != run_id:
        return None
    evaluation, epoch = metadata.get("evaluation"), metadata.get("epoch")
    number = (int, float)
    if (not isinstance(evaluation, number) or isinstance(evaluation, bool)
            or not math.isfinite(evaluation)
            or not (epoch is None or (type(epoch) is int and epoch >= 0))):
        raise util.WeightsFileError(f"{file} records evaluation {str(evaluation)[:40]!r} at "
                                    f"epoch {str(epoch)[:40]!r}, not a finite loss at an epoch")
    return float(evaluation), epoch


def _replace_link(link, target):
    """Points symlink `link` at `target`, atomically (a new link renamed over the old)."""
    temporary = os.path.join(os.path.dirname(link), f"{util.TEMP_PREFIX}{uuid.uuid4().hex[:8]}")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        os.remove(temporary)
        raise
