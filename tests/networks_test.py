"""Tests for networks.py: preprocessing, shapes, baselines, the lambda rule, save and load."""

import io
import json
import os
import zipfile

from absl.testing import parameterized
import numpy as np
import sonnet as snt
import tensorflow as tf

import networks
import util
import weights_file


def _lstm(**options):
    options.setdefault("layers", (5, 4))
    return networks.CoordinateWiseDeepLSTM(**options)


class PreprocessTest(tf.test.TestCase):

    def test_log_and_sign_matches_hand_computed_values(self):
        k = 5.0
        grads = tf.constant([[1.0], [-1e-3], [0.0], [1e-12], [-50.0]])
        eps = np.finfo(np.float32).eps
        # log part: max(log(|g| + eps) / k, -1); sign part: clip(g * e^k, -1, 1).
        expected_log = [np.log(1.0 + eps) / k, max(np.log(1e-3 + eps) / k, -1.0), -1.0, -1.0,
                        np.log(50.0 + eps) / k]
        expected_sign = [1.0, -1e-3 * np.exp(k), 0.0, 1e-12 * np.exp(k), -1.0]
        out = networks.LogAndSign(k)(grads).numpy()
        self.assertEqual(out.shape, (5, 2))
        self.assertAllClose(out[:, 0], expected_log, rtol=1e-6)
        self.assertAllClose(out[:, 1], expected_sign, rtol=1e-6)
        # Spot values worked out by hand: log(1e-3)/5 = -1.3816 -> clamped; 1e-3 e^5 = 0.14841.
        self.assertAllClose(out[1], [-1.0, -0.148413], rtol=1e-5)

    def test_clamp(self):
        out = networks.Clamp(min_value=-1.0, max_value=2.0)(tf.constant([-3.0, 0.5, 7.0]))
        self.assertAllEqual(out, [-1.0, 0.5, 2.0])

    def test_unknown_preprocessing_lists_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Unknown preprocess_name 'Log'.*LogAndSign"):
            _lstm(preprocess_name="Log")


class ShapeTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters([()], [(7,)], [(3, 4)], [(2, 3, 5)], [(5, 5, 2, 3)])
    def test_coordinatewise_networks_keep_the_parameter_shape(self, shape):
        grad = tf.random.stateless_normal(shape, seed=[1, 2])
        for net in (_lstm(), _lstm(preprocess_name="LogAndSign", preprocess_options={"k": 5}),
                    _lstm(layers=()), networks.Sgd(0.1), networks.Adam(0.1),
                    networks.FixedLambdaDeepLSTM(layers=(3,)),
                    networks.LearnedLambdaDeepLSTM(layers=(3,))):
            step, state = net(grad, net.initial_state_for_inputs(grad), grad)
            self.assertEqual(step.shape, grad.shape, type(net).__name__)
            step2, _ = net(grad, state, grad)
            self.assertEqual(step2.shape, grad.shape)

    @parameterized.parameters([(5, 4)], [(3,)], [()])
    def test_coordinatewise_columns_equal_sonnet_2_rows(self, layers):
        # The column layout computes what Sonnet 2's own snt.LSTM computes with a row per
        # coordinate (its weights converted from Sonnet 1's layout), state included, step after
        # step: an independent reference for the LSTM arithmetic.
        net = _lstm(layers=layers, preprocess_name="LogAndSign", preprocess_options={"k": 5},
                    scale=0.1)
        for weights in net.weights().values():
            for v in weights.values():
                v.assign(tf.random.stateless_normal(v.shape, seed=[3, v.shape.num_elements()]))
        cores, fan_in = [], 2
        for i, units in enumerate(layers, start=1):
            w, b = (net.weights()[f"lstm_{i}"][n].numpy() for n in ("w_gates", "b_gates"))
            order = lambda x: np.concatenate([x[..., :units], x[..., 2 * units:3 * units],
                                              x[..., units:2 * units], x[..., 3 * units:]], -1)
            core = snt.LSTM(units, forget_bias=0.0)
            core(tf.zeros([1, fan_in]), core.initial_state(1))  # Creates its variables.
            core.input_to_hidden.assign(order(w[:fan_in]))
            core.hidden_to_hidden.assign(order(w[fan_in:]))
            b_f = np.zeros(4 * units, np.float32)
            b_f[units:2 * units] = 1.0  # Sonnet 1's forget bias, in Sonnet 2's gate order.
            core.b.assign(order(b) + b_f)
            cores.append(core)
            fan_in = units
        linear = net.weights()["linear"]
        grad = tf.random.stateless_normal([6, 7], seed=[1, 2]) * 0.01
        state = net.initial_state_for_inputs(grad)
        rows_state = [core.initial_state(42) for core in cores]
        for _ in range(3):
            step, state = net(grad, state)
            hidden = networks.log_and_sign(tf.reshape(grad, [-1, 1]), 5.0)
            for i, core in enumerate(cores):
                hidden, rows_state[i] = core(hidden, rows_state[i])
            reference = (tf.matmul(hidden, linear["w"]) + linear["b"]) * 0.1
            self.assertAllClose(step, tf.reshape(reference, [6, 7]), rtol=1e-5, atol=1e-7)
            for cols, rows in zip(state, rows_state):
                self.assertAllClose(tf.transpose(cols.hidden), rows.hidden, rtol=1e-5, atol=1e-6)
                self.assertAllClose(tf.transpose(cols.cell), rows.cell, rtol=1e-5, atol=1e-6)
            grad = grad + step

    def test_kernel_lstm_steps_each_filter_as_a_row(self):
        net = networks.KernelDeepLSTM([3, 3], layers=(4,))
        grad = tf.random.stateless_normal([3, 3, 2, 5], seed=[3, 4])
        step, _ = net(grad, net.initial_state_for_inputs(grad))
        self.assertEqual(step.shape, grad.shape)
        # Filter (in=1, out=4) alone through the same network gives the same step.
        alone = grad[:, :, 1:2, 4:5]
        alone_step, _ = net(alone, net.initial_state_for_inputs(alone))
        self.assertAllClose(alone_step[:, :, 0, 0], step[:, :, 1, 4], rtol=1e-5, atol=1e-7)

    def test_kernel_lstm_refuses_another_kernel_shape(self):
        net = networks.KernelDeepLSTM([3, 3], layers=(4,))
        with self.assertRaisesRegex(ValueError, r"kernel_shape \[3, 3\].*\[5, 5, 1, 1\]"):
            net.initial_state_for_inputs(tf.zeros([5, 5, 1, 1]))

    def test_standard_lstm_output_size(self):
        net = networks.StandardDeepLSTM(3, (6,), preprocess_name="LogAndSign",
                                        preprocess_options={"k": 5})
        inputs = tf.ones([4, 2])
        step, state = net(inputs, net.initial_state_for_inputs(inputs))
        self.assertEqual(step.shape, (4, 3))
        # 2 inputs x 2 features, then 6 hidden units; Sonnet 1's gates for both.
        self.assertEqual(net.weights()["lstm_1"]["w_gates"].shape, (4 + 6, 24))
        self.assertEqual(net.options["input_size"], 2)  # Recorded at the first call.


class PureStepTest(tf.test.TestCase, parameterized.TestCase):
    """`step` is pure: frozen arrays of the weights give `update`'s numbers, reading no variable."""

    @parameterized.named_parameters(
        ("coordinatewise", "CoordinateWiseDeepLSTM", {"layers": (3, 2)}, [5]),
        ("fixed_lambda", "FixedLambdaDeepLSTM", {"layers": (3,), "fixed_lambda": 0.05}, [5]),
        ("learned_lambda", "LearnedLambdaDeepLSTM", {"layers": (3,)}, [5]),
        ("learned_scalar", "LearnedLambdaDeepLSTM", {"layers": (3,), "lambda_mode": "scalar"},
         [5]),
        ("kernel", "KernelDeepLSTM", {"kernel_shape": [2, 2], "layers": (3,)}, [2, 2, 1, 3]),
        ("standard", "StandardDeepLSTM", {"output_size": 4, "layers": (3,), "input_size": 4},
         [6, 4]),
        ("sgd", "Sgd", {"learning_rate": 0.1}, [5]),
        ("adam", "Adam", {}, [5]),
        ("normalized_mlp", "NormalizedMLP", {"hidden": (6, 5)}, [2, 3]))
    def test_frozen_weights_give_the_modules_step(self, net, options, shape):
        tf.random.set_seed(2)
        network = networks.factory(net, options)
        # Non-zero weights everywhere, so that every weight matters.
        for variable in network.trainable_variables:
            variable.assign(tf.random.normal(variable.shape, stddev=0.3))
        gradient = tf.random.normal(shape, stddev=0.1)
        param = tf.random.normal(shape)
        state = network.initial_state_for_inputs(gradient)
        frozen = network.step_weights(tf.nest.map_structure(
            lambda v: tf.constant(v.numpy()), network.weights()))
        step = tf.function(lambda g, s, p: network.step(frozen, g, s, p))
        graph = step.get_concrete_function(gradient, state, param).graph
        self.assertEmpty([op for op in graph.get_operations() if op.type == "ReadVariableOp"])
        self.assertEmpty(graph.variables)
        for _ in range(3):  # Through the state as well.
            pure, module = step(gradient, state, param), network.update(gradient, state, param)
            self.assertAllEqual(pure.step, module.step)
            for pure_leaf, module_leaf in zip(tf.nest.flatten(pure.next_state),
                                              tf.nest.flatten(module.next_state)):
                self.assertAllEqual(pure_leaf, module_leaf)
            state = module.next_state
        self.assertEqual(pure.step.shape, gradient.shape)


class BaselineNetworkTest(tf.test.TestCase):

    def test_sgd_step(self):
        step, state = networks.Sgd(0.5)(tf.constant([2.0, -4.0]), ())
        self.assertAllEqual(step, [-1.0, 2.0])
        self.assertEqual(state, ())

    def test_adam_matches_the_update_rule(self):
        lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
        net = networks.Adam(lr, b1, b2, eps)
        grads = [np.array([0.5, -2.0]), np.array([0.1, 1.0]), np.array([-0.3, 0.0])]
        state = net.initial_state_for_inputs(tf.zeros([2]))
        m = v = np.zeros(2)
        for t, g in enumerate(grads, start=1):
            step, state = net(tf.constant(g, tf.float32), state)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            expected = -lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
            self.assertAllClose(step, expected, rtol=1e-5)

    def test_adam_matches_tensorflow_adam(self):
        x_net = tf.constant([1.0, -3.0])
        x_tf = tf.Variable([1.0, -3.0])
        net = networks.Adam(0.1)
        reference = tf.keras.optimizers.Adam(0.1, epsilon=1e-8)
        state = net.initial_state_for_inputs(x_net)
        for _ in range(5):
            step, state = net(2 * x_net, state)
            x_net = x_net + step
            reference.apply_gradients([(2 * x_tf, x_tf)])
        self.assertAllClose(x_net, x_tf, rtol=1e-5)


class LambdaNetworkTest(tf.test.TestCase, parameterized.TestCase):

    def test_fixed_lambda_adds_lambda_times_the_parameter(self):
        lam = 0.05
        fixed = networks.FixedLambdaDeepLSTM(fixed_lambda=lam, layers=(4,), initializer="zeros")
        plain = networks.CoordinateWiseDeepLSTM(layers=(4,), initializer="zeros")
        grad, param = tf.constant([0.3, -0.2]), tf.constant([2.0, -1.0])
        step, _ = fixed(grad, fixed.initial_state_for_inputs(grad), param)
        delta, _ = plain(grad, plain.initial_state_for_inputs(grad))
        self.assertAllClose(step, delta + lam * param)

    @parameterized.parameters("per_coordinate", "scalar")
    def test_learned_lambda_starts_at_init_lambda(self, mode):
        net = networks.LearnedLambdaDeepLSTM(lambda_mode=mode, init_lambda=0.03, lambda_max=0.1,
                                             layers=(4,))
        grad = tf.random.stateless_normal([6], seed=[0, 1])
        update = net.update(grad, net.initial_state_for_inputs(grad), grad)
        self.assertAllClose(update.lambda_, 0.03 * np.ones(update.lambda_.shape), rtol=1e-6)

    def test_learned_lambda_refuses_init_outside_the_bound(self):
        with self.assertRaisesRegex(ValueError, "strictly inside"):
            networks.LearnedLambdaDeepLSTM(init_lambda=0.2, lambda_max=0.1)
        with self.assertRaisesRegex(ValueError, "Unknown lambda_mode 'both'"):
            networks.LearnedLambdaDeepLSTM(lambda_mode="both")

    def test_lambda_networks_need_the_parameter(self):
        net = networks.FixedLambdaDeepLSTM(layers=())
        with self.assertRaisesRegex(ValueError, "needs the parameter"):
            net(tf.zeros([2]), net.initial_state_for_inputs(tf.zeros([2])))


def _normalized_mlp_reference(weights, grads, options):
    """NormalizedMLP's steps by hand in float64 numpy, from its docstring's formula."""
    decays = np.array(options["decays"])[:, None]
    beta2, clip, eps = options["second_moment_decay"], options["feature_clip"], options["epsilon"]
    m = np.zeros((len(decays), grads.shape[1]))
    v = np.zeros(grads.shape[1])
    steps = []
    for t, g in enumerate(grads, start=1):
        m = decays * m + (1 - decays) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat, v_hat = m / (1 - decays**t), v / (1 - beta2**t)
        scale = 1 / np.sqrt(v_hat + eps**2)
        features = np.concatenate([np.clip(g * scale, -clip, clip)[None],
                                   np.clip(m_hat * scale, -clip, clip)]
                                  + [np.full((1, g.size), np.tanh(t / s))
                                     for s in options["time_scales"]])
        hidden = features
        for i in range(1, len(options["hidden"]) + 1):
            layer = weights[f"mlp_{i}"]
            hidden = np.maximum(layer["w"].T @ hidden + layer["b"][:, None], 0)
        out = weights["output"]["w"].T @ hidden + weights["output"]["b"][:, None]
        adam = np.clip(m_hat[options["decays"].index(0.9)] / (np.sqrt(v_hat) + eps), -clip, clip)
        log_lr = np.minimum(weights["step_size"]["log_lr"]
                            + options["max_log_scale"] * np.tanh(out[1]), options["max_log_lr"])
        steps.append(-np.exp(log_lr) * (adam + options["max_direction"] * np.tanh(out[0])))
    return np.array(steps)


class NormalizedMLPTest(tf.test.TestCase, parameterized.TestCase):
    """The scale-free, bounded per-coordinate MLP."""

    def _trained_like(self, dtype=tf.float32, seed=3, **options):
        tf.random.set_seed(seed)
        net = networks.NormalizedMLP(dtype=dtype, **options)
        for variable in net.trainable_variables:  # Every weight non-zero, as after training.
            variable.assign_add(tf.random.normal(variable.shape, stddev=0.5, dtype=dtype))
        return net

    def _steps(self, net, grads):
        state, steps = net.initial_state_for_inputs(grads[0]), []
        for g in grads:
            update = net.update(tf.constant(g), state)
            steps.append(update.step.numpy())
            state = update.next_state
        return np.array(steps)

    def test_untrained_is_adam(self):
        grads = np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32)
        grads[3] *= 100.0  # A spike: Adam's direction stays within the clip.
        ours = self._steps(networks.NormalizedMLP(initial_learning_rate=0.003), grads)
        adam = self._steps(networks.Adam(learning_rate=0.003), grads)
        self.assertAllClose(ours, adam, rtol=1e-5, atol=1e-9)

    @parameterized.parameters({}, {"hidden": (), "time_scales": (), "decays": (0.9,)},
                              {"hidden": (4, 3, 2), "max_log_lr": -5.0})
    def test_trajectory_matches_the_formula(self, **options):
        net = self._trained_like(tf.float64, **options)
        grads = np.random.default_rng(1).normal(size=(5, 9)) * np.logspace(-6, 2, 9)
        weights = {layer: {name: v.numpy() for name, v in variables.items()}
                   for layer, variables in net.weights().items()}
        self.assertAllClose(self._steps(net, grads),
                            _normalized_mlp_reference(weights, grads, net.options), rtol=1e-10)

    def test_steps_do_not_depend_on_the_gradients_scale(self):
        net = self._trained_like()
        grads = np.random.default_rng(2).normal(size=(8, 50)).astype(np.float32)
        # Down to where Adam's epsilon (1e-8, beside the root of the second moment) shows.
        small = self._steps(net, grads * 1e-2)
        large = self._steps(net, grads * 1e3)
        self.assertAllClose(small, large, rtol=1e-3, atol=1e-9)
        self.assertGreater(np.abs(small).max(), 1e-4)

    def test_step_is_bounded_whatever_the_weights(self):
        net = self._trained_like()
        for variable in net.trainable_variables:
            variable.assign(tf.fill(variable.shape, 1e4))  # Absurd weights.
        grads = np.random.default_rng(3).normal(size=(5, 40)).astype(np.float32) * 1e6
        steps = self._steps(net, grads)
        bound = np.exp(net.options["max_log_lr"]) * (net.options["feature_clip"]
                                                     + net.options["max_direction"])
        self.assertTrue(np.all(np.isfinite(steps)))
        self.assertLessEqual(np.abs(steps).max(), bound * (1 + 1e-6))

    def test_meta_gradient_matches_finite_differences(self):
        net = self._trained_like(tf.float64)
        x0 = tf.constant([1.0, -2.0, 0.5], tf.float64)

        def meta_loss():  # Three steps on 0.5 ||x||^2 (whose gradient is x), differentiated
            # through the network's inputs too: central differences see every dependence.
            x, state, total = x0, net.initial_state_for_inputs(x0), 0.0
            for _ in range(3):
                update = net.update(x, state)
                x, state = x + update.step, update.next_state
                total += 0.5 * tf.reduce_sum(tf.square(x))
            return total

        with tf.GradientTape() as tape:
            loss = meta_loss()
        grads = tape.gradient(loss, net.trainable_variables)
        # Central differences of a loss of order 1 are good to about 1e-9 (atol below).
        self.assertGreater(max(np.abs(g.numpy()).max() for g in grads), 1e-3)
        for variable, grad in zip(net.trainable_variables, grads):
            theta, eps = variable.numpy(), 1e-6
            bump = np.zeros_like(theta)
            bump.flat[0] = eps
            variable.assign(theta + bump)
            upper = meta_loss()
            variable.assign(theta - bump)
            lower = meta_loss()
            variable.assign(theta)
            self.assertAllClose(np.ravel(grad.numpy())[0], (upper - lower) / (2 * eps),
                                rtol=1e-5, atol=1e-8, msg=variable.name)

    @parameterized.parameters(
        ({"decays": (0.5, 0.99)}, "decays must include 0.9"),
        ({"decays": (0.9, 1.0)}, "decays must lie strictly between 0 and 1"),
        ({"hidden": (0,)}, r"hidden must lie in \[1, 4096\]"),
        ({"time_scales": (-1,)}, "time_scales must be positive"),
        ({"initial_learning_rate": 2.0}, "initial_learning_rate must be at most"),
        ({"feature_clip": float("nan")}, "feature_clip must be a finite number"))
    def test_bad_options_are_clear_errors(self, options, message):
        with self.assertRaisesRegex(util.OptionError, message):
            networks.NormalizedMLP(**options)


class InitializerTest(tf.test.TestCase):

    def test_zeros_initializer_gives_zero_steps(self):
        net = _lstm(initializer="zeros")
        grad = tf.random.stateless_normal([10], seed=[5, 6])
        step, _ = net(grad, net.initial_state_for_inputs(grad))
        self.assertAllEqual(step, np.zeros(10))
        # As Sonnet 1: the bias variable is zeros; the forget bias is added at run time.
        self.assertAllEqual(net.weights()["lstm_1"]["b_gates"], np.zeros(20))

    def test_per_layer_initializer_dict(self):
        w = np.full([4, 1], 0.5, np.float32)
        net = _lstm(initializer={"linear": {"w": w, "b": "ones"}})
        self.assertAllEqual(net.weights()["linear"]["w"], w)
        self.assertAllEqual(net.weights()["linear"]["b"], [1.0])

    def test_arrays_fill_the_variable_as_tf1_constant_initializer(self):
        # A smaller array fills the variable in order and repeats its last value.
        net = _lstm(initializer={"linear": {"w": np.array([[0.5], [2.0]], np.float32)}})
        self.assertAllEqual(net.weights()["linear"]["w"], [[0.5], [2.0], [2.0], [2.0]])
        with self.assertRaisesRegex(ValueError, r"linear/w have shape \(5, 1\).*needs \(4, 1\), "
                                                r"and 5 values cannot fill 4"):
            _lstm(initializer={"linear": {"w": np.zeros([5, 1], np.float32)}})

    def test_names_are_tf1_initializers_with_tf1_defaults(self):
        # The original resolved "n" as tf.n_initializer(): N(0, 1), not Keras's N(0, 0.05).
        tf.random.set_seed(0)

        def gates(name):  # 40,400 values.
            net = _lstm(layers=(100,), initializer={"w_gates": name})
            return net.weights()["lstm_1"]["w_gates"].numpy()

        normal = gates("random_normal")
        self.assertAllClose([normal.mean(), normal.std()], [0.0, 1.0], atol=0.02)
        truncated = gates("truncated_normal")  # N(0, 1) cut at 2: stddev 0.8796.
        self.assertAllClose([truncated.mean(), truncated.std()], [0.0, 0.8796], atol=0.02)
        self.assertLessEqual(np.abs(truncated).max(), 2.0)
        uniform = gates("random_uniform")  # [0, 1), not [-0.05, 0.05].
        self.assertGreaterEqual(uniform.min(), 0.0)
        self.assertLess(uniform.max(), 1.0)
        self.assertAllClose([uniform.mean(), uniform.min(), uniform.max()], [0.5, 0.0, 1.0],
                            atol=0.01)
        self.assertAllEqual(gates("constant"), np.zeros([101, 400]))  # TF1's value=0.
        self.assertAllEqual(gates("ones"), np.ones([101, 400]))
        glorot = gates("glorot_uniform")
        self.assertAllClose(np.abs(glorot).max(), np.sqrt(6 / (101 + 400)), rtol=0.01)

    def test_unknown_or_unfit_initializer_name_is_a_clear_error(self):
        # Keras-only names (or Keras's meanings) are not the original's.
        with self.assertRaisesRegex(ValueError, r"Unknown initializer 'he_normal' for "
                                                r"lstm_1/w_gates; .*tf.<name>_initializer.*: "
                                                r"constant, .*random_normal, .*zeros"):
            _lstm(initializer="he_normal")
        with self.assertRaisesRegex(ValueError, r"initializer of lstm_1/b_gates cannot make "
                                                r"shape \(20,\): .*two-dimensional"):
            _lstm(initializer="orthogonal")  # As TF1: orthogonal needs a matrix.

    def test_default_gate_initializer_is_sonnet_1s(self):
        tf.random.set_seed(0)
        net = _lstm(layers=(200,))
        # Truncated normal of stddev 1/sqrt(1 + 200) (sample stddev 0.88 of that), the biases
        # too (Sonnet 1's default), the forget bias added at run time.
        w = net.weights()["lstm_1"]["w_gates"].numpy()
        self.assertAllClose(w.std(), 0.88 / np.sqrt(201), rtol=0.03)
        b = net.weights()["lstm_1"]["b_gates"].numpy()
        self.assertAllClose(b.std(), 0.88 / np.sqrt(201), rtol=0.1)
        self.assertLess(abs(b.mean()), 0.01)


class SaveLoadTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        ("CoordinateWiseDeepLSTM", {"layers": (5, 4), "preprocess_name": "LogAndSign",
                                    "preprocess_options": {"k": 5}, "scale": 0.01}),
        ("FixedLambdaDeepLSTM", {"layers": (3,), "fixed_lambda": 0.01}),
        ("LearnedLambdaDeepLSTM", {"layers": (3,), "lambda_mode": "per_coordinate"}),
        ("LearnedLambdaDeepLSTM", {"layers": (3,), "lambda_mode": "scalar"}),
        ("KernelDeepLSTM", {"kernel_shape": (2, 2), "layers": (3,)}),
        ("Adam", {"learning_rate": 0.1}),
        ("NormalizedMLP", {"hidden": (6,), "time_scales": (5,), "decays": (0.9, 0.99)}),
    )
    def test_save_then_load_gives_bit_identical_steps(self, name, options):
        tf.random.set_seed(1)
        net = networks.factory(name, options)
        for weights in net.weights().values():  # Move off the initial values.
            for v in weights.values():
                v.assign_add(tf.random.stateless_normal(v.shape, seed=[7, 8]) * 0.1)
        path = os.path.join(self.get_temp_dir(), f"{name}.l2l")
        networks.save(net, path)
        loaded = networks.factory(name, net_path=path)
        self.assertEqual(loaded.options, net.options)
        grad = tf.random.stateless_normal([2, 2, 3, 1], seed=[9, 9])
        state_a = net.initial_state_for_inputs(grad)
        state_b = loaded.initial_state_for_inputs(grad)
        for _ in range(3):
            step_a, state_a = net(grad, state_a, grad)
            step_b, state_b = loaded(grad, state_b, grad)
            self.assertAllEqual(step_a, step_b)

    def test_file_that_does_not_fit_is_a_clear_error(self):
        path = os.path.join(self.get_temp_dir(), "cw.l2l")
        networks.save(_lstm(layers=(5, 4)), path)
        with self.assertRaisesRegex(util.WeightsFileError,
                                    r"layers=\[5, 4\] in the file but \[20, 20\] asked for"):
            networks.factory("CoordinateWiseDeepLSTM", {"layers": (20, 20)}, path)
        with self.assertRaisesRegex(util.WeightsFileError,
                                    "holds a CoordinateWiseDeepLSTM, not a FixedLambdaDeepLSTM"):
            networks.factory("FixedLambdaDeepLSTM", {}, path)

    def test_damaged_or_foreign_files_are_clear_errors(self):
        directory = self.get_temp_dir()
        good = os.path.join(directory, "good.l2l")
        networks.save(_lstm(), good)
        data = open(good, "rb").read()
        truncated = os.path.join(directory, "truncated.l2l")
        with open(truncated, "wb") as f:
            f.write(data[:len(data) // 2])
        with self.assertRaisesRegex(util.WeightsFileError, "truncated.l2l is a damaged"):
            weights_file.load(truncated)
        text = os.path.join(directory, "text.l2l")
        with open(text, "w") as f:
            f.write("hello")
        with self.assertRaisesRegex(util.WeightsFileError, "not an optimizer file"):
            weights_file.load(text)
        with self.assertRaisesRegex(util.WeightsFileError, "Cannot read optimizer file"):
            weights_file.load(os.path.join(directory, "missing.l2l"))

    def test_weights_that_do_not_match_the_recorded_options_are_refused(self):
        path = os.path.join(self.get_temp_dir(), "edited.l2l")
        networks.save(_lstm(layers=(5, 5)), path)
        # Edit the header to claim one layer: the file then holds a layer too many.
        with zipfile.ZipFile(path) as archive:
            entries = {name: archive.read(name) for name in archive.namelist()}
        header = json.loads(entries["__header__.json"])
        header["net_options"]["layers"] = [5]
        entries["__header__.json"] = json.dumps(header).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        with self.assertRaisesRegex(util.WeightsFileError, r"edited.l2l holds weights .*"
                                    r"lstm_2.*; a CoordinateWiseDeepLSTM with these options has"):
            networks.factory("CoordinateWiseDeepLSTM", net_path=path)

    def test_version_1_files_of_sonnet_2_layout_load_as_the_same_network(self):
        # Version 1 stored Sonnet 2's w_i, w_h, b (gates i, f, g, o, forget bias inside b).
        tf.random.set_seed(2)
        net = _lstm(layers=(5, 4), preprocess_name="LogAndSign", preprocess_options={"k": 5})
        arrays = net.get_weights()
        for i, units in ((1, 5), (2, 4)):
            w, b = arrays[f"lstm_{i}"]["w_gates"], arrays[f"lstm_{i}"]["b_gates"] + 0.5
            net.weights()[f"lstm_{i}"]["b_gates"].assign(b)  # Forget biases around 1.5.
            order = lambda x: np.concatenate([x[..., :units], x[..., 2 * units:3 * units],
                                              x[..., units:2 * units], x[..., 3 * units:]], -1)
            fan_in = w.shape[0] - units
            b2 = order(b)
            b2[units:2 * units] += 1.0
            arrays[f"lstm_{i}"] = {"w_i": order(w[:fan_in]), "w_h": order(w[fan_in:]), "b": b2}
        path = os.path.join(self.get_temp_dir(), "v1.l2l")
        header = {"format": "l2l-weights", "version": 1, "net": "CoordinateWiseDeepLSTM",
                  "net_options": net.options}
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("__header__.json", json.dumps(header))
            for layer, variables in arrays.items():
                for name, value in variables.items():
                    buffer = io.BytesIO()
                    np.save(buffer, value.astype(np.float32))
                    archive.writestr(f"{layer}/{name}.npy", buffer.getvalue())
        loaded = networks.factory("CoordinateWiseDeepLSTM", net_path=path)
        grad = tf.random.stateless_normal([30], seed=[4, 4])
        states = [n.initial_state_for_inputs(grad) for n in (net, loaded)]
        for _ in range(3):
            (step, states[0]), (loaded_step, states[1]) = (
                net(grad, states[0]), loaded(grad, states[1]))
            self.assertAllClose(loaded_step, step, rtol=1e-6, atol=1e-9)

    def test_unknown_network_lists_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Unknown network 'Lstm'.*CoordinateWiseDeepLSTM"):
            networks.factory("Lstm")

    def test_save_is_atomic_and_never_a_pickle(self):
        path = os.path.join(self.get_temp_dir(), "cw.l2l")
        networks.save(_lstm(), path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(4), b"PK\x03\x04")  # A zip of .npy arrays and JSON.
        self.assertEqual([f for f in os.listdir(self.get_temp_dir()) if f.startswith(".tmp")], [])
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o666 & ~umask)  # Not mkstemp's 0600.


if __name__ == "__main__":
    tf.test.main()
