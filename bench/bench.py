"""Times meta-training and evaluation of the learned optimizer; the last line printed is JSON.

    python bench/bench.py                         # MNIST, the paper's configuration
    python bench/bench.py --sweep                 # growth with coordinates and unroll length
    python bench/bench.py --compare_modes         # eager, graph and xla on this machine
    python bench/bench.py --quick                 # a smoke run of a few seconds
    python bench/bench.py --compare_peer=../peer-venv/bin/python   # then the JAX peer, ratios
    python bench/bench.py --sweep_unroll          # memory growth with the unroll length
    python bench/bench.py --sweep_meta_batch      # meta-batches of 1, 2, 4 and 8 instances
    python bench/bench.py --keras                 # LearnedOptimizer in model.fit against Adam

See bench/README.md for the fields and how to read them.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # The repository root.

import json
import os
import resource
import statistics
import subprocess
import time

from absl import flags
import numpy as np

import cli
import configs
import datasets
import util

# TensorFlow and the modules that use it are imported by `_import_runtime`, in the processes that
# time something: a parent that only runs children (--compare_peer, the sweeps) stays small, and
# a child's peak-RSS reading (ru_maxrss, as the peer's) starts from its parent's resident size.
tf = meta = problems = None


def _import_runtime():
    global tf, meta, problems  # pylint: disable=global-statement,invalid-name
    if tf is None:
        tf = util.import_tensorflow()
        import meta as meta_module  # pylint: disable=import-outside-toplevel
        import problems as problems_module  # pylint: disable=import-outside-toplevel
        meta, problems = meta_module, problems_module

FLAGS = flags.FLAGS
flags.DEFINE_enum("problem", "mnist", sorted(configs.CONFIGS),
                  "Problem (a configs.get_config name).")
flags.DEFINE_integer("hidden", 20, "Hidden units of the MNIST MLP (--problem=mnist only).",
                     lower_bound=1)
flags.DEFINE_integer("unroll_length", 20, "Optimizee steps per meta-iteration.", lower_bound=1)
flags.DEFINE_integer("num_steps", 100, "Optimizee steps per epoch.", lower_bound=1)
flags.DEFINE_enum("mode", None, configs.MODES, "Compilation mode of meta-training and evaluation; "
                  "default meta.default_mode() of each.")
flags.DEFINE_integer("iterations", 50, "Timed meta-iterations (>= 20 unless --quick).",
                     lower_bound=1)
flags.DEFINE_integer("eval_epochs", 10, "Timed evaluation epochs.", lower_bound=1)
flags.DEFINE_string("data_dir", None, "Folder with the MNIST files; else the normal search.")
flags.DEFINE_boolean("synthetic", False, "Time random data of MNIST's shapes even when MNIST "
                     "is found.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads; 0: TF's default.",
                     lower_bound=0)
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads; 0: TF's default.",
                     lower_bound=0)
flags.DEFINE_boolean("quick", False, "Smoke run: unroll 4, 8 steps, 3 iterations, 1 eval epoch "
                     "(flags given explicitly win).")
flags.DEFINE_boolean("sweep", False, "Run hidden H, 2H, 4H and unroll L/2, L, 2L, each in its own "
                     "process, and print a table.")
flags.DEFINE_enum("rematerialize", "auto", ["auto"] + sorted(configs.REMATERIALIZE),
                  "How the meta-gradient's backward pass gets each step's values (see "
                  "configs.REMATERIALIZE); auto: meta.Unroll's default.")
flags.DEFINE_string("compare_peer", None, "A Python with jax: after this benchmark, run the JAX "
                    "peer (--peer_script) with it on the same computation and print both and "
                    "the ratios.")
flags.DEFINE_string("peer_script", str(pathlib.Path(__file__).resolve().parents[2] / "shared" /
                                       "peers" / "peer_jax.py"), "The peer's script.")
flags.DEFINE_string("peer_variant", "scan_remat", "The peer's --variant.")
flags.DEFINE_integer("repeats", 1, "With --compare_peer: alternate this many runs of each and "
                     "report medians.", lower_bound=1)
flags.DEFINE_boolean("sweep_unroll", False, "Run unroll lengths 10, 20, 40 and 80 with each "
                     "rematerialisation, each in its own process; print the memory "
                     "above the after-import level and its growth per unroll step.")
flags.DEFINE_integer("meta_batch_size", 1, "Problem instances per meta-iteration.", lower_bound=1)
flags.DEFINE_boolean("sweep_meta_batch", False, "Run meta-batches of 1, 2, 4 and 8 instances, "
                     "each in its own process, and print a table.")
flags.DEFINE_boolean("keras", False, "Time LearnedOptimizer against Keras Adam in model.fit on "
                     "the MNIST MLP and on a model of about a million parameters.")
flags.DEFINE_enum("keras_fit", None, [f"{m}:{o}" for m in ("mnist_mlp", "million")
                                      for o in ("learned", "general", "adam", "sgd")],  # KERAS_*.
                  "Internal to --keras: one model.fit timing in this process.")
flags.DEFINE_boolean("compare_modes", False, "Run every compilation mode, each in its own "
                     "process, and print a table.")

DEFAULT_MODE = "xla"  # meta.default_mode(), without importing TensorFlow here (tested).
QUICK = {"unroll_length": 4, "num_steps": 8, "iterations": 3, "eval_epochs": 1}
MNIST_TRAIN_SIZE, MNIST_TEST_SIZE = 60_000, 10_000  # The official files; validation is cut
                                                    # from the end of train (datasets.load).


def _setting(name):
    """A flag's value, with --quick's default when the flag was not given."""
    if FLAGS.quick and name in QUICK and not FLAGS[name].present:
        return QUICK[name]
    return FLAGS[name].value


def _synthetic_mnist(split):
    """Random uint8 images and int32 labels of MNIST's shapes and split sizes."""
    validation = datasets.VALIDATION_SIZES["mnist"]
    size = {"train": MNIST_TRAIN_SIZE - validation, "validation": validation,
            "test": MNIST_TEST_SIZE}[split]
    rng = np.random.default_rng(0)  # Timing does not depend on the pixel values.
    return (rng.integers(0, 256, [size, 28, 28, 1], dtype=np.uint8),
            rng.integers(0, 10, [size], dtype=np.int32))


def _mnist_loader():
    """(loader, data label): real MNIST from the normal search, else synthetic data."""
    if not FLAGS.synthetic:
        try:
            datasets.load("mnist", "train", FLAGS.data_dir)
            return (lambda split: datasets.load("mnist", split, FLAGS.data_dir)), "mnist"
        except datasets.DatasetError as e:
            print(f"bench.py: timing synthetic data of MNIST's shapes ({e})", file=sys.stderr)
    return _synthetic_mnist, "synthetic"


def _config(hidden):
    """(configs.Config, data label) of --problem; for mnist the MLP has `hidden` units."""
    if FLAGS.problem != "mnist":
        if FLAGS["hidden"].present:
            raise util.FlagError(f"--hidden applies to --problem=mnist only, not {FLAGS.problem}.")
        config = configs.get_config(FLAGS.problem, "train", FLAGS.data_dir)
        return config, "none" if config.problem.sample_validation is None else "real"
    loader, data = _mnist_loader()
    config = configs.get_config("mnist", "train", loader=loader)
    problem = problems.mlp("mnist", layers=(hidden,), split="train", loader=loader)
    return config._replace(problem=problem), data


def _device():
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def _peak_rss_mb():
    """This process's peak resident memory so far: VmHWM on Linux (its own, from exec on),
    else ru_maxrss (kB on Linux, bytes on macOS), which includes the parent's at the fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 1024)


def _cpu_count():
    """The cores this process may run on (a container's share, where the OS tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _meta_iteration_times(minimize, num_unrolls, count):
    """Wall seconds of `count` meta-iterations; every `num_unrolls`-th starts an epoch."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        if i % num_unrolls == 0:
            minimize.reset(meta.instance_seeds(0, meta.TRAIN, i // num_unrolls,
                                               minimize.meta_batch_size))
        result = minimize()
        for tensor in tf.nest.flatten(result):
            tensor.numpy()  # Wait for the unroll, its meta-gradient and the Adam step.
        times.append(time.perf_counter() - start)
    return times


def benchmark():
    """One configuration in this process; returns the JSON fields."""
    _import_runtime()
    unroll_length, num_steps = _setting("unroll_length"), _setting("num_steps")
    iterations, eval_epochs = _setting("iterations"), _setting("eval_epochs")
    num_unrolls = meta.num_unrolls(num_steps, unroll_length)
    # Before any op runs: TensorFlow fixes its thread pools when its runtime starts.
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)

    tf.random.set_seed(0)  # The networks' initial weights.
    config, data = _config(FLAGS.hidden)
    rss_after_import = _peak_rss_mb()  # TensorFlow, the project and the data; nothing run yet.
    optimizer = meta.MetaOptimizer(**config.net_config)
    remat = None if FLAGS.rematerialize == "auto" else FLAGS.rematerialize
    minimize = optimizer.meta_minimize(config.problem, unroll_length, learning_rate=0.001,
                                       net_assignments=config.net_assignments, mode=FLAGS.mode,
                                       rematerialize=remat, meta_batch_size=FLAGS.meta_batch_size)
    eval_length = meta.eval_unroll_length(num_steps)
    evaluation = optimizer.meta_loss(config.problem, eval_length,
                                     net_assignments=config.net_assignments, mode=FLAGS.mode)

    # The first epoch is compilation (its first iteration) and warm-up; timing starts on an
    # epoch boundary so that one timed iteration in num_unrolls includes the reset, as training.
    times = _meta_iteration_times(minimize, num_unrolls, num_unrolls + iterations)
    train_rss = _peak_rss_mb()
    eval_epochs_run = [meta.run_epoch(evaluation, num_steps // eval_length,
                                      meta.epoch_seed(0, meta.TEST, e))
                       for e in range(1 + eval_epochs)]
    eval_times = [epoch.time for epoch in eval_epochs_run]

    s_per_meta_iteration = statistics.median(times[num_unrolls:])
    num_coordinates = sum(p.shape.num_elements() for p in minimize.carry.params)
    return {
        "problem": FLAGS.problem,
        "hidden": FLAGS.hidden if FLAGS.problem == "mnist" else None,
        "device": _device(),
        "mode": minimize.mode,
        "eval_mode": evaluation.mode,
        "data": data,
        "s_per_meta_iteration": s_per_meta_iteration,
        "s_per_eval_epoch": statistics.median(eval_times[1:]),
        "compile_s": times[0],
        "eval_compile_s": eval_times[0],
        # Each timed evaluation epoch's seconds and final loss: runs whose times differ while
        # their losses are identical differ in how the threads shared the cores, not in the
        # arithmetic (bench/README.md, "Why the evaluation epoch's time swings").
        "eval_epoch_s": eval_times[1:],
        "eval_final_losses": [epoch.final_loss for epoch in eval_epochs_run[1:]],
        "rematerialize": minimize.rematerialize,
        "meta_batch_size": minimize.meta_batch_size,
        "instances_per_s": minimize.meta_batch_size / s_per_meta_iteration,
        # What a data-parallel run all-reduces per meta-update: the meta-gradient (float32).
        "allreduce_bytes": 4 * sum(v.shape.num_elements() for v in minimize.variables),
        "peak_rss_mb": _peak_rss_mb(),
        "train_peak_rss_mb": train_rss,
        "rss_after_import_mb": rss_after_import,
        "s_per_coordinate": s_per_meta_iteration / num_coordinates,
        "s_per_unroll_step": s_per_meta_iteration / unroll_length,
        "num_coordinates": num_coordinates,
        "unroll_length": unroll_length,
        "num_steps": num_steps,
        "eval_unroll_length": eval_length,
        "iterations": iterations,
        "eval_epochs": eval_epochs,
        "intra_op_threads": FLAGS.intra_op_threads,
        "inter_op_threads": FLAGS.inter_op_threads,
        "cpu_count": _cpu_count(),
        "tensorflow": tf.__version__,
    }


def _run_child(**overrides):
    """The JSON of this script run in a new process (peak RSS is per process)."""
    settings = {name: _setting(name) for name in
                ("problem", "unroll_length", "num_steps", "iterations", "eval_epochs",
                 "intra_op_threads", "inter_op_threads", "mode", "data_dir", "rematerialize",
                 "meta_batch_size")}
    if FLAGS.problem == "mnist":  # --hidden applies to the MNIST MLP only.
        settings["hidden"] = FLAGS.hidden
    settings.update(overrides)
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    args += ["--synthetic"] * FLAGS.synthetic + ["--quick"] * FLAGS.quick
    print(f"running {' '.join(args)}", file=sys.stderr, flush=True)
    child = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    if child.returncode:
        raise SystemExit(f"bench.py: {' '.join(args)} failed with exit status {child.returncode}"
                         " (its stderr is above).")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _print_table(rows):
    print(f"{'mode':>5} {'hidden':>6} {'unroll':>6} {'coords':>7} {'s/iter':>8} "
          f"{'us/coord':>8} {'ms/step':>8} {'compile_s':>9} {'eval_s':>7} {'train_mb':>8} "
          f"{'peak_mb':>7}")
    for r in rows:
        print(f"{r['mode']:>5} {str(r['hidden']):>6} {r['unroll_length']:>6} "
              f"{r['num_coordinates']:>7} {r['s_per_meta_iteration']:>8.4f} "
              f"{1e6 * r['s_per_coordinate']:>8.3f} {1e3 * r['s_per_unroll_step']:>8.2f} "
              f"{r['compile_s']:>9.2f} {r['s_per_eval_epoch']:>7.3f} "
              f"{r['train_peak_rss_mb']:>8.0f} {r['peak_rss_mb']:>7.0f}")


PEER_FIELDS = ("s_per_meta_iteration", "s_per_eval_epoch", "compile_s", "peak_rss_mb")


def _run_peer():
    """The peer's JSON (its last line), run with --compare_peer's Python."""
    if not os.path.isfile(FLAGS.peer_script):
        raise util.FlagError(f"--peer_script {FLAGS.peer_script} does not exist; point it at "
                             f"peer_jax.py.")
    command = [FLAGS.compare_peer, FLAGS.peer_script, "--variant", FLAGS.peer_variant,
               "--threads", str(FLAGS.intra_op_threads or _cpu_count()),
               "--meta-iters", str(_setting("iterations")),
               "--eval-epochs", str(_setting("eval_epochs"))]
    print(f"running {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        peer = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        raise util.FlagError(f"--compare_peer {FLAGS.compare_peer}: {e.strerror}.") from None
    lines = [line for line in peer.stdout.splitlines() if line.startswith("{")]
    if peer.returncode or not lines:
        raise SystemExit(f"bench.py: the peer failed with exit status {peer.returncode}.")
    return json.loads(lines[-1])


def _compare_with_peer():
    """Alternating runs of this benchmark and the peer; medians of each and their ratios."""
    ours, peers = [], []
    for _ in range(FLAGS.repeats):
        ours.append(_run_child())
        peers.append(_run_peer())
    median = lambda rows, key: statistics.median(r[key] for r in rows)
    ours_above = median(ours, "peak_rss_mb") - median(ours, "rss_after_import_mb")
    peer_above = median(peers, "peak_rss_mb") - median(peers, "rss_after_import_and_data_mb")
    table = {
        "s_per_meta_iteration": (median(ours, "s_per_meta_iteration"),
                                 median(peers, "s_per_meta_iteration")),
        "s_per_eval_epoch": (median(ours, "s_per_eval_epoch"), median(peers, "s_per_eval_epoch")),
        "compile_s": (median(ours, "compile_s"), median(peers, "compile_s")),
        "peak_rss_mb": (median(ours, "peak_rss_mb"), median(peers, "peak_rss_mb")),
        "rss_after_import_mb": (median(ours, "rss_after_import_mb"),
                                median(peers, "rss_after_import_and_data_mb")),
        "rss_above_import_mb": (ours_above, peer_above),
    }
    print(f"{'':24} {'this project':>13} {'peer':>10} {'ratio':>7}   "
          f"(medians of {FLAGS.repeats} alternating runs)")
    for name, (a, b) in table.items():
        print(f"{name:24} {a:13.3f} {b:10.3f} {a / b:7.2f}")
    return {"ours": ours, "peer": peers, "repeats": FLAGS.repeats,
            "ratios": {name: a / b for name, (a, b) in table.items()},
            "medians": {name: {"ours": a, "peer": b} for name, (a, b) in table.items()}}


def _sweep_unroll():
    """Peak memory above the after-import level for unroll 10..80, for every rematerialisation."""
    rows = []
    for remat in sorted(configs.REMATERIALIZE):
        for length in (10, 20, 40, 80):
            # Epochs of 80 steps: every unroll length divides them.
            row = _run_child(unroll_length=length, num_steps=80, rematerialize=remat)
            row["rss_above_import_mb"] = row["train_peak_rss_mb"] - row["rss_after_import_mb"]
            rows.append(row)
    print(f"{'remat':>6} {'unroll':>6} {'s/iter':>8} {'above_import_mb':>15} {'mb/step':>8}")
    for remat in sorted(configs.REMATERIALIZE):
        chosen = [r for r in rows if r["rematerialize"] == remat]
        growth = ((chosen[-1]["rss_above_import_mb"] - chosen[0]["rss_above_import_mb"])
                  / (chosen[-1]["unroll_length"] - chosen[0]["unroll_length"]))
        for r in chosen:
            r["mb_per_unroll_step"] = growth
            print(f"{remat:>6} {r['unroll_length']:>6} {r['s_per_meta_iteration']:>8.3f} "
                  f"{r['rss_above_import_mb']:>15.0f} {growth:>8.2f}")
    return {"sweep_unroll": rows}


def _sweep_meta_batch():
    """Seconds per meta-update and instances per second for meta-batches of 1, 2, 4, 8."""
    rows = [_run_child(meta_batch_size=b) for b in (1, 2, 4, 8)]
    print(f"{'B':>3} {'s/iter':>8} {'instances/s':>12} {'peak_mb':>8} {'allreduce_bytes':>16}")
    for r in rows:
        print(f"{r['meta_batch_size']:>3} {r['s_per_meta_iteration']:>8.3f} "
              f"{r['instances_per_s']:>12.2f} {r['peak_rss_mb']:>8.0f} "
              f"{r['allreduce_bytes']:>16}")
    return {"sweep_meta_batch": rows}


KERAS_MODELS = ("mnist_mlp", "million")
KERAS_OPTIMIZERS = ("learned", "general", "adam", "sgd")  # learned: the shipped MNIST LSTM.


def _keras_model(name):
    import keras  # pylint: disable=import-outside-toplevel
    hidden = (20,) if name == "mnist_mlp" else (1024, 256)
    layers = [keras.Input((784,))] + [keras.layers.Dense(h, activation="sigmoid")
                                      for h in hidden] + [keras.layers.Dense(10)]
    return keras.Sequential(layers)


def _shipped_mnist_optimizer(name="mnist"):
    return str(pathlib.Path(__file__).resolve().parent.parent / "saved_optimizers" / name /
               "cw.l2l")


def _keras_fit(model_name, optimizer_name):
    """Seconds per `model.fit` step (jit-compiled, batch 128) and this process's memory."""
    _import_runtime()
    import keras  # pylint: disable=import-outside-toplevel
    import learned_optimizer  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    steps = _setting("iterations")
    x = rng.random([128 * steps, 784], np.float32)
    y = rng.integers(0, 10, [128 * steps]).astype(np.int32)
    rss_after_import = _peak_rss_mb()
    keras.utils.set_random_seed(0)
    model = _keras_model(model_name)
    optimizer = {"learned": lambda: learned_optimizer.LearnedOptimizer(_shipped_mnist_optimizer()),
                 "general": lambda: learned_optimizer.LearnedOptimizer(
                     _shipped_mnist_optimizer("general")),
                 "adam": lambda: keras.optimizers.Adam(0.01),
                 "sgd": lambda: keras.optimizers.SGD(0.01)}[optimizer_name]()
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), jit_compile=True)
    model.fit(x[:128 * 4], y[:128 * 4], batch_size=128, epochs=1, verbose=0)  # Compilation.
    start = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    # The optimizer's state: its variables (the step counters too, a few bytes) per parameter.
    state = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in optimizer.variables)
    return {"model": model_name, "optimizer": optimizer_name, "parameters": model.count_params(),
            "s_per_step": seconds / steps, "peak_rss_mb": _peak_rss_mb(),
            "rss_after_import_mb": rss_after_import,
            "state_bytes_per_parameter": state / model.count_params()}


def _ns_per_coordinate_step(model_name):
    """The learned optimizer's own cost, ns per parameter and step, three ways in one process:
    `optimizer.apply` on fixed gradients (compiled), the network's bare pure step on as many
    coordinates, and an evaluation unroll of the network over the MLP's problem (its step and
    the MLP's loss and gradients, per coordinate-step)."""
    _import_runtime()
    import learned_optimizer  # pylint: disable=import-outside-toplevel
    import networks  # pylint: disable=import-outside-toplevel
    path, steps = _shipped_mnist_optimizer(), _setting("iterations")
    model = _keras_model(model_name)
    variables = model.trainable_variables
    n = sum(v.shape.num_elements() for v in variables)
    grads = [tf.random.normal(v.shape, stddev=0.01) for v in variables]
    optimizer = learned_optimizer.LearnedOptimizer(path)
    apply = tf.function(lambda: optimizer.apply(grads, variables), jit_compile=True)
    net = networks.factory("CoordinateWiseDeepLSTM", net_path=path)
    weights = tf.nest.map_structure(tf.convert_to_tensor, net.step_weights())
    bare = tf.function(lambda g, s: net.step(weights, g, s, g), jit_compile=True)
    g = tf.random.normal([n], stddev=0.01)
    state = net.initial_state_for_inputs(g)
    row = {"model": model_name, "parameters": n}
    for label, call in (("optimizer", lambda: apply()),
                        ("network_step", lambda: bare(g, state).step.numpy())):
        call()
        call()
        start = time.perf_counter()
        for _ in range(steps):
            call()
        if label == "optimizer":
            variables[0].numpy()  # Wait for the last update.
        row[f"ns_per_parameter_{label}"] = (time.perf_counter() - start) / steps / n * 1e9
    hidden = (20,) if model_name == "mnist_mlp" else (1024, 256)
    problem = problems.mlp("mnist", layers=hidden, split="train", loader=_synthetic_mnist)
    length = 20  # Epochs of one 20-step unroll: a million coordinates take ~0.6 s a step.
    unroll = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_path": path}).meta_loss(
        problem, length)
    epochs = [meta.run_epoch(unroll, 1, meta.epoch_seed(0, meta.TEST, e)).time
              for e in range(3)]
    row["ns_per_coordinate_step_unroll"] = statistics.median(epochs[1:]) / (length * n) * 1e9
    row["optimizer_over_unroll"] = (row["ns_per_parameter_optimizer"]
                                    / row["ns_per_coordinate_step_unroll"])
    row["optimizer_over_network_step"] = (row["ns_per_parameter_optimizer"]
                                          / row["ns_per_parameter_network_step"])
    return row


def _keras_benchmark():
    """model.fit with LearnedOptimizer, Adam and SGD, each in its own process (peak memory is
    per process), then the optimizer's own cost against the network's and the unroll's."""
    rows = []
    for model_name in KERAS_MODELS:
        row = {"model": model_name}
        for optimizer_name in KERAS_OPTIMIZERS:
            fit = _run_child(keras_fit=f"{model_name}:{optimizer_name}")
            row["parameters"] = fit["parameters"]
            row[f"s_per_step_{optimizer_name}"] = fit["s_per_step"]
            row[f"rss_above_import_mb_{optimizer_name}"] = (fit["peak_rss_mb"]
                                                            - fit["rss_after_import_mb"])
            row[f"state_bytes_per_parameter_{optimizer_name}"] = fit["state_bytes_per_parameter"]
        row.update(_ns_per_coordinate_step(model_name))
        rows.append(row)
    print(f"{'model':>10} {'params':>8} {'learned s/step':>15} {'general s/step':>15} "
          f"{'adam s/step':>12} {'sgd s/step':>11} {'learned B/p':>12} {'general B/p':>12} "
          f"{'adam B/p':>9} {'learned MB':>11} {'adam MB':>8} {'opt ns/param':>13} "
          f"{'unroll ns':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['model']:>10} {r['parameters']:>8} {r['s_per_step_learned']:>15.4f} "
              f"{r['s_per_step_general']:>15.4f} "
              f"{r['s_per_step_adam']:>12.4f} {r['s_per_step_sgd']:>11.4f} "
              f"{r['state_bytes_per_parameter_learned']:>12.1f} "
              f"{r['state_bytes_per_parameter_general']:>12.1f} "
              f"{r['state_bytes_per_parameter_adam']:>9.1f} "
              f"{r['rss_above_import_mb_learned']:>11.0f} {r['rss_above_import_mb_adam']:>8.0f} "
              f"{r['ns_per_parameter_optimizer']:>13.1f} "
              f"{r['ns_per_coordinate_step_unroll']:>10.1f} {r['optimizer_over_unroll']:>6.2f}")
    return {"keras": rows, "tensorflow": tf.__version__, "cpu_count": _cpu_count()}


def main(argv):
    cli.check_no_arguments(argv)
    if _setting("iterations") < 20 and not FLAGS.quick:
        raise util.FlagError(f"--iterations must be >= 20 for a meaningful median, got "
                         f"{FLAGS.iterations}; --quick allows fewer.")
    if FLAGS.sweep and FLAGS.compare_modes:
        raise util.FlagError("--sweep and --compare_modes each run several processes; pick one.")
    if FLAGS.sweep and FLAGS.problem != "mnist":
        raise util.FlagError(f"--sweep varies --hidden, which applies to --problem=mnist only, "
                         f"not {FLAGS.problem}.")
    if FLAGS.compare_peer:
        fixed = {"problem": "mnist", "hidden": 20, "unroll_length": 20, "num_steps": 100}
        if FLAGS.quick or any(_setting(k) != v for k, v in fixed.items()):
            raise util.FlagError(f"--compare_peer times the peer's own configuration {fixed}; "
                                 f"run it with those settings and without --quick.")
        print(json.dumps(_compare_with_peer()))
        return
    if FLAGS.sweep_unroll:
        print(json.dumps(_sweep_unroll()))
        return
    if FLAGS.sweep_meta_batch:
        print(json.dumps(_sweep_meta_batch()))
        return
    if FLAGS.keras_fit:
        model_name, optimizer_name = FLAGS.keras_fit.split(":")
        print(json.dumps(_keras_fit(model_name, optimizer_name)))
        return
    if FLAGS.keras:
        print(json.dumps(_keras_benchmark()))
        return
    if not (FLAGS.sweep or FLAGS.compare_modes):
        result = benchmark()
        print(f"{result['problem']} on {result['device']} ({result['mode']}, data: "
              f"{result['data']}): {result['s_per_meta_iteration']:.4f} s/meta-iteration, "
              f"{result['s_per_eval_epoch']:.4f} s/eval epoch, compile {result['compile_s']:.1f}"
              f" s + {result['eval_compile_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB")
        print(json.dumps(result))
        return

    hidden, length = FLAGS.hidden, _setting("unroll_length")
    if FLAGS.sweep:
        num_steps = _setting("num_steps")
        sizes = [(hidden, length), (2 * hidden, length), (4 * hidden, length),
                 (hidden, max(1, length // 2)), (hidden, 2 * length)]
        # Each row's epoch is --num_steps rounded up to a multiple of its unroll length.
        rows = [_run_child(hidden=h, unroll_length=l, num_steps=-(-num_steps // l) * l)
                for h, l in sizes]
    else:
        rows = [_run_child(mode=mode) for mode in configs.MODES]
    _print_table(rows)
    base = rows[0] if FLAGS.sweep else next(r for r in rows if r["mode"] == DEFAULT_MODE)
    print(json.dumps({**base, "sweep" if FLAGS.sweep else "modes": rows}))


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv)
