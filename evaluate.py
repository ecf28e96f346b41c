"""Evaluates a learned or hand-designed optimizer on a problem (the original's evaluate.py).

    python evaluate.py --problem=quadratic --optimizer=L2L --path=runs/quadratic
    python evaluate.py --problem=quadratic --optimizer=Adam --learning_rate=0.1

Runs `num_epochs` epochs of `num_steps` optimizee steps each on the problem's test data and prints
the mean final loss.
"""

import util  # First: it imports TensorFlow without its start-up chatter.  # isort: skip


from absl import app
from absl import flags
from absl import logging

import meta

FLAGS = flags.FLAGS
flags.DEFINE_enum("optimizer", "L2L", ["L2L", "Adam"], "Optimizer to evaluate.")
flags.DEFINE_string("path", None, "Saved optimizer: a directory of .l2l files, or one file.")
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of a hand-designed optimizer.")
flags.DEFINE_integer("num_epochs", 100, "Number of evaluation epochs.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the problems' initial parameters and data.")
flags.DEFINE_enum("problem", "simple", sorted(util.CONFIGS), "Type of problem.")
flags.DEFINE_integer("num_steps", 100, "Number of optimization steps per epoch.", lower_bound=1)
flags.DEFINE_string("data_dir", None, "Folder with the dataset files (or DIR/<dataset>/); "
                    "else $L2L_DATA_DIR, system folders, then tensorflow_datasets.")
flags.DEFINE_enum("mode", None, meta.MODES, "Compilation: eager, graph (tf.function) or xla; "
                  "default: the fastest for the device (xla on GPU, graph on CPU).")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {' '.join(argv[1:])} (flags are --name=value).")
    config = util.get_config(FLAGS.problem, "test", FLAGS.data_dir)
    unroll_length = util.eval_unroll_length(FLAGS.num_steps)
    if FLAGS.optimizer in meta.BASELINES:
        unroll = meta.BaselineUnroll(config.problem, FLAGS.optimizer, FLAGS.learning_rate,
                                     unroll_length, mode=FLAGS.mode)
    else:
        net_config = config.net_config
        if FLAGS.path is None:
            logging.warning("Evaluating untrained %s optimizer", FLAGS.optimizer)
        else:
            net_config = util.with_saved_paths(net_config, FLAGS.path, FLAGS.optimizer)
        optimizer = meta.MetaOptimizer(**net_config)
        unroll = optimizer.meta_loss(config.problem, unroll_length,
                                     net_assignments=config.net_assignments, mode=FLAGS.mode)

    total_time = total_cost = 0.0
    for e in range(FLAGS.num_epochs):
        epoch = util.run_epoch(unroll, FLAGS.num_steps // unroll_length,
                               util.epoch_seed(FLAGS.seed, util.TEST, e))
        total_time += epoch.time
        total_cost += epoch.final_loss
    util.print_stats(f"Epoch {FLAGS.num_epochs}", total_cost, total_time, FLAGS.num_epochs)


if __name__ == "__main__":
    app.run(util.cli(main))
