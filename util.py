"""Foundations every module may use: the user-error hierarchy, safe file I/O, quiet TensorFlow.

Nothing here imports the project's other modules or TensorFlow at import time, and importing it
changes nothing in the process.

- `UserError` and its kinds (`FlagError`, `FileFormatError`, `MissingDataError`, `OptionError`,
  `OutOfMemoryError`)
  are the errors a user can cause and fix: the CLIs print them as one line. Any other exception
  is a bug and keeps its traceback.
- `read_file` reads only regular files, up to a size cap; `atomic_write` replaces only regular
  files (keeping their mode), so that a reader sees the old file or the new one, never a part.
  Its temporary files start with `TEMP_PREFIX`, a name no user gives a file, so that what a
  killed process left can be told from the user's files.
- `memory_headroom` is how much more memory this process may take, for the checks that refuse
  what cannot fit before anything is compiled.
- `import_tensorflow` is the one place TensorFlow is first imported: quietly (its start-up lines
  go nowhere), whichever of the project's modules is imported first.
"""

import errno
import os
import stat
import sys
import tempfile


class UserError(Exception):
    """An error the user can fix (a flag, a file, missing data); the CLIs print it in one line.

    `teardown_unsafe` errors leave TensorFlow in a state that the interpreter's teardown may not
    survive (out of memory) or wait on forever (a collective whose peer is gone): the CLIs exit
    at once after saying so, their files closed.
    """

    teardown_unsafe = False


class FlagError(UserError, ValueError):
    """A flag value or a combination of flags that cannot work; the message names the flag."""


class FileFormatError(UserError, ValueError):
    """A file that is missing, unreadable, damaged or of the wrong kind; the message names it."""


class WeightsFileError(FileFormatError):
    """An optimizer weights file that cannot be read, is damaged, or does not fit the network."""


class MissingDataError(UserError, ValueError):
    """A dataset that is nowhere to be found, or found broken."""


class OutOfMemoryError(UserError):
    """The process ran out of memory; the message names the flags to lower.

    After a failed allocation, TensorFlow's teardown frees memory twice and aborts (measured:
    "double free or corruption", exit status 134).
    """

    teardown_unsafe = True


class OptionError(UserError, ValueError):
    """An optimizer network's option that cannot work (a layer size, a preprocessing, a dtype).

    The message names the option; a caller that knows where the options came from (a flag, a
    file) adds that.
    """


# Reads of files the project did not write itself are capped; optimizer files and run records
# are kilobytes, datasets tens of megabytes.
DEFAULT_READ_LIMIT = 256 * 2**20


# Set (to its process id) by the supervisor of a CLI (`cli.supervise`) in the child that works.
SUPERVISOR = "L2L_SUPERVISOR"


def command_pid():
    """The process id of the command the user ran: its supervisor's, else this process's."""
    supervisor = os.environ.get(SUPERVISOR, "")
    return int(supervisor) if supervisor.isdigit() else os.getpid()


# Temporary files of `atomic_write` (and the run folder's temporary links) start with this.
TEMP_PREFIX = ".l2l-tmp-"


def describe_mode(mode):
    """What a file of `os.stat` mode `mode` is, for a message: "a directory", "a FIFO (named
    pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def unreachable(path):
    """Why `path`, which `os.path.exists` says is not there, cannot be reached, for a message:
    "does not exist", "is a broken symbolic link (to X)", "is a loop of symbolic links"; None
    when it can be reached."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        if e.errno == errno.ENOENT:
            return "does not exist"
        return f"cannot be reached ({e.strerror})"
    return None


def read_file(path, limit=DEFAULT_READ_LIMIT, what="file", error=FileFormatError):
    """The bytes of the regular file `path` (symlinks followed), at most `limit` of them.

    A device, FIFO or directory is refused before it is opened for reading (a FIFO would block,
    `/dev/zero` would never end), and so is a file larger than `limit`.

    Raises:
      `error` (a UserError class): missing, unreadable, not a regular file, or too large.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise error(f"Cannot read {what} {path}: {e.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what[:1].upper() + what[1:]} {path} is {describe_mode(info.st_mode)}, "
                    f"not a regular file.")
    if info.st_size > limit:
        raise error(f"{what[:1].upper() + what[1:]} {path} has {info.st_size} bytes, more than "
                    f"the {limit} allowed; is it the right file?")
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, open does not hang.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{what[:1].upper() + what[1:]} {path} is not a regular file.")
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"Cannot read {what} {path}: {e.strerror}.") from None
    if len(data) > limit:
        raise error(f"{what[:1].upper() + what[1:]} {path} grew past {limit} bytes while read.")
    return data


def _umask():
    # Read without changing it: os.umask(x) sets it process-wide, a race with other threads.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _blocking_file(directory):
    """The nearest existing part of `directory` when it is not a folder (else None)."""
    existing = directory
    while not os.path.lexists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    try:
        mode = os.stat(existing).st_mode
    except OSError:
        return None
    return None if stat.S_ISDIR(mode) else f"{existing} is {describe_mode(mode)}, not a folder"


def make_folder(directory, what, path):
    """Creates `directory` and its parents, where `what` is to be written at `path`.

    Raises:
      FileFormatError: a part of it is a file, or it cannot be created; the message names it.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        reason = _blocking_file(directory) or f"cannot create folder {directory} ({e.strerror})"
        raise FileFormatError(f"Cannot write {what} {path}: {reason}; choose another path."
                              ) from None


def atomic_write(path, data, what="file", create_folder=False):
    """Writes bytes to `path` so that a reader sees the old file or the new one, never a part.

    A symlink is resolved and its target replaced. Only a regular file (or nothing) at the
    destination is replaced, and it keeps its mode: a device, FIFO or directory there is an
    error, so that, say, `/dev/null` is never turned into a regular file. `create_folder` creates
    the missing folders of `path`. The data and the directory entry are synced before returning.

    Raises:
      FileFormatError: the destination is not a regular file, or its folder is missing (without
        `create_folder`), a file, or not writable.
    """
    path = os.path.realpath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        blocker = _blocking_file(os.path.dirname(path))
        reason = f"{blocker}; choose another path" if blocker else e.strerror
        raise FileFormatError(f"Cannot write {what} {path}: {reason}.") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise FileFormatError(f"Cannot write {what} {path}: it is {describe_mode(mode)}; "
                              f"choose a file path.")
    directory = os.path.dirname(path)
    if create_folder:
        make_folder(directory, what, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
    except OSError as e:
        raise FileFormatError(f"Cannot write {what} {path}: {e.strerror} ({directory}).") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # The replaced file's mode; a new file's as open() would create it (mkstemp makes it
        # private).
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise FileFormatError(f"Cannot write {what} {path}: {e.strerror}.") from None
        raise
    fsync_directory(directory)


def fsync_directory(directory):
    """Makes a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _process_status():
    """`{field: bytes}` of /proc/self/status's VmSize and VmRSS (empty where there is none)."""
    sizes = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmSize", "VmRSS") and value.split()[1:] == ["kB"]:
                    sizes[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return sizes


def memory_headroom():
    """The most bytes this process can still take, or None if unknown: the least of what its
    address-space limit (`ulimit -v`) leaves beside the address space it maps, and what its
    control group's limit (cgroup v2 or v1) and the machine's memory leave beside its resident
    memory.

    An upper bound: what needs more (as a lower bound of the need says) cannot run here. What
    needs less may still not: measured on MNIST, the 200-step meta-gradient of three instances
    keeps 2.9 GiB, and XLA's buffers and the allocator's arenas add 0.7 GiB of resident memory and
    2.3 GiB of address space, after the 2.0 GiB that TensorFlow and the dataset already map.
    """
    status = _process_status()
    mapped, resident = status.get("VmSize", 0), status.get("VmRSS", 0)
    room = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            room += [int(line.split()[1]) * 1024 - resident for line in f
                     if line.startswith("MemTotal:")]
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read(64).strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means none; v1 says none with a huge number.
            room.append(int(text) - resident)
    import resource  # pylint: disable=import-outside-toplevel  # POSIX only: where asked.
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_space != resource.RLIM_INFINITY:
        room.append(address_space - mapped)
    return max(0, min(room)) if room else None


def import_tensorflow():
    """Imports TensorFlow once, without its start-up lines; returns the module.

    TensorFlow 2.21 prints lines (CUDA probing, CPU features) to file descriptor 2 while it
    loads, before any Python log level applies; they go to /dev/null for the import only, and
    its C++ log level defaults to errors and above (`TF_CPP_MIN_LOG_LEVEL=2`, unless the user set
    it): its info and warning lines stay out of the CLIs' output, its errors do not.
    Every project module that uses TensorFlow imports it through here, so the quiet start does
    not depend on which module comes first. Errors still raise as Python exceptions.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # pylint: disable=import-outside-toplevel
        # The first device query probes CUDA and logs about it; do it while quiet.
        tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    logger = tensorflow.get_logger()
    logger.setLevel("WARNING")  # Not a line per checkpoint shard.
    logger.addFilter(_drop_kernel_retracing_warnings)
    return tensorflow


def _drop_kernel_retracing_warnings(record):
    """False for TensorFlow's "triggered tf.function retracing" warning about the estimators'
    kernels: a task family compiles one kernel per task shape (by design, each traced once), and
    TensorFlow counts the traces of every kernel's method as retraces of one function."""
    message = record.getMessage()
    return not ("triggered tf.function retracing" in message and "estimators.Kernel" in message)
