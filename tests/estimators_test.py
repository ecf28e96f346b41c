"""Tests for estimators.py: truncated backpropagation, ES and PES over instances."""

import numpy as np
import tensorflow as tf

import estimators
import meta
import problems


def _half_square(x0=(1.0, -2.0, 0.5), dtype=tf.float32):
    return problems.Problem(("x",), lambda seed: [tf.constant(x0, dtype)], lambda seed, step: (),
                            lambda params, data: 0.5 * tf.reduce_sum(tf.square(params[0])))


def _lstm(**options):
    options.setdefault("layers", (3,))
    return meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_options": options})


def _values(trainer):
    return [tf.convert_to_tensor(v) for v in trainer.variables]


def _context(seed, truncation=0, last=True, std=0.01):
    return estimators.Context(1, std, np.asarray([seed], np.int32), truncation, last)


class TruncatedBackpropTest(tf.test.TestCase):

    def test_trainer_trains_as_the_unroll(self):
        problem = problems.quadratic(batch_size=3, num_dims=4)

        def weights_after(make):
            tf.random.set_seed(5)
            optimizer = _lstm(preprocess_name="LogAndSign", preprocess_options={"k": 5})
            unroll = make(optimizer)
            for epoch in range(2):
                meta.run_epoch(unroll, 3, meta.instance_seeds(0, meta.TRAIN, epoch, 2))
            return [v.numpy() for v in unroll.variables]

        reference = weights_after(lambda o: o.meta_minimize(problem, 4, learning_rate=0.01,
                                                            mode="graph", meta_batch_size=2))
        ours = weights_after(lambda o: estimators.MetaTrainer(
            o, estimators.single_problem(problem), 4, 12, "tbptt", learning_rate=0.01,
            meta_batch_size=2, mode="graph"))
        for expected, got in zip(reference, ours):
            self.assertAllClose(got, expected, rtol=1e-5, atol=1e-7)

    def test_instances_of_different_shapes_average_their_meta_gradients(self):
        shapes = [problems.quadratic(batch_size=2, num_dims=3),
                  problems.quadratic(batch_size=4, num_dims=2)]
        seeds = meta.instance_seeds(0, meta.TRAIN, 1, 2)
        optimizer = _lstm()
        trainer = estimators.MetaTrainer(
            optimizer, lambda s: [(0, shapes[0]), (1, shapes[1])], 3, 3, "tbptt",
            learning_rate=1e-3, meta_batch_size=2, mode="graph")
        trainer.reset(seeds)
        self.assertLen(trainer._batches, 2)  # pylint: disable=protected-access
        values = _values(trainer)
        grads = []
        for batch, carry in zip(trainer._batches, trainer._carries):  # pylint: disable=protected-access
            grads.append(batch.kernel.gradient(values, carry)[2])
        unroll = optimizer.meta_loss(shapes, 3, mode="graph")  # Both in one call, as reference.
        unroll.reset(seeds)
        _, expected = unroll.meta_gradient()
        for got, want in zip(zip(*grads), expected):
            self.assertAllClose((got[0] + got[1]) / 2, want, rtol=1e-5, atol=1e-7)

    def test_kernels_trace_once(self):
        problem = problems.quadratic(batch_size=2, num_dims=3)
        trainer = estimators.MetaTrainer(_lstm(), estimators.single_problem(problem), 2, 4,
                                         "pes", learning_rate=1e-3, perturbations=2,
                                         mode="graph")
        for epoch in range(3):
            meta.run_epoch(trainer, 2, meta.instance_seeds(0, meta.TRAIN, epoch, 1))
        kernel, = trainer._kernels.values()  # pylint: disable=protected-access
        self.assertEqual(kernel.antithetic.experimental_get_tracing_count(), 1)
        self.assertEqual(kernel.initial.experimental_get_tracing_count(), 1)


class EvolutionStrategiesTest(tf.test.TestCase):

    def test_es_mean_is_the_gradient_of_a_quadratic_meta_loss(self):
        # A linear network (no LSTM layer, no preprocessing): x1 = x0 + w x0 + b is linear in
        # the weights, so the meta-loss f(x0) + f(x1) is quadratic in them, its Gaussian
        # smoothing has the same gradient, and antithetic ES is unbiased for it.
        optimizer = _lstm(layers=())
        trainer = estimators.MetaTrainer(optimizer, estimators.single_problem(_half_square()), 1,
                                         1, "es", learning_rate=1e-3, mode="graph")
        trainer.reset([[0, 0]])
        kernel = trainer._batches[0].kernel  # pylint: disable=protected-access
        values = [v + 0.3 for v in _values(trainer)]  # Away from the initial weights.
        carry = kernel.initial(tf.constant([[0, 0]], tf.int32))
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = kernel.forward(values, carry)[0]
        analytic = np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, values)])
        samples = []
        for i in range(400):
            carries = estimators.initial_carries("es", kernel, np.array([[i, 7]]), values, 1)
            estimate, _, _ = estimators.es(kernel, values, carries, _context([i, 7], std=0.5))
            samples.append(np.concatenate([e.numpy().ravel() for e in estimate]))
        samples = np.array(samples)
        mean, error = samples.mean(0), samples.std(0) / np.sqrt(len(samples))
        self.assertLess(np.max(np.abs(mean - analytic) / error), 4.0)
        # Precise enough to tell: the standard errors are a small part of the gradient.
        self.assertGreater(np.linalg.norm(analytic), 10 * np.max(error))


class PersistentEvolutionStrategiesTest(tf.test.TestCase):

    def _setup(self, truncations=4, length=3):
        tf.random.set_seed(1)
        optimizer = _lstm(layers=(3,), preprocess_name="LogAndSign",
                          preprocess_options={"k": 5}, scale=0.3)
        problem = problems.quadratic(batch_size=2, num_dims=3)
        trainer = estimators.MetaTrainer(optimizer, estimators.single_problem(problem), length,
                                         truncations * length, "pes", learning_rate=1e-3,
                                         mode="graph")
        seed = meta.epoch_seed(0, meta.TRAIN, 0)
        trainer.reset(seed[None])
        return trainer, trainer._batches[0].kernel, seed  # pylint: disable=protected-access

    def test_pes_is_unbiased_over_an_epoch_and_truncated_es_is_not(self):
        truncations = 4
        trainer, kernel, seed = self._setup(truncations)
        values = _values(trainer)
        # The exact gradient of the epoch's meta-loss (every truncation's, each continuing from
        # the last) with second derivatives: what ES and PES measure, as the weights move the
        # optimizee's gradients too.
        exact = estimators.Kernel(trainer._meta, kernel.problems, kernel.unroll_length,  # pylint: disable=protected-access
                                  trainer.variables, options={"second_derivatives": True},
                                  mode="graph")
        carry = exact.initial(tf.constant(seed[None]))
        with tf.GradientTape() as tape:
            tape.watch(values)
            total = 0.0
            for _ in range(truncations):
                loss, _, carry = exact.forward(values, carry)
                total += loss
        reference = np.concatenate([g.numpy().ravel() for g in tape.gradient(total, values)])

        def epoch_estimates(estimator, samples):
            result = []
            for i in range(samples):
                seeds = np.array([[i, 11]], np.int32)
                carries = estimators.initial_carries("pes", kernel, seeds, values, 1)
                summed = 0.0
                for t in range(truncations):
                    estimate, carries, _ = estimator(kernel, values, carries,
                                                     _context(seeds[0], t, std=0.01))
                    summed += np.concatenate([e.numpy().ravel() for e in estimate])
                result.append(summed)
            return np.array(result)

        pes = epoch_estimates(estimators.pes, 600)
        z_pes = (pes.mean(0) - reference) / (pes.std(0) / np.sqrt(len(pes)))
        self.assertLess(np.max(np.abs(z_pes)), 4.5)
        # Its bias is large: measured 32 standard errors at 600 draws, so 200 are plenty.
        truncated = epoch_estimates(estimators.truncated_es, 200)
        z_truncated = ((truncated.mean(0) - reference)
                       / (truncated.std(0) / np.sqrt(len(truncated))))
        self.assertGreater(np.max(np.abs(z_truncated)), 8.0)


# -- From the command line ----------------------------------------------------------------------

import os  # noqa: E402  pylint: disable=wrong-import-position
import signal  # noqa: E402  pylint: disable=wrong-import-position

from absl.testing import parameterized  # noqa: E402  pylint: disable=wrong-import-position

import fault_test  # noqa: E402  pylint: disable=wrong-import-position
from conftest import shared_path  # noqa: E402  pylint: disable=wrong-import-position

_TINY = ["--problem=quadratic", "--num_steps=4", "--unroll_length=2", "--log_period=1",
         "--evaluation_period=4", "--evaluation_epochs=1", "--checkpoint_period=1",
         "--mode=graph", "--perturbations=2"]


class CommandLineTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters("es", "pes")
    def test_sigkill_then_resume_ends_as_an_uninterrupted_run(self, estimator):
        run = _TINY + [f"--estimator={estimator}", "--num_epochs=10"]
        reference = os.path.join(self.get_temp_dir(), f"{estimator}_reference")
        result = fault_test._run("train.py", *run, f"--save_path={reference}")
        self.assertEqual(result.returncode, 0, result.stderr)
        killed = os.path.join(self.get_temp_dir(), f"{estimator}_killed")
        process = fault_test._start(*run, f"--save_path={killed}")
        fault_test._wait_for(process, "Epoch 5")
        process.send_signal(signal.SIGKILL)
        process.wait()
        resumed = fault_test._run("train.py", *run, f"--save_path={killed}")
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertIn("Resuming from epoch", resumed.stdout)
        # The perturbations derive from the epoch's seeds: the replayed epochs are the same.
        expected, got = fault_test._checkpoint(reference), fault_test._checkpoint(killed)
        self.assertEqual(sorted(got), sorted(expected))
        for name in expected:
            self.assertAllClose(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)
        # It trained: one meta-update per epoch (ES) or per truncation (PES), all applied.
        updates = {"es": 10, "pes": 20}[estimator]
        self.assertEqual(int(expected["meta_adam/step/.ATTRIBUTES/VARIABLE_VALUE"]), updates)

    @parameterized.parameters(
        (["--estimator=tbptt", "--perturbations=4"], "--perturbations applies to "
         "--estimator=es and pes"),
        (["--estimator=es", "--second_derivatives"], "--second_derivatives applies to "
         "--estimator=tbptt"),
        (["--estimator=pes", "--rematerialize=chunks"], "--rematerialize applies to "
         "--estimator=tbptt"),
        (["--problem=family:mlp", "--strategy=mirrored"], "--strategy=mirrored shares out the "
         "instances of one problem; a task family runs with --strategy=none"),
        (["--estimator=pes", "--es_std=0"], "--es_std must be positive"))
    def test_flags_that_do_not_apply_are_one_line(self, flags, message):
        problem = [] if any(f.startswith("--problem") for f in flags) else ["--problem=quadratic"]
        result = fault_test._run("train.py", *problem, "--num_epochs=1", *flags)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(message, result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_a_family_trains_and_its_optimizer_runs_on_a_held_out_model(self):
        data_dir = str(shared_path("data"))
        save = os.path.join(self.get_temp_dir(), "family")
        result = fault_test._run(
            "train.py", "--problem=family:mlp", f"--data_dir={data_dir}", "--num_epochs=2",
            "--num_steps=4", "--unroll_length=2", "--meta_batch_size=2", "--log_period=1",
            "--evaluation_period=2", "--evaluation_epochs=2", "--mode=graph",
            f"--save_path={save}")
        if "Dataset 'fashion_mnist' not found" in result.stderr:
            self.skipTest("Fashion-MNIST is absent (Debian package dataset-fashion-mnist)")
        self.assertEqual(result.returncode, 0, result.stderr)
        # One kernel per task shape, each traced once: not "retracing" (TensorFlow's warning,
        # which counted every kernel's traces as one function's).
        self.assertNotIn("retracing", result.stderr)
        saved = os.path.join(save, "cw.l2l")
        self.assertEqual(weights_file_net(saved), "NormalizedMLP")
        history = os.path.join(self.get_temp_dir(), "heldout.csv")
        evaluated = fault_test._run(
            "evaluate.py", "--problem=heldout-mnist-relu", f"--data_dir={data_dir}",
            f"--path={save}", "--num_epochs=2", "--num_steps=10", f"--history_path={history}",
            "--mode=graph")
        self.assertEqual(evaluated.returncode, 0, evaluated.stderr)
        losses = np.loadtxt(history, delimiter=",", comments="#", ndmin=2)
        self.assertTrue(np.all(np.isfinite(losses)))
        self.assertLess(losses[:, -1].mean(), 2.2)  # Below chance (ln 10 = 2.30) in 10 steps.

    def test_step_scale_scales_the_evaluations_steps(self):
        # MetaTrainer's evaluation with step_scale 4 of an Adam 0.05 network is Adam 0.2: the
        # same parameters after an epoch of 2 truncations of 3 steps, a meta-batch of two.
        problem = problems.quadratic(batch_size=4, num_dims=3)
        finals = {}
        for learning_rate, scale in ((0.05, 4.0), (0.2, 1.0)):
            optimizer = meta.MetaOptimizer(adam={"net": "Adam",
                                                 "net_options": {"learning_rate": learning_rate}})
            trainer = estimators.MetaTrainer(optimizer, estimators.single_problem(problem), 3, 6,
                                             estimator=None, meta_batch_size=2, mode="graph",
                                             step_scale=scale)
            finals[scale] = [e.history for e in meta.run_epochs(trainer, 2, [[1, 2], [3, 4]])]
        self.assertAllClose(finals[4.0], finals[1.0], rtol=1e-5)
        self.assertGreater(np.ptp(finals[4.0][0]), 1e-3)  # The loss moved: steps were taken.

    def test_evaluate_runs_a_family_and_untrained_equals_adam_on_its_instances(self):
        # evaluate.py on a family runs each epoch on the instance its seed draws, for learned
        # and hand-designed optimizers alike: the untrained NormalizedMLP is Adam 0.001 exactly,
        # so both histories agree step by step (to float rounding) on the same instances.
        data_dir = str(shared_path("data"))
        histories = {}
        for name, flags in (("untrained", ["--untrained"]),
                            ("adam", ["--optimizer=Adam", "--learning_rate=0.001"])):
            histories[name] = os.path.join(self.get_temp_dir(), f"{name}.csv")
            result = fault_test._run(
                "evaluate.py", "--problem=family:mlp", f"--data_dir={data_dir}",
                "--split=validation", "--num_epochs=3", "--num_steps=6", "--mode=graph",
                f"--history_path={histories[name]}", *flags)
            if "Dataset 'fashion_mnist' not found" in result.stderr:
                self.skipTest("Fashion-MNIST is absent (Debian package dataset-fashion-mnist)")
            self.assertEqual(result.returncode, 0, result.stderr)
        learned, adam = (np.loadtxt(histories[n], delimiter=",", comments="#", ndmin=2)
                         for n in ("untrained", "adam"))
        self.assertEqual(learned.shape, (3, 6))
        self.assertAllClose(learned, adam, rtol=1e-4)
        # Three instances of different shapes or data: not one epoch repeated.
        self.assertGreater(np.ptp(learned[:, 0]), 1e-3)


def weights_file_net(path):
    import weights_file  # pylint: disable=import-outside-toplevel
    return weights_file.load(path).net


_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["train.py"] + sys.argv[1:]
sys.path.insert(0, {root!r})
import runpy
runpy.run_path({train!r}, run_name="__main__")
"""


class ReplicasTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters("es", "pes")
    def test_two_replicas_train_as_one_device(self, estimator):
        from conftest import REPO_ROOT  # pylint: disable=import-outside-toplevel
        tmp = self.get_temp_dir()
        script = os.path.join(tmp, "two_cpus.py")
        with open(script, "w") as f:
            f.write(_TWO_CPUS.format(root=str(REPO_ROOT), train=str(REPO_ROOT / "train.py")))
        run = _TINY + [f"--estimator={estimator}", "--num_epochs=4", "--meta_batch_size=2"]
        paths = {}
        for name, command in (("one", []), ("two", ["--strategy=mirrored"])):
            paths[name] = os.path.join(tmp, f"{estimator}_{name}")
            runner = fault_test._run if name == "one" else (
                lambda *a: fault_test.subprocess.run(
                    [fault_test.sys.executable, script, *a[1:]], cwd=tmp, env=fault_test._env(),
                    capture_output=True, text=True, timeout=300))
            result = runner("train.py", *run, *command, f"--save_path={paths[name]}")
            self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        one = fault_test._checkpoint(paths["one"])
        two = fault_test._checkpoint(paths["two"])
        weights = [n for n in one if "optimizer/_nets" in n]
        self.assertNotEmpty(weights)
        for name in weights:
            self.assertAllClose(two[name], one[name], rtol=1e-5, atol=1e-7, msg=name)
        self.assertEqual(int(two["meta_adam/step/.ATTRIBUTES/VARIABLE_VALUE"]),
                         {"es": 4, "pes": 8}[estimator])
