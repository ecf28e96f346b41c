"""Evaluates a learned or hand-designed optimizer on a problem (the original's evaluate.py).

    .venv/bin/python evaluate.py --problem=quadratic --optimizer=L2L --path=runs/quadratic
    .venv/bin/python evaluate.py --problem=quadratic --optimizer=fixed --path=runs/quadratic_fixed
    .venv/bin/python evaluate.py --problem=quadratic --optimizer=Adam --learning_rate=0.1

Runs `num_epochs` epochs of `num_steps` optimizee steps each on the problem's test data, prints
the mean final loss, and writes the loss after every step of every epoch to a CSV history. A
learned optimizer runs `eval_batch_size` epochs at once, as one meta-batch: the numbers of one
epoch at a time (to float rounding), in less time.
"""

import hashlib
import os
import sys

from absl import flags
import numpy as np

import cli
import configs
import datasets
import task_families
import util

FLAGS = flags.FLAGS
cli.define_problem_flags()
flags.adopt_module_key_flags(cli)  # The shared flags in this script's --help.
flags.DEFINE_enum("optimizer", "L2L", list(configs.OPTIMIZER_KINDS) + list(configs.BASELINES),
                  "Optimizer to evaluate: learned (L2L, fixed or learned lambda) or one of "
                  "TensorFlow's (Adam, RMSprop, SGD, NAG).")
flags.DEFINE_string("path", None, "Saved optimizer: a directory of .l2l files, or one file.")
flags.DEFINE_boolean("untrained", False, "Evaluate a learned kind of optimizer with the networks' "
                     "initial (random) weights instead of a saved one (--path): a baseline for "
                     "what meta-training gains.")
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of a hand-designed optimizer.")
flags.DEFINE_list("learning_rates", None, "A grid of learning rates for a hand-designed "
                  "optimizer, e.g. 0.001,0.003,0.01,0.03,0.1: each runs --tune_epochs epochs on "
                  "held-out (validation) data, and the best by mean final loss is evaluated.")
flags.DEFINE_float("step_scale", 1.0, "Multiplies every step of a learned optimizer, as "
                   "LearnedOptimizer's learning_rate does: 1.0 is the optimizer as trained.")
flags.DEFINE_list("step_scales", None, "A grid of --step_scale values for a learned optimizer, "
                  "e.g. 0.5,1,2,3,5: tuned on held-out (validation) epochs as --learning_rates "
                  "tunes a hand-designed optimizer.")
flags.DEFINE_integer("tune_epochs", 20, "Epochs per value of a --learning_rates or --step_scales "
                     "grid.", lower_bound=1)
flags.DEFINE_float("fixed_lambda", None, "With --optimizer=fixed: which cwfixed<lambda>.l2l to "
                   "load when --path holds several (untrained: 0.01). With an untrained "
                   "--optimizer=learned: the initial lambda.")
flags.DEFINE_integer("num_epochs", 100, "Number of evaluation epochs.", lower_bound=1,
                     upper_bound=10**6)
flags.DEFINE_integer("eval_batch_size", 4, "Learned optimizers: epochs run at once, as one "
                     "meta-batch (the numbers of one at a time, to float rounding, in less "
                     "time): the largest divisor of --num_epochs up to this.", lower_bound=1,
                     upper_bound=1024)
flags.DEFINE_enum("split", "test", ["test", "validation"], "Data split of the evaluation epochs: "
                  "test (the paper's comparison), or validation (held out from meta-training: "
                  "to choose between optimizers without looking at the test split).")
flags.DEFINE_string("history_path", None, "CSV of the loss after every step of every epoch; "
                    "default saved_histories/<problem>_<optimizer>_<its settings>.csv.")

# The flags of each sort of optimizer, beyond those every evaluation takes. The lambda flags of
# the learned kinds are configs.KIND_FLAGS (as in train.py); every kind's are among learned's.
_BASELINE_FLAGS = ("learning_rate", "learning_rates", "tune_epochs")
_LEARNED_FLAGS = ("path", "state_reset_period", "eval_batch_size", "step_scale", "step_scales",
                  "tune_epochs")
_LAMBDA_FLAGS = configs.KIND_FLAGS["learned"]

# Flags that change how the numbers are computed but not the evaluation they are the numbers of:
# they are not in a history's name, so that the same evaluation always has the same file.
#   mode: eager, graph and XLA run the same operations on the same problems (meta.Unroll starts
#     every epoch outside XLA, so its random numbers are the same in every mode): the losses
#     differ by float rounding only. The header records the mode used.
#   data_dir: says where the dataset's files are, not which dataset (--problem says that; the
#     files are checked when read).
#   eval_batch_size: the same epochs, to float rounding (see `_learned_epochs`).
# Flags whose non-default values are in the name, after the optimizer's own settings.
_NAMED_FLAGS = ("num_steps", "num_epochs", "seed", "state_reset_period", "tune_epochs")


def _applicable_flags():
    """The optimizer-specific flags that apply to --optimizer (and --path)."""
    if FLAGS.optimizer in configs.BASELINES:
        return set(_BASELINE_FLAGS)
    kind_flags = set(configs.KIND_FLAGS[FLAGS.optimizer])
    if FLAGS.path is not None:
        # A saved optimizer's file records its lambda options; --fixed_lambda only chooses among
        # the cwfixed<lambda>.l2l files of a folder.
        folder_of_fixed = FLAGS.optimizer == "fixed" and os.path.isdir(FLAGS.path)
        kind_flags = {"fixed_lambda"} if folder_of_fixed else set()
    return set(_LEARNED_FLAGS) | kind_flags


def _check_flags(argv):
    """Bad values and flags that do not apply to --optimizer: one line each, naming the flag.

    Returns:
      the grid of --learning_rates (or, for a learned optimizer, --step_scales) as floats, or
      None.
    """
    cli.check_no_arguments(argv)
    cli.check_positive(learning_rate=FLAGS.learning_rate, step_scale=FLAGS.step_scale,
                       lambda_max=FLAGS.lambda_max)
    cli.check_finite(fixed_lambda=FLAGS.fixed_lambda)
    datasets.check_data_dir(FLAGS.data_dir)  # Before TensorFlow starts, not after a download.
    applies = _applicable_flags()
    for name in dict.fromkeys(_BASELINE_FLAGS + _LEARNED_FLAGS + _LAMBDA_FLAGS):
        if FLAGS[name].present and name not in applies:
            saved = (FLAGS.path is not None and FLAGS.optimizer in configs.OPTIMIZER_KINDS
                     and name in configs.KIND_FLAGS[FLAGS.optimizer])
            what = (f"a saved {FLAGS.optimizer} optimizer records it" if saved
                    else f"it does not apply to --optimizer={FLAGS.optimizer}")
            raise util.FlagError(f"--{name}: {what}; remove it.")
    if FLAGS.optimizer in configs.OPTIMIZER_KINDS and FLAGS.path is None and not FLAGS.untrained:
        # An untrained network's numbers look like results: only an explicit flag gets them.
        shipped = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_optimizers",
                               FLAGS.problem)
        if not os.path.relpath(shipped).startswith(os.pardir):
            shipped = os.path.relpath(shipped)
        example = f", such as {shipped}" if os.path.isdir(shipped) else ""
        raise util.FlagError(f"--optimizer={FLAGS.optimizer} needs --path, a saved optimizer (a "
                             f"folder of .l2l files or one file{example}); pass --untrained to "
                             f"evaluate untrained networks on purpose.")
    if FLAGS.untrained and (FLAGS.path is not None or FLAGS.optimizer in configs.BASELINES):
        what = ("--path loads trained weights" if FLAGS.path is not None else
                f"it does not apply to --optimizer={FLAGS.optimizer}")
        raise util.FlagError(f"--untrained: {what}; remove it.")
    single, plural, what = _tuned_flags()
    if not FLAGS[plural].present:
        if FLAGS["tune_epochs"].present:
            raise util.FlagError(f"--tune_epochs: it applies to a --{plural} grid only; "
                                 f"remove it or add the grid.")
        return None
    if FLAGS[single].present:
        raise util.FlagError(f"--{single}: --{plural} chooses the {what}; pass one of the two.")
    try:
        grid = [float(value) for value in FLAGS[plural].value]
    except ValueError:
        raise util.FlagError(f"--{plural} must be numbers, got "
                             f"{','.join(FLAGS[plural].value)}.") from None
    if not grid:
        raise util.FlagError(f"--{plural} needs at least one {what}.")
    for value in grid:
        cli.check_positive(**{plural: value})
    return grid


def _tuned_flags():
    """`(flag, grid flag, what it is)` of the value a grid tunes for --optimizer."""
    if FLAGS.optimizer in configs.BASELINES:
        return "learning_rate", "learning_rates", "learning rate"
    return "step_scale", "step_scales", "step scale"


def _learned_optimizer(config):
    """The MetaOptimizer of --optimizer and --path, the lambda it uses (fixed lambda only) and the
    optimizer files it loaded."""
    import meta  # pylint: disable=import-outside-toplevel
    net_config = config.net_config
    if FLAGS.path is None:  # --untrained (checked by _check_flags).
        fixed_lambda = 0.01 if FLAGS.fixed_lambda is None else FLAGS.fixed_lambda
        net_config = configs.with_optimizer_kind(net_config, FLAGS.optimizer, fixed_lambda,
                                                 FLAGS.lambda_mode, FLAGS.lambda_max)
    else:
        net_config = configs.with_saved_paths(net_config, FLAGS.path, FLAGS.optimizer,
                                              FLAGS.fixed_lambda)
    optimizer = meta.MetaOptimizer(**net_config)
    lambdas = {net.options["fixed_lambda"] for net in optimizer.nets.values()
               if "fixed_lambda" in net.options}
    files = [net["net_path"] for net in net_config.values() if "net_path" in net]
    return optimizer, (lambdas.pop() if len(lambdas) == 1 else None), files


def _file_digest(path):
    """The first 16 hex digits of a file's SHA-256: `sha256sum FILE | cut -c1-16`."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _batch_size(epochs):
    """Epochs per meta-batch: the largest divisor of `epochs` up to --eval_batch_size, so that
    every batch has one size (one compilation) and no epoch runs for nothing."""
    return max(b for b in range(1, FLAGS.eval_batch_size + 1) if epochs % b == 0)


def _learned_epochs(optimizer, config, unroll_length, seeds, step_scale=1.0):
    """The epochs of `seeds`, run `_batch_size` at a time as one meta-batch, every step of
    the networks multiplied by `step_scale`.

    `meta.run_epochs` gives each epoch of a meta-batch the numbers it has alone (to float
    rounding: the networks see the batch's coordinates in one call), in less time than one at a
    time.

    Returns:
      `([meta.EpochResult per seed], the compilation mode used)`.
    """
    import meta  # pylint: disable=import-outside-toplevel
    batch_size = _batch_size(len(seeds))
    if isinstance(config.problem, task_families.FamilyProblems):
        # Each epoch runs the instance its seed draws, as train.py's evaluations of a family:
        # the kernel of the instance's shapes, compiled the first time they are drawn.
        import estimators  # pylint: disable=import-outside-toplevel
        unroll = estimators.MetaTrainer(
            optimizer, estimators.family_problems(config.problem), unroll_length,
            FLAGS.num_steps, estimator=None, meta_batch_size=batch_size, mode=FLAGS.mode,
            state_reset_period=FLAGS.state_reset_period, step_scale=step_scale)
    else:
        unroll = optimizer.meta_loss(config.problem, unroll_length,
                                     net_assignments=config.net_assignments,
                                     state_reset_period=FLAGS.state_reset_period, mode=FLAGS.mode,
                                     meta_batch_size=batch_size, step_scale=step_scale)
        _check_memory(unroll, batch_size)
    epochs = []
    for first in range(0, len(seeds), batch_size):
        epochs += meta.run_epochs(unroll, FLAGS.num_steps // unroll_length,
                                  np.stack(seeds[first:first + batch_size]))
    return epochs, getattr(unroll, "modes_used", unroll.mode)


def _check_memory(unroll, batch_size):
    """A one-line error, before anything is compiled, when the epochs run at once hold more than
    this process can still take: out of memory, XLA may abort rather than raise."""
    needed, headroom = unroll.live_bytes(), util.memory_headroom()
    if headroom is None or needed <= headroom:
        return
    fit = max(1, headroom * batch_size // needed)
    raise util.FlagError(f"--eval_batch_size={FLAGS.eval_batch_size} runs {batch_size} epochs "
                         f"at once, which hold at least {needed / 2**30:.1f} GiB, more than the "
                         f"{headroom / 2**30:.1f} GiB this process can still take; lower "
                         f"--eval_batch_size (at most {fit} fit).")


class _BaselineEpochs:
    """Epochs of --optimizer (a hand-designed one) on a problem or on a task family's instances.

    On a family each seed's epoch runs the problem that seed draws (as a learned optimizer's
    evaluation of the family does), with one compiled unroll per shape, reused for every learning
    rate of a grid.
    """

    def __init__(self, problem, learning_rate, unroll_length):
        import estimators  # pylint: disable=import-outside-toplevel
        # Each seed's (shape key, problem), as the learned optimizer's evaluation draws them.
        self._problems_of = (estimators.family_problems(problem)
                             if isinstance(problem, task_families.FamilyProblems)
                             else estimators.single_problem(problem))
        self._learning_rate, self._unroll_length, self._unrolls = learning_rate, unroll_length, {}

    def set_learning_rate(self, learning_rate):
        self._learning_rate = learning_rate

    def _unroll(self, seed):
        import meta  # pylint: disable=import-outside-toplevel
        [(key, problem)] = self._problems_of(np.reshape(seed, [1, 2]))
        if key not in self._unrolls:
            self._unrolls[key] = meta.BaselineUnroll(problem, FLAGS.optimizer, self._learning_rate,
                                                     self._unroll_length, mode=FLAGS.mode)
        self._unrolls[key].set_learning_rate(self._learning_rate)
        return self._unrolls[key]

    def run(self, seeds):
        """`[meta.EpochResult]`, one per seed."""
        import meta  # pylint: disable=import-outside-toplevel
        return [meta.run_epoch(self._unroll(seed), FLAGS.num_steps // self._unroll_length, seed)
                for seed in seeds]

    @property
    def mode(self):
        """The compilation mode (on a family, each mode its shapes used, e.g. `graph,xla`)."""
        return ",".join(sorted({unroll.mode for unroll in self._unrolls.values()}))


def _tune(grid, run_epochs):
    """The grid's value with the lowest mean final loss on validation epochs.

    `run_epochs(value, seeds)` runs the epochs of `seeds` with the grid's `value` (a
    hand-designed optimizer's learning rate, a learned one's step scale).
    """
    import meta  # pylint: disable=import-outside-toplevel
    single, _, what = _tuned_flags()
    seeds = [meta.epoch_seed(FLAGS.seed, meta.VALIDATION, e) for e in range(FLAGS.tune_epochs)]
    results = {}
    for value in grid:
        results[value] = float(np.mean([e.final_loss for e in run_epochs(value, seeds)]))
        print(f"{single} {value:g}: mean final loss {results[value]:.4g} on "
              f"{FLAGS.tune_epochs} validation epochs")
    finite = {value: loss for value, loss in results.items() if np.isfinite(loss)}
    if not finite:
        raise util.FlagError(f"Every {what} of {grid} diverged; try smaller ones.")
    best = min(finite, key=finite.get)
    edge = " (an end of the grid: extend it)" if best in (min(grid), max(grid)) else ""
    print(f"Best {what}: {best:g}{edge}")
    return best


def _tune_learning_rate(grid, unroll_length):
    """The grid's learning rate with the lowest mean final loss on validation epochs."""
    problem = configs.get_config(FLAGS.problem, "validation", FLAGS.data_dir).problem
    baseline = _BaselineEpochs(problem, grid[0], unroll_length)

    def run_epochs(learning_rate, seeds):
        baseline.set_learning_rate(learning_rate)  # Compiled once for the whole grid.
        return baseline.run(seeds)

    return _tune(grid, run_epochs)


def _tune_step_scale(optimizer, grid, unroll_length):
    """The grid's step scale with the lowest mean final loss on validation epochs."""
    config = configs.get_config(FLAGS.problem, "validation", FLAGS.data_dir)
    return _tune(grid, lambda scale, seeds: _learned_epochs(optimizer, config, unroll_length,
                                                            seeds, scale)[0])


def _number(value):
    """`0.01`: `:g` when that is the exact value, else every digit (two names never meet)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def _digest(text):
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _history_path(fixed_lambda, grid):
    """`saved_histories/<problem>_<optimizer>_<settings>.csv`: a name per distinct evaluation.

    The settings are everything that defines the history's numbers (see `_NAMED_FLAGS`): the
    optimizer's own (learning rate, or the digest of the grid; the save folder; lambda), then the
    split and each flag of `_NAMED_FLAGS` that is not at its default.
    """
    parts = [FLAGS.problem, FLAGS.optimizer]
    if FLAGS.optimizer in configs.BASELINES:
        parts.append(f"tuned-{_digest(repr(grid))}" if grid else
                     f"lr{_number(FLAGS.learning_rate)}")
    else:
        if FLAGS.path is None:
            parts.append("untrained")
        else:  # The folder's name, and a digest of where it is: two runs never share a file.
            real = os.path.realpath(FLAGS.path)
            parts.append(f"{os.path.basename(real.rstrip(os.sep))}-{_digest(real)}")
        if grid:
            parts.append(f"scaletuned-{_digest(repr(grid))}")
        elif FLAGS.step_scale != 1.0:
            parts.append(f"scale{_number(FLAGS.step_scale)}")
    if fixed_lambda is not None:
        parts.append(f"lambda{_number(fixed_lambda)}")
    if FLAGS.split != FLAGS["split"].default:
        parts.append(FLAGS.split)
    for name in _NAMED_FLAGS:
        if FLAGS[name].value != FLAGS[name].default:
            parts.append(f"{name.replace('_', '')}{FLAGS[name].value}")
    return os.path.join("saved_histories", "_".join(parts) + ".csv")


def main(argv):
    grid = _check_flags(argv)
    import meta  # pylint: disable=import-outside-toplevel  # After the flags: --help at once.
    config = configs.get_config(FLAGS.problem, FLAGS.split, FLAGS.data_dir)
    unroll_length = meta.eval_unroll_length(FLAGS.num_steps)
    # Validation epochs come from the stream of the learning-rate grid's and of train.py's
    # evaluations: every optimizer evaluated with one --seed sees the same epochs.
    stream = meta.TEST if FLAGS.split == "test" else meta.VALIDATION
    seeds = [meta.epoch_seed(FLAGS.seed, stream, e) for e in range(FLAGS.num_epochs)]
    fixed_lambda = None
    if FLAGS.optimizer in configs.BASELINES:
        learning_rate, tuned = FLAGS.learning_rate, ""
        if grid:
            learning_rate = _tune_learning_rate(grid, unroll_length)
            tuned = (f" chosen from learning_rates={','.join(FLAGS.learning_rates)} on "
                     f"tune_epochs={FLAGS.tune_epochs} validation epochs")
        baseline = _BaselineEpochs(config.problem, learning_rate, unroll_length)
        epochs = baseline.run(seeds)
        mode, settings = baseline.mode, f"learning_rate={learning_rate!r}{tuned}"
    else:
        optimizer, fixed_lambda, files = _learned_optimizer(config)
        step_scale, scaled = FLAGS.step_scale, ""
        try:
            if grid:
                step_scale = _tune_step_scale(optimizer, grid, unroll_length)
                scaled = (f" step_scale={step_scale!r} chosen from step_scales="
                          f"{','.join(FLAGS.step_scales)} on tune_epochs={FLAGS.tune_epochs} "
                          f"validation epochs")
            elif step_scale != 1.0:
                scaled = f" step_scale={step_scale!r}"
            epochs, mode = _learned_epochs(optimizer, config, unroll_length, seeds, step_scale)
        except (util.import_tensorflow().errors.ResourceExhaustedError, MemoryError) as e:
            raise util.OutOfMemoryError(f"Out of memory ({cli.first_line(e)}); lower "
                                        f"--eval_batch_size. No history was written.") from None
        # The files' contents, not only their names: reproduce.sh re-evaluates a history whose
        # optimizer file has since been replaced, whatever the files' modification times.
        digests = ",".join(_file_digest(f) for f in files)
        settings = (f"path={FLAGS.path} state_reset_period={FLAGS.state_reset_period}"
                    + ("" if fixed_lambda is None else f" fixed_lambda={fixed_lambda!r}")
                    + (f" sha256={digests}" if digests else "") + scaled)

    cli.print_stats(f"Epoch {FLAGS.num_epochs}", sum(e.final_loss for e in epochs),
                    sum(e.time for e in epochs), FLAGS.num_epochs)
    cli.report_divergence(epochs)
    # An epoch of a meta-batch shares its unrolls' results (lambdas over all the batch's
    # coordinates): counted once per epoch, their mean is the mean over epochs.
    cli.print_lambda_stats(meta.lambda_stats([r for e in epochs for r in e.results]))

    path = FLAGS.history_path or _history_path(fixed_lambda, grid)
    cli.write_history(path, f"optimizer={FLAGS.optimizer} problem={FLAGS.problem} "
                            f"num_steps={FLAGS.num_steps} num_epochs={FLAGS.num_epochs} "
                            f"seed={FLAGS.seed} {settings}"
                            + ("" if FLAGS.split == "test" else f" split={FLAGS.split}")
                            + f" mode={mode}",
                      [e.history for e in epochs])
    print(f"History of every step written to {path}")


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv,
             crash_advice="lower --eval_batch_size. No history was written.")
