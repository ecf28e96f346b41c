"""Named problem configurations, seeds, the epoch loop, statistics and CLI helpers."""

import os
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np


def _import_tensorflow_quietly():
    """Imports TensorFlow with stderr sent to /dev/null: TF 2.21 prints start-up lines (oneDNN,
    CUDA probing) before any log level applies. Errors still raise as Python exceptions."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Later C++ logs; 0 shows them all.
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # pylint: disable=import-outside-toplevel
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tensorflow.get_logger().setLevel("WARNING")  # Not a line per checkpoint shard.


_import_tensorflow_quietly()  # Before `problems`, which imports TensorFlow.

import problems  # noqa: E402  pylint: disable=wrong-import-position


class Config(NamedTuple):
    """A problem with the networks that optimize it (as the original `get_config`)."""
    problem: problems.Problem
    net_config: Dict[str, dict]  # Keyword arguments of `meta.MetaOptimizer`.
    net_assignments: Optional[list]  # `[(net_key, [parameter names])]`, or None for one network.


def _lstm(**options):
    return {"net": "CoordinateWiseDeepLSTM", "net_options": dict(layers=(20, 20), **options)}


# The original code's optimizer for MNIST and CIFAR: LogAndSign k=5 and output scale 0.01.
_PREPROCESSED = dict(preprocess_name="LogAndSign", preprocess_options={"k": 5}, scale=0.01)
# The paper's (its appendix A: p = 10; outputs times 0.1). Meta-trained on MNIST with these, the
# optimizer reaches the paper's figures (README, "Reproducing the paper"); with the code's it
# stayed behind.
_PAPER = dict(preprocess_name="LogAndSign", preprocess_options={"k": 10}, scale=0.1)


def _simple(split, data_dir, loader):
    del split, data_dir, loader
    return Config(problems.simple(),
                  {"cw": {"net": "CoordinateWiseDeepLSTM",
                          "net_options": {"layers": (), "initializer": "zeros"}}}, None)


def _simple_multi(split, data_dir, loader):
    del split, data_dir, loader
    return Config(problems.simple_multi_optimizer(),
                  {"cw": {"net": "CoordinateWiseDeepLSTM",
                          "net_options": {"layers": (), "initializer": "zeros"}},
                   "adam": {"net": "Adam", "net_options": {"learning_rate": 0.1}}},
                  [("cw", ["x_0"]), ("adam", ["x_1"])])


def _quadratic(split, data_dir, loader):
    del split, data_dir, loader
    return Config(problems.quadratic(batch_size=128, num_dims=10), {"cw": _lstm()}, None)


def _mlp(dataset, lstm=_PREPROCESSED, **options):
    def config(split, data_dir, loader):
        problem = problems.mlp(dataset, split=split, data_dir=data_dir, loader=loader, **options)
        return Config(problem, {"cw": _lstm(**lstm)}, None)
    return config


def _cifar(split, data_dir, loader):
    return Config(problems.cifar10(split=split, data_dir=data_dir, loader=loader),
                  {"cw": _lstm(**_PREPROCESSED)}, None)


def _cifar_multi(split, data_dir, loader):
    """The original's split: one LSTM for the conv kernels, another for everything else."""
    problem = problems.cifar10(split=split, data_dir=data_dir, loader=loader)
    conv = [name for name in problem.names if "/conv_2d_" in name and name.endswith("/w")]
    fc = [name for name in problem.names if name not in conv]
    return Config(problem, {"conv": _lstm(**_PREPROCESSED), "fc": _lstm(**_PREPROCESSED)},
                  [("conv", conv), ("fc", fc)])


CONFIGS: Dict[str, Callable[[str, Optional[str], Optional[Callable]], Config]] = {
    "simple": _simple,
    "simple-multi": _simple_multi,
    "quadratic": _quadratic,
    # The paper's MNIST problem and its generalisation variants (an optimizer trained on
    # `mnist` is evaluated on the others).
    "mnist": _mlp("mnist", _PAPER),
    "mnist-relu": _mlp("mnist", _PAPER, activation="relu"),
    "mnist-40": _mlp("mnist", _PAPER, layers=(40,)),
    "mnist-2layer": _mlp("mnist", _PAPER, layers=(20, 20)),
    "fashion_mnist": _mlp("fashion_mnist", _PAPER),
    "iris": _mlp("iris"),
    "cifar": _cifar,
    "cifar-multi": _cifar_multi,
    "cifar-mlp": _mlp("cifar10"),
    "cifar100-mlp": _mlp("cifar100"),
}
SPLITS = ("train", "validation", "test")


def get_config(problem_name, split="train", data_dir=None, loader=None):
    """The problem and network configuration called `problem_name`.

    Args:
      problem_name: one of `CONFIGS`.
      split: the data a problem with data draws from: "train" for meta-training, "validation"
        for choosing the best optimizer, "test" for evaluation. Analytic problems ignore it.
      data_dir: where to look for dataset files first (see `datasets.load`).
      loader: `split -> (x, y)` arrays to use instead of the dataset's files (e.g. synthetic
        data of the same shapes, for benchmarks).
    """
    if problem_name not in CONFIGS:
        raise ValueError(f"Unknown problem {problem_name!r}; expected one of {sorted(CONFIGS)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return CONFIGS[problem_name](split, data_dir, loader)


# Seed streams: epochs of meta-training, of evaluation during training, and of evaluate.py never
# share data.
TRAIN, VALIDATION, TEST = 0, 1, 2


def epoch_seed(seed, stream, index):
    """The stateless seed (two int32) of epoch `index` of a stream."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2)
    return state.view(np.int32)  # The same 64 bits, as the int32 pair stateless ops take.


class EpochResult(NamedTuple):
    time: float  # Wall seconds.
    final_loss: float  # The optimizee's loss at the last iterate.
    history: np.ndarray  # [steps run]: the loss after each optimizee step.
    results: List  # The `UnrollResult` of every unroll run.
    finite: bool  # Every meta-update was finite (so applied); else the epoch stopped there.

    @property
    def meta_loss(self):
        """Mean meta-loss of the epoch's unrolls."""
        return float(np.mean([r.meta_loss.numpy() for r in self.results]))


def run_epoch(unroll, num_unrolls, seed):
    """One epoch: `reset(seed)` then `num_unrolls` unrolls; synchronised before the clock stops.

    An unroll whose meta-update was skipped as non-finite ends the epoch early (`finite` False):
    its optimizee has left the region where the networks make sense, so the next epoch resets it.
    """
    start = time.perf_counter()
    unroll.reset(seed)
    results, losses = [], []
    for _ in range(num_unrolls):
        results.append(unroll())
        losses.append(results[-1].losses.numpy())
        if not results[-1].applied.numpy():
            break
    elapsed = time.perf_counter() - start
    # losses[k][0] is the loss at the iterate the previous unroll ended on: count it once.
    history = np.concatenate([l[1:] for l in losses])
    finite = bool(results[-1].applied.numpy()) and bool(np.all(np.isfinite(history)))
    return EpochResult(elapsed, float(losses[-1][-1]), history, results, finite)


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


def eval_unroll_length(num_steps, longest=100):
    """Optimizee steps per compiled call when no meta-gradient is needed: the largest divisor of
    `num_steps` up to `longest` (long static unrolls cost trace time, short ones Python calls)."""
    return max(d for d in range(1, min(num_steps, longest) + 1) if num_steps % d == 0)


OPTIMIZER_KINDS = ("L2L", "fixed", "learned")
_LSTM_NETS = ("CoordinateWiseDeepLSTM", "FixedLambdaDeepLSTM", "LearnedLambdaDeepLSTM")
_KIND_NETS = {"L2L": "CoordinateWiseDeepLSTM", "fixed": "FixedLambdaDeepLSTM",
              "learned": "LearnedLambdaDeepLSTM"}


def with_optimizer_kind(net_config, kind, fixed_lambda=0.01, lambda_mode="per_coordinate",
                        lambda_max=0.1):
    """`net_config` with every L2L network turned into the `kind` of optimizer.

    "fixed" adds `fixed_lambda * x` to each step; "learned" meta-learns lambda (`lambda_mode`,
    bounded by `lambda_max`), starting from `fixed_lambda`. Hand-designed networks (e.g.
    simple-multi's Adam) stay as they are.
    """
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"Unknown optimizer kind {kind!r}; expected one of {OPTIMIZER_KINDS}.")
    result = {}
    for key, config in net_config.items():
        config = dict(config)
        if config["net"] in _LSTM_NETS:
            options = {k: v for k, v in config.get("net_options", {}).items()
                       if k not in ("fixed_lambda", "lambda_mode", "init_lambda", "lambda_max")}
            if kind == "fixed":
                options["fixed_lambda"] = fixed_lambda
            elif kind == "learned":
                options.update(lambda_mode=lambda_mode, init_lambda=fixed_lambda,
                               lambda_max=lambda_max)
            config.update(net=_KIND_NETS[kind], net_options=options)
        result[key] = config
    return result


def with_net_options(net_config, options_json):
    """`net_config` with JSON `options_json` merged into every learned network's options."""
    import json  # pylint: disable=import-outside-toplevel
    try:
        options = json.loads(options_json)
    except ValueError as e:
        raise ValueError(f"--net_options is not valid JSON ({e}): {options_json!r}.") from None
    if not isinstance(options, dict):
        raise ValueError(f"--net_options must be a JSON object, got {options_json!r}.")
    return {key: dict(config, net_options={**config.get("net_options", {}), **options})
            if config["net"] in _LSTM_NETS else config for key, config in net_config.items()}


def lambda_stats(results):
    """`{net: (mean, min, max)}` of lambda over unroll results, for the lambda networks."""
    per_net = {}
    for result in results:
        for key, stats in result.lambdas.items():
            per_net.setdefault(key, []).append(np.asarray(stats))
    return {key: (float(np.mean([s[0] for s in values])), float(min(s[1] for s in values)),
                  float(max(s[2] for s in values)))
            for key, values in per_net.items()}


def print_lambda_stats(stats):
    """One line per lambda network: its value, or mean, min and max over coordinates."""
    for key, (mean, low, high) in sorted(stats.items()):
        if low == high:
            print(f"Lambda {key}: {mean:.6g}")
        else:
            print(f"Lambda {key}: mean {mean:.6g} min {low:.6g} max {high:.6g}")


def history_path(problem, optimizer, fixed_lambda=None, directory="saved_histories"):
    """The fork's default history file: `saved_histories/{problem}_{optimizer}[_{lambda}].csv`."""
    suffix = "" if fixed_lambda is None else f"_{float(fixed_lambda)!r}"
    return os.path.join(directory, f"{problem}_{optimizer}{suffix}.csv")


def write_history(path, header, histories):
    """Writes per-step losses, one row per epoch, after a `# header` line; atomically."""
    lines = [f"# {header}"] + [",".join(f"{v:.8g}" for v in row) for row in histories]
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    import networks  # pylint: disable=import-outside-toplevel
    networks.atomic_write(path, ("\n".join(lines) + "\n").encode())


def read_history(path):
    """`(header, [epochs, steps] array)` of a history file written by `write_history`."""
    with open(path) as f:
        header = f.readline()
    if not header.startswith("# "):
        raise ValueError(f"{path} is not a history file: its first line is not a '# ' header.")
    return header[2:].strip(), np.loadtxt(path, delimiter=",", comments="#", ndmin=2)


def _candidates(directory, key, kind):
    names = sorted(f for f in os.listdir(directory) if f.endswith(".l2l"))
    if kind == "fixed":
        return [f for f in names if f.startswith(key + "fixed")], names
    wanted = f"{key}learned.l2l" if kind == "learned" else f"{key}.l2l"
    return [f for f in names if f == wanted], names


def _choose_fixed(directory, key, candidates, fixed_lambda):
    """The `<key>fixed<lambda>.l2l` file to use: the only one, or the one for `fixed_lambda`."""
    if fixed_lambda is not None:
        chosen = [f for f in candidates
                  if _lambda_of(f, key) is not None and
                  np.isclose(_lambda_of(f, key), fixed_lambda, rtol=1e-9, atol=0)]
        if not chosen:
            raise ValueError(f"No {key}fixed{fixed_lambda!r}.l2l in {directory}; it holds "
                             f"{', '.join(candidates) or 'no fixed-lambda optimizer'}.")
        return chosen[0]
    if len(candidates) > 1:
        raise ValueError(f"{directory} holds several fixed-lambda optimizers "
                         f"({', '.join(candidates)}); choose one with --fixed_lambda.")
    return candidates[0]


def _lambda_of(file_name, key):
    try:
        return float(file_name[len(key + "fixed"):-len(".l2l")])
    except ValueError:
        return None


def with_saved_paths(net_config, path, kind="L2L", fixed_lambda=None):
    """`net_config` with each network's weights taken from `path`, a directory or a file.

    In a directory the files follow `meta.saved_file_name`: `<key>.l2l` (L2L and hand-designed
    networks), `<key>fixed<lambda>.l2l`, `<key>learned.l2l`. The options of a loaded network come
    from its file, which records what it was trained with.

    Raises:
      ValueError: no file, or no way to choose between several; the message lists what is there.
    """
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"Unknown optimizer kind {kind!r}; expected one of {OPTIMIZER_KINDS}.")
    if not os.path.exists(path):
        raise ValueError(f"--path {path} does not exist.")
    result = {}
    for key, config in net_config.items():
        learned_net = config["net"] in _LSTM_NETS
        net = _KIND_NETS[kind] if learned_net else config["net"]
        if os.path.isfile(path):
            if len(net_config) > 1:
                raise ValueError(f"--path {path} is one file, but this problem has networks "
                                 f"{sorted(net_config)}; pass the directory that holds them.")
            file_path = path
        else:
            candidates, present = _candidates(path, key, kind if learned_net else "L2L")
            if not candidates:
                raise ValueError(f"No {kind} optimizer for network {key!r} in {path}: expected "
                                 f"{_expected_name(key, kind if learned_net else 'L2L')}, found "
                                 f"{', '.join(present) or 'no .l2l file'}.")
            chosen = (_choose_fixed(path, key, candidates, fixed_lambda)
                      if kind == "fixed" and learned_net else candidates[0])
            file_path = os.path.join(path, chosen)
        result[key] = {"net": net, "net_path": file_path}
    return result


def _expected_name(key, kind):
    return {"L2L": f"{key}.l2l", "fixed": f"{key}fixed<lambda>.l2l",
            "learned": f"{key}learned.l2l"}[kind]


def cli(main):
    """Wraps a CLI `main` so that a user error is one line on stderr and exit status 1.

    Set L2L_DEBUG=1 for the full traceback.
    """
    def wrapped(argv):
        from absl import flags, logging  # pylint: disable=import-outside-toplevel
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Library INFO lines (checkpoints) are noise.
        try:
            return main(argv)
        except (ValueError, OSError) as e:
            if os.environ.get("L2L_DEBUG"):
                raise
            sys.exit(f"{os.path.basename(sys.argv[0])}: error: {e}")
    return wrapped


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
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
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
