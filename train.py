"""Meta-trains a learned optimizer on a problem (the original's train.py, in TF2).

    python train.py --problem=quadratic --save_path=runs/quadratic

Every `log_period` epochs it prints the mean final loss; every `evaluation_period` epochs it
evaluates the optimizer on held-out epochs and saves it to `save_path` when it improved. With
`save_path` the run is also checkpointed every `checkpoint_period` epochs: the same command
resumes it after a crash, Ctrl-C or SIGTERM (`--restart` starts over).
"""

import json
import os
import shutil
import signal
import uuid

from absl import app
from absl import flags

import cli
import configs
import meta
import util
import weights_file

tf = util.import_tensorflow()

FLAGS = flags.FLAGS
flags.DEFINE_string("save_path", None, "Directory for the best meta-optimizer and checkpoints.")
flags.DEFINE_integer("num_epochs", 10000, "Number of training epochs.", lower_bound=1)
flags.DEFINE_integer("log_period", 100, "Log period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_period", 1000, "Evaluation period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_epochs", 20, "Number of evaluation epochs.", lower_bound=1)
flags.DEFINE_enum("problem", "simple", sorted(configs.CONFIGS), "Type of problem.")
flags.DEFINE_integer("num_steps", 100, "Number of optimization steps per epoch.", lower_bound=1)
flags.DEFINE_integer("unroll_length", 20, "Meta-optimizer unroll length.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of the meta-optimizer (Adam).")
flags.DEFINE_boolean("second_derivatives", False, "Use second derivatives.")
flags.DEFINE_integer("seed", 0, "Seed of the network weights and of all problem data.")
flags.DEFINE_enum("which_aml", "L2L", configs.OPTIMIZER_KINDS, "Optimizer to meta-train: L2L, "
                  "fixed lambda (x + delta + lambda x) or learned lambda.")
flags.DEFINE_float("fixed_lambda", 0.01, "lambda of --which_aml=fixed; the initial lambda of "
                   "--which_aml=learned.")
flags.DEFINE_enum("lambda_mode", "per_coordinate", ["per_coordinate", "scalar"],
                  "Learned lambda: one per coordinate and step (a second LSTM head) or one "
                  "trainable scalar per network.")
flags.DEFINE_float("lambda_max", 0.1, "Learned lambda is lambda_max * tanh(a).")
flags.DEFINE_enum("meta_objective", "train", ["train", "validation"], "Sum the optimizee's "
                  "losses on its training batches, or on held-out (validation) batches.")
flags.DEFINE_integer("state_reset_period", 0, "Re-initialize the optimizer networks' state every "
                     "that many steps; 0: only at the start of each epoch (DeepMind's original). "
                     "The TF1-era fork's weights were trained with the unroll length (20).",
                     lower_bound=0)
flags.DEFINE_string("net_options", None, "JSON options merged into every learned network's "
                    "config, e.g. '{\"scale\": 0.1, \"preprocess_options\": {\"k\": 10}}'.")
flags.DEFINE_integer("checkpoint_period", 100, "Epochs between checkpoints in save_path.",
                     lower_bound=1)
flags.DEFINE_boolean("restart", False, "Start over in a save_path that holds a run, instead of "
                     "resuming it (its saved optimizer is replaced at the first evaluation).")
flags.DEFINE_integer("max_nonfinite", 10, "Stop after this many consecutive epochs with a "
                     "non-finite meta-loss or meta-gradient.", lower_bound=1)
flags.DEFINE_string("logdir", None, "Directory for TensorBoard summaries.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (or DIR/<dataset>/); "
                    "else $L2L_DATA_DIR, system folders, then tensorflow_datasets.")
flags.DEFINE_enum("mode", None, meta.MODES, "Compilation: eager, graph (tf.function) or xla; "
                  "default: the fastest measured for the device (GPU: xla; CPU: graph to "
                  "meta-train, xla to evaluate).")

RUN_FILE = "run.json"
CHECKPOINTS = "checkpoints"
# The flags that define the computation: a run resumes only with the same values.
RUN_FLAGS = ("problem", "num_steps", "unroll_length", "learning_rate", "second_derivatives",
             "seed", "which_aml", "fixed_lambda", "lambda_mode", "lambda_max", "meta_objective",
             "state_reset_period", "net_options")
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _check_flags(argv):
    cli.check_no_arguments(argv)
    cli.check_positive(learning_rate=FLAGS.learning_rate, lambda_max=FLAGS.lambda_max)
    cli.check_finite(fixed_lambda=FLAGS.fixed_lambda)
    if FLAGS.restart and FLAGS.save_path is None:
        raise util.FlagError("--restart needs --save_path (the run to start over).")
    try:
        return meta.num_unrolls(FLAGS.num_steps, FLAGS.unroll_length)
    except ValueError as e:
        raise util.FlagError(f"--unroll_length: {e}") from None


def _open_run(save_path):
    """Checks or creates `save_path`'s run file; returns `(run_id, resuming)`."""
    run_file = os.path.join(save_path, RUN_FILE)
    current = {name: FLAGS[name].value for name in RUN_FLAGS}
    if FLAGS.restart:
        shutil.rmtree(os.path.join(save_path, CHECKPOINTS), ignore_errors=True)
        if os.path.exists(run_file):
            os.remove(run_file)
    elif os.path.exists(run_file):
        try:
            with open(run_file) as f:
                run = json.load(f)
            recorded, run_id = run["flags"], run["run_id"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise util.FileFormatError(f"{run_file} is damaged ({e}); pass --restart to start over."
                             ) from None
        differ = [name for name in RUN_FLAGS if recorded.get(name) != current[name]]
        if differ:
            was = ", ".join(f"--{name}={recorded.get(name)}" for name in differ)
            raise util.FlagError(f"--save_path {save_path} holds a run with {was}; resume it with "
                                 f"the same flags, or pass --restart to start over.")
        return run_id, True
    elif os.path.isdir(save_path) and any(f.endswith(".l2l") for f in os.listdir(save_path)):
        raise util.FlagError(f"--save_path {save_path} holds saved optimizers but no run to "
                             f"resume; choose a new folder, or pass --restart to train into it.")
    os.makedirs(save_path, exist_ok=True)
    run_id = uuid.uuid4().hex
    util.atomic_write(run_file, json.dumps({"run_id": run_id, "flags": current},
                                               indent=1).encode())
    return run_id, False


def _saved_evaluation(save_path, run_id):
    """The evaluation recorded in this run's saved optimizer files, or None.

    It is written atomically with the weights, so it stays right even when the process died
    between saving the optimizer and writing the next checkpoint.
    """
    best = None
    for name in os.listdir(save_path):
        if name.endswith(".l2l"):
            try:
                metadata = weights_file.load(os.path.join(save_path, name)).metadata
            except util.WeightsFileError:
                continue
            if metadata.get("run_id") == run_id and "evaluation" in metadata:
                best = metadata["evaluation"] if best is None else max(best,
                                                                        metadata["evaluation"])
    return best


class _StopRequest:
    """Turns SIGINT/SIGTERM into a request to stop after the current epoch; a second one aborts."""

    def __init__(self):
        self.signal = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv):
    num_unrolls = _check_flags(argv)
    run_id, resuming = _open_run(FLAGS.save_path) if FLAGS.save_path else (None, False)

    tf.random.set_seed(FLAGS.seed)  # The networks' initial weights.
    config = configs.get_config(FLAGS.problem, "train", FLAGS.data_dir)
    net_config = configs.with_optimizer_kind(config.net_config, FLAGS.which_aml, FLAGS.fixed_lambda,
                                          FLAGS.lambda_mode, FLAGS.lambda_max)
    if FLAGS.net_options:
        net_config = configs.with_net_options(net_config, FLAGS.net_options)
    try:
        optimizer = meta.MetaOptimizer(**net_config)
    except util.UserError:
        raise
    except ValueError as e:
        raise util.FlagError(f"The optimizer's options are invalid ({e}); check --net_options, "
                             f"--fixed_lambda and --lambda_max.") from None
    if FLAGS.meta_objective == "validation" and config.problem.sample_validation is None:
        raise util.FlagError(f"--meta_objective=validation needs a problem with held-out data; "
                             f"--problem={FLAGS.problem} has none (use --meta_objective=train).")
    minimize = optimizer.meta_minimize(
        config.problem, FLAGS.unroll_length, learning_rate=FLAGS.learning_rate,
        net_assignments=config.net_assignments, second_derivatives=FLAGS.second_derivatives,
        state_reset_period=FLAGS.state_reset_period, meta_objective=FLAGS.meta_objective,
        mode=FLAGS.mode)
    # Held-out epochs (validation data where the problem has data) choose the optimizer to keep.
    eval_config = configs.get_config(FLAGS.problem, "validation", FLAGS.data_dir)
    eval_length = meta.eval_unroll_length(FLAGS.num_steps)
    evaluation = optimizer.meta_loss(eval_config.problem, eval_length,
                                     net_assignments=eval_config.net_assignments,
                                     state_reset_period=FLAGS.state_reset_period, mode=FLAGS.mode)

    # Everything a resumed run needs; the data's random state is the epoch counter itself, as
    # every epoch's seed derives from (--seed, epoch).
    state = {"epoch": tf.Variable(0, dtype=tf.int64), "evaluations": tf.Variable(0, tf.int64),
             "best_evaluation": tf.Variable(float("inf"), dtype=tf.float64),
             "nonfinite_epochs": tf.Variable(0, tf.int64)}
    manager = None
    if FLAGS.save_path:
        checkpoint = tf.train.Checkpoint(optimizer=optimizer, meta_adam=minimize.optimizer,
                                         **state)
        manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(FLAGS.save_path, CHECKPOINTS), max_to_keep=2)
        if resuming and manager.latest_checkpoint:
            # Adam's slots are restored when first created, in the first compiled step.
            checkpoint.restore(manager.latest_checkpoint).expect_partial()
            saved = _saved_evaluation(FLAGS.save_path, run_id)
            if saved is not None and saved < state["best_evaluation"].numpy():
                state["best_evaluation"].assign(saved)
            print(f"Resuming from epoch {int(state['epoch'])} of {FLAGS.num_epochs} "
                  f"({manager.latest_checkpoint}).")
            if int(state["epoch"]) >= FLAGS.num_epochs:
                print("The run is complete; raise --num_epochs to train it further.")
                return 0
    writer = tf.summary.create_file_writer(FLAGS.logdir) if FLAGS.logdir else None

    stop = _StopRequest()
    progress = cli.Progress(FLAGS.num_epochs, int(state["epoch"]))
    period_epochs, consecutive_nonfinite = [], 0
    try:
        for e in range(int(state["epoch"]), FLAGS.num_epochs):
            epoch = meta.run_epoch(minimize, num_unrolls,
                                   meta.epoch_seed(FLAGS.seed, meta.TRAIN, e))
            state["epoch"].assign(e + 1)
            if epoch.finite:
                consecutive_nonfinite = 0
                period_epochs.append(epoch)
                progress.update(e + 1, epoch.meta_loss)
                _summaries(writer, e + 1, {"train/final_loss": epoch.final_loss,
                                           "train/meta_loss": epoch.meta_loss,
                                           "train/epoch_time": epoch.time})
            else:
                consecutive_nonfinite += 1
                state["nonfinite_epochs"].assign_add(1)
                progress.clear()
                print(f"Non-finite meta-loss or meta-gradient at epoch {e + 1} "
                      f"({consecutive_nonfinite} in a row, {int(state['nonfinite_epochs'])} in "
                      f"all): update skipped, optimizee reset.")
                if consecutive_nonfinite >= FLAGS.max_nonfinite:
                    kept = (f" The last good checkpoint ({manager.latest_checkpoint}) and the "
                            f"best optimizer in {FLAGS.save_path} are intact."
                            if manager and manager.latest_checkpoint else "")
                    print(f"Stopped: {consecutive_nonfinite} consecutive epochs with a "
                          f"non-finite meta-loss.{kept} Try a lower --learning_rate.")
                    return 1
            if (e + 1) % FLAGS.log_period == 0:
                progress.clear()
                _log(e + 1, period_epochs, writer)
                period_epochs = []
            if (e + 1) % FLAGS.evaluation_period == 0:
                progress.clear()
                _evaluate(evaluation, optimizer, state, e + 1, run_id, manager, writer)
            if manager and ((e + 1) % FLAGS.checkpoint_period == 0 or stop.signal):
                manager.save()
            if stop.signal:
                progress.clear()
                print(f"Stopped by {stop.signal} after epoch {e + 1}; checkpoint written to "
                      f"{manager.latest_checkpoint if manager else '(none: no --save_path)'}. "
                      f"Run the same command again to resume.")
                return EXIT_SIGNAL[stop.signal]
        if manager:
            manager.save()
        progress.clear()
        return 0
    except KeyboardInterrupt:
        progress.clear()
        print(f"Aborted; the last checkpoint "
              f"({manager.latest_checkpoint if manager else 'none'}) is intact.")
        return EXIT_SIGNAL["SIGINT"]
    finally:
        stop.restore()


def _summaries(writer, step, scalars):
    if writer is not None:
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)


def _log(epoch, period_epochs, writer):
    """The original's stats lines over the finite epochs of a log period, and lambda's."""
    if not period_epochs:
        print(f"Epoch {epoch}\nNo finite epoch in this log period.")
        return
    cli.print_stats(f"Epoch {epoch}", sum(e.final_loss for e in period_epochs),
                     sum(e.time for e in period_epochs), len(period_epochs))
    stats = meta.lambda_stats([r for e in period_epochs for r in e.results])
    cli.print_lambda_stats(stats)
    for key, (mean, low, high) in stats.items():
        _summaries(writer, epoch, {f"lambda/{key}/mean": mean, f"lambda/{key}/min": low,
                                   f"lambda/{key}/max": high})


def _evaluate(evaluation, optimizer, state, epoch, run_id, manager, writer):
    """Held-out epochs; saves the optimizer (then a checkpoint) when it beats the best so far."""
    results = []
    for _ in range(FLAGS.evaluation_epochs):
        seed = meta.epoch_seed(FLAGS.seed, meta.VALIDATION, int(state["evaluations"]))
        state["evaluations"].assign_add(1)
        results.append(meta.run_epoch(evaluation, FLAGS.num_steps // evaluation.unroll_length,
                                      seed))
    eval_cost = sum(r.final_loss for r in results)
    cli.print_stats("EVALUATION", eval_cost, sum(r.time for r in results), len(results))
    cli.report_divergence(results, "evaluation epochs")
    mean = eval_cost / len(results)
    _summaries(writer, epoch, {"evaluation/final_loss": mean})
    if FLAGS.save_path is not None and mean < state["best_evaluation"].numpy():
        print(f"Saving meta-optimizer to {FLAGS.save_path}")
        optimizer.save(FLAGS.save_path, {"run_id": run_id, "epoch": epoch, "evaluation": mean})
        state["best_evaluation"].assign(mean)
        manager.save()  # At once, so that a resumed run knows this best.


if __name__ == "__main__":
    app.run(cli.run(main))
