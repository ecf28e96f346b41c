"""Evaluates a learned or hand-designed optimizer on a problem (the original's evaluate.py).

    python evaluate.py --problem=quadratic --optimizer=L2L --path=runs/quadratic
    python evaluate.py --problem=quadratic --optimizer=fixed --path=runs/quadratic_fixed
    python evaluate.py --problem=quadratic --optimizer=Adam --learning_rate=0.1

Runs `num_epochs` epochs of `num_steps` optimizee steps each on the problem's test data, prints
the mean final loss, and writes the loss after every step of every epoch to a CSV history.
"""

import hashlib
import os
import sys

from absl import flags
from absl import logging
import numpy as np

import cli
import configs
import util

FLAGS = flags.FLAGS
flags.DEFINE_enum("optimizer", "L2L", list(configs.OPTIMIZER_KINDS) + list(configs.BASELINES),
                  "Optimizer to evaluate: learned (L2L, fixed or learned lambda) or one of "
                  "TensorFlow's (Adam, RMSprop, SGD, NAG).")
flags.DEFINE_string("path", None, "Saved optimizer: a directory of .l2l files, or one file.")
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of a hand-designed optimizer.")
flags.DEFINE_list("learning_rates", None, "A grid of learning rates for a hand-designed "
                  "optimizer, e.g. 0.001,0.003,0.01,0.03,0.1: each runs --tune_epochs epochs on "
                  "held-out (validation) data, and the best by mean final loss is evaluated.")
flags.DEFINE_integer("tune_epochs", 20, "Epochs per learning rate of --learning_rates.",
                     lower_bound=1)
flags.DEFINE_float("fixed_lambda", None, "With --optimizer=fixed: which cwfixed<lambda>.l2l to "
                   "load when --path holds several (untrained: 0.01).")
flags.DEFINE_enum("lambda_mode", "per_coordinate", configs.LAMBDA_MODES,
                  "Untrained learned-lambda optimizer only (a saved one records its own).")
flags.DEFINE_float("lambda_max", 0.1, "Untrained learned-lambda optimizer only.")
flags.DEFINE_integer("num_epochs", 100, "Number of evaluation epochs.", lower_bound=1,
                     upper_bound=10**6)
flags.DEFINE_enum("split", "test", ["test", "validation"], "Data split of the evaluation epochs: "
                  "test (the paper's comparison), or validation (held out from meta-training: "
                  "to choose between optimizers without looking at the test split).")
flags.DEFINE_integer("seed", 0, "Seed of the problems' initial parameters and data.",
                     lower_bound=0)
flags.DEFINE_enum("problem", "simple", sorted(configs.CONFIGS), "Type of problem.")
flags.DEFINE_integer("num_steps", 100, "Number of optimization steps per epoch.", lower_bound=1,
                     upper_bound=10**6)
flags.DEFINE_integer("state_reset_period", 0, "Re-initialize the optimizer networks' state every "
                     "that many steps; 0: only at the start of each epoch (DeepMind's original). "
                     "1 reproduces the TF1-era fork's published evaluations.", lower_bound=0)
flags.DEFINE_string("history_path", None, "CSV of the loss after every step of every epoch; "
                    "default saved_histories/<problem>_<optimizer>_<its settings>.csv.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (or DIR/<dataset>/); "
                    "else $L2L_DATA_DIR, system folders, then tensorflow_datasets.")
flags.DEFINE_enum("mode", None, configs.MODES, "Compilation: eager, graph (tf.function) or xla; "
                  "default: xla (the fastest measured, CPU and GPU).")

# The flags of each kind of optimizer, beyond those every evaluation takes.
_BASELINE_FLAGS = ("learning_rate", "learning_rates", "tune_epochs")
_LEARNED_FLAGS = ("path", "state_reset_period")
_UNTRAINED_LEARNED_FLAGS = ("lambda_mode", "lambda_max")


def _learned_unroll(config, unroll_length):
    """The Unroll of a learned optimizer, and the lambda it uses (fixed lambda only)."""
    import meta  # pylint: disable=import-outside-toplevel
    net_config = config.net_config
    if FLAGS.path is None:
        logging.warning("Evaluating untrained %s optimizer", FLAGS.optimizer)
        fixed_lambda = 0.01 if FLAGS.fixed_lambda is None else FLAGS.fixed_lambda
        net_config = configs.with_optimizer_kind(net_config, FLAGS.optimizer, fixed_lambda,
                                              FLAGS.lambda_mode, FLAGS.lambda_max)
    else:
        net_config = configs.with_saved_paths(net_config, FLAGS.path, FLAGS.optimizer,
                                           FLAGS.fixed_lambda)
    optimizer = meta.MetaOptimizer(**net_config)
    unroll = optimizer.meta_loss(config.problem, unroll_length,
                                 net_assignments=config.net_assignments,
                                 state_reset_period=FLAGS.state_reset_period, mode=FLAGS.mode)
    lambdas = {net.options["fixed_lambda"] for net in optimizer.nets.values()
               if "fixed_lambda" in net.options}
    return unroll, (lambdas.pop() if len(lambdas) == 1 else None)


def _tune_learning_rate(unroll_length):
    """The grid's learning rate with the lowest mean final loss on validation epochs."""
    import meta  # pylint: disable=import-outside-toplevel
    try:
        grid = [float(lr) for lr in FLAGS.learning_rates]
    except ValueError:
        raise util.FlagError(f"--learning_rates must be numbers, got {FLAGS.learning_rates}."
                             ) from None
    if not grid or not all(lr > 0 and np.isfinite(lr) for lr in grid):
        raise util.FlagError(f"--learning_rates must be positive numbers, got "
                             f"{FLAGS.learning_rates}.")
    problem = configs.get_config(FLAGS.problem, "validation", FLAGS.data_dir).problem
    results = {}
    unroll = meta.BaselineUnroll(problem, FLAGS.optimizer, grid[0], unroll_length, mode=FLAGS.mode)
    for lr in grid:
        unroll.set_learning_rate(lr)  # Compiled once for the whole grid.
        epochs = [meta.run_epoch(unroll, FLAGS.num_steps // unroll_length,
                                 meta.epoch_seed(FLAGS.seed, meta.VALIDATION, e))
                  for e in range(FLAGS.tune_epochs)]
        results[lr] = float(np.mean([e.final_loss for e in epochs]))
        print(f"learning_rate {lr:g}: mean final loss {results[lr]:.4g} on {FLAGS.tune_epochs} "
              f"validation epochs")
    finite = {lr: loss for lr, loss in results.items() if np.isfinite(loss)}
    if not finite:
        raise util.FlagError(f"Every learning rate of {grid} diverged; try smaller ones.")
    best = min(finite, key=finite.get)
    edge = " (an end of the grid: extend it)" if best in (min(grid), max(grid)) else ""
    print(f"Best learning rate: {best:g}{edge}")
    return best, f" chosen from {grid} on {FLAGS.tune_epochs} validation epochs"


def _check_flags(argv):
    """Bad values and flags that do not apply to --optimizer: one line each, naming the flag."""
    cli.check_no_arguments(argv)
    cli.check_positive(learning_rate=FLAGS.learning_rate, lambda_max=FLAGS.lambda_max)
    cli.check_finite(fixed_lambda=FLAGS.fixed_lambda)
    baseline = FLAGS.optimizer in configs.BASELINES
    applies = set(_BASELINE_FLAGS) if baseline else set(_LEARNED_FLAGS)
    if FLAGS.optimizer in ("fixed", "learned"):
        applies.add("fixed_lambda")
    if FLAGS.optimizer == "learned" and FLAGS.path is None:
        applies.update(_UNTRAINED_LEARNED_FLAGS)
    for name in _BASELINE_FLAGS + _LEARNED_FLAGS + _UNTRAINED_LEARNED_FLAGS + ("fixed_lambda",):
        if FLAGS[name].present and name not in applies:
            what = ("a saved learned optimizer records it" if name in _UNTRAINED_LEARNED_FLAGS
                    and FLAGS.path else f"it does not apply to --optimizer={FLAGS.optimizer}")
            raise util.FlagError(f"--{name}: {what}; remove it.")


def _history_path(settings):
    """`saved_histories/<problem>_<optimizer>_<settings>.csv`: a name per distinct evaluation."""
    parts = [FLAGS.problem, FLAGS.optimizer]
    if FLAGS.optimizer in configs.BASELINES:
        parts.append("tuned" if FLAGS.learning_rates else f"lr{FLAGS.learning_rate:g}")
    elif FLAGS.path is None:
        parts.append("untrained")
    else:  # The folder's name, and a digest of where it is: two runs never share a file.
        real = os.path.realpath(FLAGS.path)
        digest = hashlib.sha1(real.encode()).hexdigest()[:6]
        parts.append(f"{os.path.basename(real.rstrip(os.sep))}-{digest}")
    if settings.get("fixed_lambda") is not None:
        parts.append(f"lambda{settings['fixed_lambda']:g}")
    if FLAGS.split != "test":
        parts.append(FLAGS.split)
    for name, default in (("num_steps", 100), ("num_epochs", 100), ("seed", 0),
                          ("state_reset_period", 0)):
        if FLAGS[name].value != default:
            parts.append(f"{name.replace('_', '')}{FLAGS[name].value}")
    return os.path.join("saved_histories", "_".join(parts) + ".csv")


def main(argv):
    _check_flags(argv)
    import meta  # pylint: disable=import-outside-toplevel  # After the flags: --help at once.
    config = configs.get_config(FLAGS.problem, FLAGS.split, FLAGS.data_dir)
    unroll_length = meta.eval_unroll_length(FLAGS.num_steps)
    fixed_lambda = None
    if FLAGS.optimizer in configs.BASELINES:
        learning_rate, tuned = FLAGS.learning_rate, ""
        if FLAGS.learning_rates:
            learning_rate, tuned = _tune_learning_rate(unroll_length)
        unroll = meta.BaselineUnroll(config.problem, FLAGS.optimizer, learning_rate,
                                     unroll_length, mode=FLAGS.mode)
        settings = f"learning_rate={learning_rate!r}{tuned}"
    else:
        unroll, fixed_lambda = _learned_unroll(config, unroll_length)
        settings = (f"path={FLAGS.path} state_reset_period={FLAGS.state_reset_period}"
                    + ("" if fixed_lambda is None else f" fixed_lambda={fixed_lambda!r}"))

    # Validation epochs come from the stream of the learning-rate grid's and of train.py's
    # evaluations: every optimizer evaluated with one --seed sees the same epochs.
    stream = meta.TEST if FLAGS.split == "test" else meta.VALIDATION
    epochs = [meta.run_epoch(unroll, FLAGS.num_steps // unroll_length,
                             meta.epoch_seed(FLAGS.seed, stream, e))
              for e in range(FLAGS.num_epochs)]
    cli.print_stats(f"Epoch {FLAGS.num_epochs}", sum(e.final_loss for e in epochs),
                     sum(e.time for e in epochs), FLAGS.num_epochs)
    cli.report_divergence(epochs)
    cli.print_lambda_stats(meta.lambda_stats([r for e in epochs for r in e.results]))
    histories = [e.history for e in epochs]

    path = FLAGS.history_path or _history_path({"fixed_lambda": fixed_lambda})
    cli.write_history(path, f"optimizer={FLAGS.optimizer} problem={FLAGS.problem} "
                             f"num_steps={FLAGS.num_steps} num_epochs={FLAGS.num_epochs} "
                             f"seed={FLAGS.seed} {settings}"
                             + ("" if FLAGS.split == "test" else f" split={FLAGS.split}"),
                   histories)
    print(f"History of every step written to {path}")


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv)
