"""Meta-trains a learned optimizer on a problem (the original's train.py, in TF2).

    .venv/bin/python train.py --problem=quadratic --save_path=runs/quadratic

Every `log_period` epochs it prints the mean final loss; every `evaluation_period` epochs it
evaluates the optimizer on held-out epochs and saves it to `save_path` when it improved. With
`save_path` the run is also checkpointed every `checkpoint_period` epochs: the same command
resumes it after a crash, Ctrl-C or SIGTERM (`--restart` starts over). Without `save_path`
nothing is kept.

`--meta_batch_size=B` unrolls B instances of the problem per meta-update; `--strategy` spreads
them over a machine's devices (`mirrored`) or several machines (`multi_worker`, with the cluster
in `TF_CONFIG`), where only the chief writes to `save_path`.
"""

import os
import sys

from absl import flags

import cli
import cluster
import configs
import datasets

FLAGS = flags.FLAGS
cli.define_problem_flags()
flags.adopt_module_key_flags(cli)  # The shared flags in this script's --help.
flags.DEFINE_string("save_path", None, "Directory for the best meta-optimizer and checkpoints.")
flags.DEFINE_integer("num_epochs", 10000, "Number of training epochs.", lower_bound=1,
                     upper_bound=10**9)
flags.DEFINE_integer("log_period", 100, "Log period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_period", 1000, "Evaluation period (epochs).", lower_bound=1)
flags.DEFINE_integer("evaluation_epochs", 20, "Number of evaluation epochs.", lower_bound=1,
                     upper_bound=10**6)
flags.DEFINE_integer("evaluation_num_steps", None, "Optimizee steps of each evaluation epoch; "
                     "default: --num_steps. Train on a longer horizon than the one the kept "
                     "optimizer is chosen on.", lower_bound=1, upper_bound=10**6)
flags.DEFINE_integer("evaluation_seed", None, "Seed of the evaluations' held-out epochs (those "
                     "of evaluate.py --split=validation --seed=<it>); default: --seed. Give "
                     "runs of several --seed the same one to choose between them on the same "
                     "epochs.", lower_bound=0)
flags.DEFINE_integer("unroll_length", 20, "Meta-optimizer unroll length.", lower_bound=1,
                     upper_bound=10**4)
flags.DEFINE_float("learning_rate", 0.001, "Learning rate of the meta-optimizer (Adam).")
flags.DEFINE_boolean("second_derivatives", False, "Use second derivatives.")
flags.DEFINE_enum("which_aml", "L2L", configs.OPTIMIZER_KINDS, "Optimizer to meta-train: L2L, "
                  "fixed lambda (x + delta + lambda x) or learned lambda.")
flags.DEFINE_float("fixed_lambda", 0.01, "lambda of --which_aml=fixed; the initial lambda of "
                   "--which_aml=learned.")
flags.DEFINE_enum("meta_objective", None, configs.META_OBJECTIVES, "Sum the optimizee's losses "
                  "on its training batches, or on held-out (validation) batches; default: "
                  "validation for --which_aml=learned on a problem with held-out data (lambda "
                  "can only pay off against held-out data), else train.")
flags.DEFINE_string("net_options", None, "JSON options merged into every learned network's "
                    "config, e.g. '{\"scale\": 0.1, \"preprocess_options\": {\"k\": 10}}'.")
flags.DEFINE_string("initial_path", None, "Start from a saved optimizer's weights (a directory "
                    "of .l2l files or one file, as evaluate.py's --path) instead of random "
                    "ones, with the options its file records: fine-tuning, e.g. on a longer "
                    "horizon.")
flags.DEFINE_integer("meta_batch_size", 1, "Problem instances unrolled per meta-update, each "
                     "from its own seed; the meta-loss is their mean.", lower_bound=1,
                     upper_bound=1024)
flags.DEFINE_enum("strategy", "none", configs.STRATEGIES, "Distribution: none; mirrored (this "
                  "machine's devices); multi_worker (several processes or machines, cluster "
                  "from TF_CONFIG). The meta-batch is split across the replicas.")
flags.DEFINE_integer("cluster_timeout", 600, "--strategy=multi_worker: seconds each task waits "
                     "for the others of TF_CONFIG, at the start (saying so) and at each exchange "
                     "of meta-gradients; then it gives up in one line.", lower_bound=1,
                     upper_bound=10**6)
flags.DEFINE_enum("rematerialize", None, sorted(configs.REMATERIALIZE), "How the meta-gradient's "
                  "backward pass gets each step's values (the same numbers): steps (default for "
                  "first-order meta-gradients: keep each step's inputs and recompute it; the "
                  "fastest), chunks (keep only the optimizee's gradients and replay the network "
                  "over chunks of coordinates: memory that barely grows with --unroll_length, "
                  "for large optimizees; slower) or off (keep every activation).")
flags.DEFINE_enum("estimator", "tbptt", configs.ESTIMATORS, "How each meta-update's gradient "
                  "is estimated: tbptt (backpropagation through each truncation of "
                  "--unroll_length steps, the paper's), es (antithetic evolution strategies over "
                  "the whole epoch: one update per epoch) or pes (persistent evolution "
                  "strategies: one unbiased update per truncation). ES and PES run forward only, "
                  "so memory does not grow with the horizon.")
flags.DEFINE_integer("perturbations", 8, "ES and PES: antithetic pairs of perturbations of the "
                     "optimizer's weights per instance and meta-update.", lower_bound=1,
                     upper_bound=1024)
# 0.001: of 0.01, 0.001 and 0.0001, the scale at which one estimate of the MNIST LSTM's
# meta-gradient spread least (bench/README.md, "Estimators"): larger ones meet the meta-loss's
# roughness, smaller ones float32's rounding of the loss differences.
flags.DEFINE_float("es_std", 0.001, "ES and PES: standard deviation of the perturbations.")
flags.DEFINE_enum("net", None, configs.LEARNED_NETS, "The learned network to meta-train; "
                  "default: the problem's (the paper's CoordinateWiseDeepLSTM; NormalizedMLP for "
                  "task families). --net_options are that network's.")
flags.DEFINE_integer("plateau_epochs", 50, "Say (once) when the meta-loss of a new run has "
                     "not moved in its first that many epochs: the meta-training is learning "
                     "nothing (0: never).", lower_bound=0)
flags.DEFINE_integer("checkpoint_period", 100, "Epochs between checkpoints in save_path.",
                     lower_bound=1)
flags.DEFINE_boolean("restart", False, "Start over in a save_path that holds a run, instead of "
                     "resuming it (its saved optimizer is replaced at the first evaluation).")
flags.DEFINE_integer("max_nonfinite", 10, "Stop after this many consecutive epochs with a "
                     "non-finite meta-loss or meta-gradient.", lower_bound=1)
flags.DEFINE_string("logdir", None, "Directory for TensorBoard summaries.")


def _check_flags(argv):
    """Flag values and combinations that cannot work, each a one-line error naming the flag."""
    import util  # pylint: disable=import-outside-toplevel
    cli.check_no_arguments(argv)
    cli.check_positive(learning_rate=FLAGS.learning_rate, lambda_max=FLAGS.lambda_max,
                       es_std=FLAGS.es_std)
    cli.check_finite(fixed_lambda=FLAGS.fixed_lambda)
    given = lambda name: FLAGS[name].present
    for name in configs.KIND_FLAGS["learned"]:  # Every kind's flags are among learned's.
        if given(name) and name not in configs.KIND_FLAGS[FLAGS.which_aml]:
            kinds = " and ".join(k for k, v in configs.KIND_FLAGS.items() if name in v)
            raise util.FlagError(f"--{name} does not apply to --which_aml={FLAGS.which_aml}; "
                                 f"remove it (it is for {kinds}).")
    datasets.check_data_dir(FLAGS.data_dir)  # Before TensorFlow starts, not after a download.
    if FLAGS.net_options is not None:  # Before TensorFlow's start-up and any other output.
        configs.parse_net_options(FLAGS.net_options)
    if FLAGS.initial_path:
        for name in ("net_options", "lambda_mode", "lambda_max"):
            if given(name):
                raise util.FlagError(f"--{name} does not apply with --initial_path: the "
                                     f"network's options are those its file records.")
    if FLAGS.estimator != "tbptt":
        for name in ("second_derivatives", "rematerialize"):
            if given(name):
                raise util.FlagError(f"--{name} applies to --estimator=tbptt (backpropagation); "
                                     f"--estimator={FLAGS.estimator} runs forward only.")
    else:
        for name in ("perturbations", "es_std"):
            if given(name):
                raise util.FlagError(f"--{name} applies to --estimator=es and pes; remove it "
                                     f"(or choose one of them).")
    if FLAGS.initial_path and given("net"):
        raise util.FlagError("--net does not apply with --initial_path: the network is the one "
                             "its file records.")
    if FLAGS.second_derivatives and FLAGS.rematerialize not in (None, "off"):
        raise util.FlagError(f"--rematerialize={FLAGS.rematerialize} reuses first-order "
                             f"gradients; with --second_derivatives use --rematerialize=off.")
    if FLAGS.strategy == "multi_worker":  # TF_CONFIG's mistakes, before TensorFlow starts.
        cluster.from_environment()
        # A peer that stops is said in one line (training.train), not also in TensorFlow's C++
        # error lines of every collective it aborts.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    elif given("cluster_timeout"):
        raise util.FlagError("--cluster_timeout applies to --strategy=multi_worker only; remove "
                             "it.")
    if not FLAGS.save_path:
        for name in ("restart", "checkpoint_period"):
            if given(name):
                raise util.FlagError(f"--{name} needs --save_path (the folder of the run).")
    try:
        return configs.num_unrolls(FLAGS.num_steps, FLAGS.unroll_length)
    except ValueError as e:
        raise util.FlagError(f"--unroll_length: {e}") from None


def _meta_objective(problem):
    """The meta-objective: the flag, or the recommended one for the optimizer and problem."""
    import util  # pylint: disable=import-outside-toplevel
    import task_families  # pylint: disable=import-outside-toplevel
    held_out = (problem.held_out if isinstance(problem, task_families.FamilyProblems) else
                problem.sample_validation is not None)
    if FLAGS.meta_objective == "validation" and not held_out:
        raise util.FlagError(f"--meta_objective=validation needs a problem with held-out data; "
                             f"--problem={FLAGS.problem} has none (use --meta_objective=train).")
    if FLAGS.meta_objective:
        return FLAGS.meta_objective
    return "validation" if FLAGS.which_aml == "learned" and held_out else "train"


def main(argv):
    num_unrolls = _check_flags(argv)
    # Imported here, after the flags are parsed: `--help` and flag errors answer at once.
    import run_folder  # pylint: disable=import-outside-toplevel
    import training  # pylint: disable=import-outside-toplevel

    names = [flag.name for flag in FLAGS.get_key_flags_for_module(sys.argv[0])]
    strategy, chief = training.make_strategy(FLAGS.strategy, training.cluster_run(FLAGS, names),
                                             FLAGS.cluster_timeout)
    config = configs.get_config(FLAGS.problem, "train", FLAGS.data_dir)
    objective = _meta_objective(config.problem)
    flags_of_run = training.run_flags(FLAGS, objective)
    print(f"Meta-objective: {objective} ({training.OBJECTIVES[objective]}).")
    built = training.build(FLAGS, config, objective, strategy)  # Before the folder changes.
    meta_batch = training.describe_meta_batch(FLAGS.meta_batch_size, strategy)
    if meta_batch:
        print(meta_batch)
    if FLAGS.save_path is None:
        print("Nothing will be saved: pass --save_path=DIR to keep the best optimizer and "
              "checkpoints (and to resume).")
    networks = training.network_record(built.optimizer)
    folder = (run_folder.RunFolder.open(FLAGS.save_path, flags_of_run, FLAGS.restart, chief,
                                        networks) if FLAGS.save_path else None)
    try:
        return training.train(FLAGS, built, num_unrolls, folder)
    finally:
        if folder:
            folder.close()


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv, crash_advice=(
        f"lower {configs.MEMORY_FLAGS} (a new run: pass --restart or another --save_path). A "
        f"--save_path keeps its last checkpoint."))
