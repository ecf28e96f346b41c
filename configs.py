"""Named problem configurations (as the original's `get_config`) and the kinds of optimizer.

`get_config(name)` is a problem with the networks that optimize it; `with_optimizer_kind`,
`with_net_options` and `with_saved_paths` turn a configuration's networks into the optimizer the
command line asks for: L2L, fixed or learned lambda, other options, or weights from a save folder.

Importing this module does not import TensorFlow (the problems are built when asked for, and
`datasets`, home of the data splits, imports none either), so the command-line tools define
their flags, and answer `--help`, at once; it also holds the names those flags offer.
"""

import json
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

import datasets
import task_families
import util
import weights_file

# Names the command line offers (the modules that implement them check against these).
MODES = ("eager", "graph", "xla")  # How meta.Unroll compiles.
BASELINES = ("Adam", "RMSprop", "SGD", "NAG")  # TensorFlow's optimizers, run by meta.
LAMBDA_MODES = ("per_coordinate", "scalar")  # networks.LearnedLambdaDeepLSTM.
META_OBJECTIVES = ("train", "validation")
STRATEGIES = ("none", "mirrored", "multi_worker")
ESTIMATORS = ("tbptt", "es", "pes")  # estimators.py: how a meta-update's gradient is estimated.
# The learned networks the command line can choose (--net), and what a family trains by default.
LEARNED_NETS = ("CoordinateWiseDeepLSTM", "NormalizedMLP")
# How meta.unroll's backward pass gets each optimizee step's values, and what each costs
# (measured in bench/README.md): "steps" is the fastest on a CPU; "chunks" the smallest, and the
# only one whose memory barely depends on the unroll length.
# What a meta-training run that runs out of memory can lower.
MEMORY_FLAGS = "--unroll_length, --meta_batch_size or the layers of --net_options"
REMATERIALIZE = {"off": "keep every step's activations",
                 "steps": "keep each step's inputs, recompute the step",
                 "chunks": "keep the optimizee's gradients, replay chunks of coordinates"}


def num_unrolls(num_steps, unroll_length):
    """Unrolls per epoch; `unroll_length` must divide `num_steps`."""
    if unroll_length < 1 or num_steps < 1 or num_steps % unroll_length:
        raise ValueError(f"unroll_length ({unroll_length}) must be positive and divide "
                         f"num_steps ({num_steps}).")
    return num_steps // unroll_length


def eval_unroll_length(num_steps, longest=100):
    """Optimizee steps per compiled call when no meta-gradient is needed: the largest divisor of
    `num_steps` up to `longest` (long static unrolls cost trace time, short ones Python calls)."""
    return max(d for d in range(1, min(num_steps, longest) + 1) if num_steps % d == 0)


class _Problems:
    """`problems`, imported at first use: building a problem needs TensorFlow."""

    def __getattr__(self, name):
        # A plain import statement, which the installed package's build rewrites (setup.py).
        import problems as problems_module  # pylint: disable=import-outside-toplevel
        return getattr(problems_module, name)


problems = _Problems()


class Config(NamedTuple):
    """A problem with the networks that optimize it (as the original `get_config`)."""
    problem: Any  # A problems.Problem.
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


def _glorot_mlp(dataset, layers, activation):
    """A model as a user writes it in Keras (Dense layers, glorot-uniform weights), optimized by
    default by the paper's MNIST LSTM's configuration (so that its file loads for it)."""
    def config(split, data_dir, loader):
        problem = problems.mlp(dataset, layers, activation, split=split, data_dir=data_dir,
                               loader=loader, initialization="glorot")
        return Config(problem, {"cw": _lstm(**_PAPER)}, None)
    return config


def _glorot_cnn(split, data_dir, loader):
    """Conv2D 8 and 16 (3x3, relu, 2x2 max-pooling), then Dense 10: a user's small CNN."""
    return Config(problems.convnet("mnist", (8, 16), "relu", split=split, data_dir=data_dir,
                                   loader=loader), {"cw": _lstm(**_PAPER)}, None)


# The general optimizer's network by default (see networks.NormalizedMLP).
_NORMALIZED_MLP = {"net": "NormalizedMLP", "net_options": {}}


def _family(name):
    def config(split, data_dir, loader):
        problem = task_families.FamilyProblems(task_families.FAMILIES[name], split, data_dir,
                                               loader)
        return Config(problem, {"cw": dict(_NORMALIZED_MLP)}, None)
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
    # Models a user would write (Keras' initialisation), held out of every task family: a
    # general optimizer is evaluated on them (docs/results.md, "A general optimizer").
    "heldout-mnist-relu": _glorot_mlp("mnist", (64, 32), "relu"),
    "heldout-fashion-relu": _glorot_mlp("fashion_mnist", (64, 32), "relu"),
    "heldout-mnist-tanh": _glorot_mlp("mnist", (64, 64), "tanh"),
    "heldout-mnist-cnn": _glorot_cnn,
    # Task families: every instance draws its problem (task_families.py).
    **{task_families.PREFIX + name: _family(name) for name in task_families.FAMILIES},
}


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
    if split not in datasets.SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {datasets.SPLITS}.")
    config = CONFIGS[problem_name](split, data_dir, loader)
    _check_assignments(problem_name, config)
    return config


def _check_assignments(problem_name, config):
    """The command line's configurations step every parameter with exactly one network."""
    if config.net_assignments is None:
        return
    counts = {name: 0 for name in config.problem.names}
    for _, names in config.net_assignments:
        for name in names:
            counts[name] += 1
    wrong = {name: count for name, count in counts.items() if count != 1}
    if wrong:
        raise AssertionError(f"Configuration {problem_name!r} assigns {wrong} networks.")


# -- Kinds of optimizer -------------------------------------------------------------------------

OPTIMIZER_KINDS = weights_file.KINDS
# The command-line flags that define each kind of optimizer (and apply to it only).
KIND_FLAGS = {"L2L": (), "fixed": ("fixed_lambda",),
              "learned": ("fixed_lambda", "lambda_mode", "lambda_max")}
_LSTM_NETS = tuple(weights_file.KIND_NETS.values())
_LAMBDA_OPTIONS = ("fixed_lambda", "lambda_mode", "init_lambda", "lambda_max")


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
                       if k not in _LAMBDA_OPTIONS}
            if kind == "fixed":
                options["fixed_lambda"] = fixed_lambda
            elif kind == "learned":
                options.update(lambda_mode=lambda_mode, init_lambda=fixed_lambda,
                               lambda_max=lambda_max)
            config.update(net=weights_file.KIND_NETS[kind], net_options=options)
        result[key] = config
    return result


def parse_net_options(options_json):
    """The JSON object of --net_options as a dict; train.py checks it before TensorFlow starts.

    Raises:
      util.FlagError: not a JSON object (the message names --net_options).
    """
    try:
        options = json.loads(options_json)
    except (ValueError, RecursionError) as e:
        raise util.FlagError(f"--net_options is not valid JSON ({str(e)[:100]}): "
                             f"{options_json[:200]!r}.") from None
    if not isinstance(options, dict):
        raise util.FlagError(f"--net_options must be a JSON object, got {options_json[:200]!r}.")
    return options


def with_net_options(net_config, options_json):
    """`net_config` with JSON `options_json` merged into every learned network's options
    (networks with weights: not the hand-designed Sgd and Adam).

    Raises:
      util.FlagError: not a JSON object (`parse_net_options`).
    """
    options = parse_net_options(options_json)
    return {key: dict(config, net_options={**config.get("net_options", {}), **options})
            if config["net"] in _LSTM_NETS + LEARNED_NETS else config
            for key, config in net_config.items()}


# The options a learned network gets when --net chooses it for a configuration of another one.
_NET_DEFAULTS = {"CoordinateWiseDeepLSTM": dict(layers=(20, 20), **_PAPER), "NormalizedMLP": {}}


def with_net(net_config, net):
    """`net_config` with every learned network (`LEARNED_NETS`) made a `net`: with the options
    it had if it was one, else with `net`'s defaults (the paper's LSTM; the MLP's own)."""
    if net not in LEARNED_NETS:
        raise ValueError(f"Unknown learned network {net!r}; expected one of {LEARNED_NETS}.")
    return {key: {"net": net, "net_options": dict(_NET_DEFAULTS[net]) if config["net"] != net
                  else config.get("net_options", {})} if config["net"] in LEARNED_NETS else config
            for key, config in net_config.items()}


def _some(names, most=5):
    """`a.l2l, b.l2l and 2998 more`: a folder's names, few enough for a one-line message."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def with_saved_paths(net_config, path, kind="L2L", fixed_lambda=None, flag="--path",
                     kind_flag="--optimizer"):
    """`net_config` with each network's weights taken from `path`, a directory or a file.

    In a directory the files are named as `weights_file.file_name` says: `<key>.l2l` (L2L and
    hand-designed networks), `<key>fixed<lambda>.l2l`, `<key>learned.l2l`. The options of a loaded
    network come from its file, which records what it was trained with.

    Raises:
      util.FlagError: no file, no way to choose between several, or one file of another kind
        of optimizer; the message names `flag` (and `kind_flag`, the flag of `kind`) and lists
        what is there.
    """
    if kind not in OPTIMIZER_KINDS:
        raise ValueError(f"Unknown optimizer kind {kind!r}; expected one of {OPTIMIZER_KINDS}.")
    if not os.path.exists(path):
        raise util.FlagError(f"{flag} {path} {util.unreachable(path)}.")
    result = {}
    for key, config in net_config.items():
        learned_net = config["net"] in _LSTM_NETS + LEARNED_NETS
        net_kind = kind if learned_net else "L2L"
        net = weights_file.KIND_NETS[kind] if learned_net else config["net"]
        if os.path.isdir(path):
            file_path = os.path.join(path, _choose_file(path, key, net_kind, fixed_lambda))
        elif len(net_config) > 1:
            raise util.FlagError(f"{flag} {path} is one file, but this problem has networks "
                                 f"{sorted(net_config)}; pass the directory that holds them.")
        else:
            file_path = path
            if learned_net:
                _check_kind(file_path, kind, flag, kind_flag)
        if learned_net and net_kind == "L2L":
            # An L2L file may hold any learned network (the paper's LSTM, a NormalizedMLP):
            # the file says which.
            recorded = weights_file.load(file_path).net
            if recorded in LEARNED_NETS:
                net = recorded
        result[key] = {"net": net, "net_path": file_path}
    return result


def _check_kind(path, kind, flag, kind_flag):
    """A file of another kind of optimizer than `kind` is one line naming the kind to ask for."""
    saved = weights_file.load(path).net
    kinds = {net: name for name, net in weights_file.KIND_NETS.items()}
    if saved in kinds and kinds[saved] != kind:
        raise util.FlagError(f"{flag} {path} holds a {saved} ({kind_flag}={kinds[saved]}), not "
                             f"{kind_flag}={kind}'s {weights_file.KIND_NETS[kind]}; pass "
                             f"{kind_flag}={kinds[saved]}.")


def _choose_file(directory, key, kind, fixed_lambda):
    """The file of network `key` and `kind` in `directory` (for "fixed", the one for lambda)."""
    present = sorted(f for f in os.listdir(directory) if f.endswith(weights_file.SUFFIX))
    candidates = []
    for name in present:
        try:
            parsed = weights_file.parse_file_name(name)
        except ValueError:
            continue  # Not a file of this naming scheme.
        if parsed.key == key and parsed.kind == kind:
            candidates.append((name, parsed.fixed_lambda))
    if not candidates:
        expected = (f"{key}fixed<lambda>.l2l" if kind == "fixed"
                    else weights_file.file_name(key, kind))
        raise util.FlagError(f"No {kind} optimizer for network {key!r} in {directory}: expected "
                             f"{expected}, found {_some(present) or 'no .l2l file'}.")
    if kind != "fixed":
        return candidates[0][0]
    if fixed_lambda is not None:
        chosen = [name for name, lam in candidates if lam == float(fixed_lambda)]
        if not chosen:
            raise util.FlagError(
                f"No {weights_file.file_name(key, 'fixed', fixed_lambda)} in {directory}; it "
                f"holds {_some(name for name, _ in candidates)}.")
        return chosen[0]
    if len(candidates) > 1:
        raise util.FlagError(f"{directory} holds several fixed-lambda optimizers "
                             f"({_some(name for name, _ in candidates)}); choose one with "
                             f"--fixed_lambda.")
    return candidates[0][0]
