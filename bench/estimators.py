"""Times truncated backpropagation, ES and PES, and measures their gradients' variance.

    python bench/estimators.py                    # the table of bench/README.md ("Estimators")
    python bench/estimators.py --horizons=20,100 --quick

On the paper's MNIST problem (an MLP 784-20-10 of synthetic data of MNIST's shapes: the values do
not change the time) and the paper's LSTM, for each estimator and horizon H, in a process of its
own (so that its peak memory is its own): seconds per meta-update (median of `--repeats` after
one to compile) and peak resident memory above the level after import and set-up.

- tbptt: backpropagation through the whole horizon (`--unroll_length=H`, the unbiased way to
  backpropagate; memory grows with H). Refused, with the memory it would keep, beyond the
  machine's memory.
- es: `--perturbations` antithetic pairs unrolled over the whole horizon: one update per H steps.
- pes: one truncation of `--truncation` steps of each pair's two states: an update every
  `--truncation` steps whatever H; the table gives both a meta-update's and H steps' time.

`--variance` measures each estimator's gradient on one fixed instance (horizon
`--variance_horizon`) against the exact gradient of its meta-loss (second-order backpropagation
through the whole horizon): for ES and PES, the relative error of the mean of `--samples`
estimates and the relative standard deviation of one; for truncated backpropagation (truncations
of `--truncation`, first-order as the paper), its relative error (it has no randomness).
The last line printed is JSON.
"""

import itertools
import json
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # The repository root.

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("horizons", ["20", "100", "1000", "10000"], "Horizons (optimizee steps).")
flags.DEFINE_list("estimators", ["tbptt", "es", "pes"], "Estimators.")
flags.DEFINE_integer("perturbations", 4, "Antithetic pairs per meta-update (ES, PES).")
flags.DEFINE_integer("truncation", 20, "PES's (and the variance's tbptt's) truncation.")
flags.DEFINE_integer("repeats", 3, "Timed meta-updates (after one that compiles).")
flags.DEFINE_boolean("quick", False, "Fewer repeats and samples: a smoke run.")
flags.DEFINE_boolean("variance", True, "Also measure the estimators' variance.")
flags.DEFINE_integer("variance_horizon", 100, "Horizon of the variance measurement.")
flags.DEFINE_integer("samples", 64, "Estimates per estimator for the variance.")
flags.DEFINE_list("stds", ["0.01", "0.001", "0.0001"],
                  "ES's and PES's perturbation scales (the variance).")
flags.DEFINE_string("child", None, "Internal: run one measurement, 'estimator:horizon'.")


def _status_mb(field):
    """A memory field of this process's /proc status in MB: VmHWM (peak) or VmRSS (now)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup():
    """`(optimizer, problem)`: the shipped MNIST LSTM and the paper's MLP on synthetic data."""
    import meta  # pylint: disable=import-outside-toplevel
    import problems  # pylint: disable=import-outside-toplevel

    def loader(split):
        rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
        return (rng.integers(0, 256, [6000, 28, 28, 1], dtype=np.uint8),
                rng.integers(0, 10, [6000]).astype(np.int32))

    net_config = {"cw": {"net": "CoordinateWiseDeepLSTM",
                         "net_path": str(pathlib.Path(__file__).resolve().parent.parent
                                         / "saved_optimizers" / "mnist" / "cw.l2l")}}
    return meta.MetaOptimizer(**net_config), problems.mlp("mnist", (20,), "sigmoid",
                                                          loader=loader)


def _child(estimator, horizon):
    import estimators  # pylint: disable=import-outside-toplevel
    import meta  # pylint: disable=import-outside-toplevel
    import util  # pylint: disable=import-outside-toplevel
    optimizer, problem = _setup()
    length = horizon if estimator in ("tbptt", "es") else FLAGS.truncation
    if estimator == "es":
        length = min(horizon, 100)  # Compiled segments of up to 100 steps, looped.
    trainer = estimators.MetaTrainer(optimizer, estimators.single_problem(problem), length,
                                     horizon, estimator, learning_rate=1e-4,
                                     perturbations=FLAGS.perturbations,
                                     pool=[problem])
    base = _status_mb("VmRSS")
    if estimator == "tbptt":
        kept = trainer.kept_bytes_per_step() * length
        limit = util.memory_headroom()
        if limit is not None and kept > 0.8 * limit:
            return {"estimator": estimator, "horizon": horizon, "refused": True,
                    "kept_gib": kept / 2**30}
    calls = trainer.segments if estimator == "es" else 1  # Calls per meta-update.
    times = []
    for repeat in range(1 + FLAGS.repeats):
        trainer.reset(meta.instance_seeds(0, meta.TRAIN, repeat, 1))
        start = time.perf_counter()
        for _ in range(calls):
            result = trainer()
        float(result.meta_loss)
        times.append(time.perf_counter() - start)
    per_update = float(np.median(times[1:]))
    per_horizon = per_update * (horizon // length if estimator == "pes" else 1)
    return {"estimator": estimator, "horizon": horizon, "s_per_update": per_update,
            "s_per_horizon": per_horizon, "first_s": times[0],
            "peak_above_setup_mb": _status_mb("VmHWM") - base}


def _variance():
    """Relative errors and spreads of each estimator against the exact gradient."""
    import estimators  # pylint: disable=import-outside-toplevel
    import meta  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    optimizer, problem = _setup()
    horizon, truncation = FLAGS.variance_horizon, FLAGS.truncation
    seeds = meta.instance_seeds(0, meta.TRAIN, 0, 1)
    trainer = estimators.MetaTrainer(optimizer, estimators.single_problem(problem), truncation,
                                     horizon, "pes", learning_rate=1e-4, pool=[problem])
    trainer.reset(seeds)
    values = [tf.convert_to_tensor(v) for v in trainer.variables]
    kernel = trainer._batches[0].kernel  # pylint: disable=protected-access
    # In the graph: a tape does not reach through an XLA-compiled function's loop.
    exact = estimators.Kernel(optimizer, [problem], truncation, trainer.variables,
                              options={"second_derivatives": True}, mode="graph")
    carry = exact.initial(tf.constant(seeds))
    with tf.GradientTape() as tape:
        tape.watch(values)
        total = 0.0
        for _ in range(horizon // truncation):
            loss, _, carry = exact.forward(values, carry)
            total += loss
    reference = np.concatenate([g.numpy().ravel() for g in tape.gradient(total, values)])
    norm = np.linalg.norm(reference)
    rows = {}
    carry = kernel.initial(tf.constant(seeds))
    summed = 0.0
    for _ in range(horizon // truncation):
        _, _, grads, carry = kernel.gradient(values, carry)
        summed += np.concatenate([g.numpy().ravel() for g in grads])
    rows["tbptt"] = {"relative_error_of_mean": float(np.linalg.norm(summed - reference) / norm),
                     "relative_sd_of_one": 0.0}
    samples = 8 if FLAGS.quick else FLAGS.samples
    for (name, function), std in itertools.product(
            (("es", estimators.es), ("pes", estimators.pes)), [float(s) for s in FLAGS.stds]):
        estimates = []
        for i in range(samples):
            pair_seeds = np.array([[i, 99]], np.int32)
            carries = estimators.initial_carries(name, kernel, pair_seeds, values, 1)
            summed = 0.0
            for t in range(horizon // truncation):
                context = estimators.Context(1, std, pair_seeds, t,
                                             t == horizon // truncation - 1)
                estimate, carries, _ = function(kernel, values, carries, context)
                if estimate is not None:
                    summed = summed + np.concatenate([e.numpy().ravel() for e in estimate])
            estimates.append(summed)
        estimates = np.array(estimates)
        rows[f"{name} std {std:g}"] = {
            "relative_error_of_mean": float(np.linalg.norm(estimates.mean(0) - reference) / norm),
            "relative_sd_of_one": float(np.sqrt(np.sum(estimates.var(0))) / norm)}
    return {"variance_horizon": horizon, "truncation": truncation, "samples": samples,
            "gradient_norm": float(norm), "estimators": rows}


def main(argv):
    del argv
    if FLAGS.child:
        estimator, horizon = FLAGS.child.split(":")
        print(json.dumps(_child(estimator, int(horizon))))
        return
    if FLAGS.child is None and FLAGS.quick:
        FLAGS.repeats = 1
    rows = []
    for horizon in [int(h) for h in FLAGS.horizons]:
        for estimator in FLAGS.estimators:
            command = [sys.executable, __file__, f"--child={estimator}:{horizon}",
                       f"--perturbations={FLAGS.perturbations}",
                       f"--truncation={FLAGS.truncation}", f"--repeats={FLAGS.repeats}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
            row = (json.loads(lines[-1]) if lines else
                   {"estimator": estimator, "horizon": horizon,
                    "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]})
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows}
    if FLAGS.variance:
        import util  # pylint: disable=import-outside-toplevel
        util.import_tensorflow()
        result["variance"] = _variance()
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
