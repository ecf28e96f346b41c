"""Meta-trains a learned optimizer on a problem (the original's train.py, in TF2).

    python train.py --problem=quadratic --save_path=runs/quadratic

Every `log_period` epochs it prints the mean final loss; every `evaluation_period` epochs it
evaluates the optimizer on held-out epochs and saves it to `save_path` when it improved.
"""

import util  # First: it imports TensorFlow without its start-up chatter.  # isort: skip

import os

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

import meta

FLAGS = flags.FLAGS
flags.DEFINE_string("save_path", None, "Directory to save the best meta-optimizer to.")
flags.DEFINE_integer("num_epochs", 10000, "Number of training epochs.", lower_bound=1)
flags.DEFINE_integer("log_period", 100, "Log period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_period", 1000, "Evaluation period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_epochs", 20, "Number of evaluation epochs.", lower_bound=1)
flags.DEFINE_enum("problem", "simple", sorted(util.CONFIGS), "Type of problem.")
flags.DEFINE_integer("num_steps", 100, "Number of optimization steps per epoch.", lower_bound=1)
flags.DEFINE_integer("unroll_length", 20, "Meta-optimizer unroll length.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of the meta-optimizer (Adam).")
flags.DEFINE_boolean("second_derivatives", False, "Use second derivatives.")
flags.DEFINE_integer("seed", 0, "Seed of the network weights and of all problem data.")
flags.DEFINE_enum("which_aml", "L2L", util.OPTIMIZER_KINDS, "Optimizer to meta-train: L2L, "
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
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (or DIR/<dataset>/); "
                    "else $L2L_DATA_DIR, system folders, then tensorflow_datasets.")
flags.DEFINE_enum("mode", None, meta.MODES, "Compilation: eager, graph (tf.function) or xla; "
                  "default: the fastest for the device (xla on GPU, graph on CPU).")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags are --name=value).")
    num_unrolls = meta.num_unrolls(FLAGS.num_steps, FLAGS.unroll_length)
    if not FLAGS.learning_rate > 0:
        raise ValueError(f"--learning_rate must be positive, got {FLAGS.learning_rate}.")
    if FLAGS.save_path is not None:
        if os.path.isdir(FLAGS.save_path) and any(
                f.endswith(".l2l") for f in os.listdir(FLAGS.save_path)):
            raise ValueError(f"--save_path {FLAGS.save_path} already holds a saved optimizer; "
                             f"choose a new folder.")
        os.makedirs(FLAGS.save_path, exist_ok=True)

    tf.random.set_seed(FLAGS.seed)  # The networks' initial weights.
    config = util.get_config(FLAGS.problem, "train", FLAGS.data_dir)
    net_config = util.with_optimizer_kind(config.net_config, FLAGS.which_aml, FLAGS.fixed_lambda,
                                          FLAGS.lambda_mode, FLAGS.lambda_max)
    optimizer = meta.MetaOptimizer(**net_config)
    minimize = optimizer.meta_minimize(
        config.problem, FLAGS.unroll_length, learning_rate=FLAGS.learning_rate,
        net_assignments=config.net_assignments, second_derivatives=FLAGS.second_derivatives,
        state_reset_period=FLAGS.state_reset_period, meta_objective=FLAGS.meta_objective,
        mode=FLAGS.mode)
    # Held-out epochs (validation data where the problem has data) choose the optimizer to keep.
    eval_config = util.get_config(FLAGS.problem, "validation", FLAGS.data_dir)
    eval_length = util.eval_unroll_length(FLAGS.num_steps)
    evaluation = optimizer.meta_loss(eval_config.problem, eval_length,
                                     net_assignments=eval_config.net_assignments,
                                     state_reset_period=FLAGS.state_reset_period, mode=FLAGS.mode)

    best_evaluation = float("inf")
    total_time = total_cost = 0.0
    period_results = []
    evaluations = 0
    for e in range(FLAGS.num_epochs):
        epoch = util.run_epoch(minimize, num_unrolls, util.epoch_seed(FLAGS.seed, util.TRAIN, e))
        total_time += epoch.time
        total_cost += epoch.final_loss
        period_results.extend(epoch.results)
        if (e + 1) % FLAGS.log_period == 0:
            util.print_stats(f"Epoch {e + 1}", total_cost, total_time, FLAGS.log_period)
            util.print_lambda_stats(util.lambda_stats(period_results))
            total_time = total_cost = 0.0
            period_results = []
        if (e + 1) % FLAGS.evaluation_period == 0:
            eval_cost = eval_time = 0.0
            for _ in range(FLAGS.evaluation_epochs):
                seed = util.epoch_seed(FLAGS.seed, util.VALIDATION, evaluations)
                evaluations += 1
                result = util.run_epoch(evaluation, FLAGS.num_steps // eval_length, seed)
                eval_time += result.time
                eval_cost += result.final_loss
            util.print_stats("EVALUATION", eval_cost, eval_time, FLAGS.evaluation_epochs)
            if FLAGS.save_path is not None and eval_cost < best_evaluation:
                print(f"Saving meta-optimizer to {FLAGS.save_path}")
                optimizer.save(FLAGS.save_path)
                best_evaluation = eval_cost
    return 0 if np.isfinite(total_cost) else 1


if __name__ == "__main__":
    app.run(util.cli(main))
