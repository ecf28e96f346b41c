"""Tests for meta.py: the unroll, meta-gradients, truncation, assignments and compile modes."""

import os
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import meta
import networks
import problems


def _half_square(dtype=tf.float32, x0=(1.0, -2.0, 3.0)):
    """`0.5 ||x||^2` from a fixed `x0`: closed forms for hand-designed steps."""
    return problems.Problem(("x",), lambda seed: [tf.constant(x0, dtype)],
                            lambda seed, step: (),
                            lambda params, data: 0.5 * tf.reduce_sum(tf.square(params[0])))


def _two_quadratics(dtype=tf.float32):
    """Two parameter tensors of different shapes, for batched-versus-per-variable checks."""
    return problems.ensemble([problems.quadratic(batch_size=2, num_dims=3, dtype=dtype),
                              problems.quadratic(batch_size=3, num_dims=2, dtype=dtype)],
                             weights=[1.0, 0.5])


def _lstm_config(**options):
    options.setdefault("layers", (4,))
    return {"cw": {"net": "CoordinateWiseDeepLSTM", "net_options": options}}


def _weights(unroll):
    return [v.numpy() for v in unroll.variables]


class SgdUnrollTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(*meta.MODES)
    def test_sgd_unroll_matches_closed_form(self, mode):
        lr, steps = 0.1, 5
        x0 = np.array([1.0, -2.0, 3.0])
        optimizer = meta.MetaOptimizer(sgd={"net": "Sgd", "net_options": {"learning_rate": lr}})
        unroll = optimizer.meta_loss(_half_square(), steps, mode=mode)
        unroll.reset([0, 0])
        result = unroll()
        decay = (1.0 - lr) ** np.arange(steps + 1)  # x_t = (1 - lr)^t x_0.
        self.assertAllClose(unroll.carry.params[0], decay[-1] * x0, rtol=1e-6)
        self.assertAllClose(result.losses, 0.5 * decay**2 * np.sum(x0**2), rtol=1e-6)
        self.assertAllClose(result.meta_loss, 0.5 * np.sum(decay**2) * np.sum(x0**2), rtol=1e-6)
        self.assertEqual(int(unroll.carry.step), steps)

    def test_carry_continues_across_unrolls(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        problem = problems.quadratic(batch_size=4, num_dims=3)
        long = optimizer.meta_loss(problem, 6, mode="graph")
        short = optimizer.meta_loss(problem, 3, mode="graph")
        long.reset([1, 2])
        short.reset([1, 2])
        whole = long().losses.numpy()
        halves = [short().losses.numpy(), short().losses.numpy()]
        self.assertAllClose(np.concatenate([halves[0], halves[1][1:]]), whole, rtol=1e-6)
        # A reset starts the epoch again from the same seed.
        short.reset([1, 2])
        self.assertAllClose(short().losses, halves[0], rtol=1e-6)


class BaselineUnrollTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(*meta.MODES)
    def test_sgd_matches_closed_form_across_unrolls(self, mode):
        lr, steps = 0.1, 4
        x0 = np.array([1.0, -2.0, 3.0])
        unroll = meta.BaselineUnroll(_half_square(), "SGD", lr, steps, mode=mode)
        unroll.reset([0, 0])
        losses = np.concatenate([unroll().losses.numpy(), unroll().losses.numpy()[1:]])
        decay = (1.0 - lr) ** np.arange(2 * steps + 1)  # x_t = (1 - lr)^t x_0.
        self.assertAllClose(losses, 0.5 * decay**2 * np.sum(x0**2), rtol=1e-6)

    def test_new_learning_rate_gives_a_fresh_optimizers_numbers_without_retracing(self):
        problem = problems.quadratic(batch_size=4, num_dims=3)
        grid = meta.BaselineUnroll(problem, "Adam", 0.3, 5, mode="graph")
        grid.reset([1, 2])
        grid()
        grid.set_learning_rate(0.01)
        grid.reset([1, 2])  # Restores Adam's slots and step count too.
        fresh = meta.BaselineUnroll(problem, "Adam", 0.01, 5, mode="graph")
        fresh.reset([1, 2])
        self.assertAllEqual(grid().losses, fresh().losses)
        self.assertEqual(grid._step_fn.experimental_get_tracing_count(), 1)
        with self.assertRaisesRegex(ValueError, "learning_rate must be positive"):
            grid.set_learning_rate(0.0)


class MetaGradientTest(tf.test.TestCase):

    def _meta_loss_and_gradient(self, second_derivatives):
        tf.random.set_seed(3)
        # Float64 so that central differences are accurate to ~1e-9; a large output scale so
        # that steps, and with them the optimizee's curvature, matter.
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(3,), scale=2.0, dtype=tf.float64))
        problem = problems.quadratic(batch_size=2, num_dims=3, stddev=1.0, dtype=tf.float64)
        unroll = optimizer.meta_loss(problem, 3, second_derivatives=second_derivatives,
                                     mode="eager")

        def meta_loss():
            unroll.reset([4, 5])
            return unroll().meta_loss.numpy()

        unroll.reset([4, 5])
        with tf.GradientTape() as tape:
            loss = unroll().meta_loss
        grads = tape.gradient(loss, unroll.variables)
        return unroll.variables, meta_loss, np.concatenate([g.numpy().ravel() for g in grads])

    def _finite_differences(self, variables, meta_loss, eps=1e-6):
        result = []
        for variable in variables:
            theta = variable.numpy()
            for index in np.ndindex(*theta.shape):
                bump = np.zeros_like(theta)
                bump[index] = eps
                variable.assign(theta + bump)
                upper = meta_loss()
                variable.assign(theta - bump)
                lower = meta_loss()
                variable.assign(theta)
                result.append((upper - lower) / (2 * eps))
        return np.array(result)

    def test_meta_gradient_with_second_derivatives_matches_finite_differences(self):
        variables, meta_loss, exact_grad = self._meta_loss_and_gradient(True)
        numeric = self._finite_differences(variables, meta_loss)
        scale = np.max(np.abs(numeric))
        self.assertLess(np.max(np.abs(exact_grad - numeric)) / scale, 1e-7)
        # Without second derivatives the Hessian terms are dropped: a real difference.
        _, _, first_order = self._meta_loss_and_gradient(False)
        self.assertGreater(np.max(np.abs(first_order - numeric)) / scale, 1e-3)


class NetAssignmentsTest(tf.test.TestCase, parameterized.TestCase):

    def _simple_multi(self):
        return meta.MetaOptimizer(
            cw={"net": "CoordinateWiseDeepLSTM",
                "net_options": {"layers": (), "initializer": "zeros"}},
            adam={"net": "Adam", "net_options": {"learning_rate": 0.1}})

    @parameterized.parameters(True, False)
    def test_adam_network_steps_its_variable_as_adam(self, batch_coordinates):
        optimizer = self._simple_multi()
        unroll = optimizer.meta_loss(problems.simple_multi_optimizer(), 5,
                                     net_assignments=[("cw", ["x_0"]), ("adam", ["x_1"])],
                                     batch_coordinates=batch_coordinates, mode="graph")
        unroll.reset([0, 0])
        unroll()
        x, m, v = 1.0, 0.0, 0.0
        for t in range(1, 6):  # f = x^2: g = 2x.
            g = 2 * x
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            x -= 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        x_0, x_1 = unroll.carry.params
        self.assertAllClose(x_1, x, rtol=1e-5)
        self.assertEqual(float(x_0), 1.0)  # The zero-initialized LSTM has not moved x_0.

    @parameterized.parameters(True, False)
    def test_step_scale_multiplies_every_networks_step(self, batch_coordinates):
        # Adam 0.1 scaled by 3 is Adam 0.3, step by step; the zero LSTM's steps stay zero.
        optimizer = self._simple_multi()
        unroll = optimizer.meta_loss(problems.simple_multi_optimizer(), 5,
                                     net_assignments=[("cw", ["x_0"]), ("adam", ["x_1"])],
                                     batch_coordinates=batch_coordinates, mode="graph",
                                     step_scale=3.0)
        unroll.reset([0, 0])
        unroll()
        x, m, v = 1.0, 0.0, 0.0
        for t in range(1, 6):
            g = 2 * x
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            x -= 0.3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        x_0, x_1 = unroll.carry.params
        # x crosses zero (1 to -0.3): float32 rounding of the scaled steps is absolute.
        self.assertAllClose(x_1, x, atol=1e-4)
        self.assertEqual(float(x_0), 1.0)

    @parameterized.parameters((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                              ("2", TypeError), (True, TypeError))
    def test_step_scale_must_be_a_positive_number(self, step_scale, error):
        with self.assertRaisesRegex(error, "step_scale must be"):
            self._simple_multi().meta_loss(problems.simple_multi_optimizer(), 5,
                                           net_assignments=[("cw", ["x_0"]), ("adam", ["x_1"])],
                                           step_scale=step_scale)

    def test_meta_training_moves_only_the_lstm(self):
        optimizer = self._simple_multi()
        unroll = optimizer.meta_minimize(problems.simple_multi_optimizer(), 5, learning_rate=0.1,
                                         net_assignments=[("cw", ["x_0"]), ("adam", ["x_1"])])
        unroll.reset([0, 0])
        unroll()
        self.assertEqual(len(unroll.variables), 2)  # The LSTM's linear w and b; Adam has none.
        self.assertNotAllClose(unroll.variables[0], [[0.0]])

    @parameterized.named_parameters(
        ("unknown_net", [("cw", ["x_0"]), ("rms", ["x_1"])], "Unknown network 'rms'"),
        ("unknown_variable", [("cw", ["x_0", "x_9"]), ("adam", ["x_1"])],
         "Unknown variable 'x_9'"),
        ("repeated_net", [("cw", ["x_0"]), ("cw", ["x_1"])], "Network 'cw' appears twice"),
        ("missing", None, "net_assignments is needed with several networks"),
    )
    def test_bad_assignments_are_clear_errors(self, assignments, message):
        with self.assertRaisesRegex(ValueError, message):
            self._simple_multi().meta_loss(problems.simple_multi_optimizer(), 2,
                                           net_assignments=assignments)

    def test_unassigned_variable_stays_and_shared_variable_gets_both_steps(self):
        # As the original: x_1 belongs to no network and keeps its value; x_0 belongs to two
        # SGD networks, each seeing x_0 before the step: x_0 <- x_0 - (0.1 + 0.2) * 2 x_0.
        optimizer = meta.MetaOptimizer(a={"net": "Sgd", "net_options": {"learning_rate": 0.1}},
                                       b={"net": "Sgd", "net_options": {"learning_rate": 0.2}})
        with self.assertLogs(level="WARNING") as logs:
            unroll = optimizer.meta_loss(problems.simple_multi_optimizer(), 3,
                                         net_assignments=[("a", ["x_0"]), ("b", ["x_0"])],
                                         mode="graph")
        self.assertIn("['x_1'] are assigned to no network", "".join(logs.output))
        unroll.reset([0, 0])
        result = unroll()
        x_0, x_1 = unroll.carry.params
        self.assertAllClose(x_0, 0.4**3, rtol=1e-6)
        self.assertEqual(float(x_1), 1.0)
        self.assertAllClose(result.losses, [0.16**t + 1.0 for t in range(4)], rtol=1e-6)

    def test_meta_minimize_needs_trainable_weights(self):
        optimizer = meta.MetaOptimizer(adam={"net": "Adam"})
        with self.assertRaisesRegex(ValueError, "needs a network with trainable weights"):
            optimizer.meta_minimize(problems.simple(), 2)


class ModesTest(tf.test.TestCase, parameterized.TestCase):

    def _train(self, mode, batch_coordinates=True, problem=None):
        tf.random.set_seed(7)
        optimizer = meta.MetaOptimizer(**_lstm_config(
            layers=(5, 4), preprocess_name="LogAndSign", preprocess_options={"k": 5}))
        unroll = optimizer.meta_minimize(problem or _two_quadratics(), 4, learning_rate=0.01,
                                         mode=mode, batch_coordinates=batch_coordinates)
        unroll.reset([0, 1])
        results = [unroll() for _ in range(3)]
        return [r.losses.numpy() for r in results], _weights(unroll)

    @parameterized.parameters("eager", "xla")
    def test_mode_gives_the_numbers_of_graph_mode(self, mode):
        losses, weights = self._train(mode)
        reference_losses, reference_weights = self._train("graph")
        self.assertAllClose(losses, reference_losses, rtol=1e-5)
        for w, r in zip(weights, reference_weights):
            self.assertAllClose(w, r, rtol=1e-4, atol=1e-6)

    def test_batched_coordinates_equal_one_call_per_variable(self):
        losses, weights = self._train("graph", batch_coordinates=True)
        reference_losses, reference_weights = self._train("graph", batch_coordinates=False)
        self.assertAllClose(losses, reference_losses, rtol=1e-5)
        for w, r in zip(weights, reference_weights):
            self.assertAllClose(w, r, rtol=1e-4, atol=1e-6)

    def test_no_retracing_across_calls_and_resets(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        unroll = optimizer.meta_minimize(problems.quadratic(batch_size=2, num_dims=2), 2,
                                         mode="graph")
        for epoch in range(3):
            unroll.reset([0, epoch])
            for _ in range(2):
                unroll()
        self.assertLessEqual(unroll._step_fn.experimental_get_tracing_count(), 2)
        self.assertEqual(unroll._reset_fn.experimental_get_tracing_count(), 1)


class RematerializeTest(tf.test.TestCase, parameterized.TestCase):
    """The rematerialised backward pass gives the meta-gradient of the plain one."""

    def test_kept_bytes_per_step_count_the_state_and_gradients_each_mode_keeps(self):
        problem = problems.quadratic(batch_size=128, num_dims=10)  # 1280 coordinates.
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                           "net_options": {"layers": (20, 20)}})
        state, gradients = 1280 * 2 * (20 + 20) * 4, 1280 * 4  # h and c of both layers.
        for rematerialize, per_instance in (("off", 3 * state + gradients),
                                            ("steps", state + gradients), ("chunks", gradients)):
            for instances in (1, 3):
                unroll = optimizer.meta_minimize(problem, 2, rematerialize=rematerialize,
                                                 meta_batch_size=instances)
                self.assertEqual(unroll.kept_bytes_per_step(), instances * per_instance)
        self.assertEqual(optimizer.meta_loss(problem, 2).kept_bytes_per_step(), 0)
        # Without a meta-gradient, every instance still holds its state, parameters, gradients.
        for instances in (1, 4):
            self.assertEqual(optimizer.meta_loss(problem, 2, meta_batch_size=instances)
                             .live_bytes(), instances * (state + 2 * gradients))
        # Two networks do not separate by coordinate: "chunks" keeps what "steps" does.
        two = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                     "net_options": {"layers": (20, 20)}}, sgd={"net": "Sgd"})
        problem = problems.simple_multi_optimizer()
        assignments = [("cw", ["x_0"]), ("sgd", ["x_1"])]
        chunks, steps = (two.meta_minimize(problem, 2, net_assignments=assignments,
                                           rematerialize=mode).kept_bytes_per_step()
                         for mode in ("chunks", "steps"))
        self.assertEqual(chunks, steps)
        self.assertEqual(steps, 1 * 80 * 4 + 2 * 4)  # One LSTM coordinate; Sgd keeps none.

    def _meta_gradient(self, rematerialize, mode, net, objective, reset=0, instances=1):
        tf.random.set_seed(7)
        options = dict(layers=(5, 4), preprocess_name="LogAndSign", preprocess_options={"k": 5})
        if net == "LearnedLambdaDeepLSTM":
            options["lambda_mode"] = "per_coordinate"
        optimizer = meta.MetaOptimizer(cw={"net": net, "net_options": options})

        def images(split):
            rng = np.random.default_rng({"train": 0, "validation": 1}[split])
            return (rng.integers(0, 256, [64, 28, 28, 1], dtype=np.uint8),
                    rng.integers(0, 10, [64]).astype(np.int32))

        unroll = optimizer.meta_loss(problems.mnist(layers=(6,), loader=images), 4, mode=mode,
                                     meta_objective=objective, rematerialize=rematerialize,
                                     state_reset_period=reset, meta_batch_size=instances)
        unroll.reset(meta.instance_seeds(0, meta.TRAIN, 1, instances))
        unroll()  # The second unroll starts from trained parameters and carried states.
        result, grads = unroll.meta_gradient()
        return result.meta_loss.numpy(), np.concatenate([g.numpy().ravel() for g in grads])

    # Chunks: 4780 coordinates in one chunk, or in chunks of 1000 (the last one padded).
    @parameterized.parameters(("graph", "CoordinateWiseDeepLSTM", "train", 2**15, 0, 1),
                              ("xla", "CoordinateWiseDeepLSTM", "validation", 4000, 3, 1),
                              ("graph", "LearnedLambdaDeepLSTM", "validation", 4000, 0, 2),
                              ("xla", "LearnedLambdaDeepLSTM", "train", 2**15, 3, 2),
                              ("eager", "CoordinateWiseDeepLSTM", "train", 4000, 0, 2))
    def test_same_meta_gradient(self, mode, net, objective, chunk_steps, reset, instances):
        with mock.patch.object(meta, "CHUNK_COORDINATE_STEPS", chunk_steps):
            loss, grad = self._meta_gradient(True, mode, net, objective, reset, instances)
        reference_loss, reference_grad = self._meta_gradient(False, mode, net, objective, reset,
                                                             instances)
        self.assertAllClose(loss, reference_loss, rtol=1e-6)
        self.assertAllClose(grad, reference_grad, rtol=1e-5,
                            atol=1e-6 * np.max(np.abs(reference_grad)))

    def test_networks_that_are_not_coordinatewise_are_rematerialised_step_by_step(self):
        # Two networks on one problem: the per-step path (`_rematerialized_steps`).
        def unroll_of(rematerialize):
            tf.random.set_seed(3)
            optimizer = meta.MetaOptimizer(
                a={"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (3,)}},
                b={"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (2,)}})
            problem = _two_quadratics()
            unroll = optimizer.meta_loss(problem, 3, mode="graph", rematerialize=rematerialize,
                                         net_assignments=[("a", [problem.names[0]]),
                                                          ("b", [problem.names[1]])])
            unroll.reset([0, 4])
            unroll()
            result, grads = unroll.meta_gradient()
            return result.meta_loss.numpy(), np.concatenate([g.numpy().ravel() for g in grads])

        (loss, grad), (reference_loss, reference_grad) = unroll_of(True), unroll_of(False)
        self.assertAllClose(loss, reference_loss, rtol=1e-6)
        self.assertAllClose(grad, reference_grad, rtol=1e-5, atol=1e-7)

    def test_refused_with_second_derivatives(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        unroll = optimizer.meta_minimize(_half_square(), 2, second_derivatives=True,
                                         rematerialize=True, mode="eager")
        unroll.reset([0, 0])
        with self.assertRaisesRegex(ValueError, "cannot be combined with second_derivatives"):
            unroll()

    def test_default_xla_gives_way_to_the_graph_where_it_cannot_compile(self):
        def loss(params, data):
            del data  # x^2 inside a while loop of unknown length: no XLA gradient.
            _, square = tf.while_loop(lambda t, _: t < 1, lambda t, x: (t + 1, x * x),
                                      (tf.constant(0), params[0]))
            return square

        problem = problems.Problem(("x",), lambda seed: [tf.ones([])], lambda seed, step: (),
                                   loss)
        unroll = meta.MetaOptimizer(**_lstm_config(layers=())).meta_minimize(problem, 3)
        self.assertEqual(unroll.mode, "xla")
        unroll.reset([0, 0])
        with self.assertLogs(level="WARNING") as logs:
            result = unroll()
        self.assertIn("XLA cannot compile", "".join(logs.output))
        self.assertEqual(unroll.mode, "graph")
        self.assertAllClose(result.losses[0], 1.0)


class StandardDeepLSTMTest(tf.test.TestCase):

    def test_meta_trains_saves_and_reloads_with_its_defaults(self):
        # Its input size is known only from the problem: the unroll builds it, the file
        # records it, and a reload needs nothing but the file.
        optimizer = meta.MetaOptimizer(std={"net": "StandardDeepLSTM",
                                            "net_options": {"output_size": 4, "layers": (3,)}})
        unroll = optimizer.meta_minimize(problems.quadratic(batch_size=3, num_dims=4), 2,
                                         learning_rate=0.01, mode="graph")
        self.assertLen(unroll.variables, 4)
        unroll.reset([0, 0])
        before = _weights(unroll)
        unroll()
        self.assertTrue(any(np.any(a != b) for a, b in zip(before, _weights(unroll))))
        path = optimizer.save(self.get_temp_dir())[0]
        loaded = networks.factory("StandardDeepLSTM", net_path=path)
        self.assertEqual(loaded.options["input_size"], 4)
        grad = tf.random.stateless_normal([3, 4], seed=[1, 2])
        net = optimizer.nets["std"]
        self.assertAllEqual(loaded(grad, loaded.initial_state_for_inputs(grad))[0],
                            net(grad, net.initial_state_for_inputs(grad))[0])


class InstancesTest(tf.test.TestCase, parameterized.TestCase):
    """An instance is a problem and its seed: one meta-batch may mix problems of any shapes."""

    def _problems(self):
        def images(split):
            rng = np.random.default_rng({"train": 0, "validation": 1}[split])
            return (rng.integers(0, 256, [32, 28, 28, 1], dtype=np.uint8),
                    rng.integers(0, 10, [32]).astype(np.int32))

        return [problems.quadratic(batch_size=3, num_dims=4),
                problems.mnist(layers=(5,), batch_size=8, loader=images),
                _two_quadratics()]

    def _run(self, problem_list, seeds, rematerialize, mode="graph"):
        tf.random.set_seed(5)
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,), preprocess_name="LogAndSign",
                                                      preprocess_options={"k": 5}))
        unroll = optimizer.meta_loss(problem_list, 3, mode=mode, rematerialize=rematerialize)
        unroll.reset(seeds)
        unroll()  # The second unroll starts from moved parameters and carried states.
        result, grads = unroll.meta_gradient()
        return result, np.concatenate([g.numpy().ravel() for g in grads])

    @parameterized.parameters(("off", "graph"), ("steps", "graph"), ("chunks", "graph"),
                              ("steps", "xla"))
    def test_mixed_problems_give_the_mean_of_each_alone(self, rematerialize, mode):
        problem_list = self._problems()
        seeds = meta.instance_seeds(0, meta.TRAIN, 3, len(problem_list))
        result, grad = self._run(problem_list, seeds, rematerialize, mode)
        alone = [self._run([p], s[None], rematerialize, mode)
                 for p, s in zip(problem_list, seeds)]
        self.assertAllClose(grad, np.mean([g for _, g in alone], axis=0), rtol=1e-5,
                            atol=1e-6 * np.max(np.abs(grad)))
        self.assertAllClose(result.meta_loss, np.mean([r.meta_loss for r, _ in alone]),
                            rtol=1e-6)
        for b, (single, _) in enumerate(alone):
            self.assertAllClose(result.instance_losses[b], single.losses, rtol=1e-5)
        self.assertNotAllClose(alone[0][1], alone[1][1])  # The instances do differ.

    def test_a_list_of_problems_sets_the_meta_batch(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        unroll = optimizer.meta_loss(self._problems()[:2], 2)
        self.assertEqual(unroll.meta_batch_size, 2)
        with self.assertRaisesRegex(ValueError, r"meta_batch_size \(3\) differs from the 2 "
                                                r"problems given"):
            optimizer.meta_loss(self._problems()[:2], 2, meta_batch_size=3)

    def test_kept_bytes_add_up_the_instances(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        problem_list = self._problems()
        both = optimizer.meta_minimize(problem_list, 2).kept_bytes_per_step()
        each = [optimizer.meta_minimize([p], 2).kept_bytes_per_step() for p in problem_list]
        self.assertEqual(both, sum(each))
        self.assertGreater(min(each), 0)


class MetaBatchTest(tf.test.TestCase, parameterized.TestCase):

    def _meta_gradient(self, seeds):
        tf.random.set_seed(5)
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,), preprocess_name="LogAndSign",
                                                      preprocess_options={"k": 5}))
        unroll = optimizer.meta_loss(problems.quadratic(batch_size=3, num_dims=4), 4,
                                     meta_batch_size=len(seeds), mode="graph")
        unroll.reset(seeds)
        with tf.GradientTape() as tape:
            result = unroll()
        grads = tape.gradient(result.meta_loss, unroll.variables)
        return np.concatenate([g.numpy().ravel() for g in grads]), result

    def test_meta_gradient_is_the_mean_of_the_instances(self):
        seeds = meta.instance_seeds(0, meta.TRAIN, 7, 3)
        batched, result = self._meta_gradient(seeds)
        singles = [self._meta_gradient(seed[None]) for seed in seeds]
        self.assertAllClose(batched, np.mean([g for g, _ in singles], axis=0), rtol=1e-5,
                            atol=1e-7)
        self.assertAllClose(result.meta_loss, np.mean([r.meta_loss for _, r in singles]),
                            rtol=1e-6)
        for b, (_, single) in enumerate(singles):
            self.assertAllClose(result.instance_losses[b], single.losses, rtol=1e-6)

    @parameterized.parameters(False, True)
    def test_a_meta_batch_of_one_trains_as_before_meta_batches(self, rematerialize):
        # Weights after 2 epochs of 3 meta-updates, as commit 9a0c955 (the last one before
        # meta-batches) computed them on this machine, bit for bit (sums in float64).
        tf.random.set_seed(5)
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,), preprocess_name="LogAndSign",
                                                      preprocess_options={"k": 5}))
        unroll = optimizer.meta_minimize(problems.quadratic(batch_size=3, num_dims=4), 4,
                                         learning_rate=0.01, mode="graph",
                                         rematerialize=rematerialize)
        for epoch in range(2):
            unroll.reset(meta.epoch_seed(0, meta.TRAIN, epoch))
            for _ in range(3):
                result = unroll()
        sums = {v.name.split("/", 2)[-1]: np.sum(v.numpy().astype(np.float64))
                for v in unroll.variables}
        self.assertAllClose(sums, {"cw_deep_lstm/linear/b:0": 0.040218718349933624,
                                   "cw_deep_lstm/linear/w:0": 0.6392608061432838,
                                   "cw_deep_lstm/lstm_1/b_gates:0": -1.7111594825983047,
                                   "cw_deep_lstm/lstm_1/w_gates:0": -2.812137669418007},
                            rtol=1e-6, atol=0)
        self.assertAllClose(result.meta_loss, 40.29150390625, rtol=1e-6)

    def test_instance_seeds(self):
        seeds = meta.instance_seeds(3, meta.TRAIN, 5, 4)
        self.assertEqual(seeds.shape, (4, 2))
        self.assertAllEqual(seeds[0], meta.epoch_seed(3, meta.TRAIN, 5))  # A batch of one: the epoch.
        self.assertLen({tuple(s) for s in seeds}, 4)

    def test_epochs_at_once_are_the_epochs_one_at_a_time(self):
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,)))
        problem = problems.quadratic(batch_size=4, num_dims=3)
        seeds = [meta.epoch_seed(0, meta.TEST, e) for e in range(3)]
        together = meta.run_epochs(optimizer.meta_loss(problem, 5, meta_batch_size=3,
                                                       mode="graph"), 2, np.stack(seeds))
        alone = optimizer.meta_loss(problem, 5, mode="graph")
        for epoch, seed in zip(together, seeds):
            self.assertAllClose(epoch.history, meta.run_epoch(alone, 2, seed).history, rtol=1e-6)

    def test_reset_needs_a_seed_per_instance(self):
        unroll = meta.MetaOptimizer(**_lstm_config()).meta_loss(_half_square(), 2,
                                                               meta_batch_size=2)
        with self.assertRaisesRegex(ValueError, r"reset needs 2 seeds of two ints, got an array "
                                                r"of shape \(2,\)"):
            unroll.reset([0, 1])


class StateResetTest(tf.test.TestCase):

    def _history(self, unroll_length, period, num_steps=12):
        tf.random.set_seed(11)
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,)))
        unroll = optimizer.meta_loss(problems.quadratic(batch_size=3, num_dims=2), unroll_length,
                                     state_reset_period=period, mode="graph")
        unroll.reset([2, 3])
        losses = [unroll().losses.numpy() for _ in range(num_steps // unroll_length)]
        return np.concatenate([losses[0]] + [l[1:] for l in losses[1:]])

    def test_static_and_dynamic_reset_points_agree(self):
        # Period 2 with unrolls of 4 resets at fixed positions; with unrolls of 3 it must
        # find the reset points at run time. Both must reset at steps 2, 4, 6, ...
        self.assertAllClose(self._history(4, 2), self._history(3, 2), rtol=1e-6)

    def test_resets_change_the_trajectory(self):
        carried = self._history(4, 0)
        self.assertAllClose(self._history(3, 0), carried, rtol=1e-6)
        reset = self._history(4, 2)
        self.assertAllClose(reset[:3], carried[:3], rtol=1e-6)  # Same until the first reset.
        self.assertNotAllClose(reset, carried)

    def test_reset_every_step_makes_each_step_memoryless(self):
        # With period 1 every step starts from the zero state, so the step from x_2 is the step
        # a fresh network takes from x_2; without resets the LSTM's memory changes it.
        tf.random.set_seed(12)
        optimizer = meta.MetaOptimizer(**_lstm_config(layers=(4,), scale=0.5))

        def run(x0, length, period):
            problem = _half_square(x0=x0)
            unroll = optimizer.meta_loss(problem, length, state_reset_period=period,
                                         mode="eager")
            unroll.reset([0, 0])
            unroll()
            return unroll.carry.params[0].numpy()

        x0 = (1.0, -2.0, 3.0)
        x2 = run(x0, 2, period=1)
        fresh_x3 = run(tuple(x2), 1, period=0)
        self.assertAllClose(run(x0, 3, period=1), fresh_x3, rtol=1e-6)
        self.assertNotAllClose(run(x0, 3, period=0), fresh_x3, rtol=1e-4)


class ObjectiveTest(tf.test.TestCase):

    def _shifted_problem(self):
        # Training data 0 and held-out data 10: the two meta-losses are distinguishable.
        return problems.Problem(
            ("x",), lambda seed: [tf.constant([1.0, 2.0])],
            lambda seed, step: tf.constant(0.0),
            lambda params, data: tf.reduce_sum(tf.square(params[0] - data)),
            sample_validation=lambda seed, step: tf.constant(10.0))

    def test_validation_objective_sums_held_out_losses(self):
        optimizer = meta.MetaOptimizer(sgd={"net": "Sgd", "net_options": {"learning_rate": 0.25}})
        unroll = optimizer.meta_loss(self._shifted_problem(), 3, meta_objective="validation",
                                     mode="graph")
        unroll.reset([0, 0])
        result = unroll()
        # SGD on sum (x - 0)^2 with lr 0.25 halves x each step: x_t = 0.5^t x_0.
        xs = [np.array([1.0, 2.0]) * 0.5**t for t in range(4)]
        self.assertAllClose(result.losses, [np.sum(x**2) for x in xs], rtol=1e-6)
        self.assertAllClose(result.meta_loss, sum(np.sum((x - 10.0)**2) for x in xs), rtol=1e-6)

    def test_problems_without_data_refuse_the_validation_objective(self):
        optimizer = meta.MetaOptimizer(**_lstm_config())
        with self.assertRaisesRegex(ValueError, "needs a problem with held-out data"):
            optimizer.meta_minimize(problems.quadratic(), 2, meta_objective="validation")


class NonFiniteTest(tf.test.TestCase):

    def test_non_finite_meta_gradient_never_reaches_the_weights(self):
        # The loss is finite until x crosses zero, where its log turns NaN.
        problem = problems.Problem(("x",), lambda seed: [tf.constant([0.3])],
                                   lambda seed, step: (),
                                   lambda params, data: tf.reduce_sum(
                                       tf.math.log(params[0]) + params[0]))
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                           "net_options": {"layers": (), "scale": 1.0}})
        unroll = optimizer.meta_minimize(problem, 3, learning_rate=0.1, mode="graph")
        w = next(v for v in unroll.variables if v.shape == (1, 1))
        w.assign([[-10.0]])  # Steps of -10 * preprocessed gradient drive x negative at once.
        before = _weights(unroll)
        unroll.reset([0, 0])
        result = unroll()
        self.assertFalse(np.isfinite(result.meta_loss.numpy()))
        self.assertFalse(bool(result.applied))
        for b, a in zip(before, _weights(unroll)):
            self.assertAllEqual(a, b)
        self.assertEqual(int(unroll.optimizer.step.numpy()), 0)  # Adam did not count a step.


class SaveTest(tf.test.TestCase):

    def test_save_writes_one_file_per_network_with_the_original_names(self):
        optimizer = meta.MetaOptimizer(
            cw={"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (3,)}},
            conv={"net": "FixedLambdaDeepLSTM", "net_options": {"layers": (3,),
                                                                "fixed_lambda": 0.01}},
            fc={"net": "LearnedLambdaDeepLSTM", "net_options": {"layers": (3,)}},
            adam={"net": "Adam"})
        path = self.get_temp_dir()
        optimizer.save(path)
        self.assertCountEqual(
            [f for f in os.listdir(path) if f.endswith(".l2l")],
            ["cw.l2l", "convfixed0.01.l2l", "fclearned.l2l", "adam.l2l"])
        restored = meta.MetaOptimizer(
            cw={"net": "CoordinateWiseDeepLSTM", "net_path": os.path.join(path, "cw.l2l")})
        for a, b in zip(restored.nets["cw"].trainable_variables,
                        optimizer.nets["cw"].trainable_variables):
            self.assertAllEqual(a, b)

    def test_num_unrolls(self):
        self.assertEqual(meta.num_unrolls(100, 20), 5)
        with self.assertRaisesRegex(ValueError, r"unroll_length \(30\) must be positive and "
                                                r"divide num_steps \(100\)"):
            meta.num_unrolls(100, 30)


class SeedTest(tf.test.TestCase):

    def test_epoch_seeds_are_deterministic_and_distinct(self):
        a = meta.epoch_seed(0, meta.TRAIN, 5)
        self.assertEqual(a.dtype, np.int32)
        self.assertAllEqual(a, meta.epoch_seed(0, meta.TRAIN, 5))
        others = [meta.epoch_seed(0, meta.TRAIN, 6), meta.epoch_seed(0, meta.TEST, 5),
                  meta.epoch_seed(1, meta.TRAIN, 5)]
        for other in others:
            self.assertNotAllClose(a, other)

    def test_eval_unroll_length(self):
        self.assertEqual(meta.eval_unroll_length(100), 100)
        self.assertEqual(meta.eval_unroll_length(200), 100)
        self.assertEqual(meta.eval_unroll_length(150), 75)
        self.assertEqual(meta.eval_unroll_length(101), 1)


class RunEpochTest(tf.test.TestCase):

    def test_history_counts_every_step_once(self):
        optimizer = meta.MetaOptimizer(sgd={"net": "Sgd", "net_options": {"learning_rate": 0.25}})
        unroll = optimizer.meta_loss(problems.simple(), 2, mode="graph")
        epoch = meta.run_epoch(unroll, 3, meta.epoch_seed(0, meta.TEST, 0))
        # SGD on x^2 with lr 0.25 halves x: the loss after step t is 0.25^t.
        self.assertAllClose(epoch.history, 0.25 ** np.arange(1, 7), rtol=1e-6)
        self.assertAllClose(epoch.final_loss, 0.25**6, rtol=1e-6)
        self.assertGreater(epoch.time, 0.0)


if __name__ == "__main__":
    tf.test.main()
