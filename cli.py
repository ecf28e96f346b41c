"""What the command-line tools share: flags, errors, flag checks, progress, stats lines and
histories.

Nothing here imports TensorFlow, so that `plot.py` (which only reads CSV files) starts at once.
"""

import math
import os
import re
import sys
import textwrap
import time
import traceback

import numpy as np

import util


def run(main):
    """Wraps a CLI `main` for `absl.app.run`: a user error is one line and exit status 1.

    Only the project's own user errors (`util.UserError`: a bad flag, file or dataset) become one
    line; any other exception is a bug and keeps its traceback, followed by a line saying so. An
    interrupt (Ctrl-C) is one line and status 130; a closed output pipe ends quietly. Set
    L2L_DEBUG=1 for the traceback of user errors and interrupts too.
    """
    def wrapped(argv):
        from absl import flags, logging  # pylint: disable=import-outside-toplevel
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Library INFO lines (checkpoints) are noise.
        program = os.path.basename(sys.argv[0])
        if os.environ.get(util.SUPERVISOR) and not os.environ.get("L2L_DEBUG"):
            # A crash is said by the supervisor in one line, not by absl's stack dump here.
            import faulthandler  # pylint: disable=import-outside-toplevel
            faulthandler.disable()
        try:
            return main(argv)
        except util.UserError as e:
            if os.environ.get("L2L_DEBUG"):
                raise
            if not e.teardown_unsafe:
                sys.exit(f"{program}: error: {e}")
            # Every file is closed (the callers' `finally` ran); TensorFlow's teardown is
            # skipped (see util.UserError).
            print(f"{program}: error: {e}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # pylint: disable=protected-access
        except KeyboardInterrupt:  # Ctrl-C: every file is written whole, or not at all.
            if os.environ.get("L2L_DEBUG"):
                raise
            sys.stdout.flush()
            print(f"{program}: interrupted.", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # The reader of the output went away (`| head`): stop quietly.
            # Python's own advice: what is left for stdout goes nowhere, not into a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, as a shell reports a process killed by it.
        except SystemExit:
            raise
        except Exception:  # pylint: disable=broad-except
            traceback.print_exc()
            sys.exit(f"{os.path.basename(sys.argv[0])}: this is a bug, not a mistake of yours; "
                     f"please report it to the project's maintainers with the traceback above "
                     f"and the command you ran.")
    return wrapped


def first_line(error, limit=120):
    """The first line of an exception's message (TensorFlow's own `message`, without its
    traceback of ops), at most `limit` characters, for a one-line error."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return (text.strip().splitlines() or [type(error).__name__])[0][:limit]


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def main(main_fn, doc, argv, crash_advice=None):
    """Runs a CLI: `--help` prints the module's docstring and flags and exits with status 0
    (absl's own exits with 1); everything else goes through `absl.app.run(run(main_fn))`.

    With `crash_advice` (what to lower, what is kept), the work runs in a child process
    (`supervise`), so that a crash inside TensorFlow is one line too.
    """
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(doc.strip() + "\n")
        print(flags_help(full="--helpfull" in argv))
        sys.exit(0)
    try:  # A flag value absl refuses: one line naming the flag (absl adds a second one).
        flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"{os.path.basename(argv[0])}: error: {e}")
    if crash_advice and not os.environ.get(util.SUPERVISOR):
        sys.exit(supervise(os.path.basename(argv[0]), crash_advice))
    app.run(run(main_fn), argv)


# How a child that TensorFlow crashed ends, and why, for the one line.
_CRASHES = {"SIGSEGV": "TensorFlow crashed (SIGSEGV): out of memory, most likely",
            "SIGABRT": "TensorFlow aborted (SIGABRT): out of memory, most likely",
            "SIGBUS": "TensorFlow crashed (SIGBUS): out of memory, most likely",
            "SIGKILL": "the process was killed (SIGKILL), by hand or by the system's "
                       "out-of-memory killer"}

# Signals that end a process on request, not out of memory (an interrupt in `run`'s words).
_STOPS = {"SIGINT": "interrupted.", "SIGTERM": "stopped by SIGTERM.",
          "SIGHUP": "stopped by SIGHUP (the terminal closed)."}


def supervise(program, crash_advice):
    """Runs this command again in a child process, waits for it and returns its exit status;
    a child killed by a signal is one line. A stop asked for (SIGINT, SIGTERM, SIGHUP: e.g.
    Ctrl-C during TensorFlow's import, before the child's own handling starts) is
    `program: interrupted.` (or `stopped by ...`) and status 128 + the signal; a crash is
    `program: error: ...` and status 1.

    Out of memory, TensorFlow may raise (the CLIs say so in one line) but its compiled code may
    also crash the process (measured: SIGSEGV inside an XLA computation under `ulimit -v`), and
    the system's out-of-memory killer ends it with SIGKILL; no Python code of that process runs
    then. SIGINT, SIGTERM and SIGHUP sent to this process go to the child, which is in a process
    group of its own (so that Ctrl-C reaches it once, through here); it dies with this process.
    """
    import signal  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    parent = os.getpid()
    child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]],
                             env=dict(os.environ, **{util.SUPERVISOR: str(parent)}),
                             process_group=0,
                             preexec_fn=lambda: _die_with_parent(parent))
    forward = lambda signum, frame: child.send_signal(signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    returncode = child.wait()
    if returncode >= 0:
        return returncode
    name = signal.Signals(-returncode).name
    sys.stdout.flush()
    if name in _STOPS:  # Ctrl-C or a stop request before the child could catch it (its import).
        print(f"{program}: {_STOPS[name]}", file=sys.stderr)
        return 128 - returncode  # As a shell reports a process ended by the signal.
    why = _CRASHES.get(name, f"the process died of {name}")
    return f"{program}: error: {why}; if out of memory, {crash_advice}"


def _die_with_parent(parent):
    """In the child, before it runs: the kernel sends it SIGKILL when its parent dies (Linux), so
    that killing the supervisor (even with SIGKILL) ends the work too."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL.
    except (OSError, AttributeError):
        return  # Elsewhere the child may outlive a supervisor killed with SIGKILL.
    if os.getppid() != parent:  # It died before the request: nobody waits for this child.
        os._exit(1)  # pylint: disable=protected-access


def flags_help(full=False, width=80):
    """The flags' help as absl lays it out (the main module's key flags; `full`: every module's),
    wrapped only at spaces: absl's wrapping broke names at hyphens and inside long words
    ("cifar-" / "multi" in the list of --problem's values)."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    from absl.flags import _helpers  # pylint: disable=import-outside-toplevel
    values, main_module = flags.FLAGS, sys.argv[0]
    if full:  # As absl orders them: the main module first, its own special flags last.
        by_module = values.flags_by_module_dict()
        names = sorted(sorted(by_module), key=lambda m: m != main_module)
        modules = [(m, by_module[m]) for m in names]
        special = _helpers.SPECIAL_FLAGS._flags()  # pylint: disable=protected-access
        modules.append(("absl.flags", list(special.values())))
    else:
        modules = [(main_module, values.get_key_flags_for_module(main_module))]
    wrap = lambda text, first, rest: textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
        break_long_words=False) or [first.rstrip()]
    lines, shown = [], set()
    for module, module_flags in modules:
        lines += ["", f"{module}:"]
        for flag in sorted(module_flags, key=lambda f: f.name):
            if (module, flag.name) in shown:
                continue
            shown.add((module, flag.name))
            name = ((f"-{flag.short_name}," if flag.short_name else "")
                    + (f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"))
            # An enum's values, `<a|b-c|d>`, with spaces to wrap at between them.
            text = re.sub(r"^<([^>]*)>", lambda m: "<" + " | ".join(m.group(1).split("|")) + ">",
                          flag.help or "")
            lines += wrap(f"{name}: {text}", "  ", "    ")
            if flag.default_as_str:
                lines += wrap(f"(default: {flag.default_as_str})", "    ", "    ")
            if flag.parser.syntactic_help:
                lines += wrap(f"({flag.parser.syntactic_help})", "    ", "    ")
    return "\n".join(lines)


def define_problem_flags():
    """Defines the flags train.py and evaluate.py share: the same names, defaults and meaning.

    The problem and its epochs (`problem`, `num_steps`, `seed`, `data_dir`), how the unroll runs
    (`mode`, `state_reset_period`) and a new learned-lambda network's options (`lambda_mode`,
    `lambda_max`). Flags of the same name but another meaning or default in the two scripts
    (`learning_rate`, `num_epochs`, `fixed_lambda`) are each script's own. The calling script
    lists these flags in its `--help` with `flags.adopt_module_key_flags(cli)`.
    """
    from absl import flags  # pylint: disable=import-outside-toplevel
    # Imported here: plot.py, which has no problem, does not pay for the configurations.
    import configs  # pylint: disable=import-outside-toplevel
    flags.DEFINE_enum("problem", "simple", sorted(configs.CONFIGS), "Type of problem.")
    flags.DEFINE_integer("num_steps", 100, "Number of optimization steps per epoch.",
                         lower_bound=1, upper_bound=10**6)
    flags.DEFINE_integer("seed", 0, "Seed of the problems' initial parameters and data (and, "
                         "in train.py, of the networks' initial weights).", lower_bound=0)
    flags.DEFINE_string("data_dir", None, "Folder with the dataset files (or DIR/<dataset>/); "
                        "else $L2L_DATA_DIR, system folders, then tensorflow_datasets.")
    flags.DEFINE_enum("mode", None, configs.MODES, "Compilation: eager, graph (tf.function) or "
                      "xla; default: xla (the fastest measured, CPU and GPU).")
    flags.DEFINE_integer("state_reset_period", 0, "Re-initialize the optimizer networks' state "
                         "every that many steps; 0: only at the start of each epoch (DeepMind's "
                         "original). The TF1-era fork's weights were trained with the unroll "
                         "length (20); 1 reproduces its published evaluations.", lower_bound=0)
    flags.DEFINE_enum("lambda_mode", "per_coordinate", configs.LAMBDA_MODES,
                      "Learned lambda: one per coordinate and step (a second LSTM head) or one "
                      "trainable scalar per network. A saved optimizer records its own.")
    flags.DEFINE_float("lambda_max", 0.1, "Learned lambda is lambda_max * tanh(a). A saved "
                       "optimizer records its own.")


def check_no_arguments(argv):
    """Flags are `--name=value`; anything else on the command line is an error."""
    if len(argv) > 1:
        raise util.FlagError(f"Unexpected arguments: {' '.join(argv[1:])} "
                             f"(flags are --name=value).")


# Float flags become float32 tensors: a larger magnitude would turn into inf there.
FLOAT32_MAX = 3.4028234663852886e38


def check_finite(**values):
    """Every float flag given is a finite number that float32 can hold:
    `check_finite(learning_rate=FLAGS.lr)`."""
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise util.FlagError(f"--{name} must be a finite number of magnitude at most "
                                 f"3.4e+38 (float32), got {value}.")


def check_positive(**values):
    """Every flag given is a finite number above zero."""
    check_finite(**values)
    for name, value in values.items():
        if value is not None and not value > 0:
            raise util.FlagError(f"--{name} must be positive, got {value}.")


def check_at_most(limit, **values):
    """Every integer flag given is at most `limit` (what this machine can hold in memory)."""
    for name, value in values.items():
        if value is not None and value > limit:
            raise util.FlagError(f"--{name}={value} is more than the {limit} allowed.")


def print_stats(header, total_error, total_time, n):
    """Prints the original's statistics lines (`inf`/`nan` for a diverged optimizee)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        log_error = np.log10(total_error / n) if n else float("nan")
    print(header)
    print(f"Log Mean Final Error: {log_error:.2f}")
    print(f"Mean epoch time: {total_time / max(n, 1):.2f} s")


def report_divergence(epochs, what="epochs"):
    """Says how many epochs ended with a non-finite loss, if any."""
    diverged = sum(not e.finite for e in epochs)
    if diverged:
        print(f"Diverged: {diverged} of {len(epochs)} {what} ended with a non-finite loss "
              f"(the optimizee blew up; this is a result, not a crash).")
    return diverged


def print_lambda_stats(stats):
    """One line per lambda network: its value, or mean, min and max over coordinates."""
    for key, (mean, low, high) in sorted(stats.items()):
        if low == high:
            print(f"Lambda {key}: {mean:.6g}")
        else:
            print(f"Lambda {key}: mean {mean:.6g} min {low:.6g} max {high:.6g}")


# -- Histories ----------------------------------------------------------------------------------

MAX_HISTORY_BYTES = 2**30


def write_history(path, header, histories):
    """Writes per-step losses, one row per epoch, after a `# header` line; atomically."""
    lines = [f"# {header}"] + [",".join(f"{v:.8g}" for v in row) for row in histories]
    util.atomic_write(path, ("\n".join(lines) + "\n").encode(), what="history file",
                      create_folder=True)


def read_history(path):
    """`(header, [epochs, steps] array)` of a history file written by `write_history`.

    Raises:
      util.FileFormatError: not a regular file, not a history file, or without rows.
    """
    text = util.read_file(path, MAX_HISTORY_BYTES, what="history file").decode(errors="replace")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise util.FileFormatError(f"{path} is not a history file: its first line is not a "
                                   f"'# ' header.")
    rows = [line for line in lines[1:] if line.strip() and not line.startswith("#")]
    if not rows:
        raise util.FileFormatError(f"{path} holds a header but no epochs (an interrupted "
                                   f"evaluation?); run evaluate.py again.")
    try:
        losses = np.array([[float(v) for v in row.split(",")] for row in rows])
    except ValueError as e:
        raise util.FileFormatError(f"{path} has a row that is not numbers ({e}).") from None
    if losses.ndim != 2:
        raise util.FileFormatError(f"{path} has rows of different lengths.")
    return lines[0][2:].strip(), losses


# -- Progress -----------------------------------------------------------------------------------

def _duration(seconds):
    """`1d 02:03:04` or `02:03:04`: hours do not wrap at a day."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


class Progress:
    """A one-line progress display on stderr (epoch, speed, ETA, last meta-loss).

    It stays quiet when stderr is not a terminal, so logs and pipes get only the stats lines.
    """

    def __init__(self, total, first=0, stream=None, min_interval=0.5):
        self._stream = stream or sys.stderr
        self._active = self._stream.isatty()
        self._total, self._first = total, first
        self._start = self._last_draw = time.monotonic()
        self._min_interval = min_interval
        self._width = 0

    def update(self, epoch, meta_loss):
        """`epoch` epochs are done; the last one's meta-loss was `meta_loss`."""
        now = time.monotonic()
        if not self._active or now - self._last_draw < self._min_interval:
            return
        self._last_draw = now
        rate = (epoch - self._first) / max(now - self._start, 1e-9)
        eta = (self._total - epoch) / rate if rate > 0 else float("inf")
        eta_text = _duration(eta) if np.isfinite(eta) else "?"
        line = (f"epoch {epoch}/{self._total} | {rate:.2f} epochs/s | ETA {eta_text} | "
                f"meta-loss {meta_loss:.4g}")
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def clear(self):
        """Erases the line, before other output."""
        if self._active and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

