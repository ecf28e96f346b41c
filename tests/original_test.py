"""The DeepMind original's tests, run against this port.

One test per test of google-deepmind/learning-to-learn at its last commit (f3c1a8d):
meta_test.py, networks_test.py, preprocess_test.py, problems_test.py and convergence_test.py.
Each asserts the numbers its original asserts. The original built TF1 graphs of variables and
fed values by variable name; here a problem is pure functions (`init`, `sample`, `loss`), so a
"variable" is an entry of `problem.names` with its initial tensor, and feeding a value is passing
it in the parameter list. The original's training helper ran `reset` and then unrolls, fetching
the last unroll's final loss and final parameters; `_train` does the same with an `Unroll`.
"""

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import meta
import networks
import problems

SEED = tf.constant([3, 4])


def _train(unroll, num_epochs, num_unrolls):
    """Epochs of unrolls; returns the last unroll's final loss and final parameters."""
    result = None
    for epoch in range(num_epochs):
        unroll.reset([0, epoch])
        for _ in range(num_unrolls):
            result = unroll()
    return float(result.losses[-1]), [p.numpy() for p in unroll.carry.params]


def _loss_with(problem, values):
    """The problem's loss with the named parameters set to `values` (the original's feed_dict)."""
    unknown = set(values) - set(problem.names)
    if unknown:
        raise KeyError(f"No parameters {sorted(unknown)} in {problem.names}.")
    params = [tf.constant(values[name], tf.float32) if name in values else value
              for name, value in zip(problem.names, problem.init(SEED))]
    return problem.loss(params, problem.sample(SEED, 0)).numpy()


def _initial_loss(problem):
    return problem.loss(problem.init(SEED), problem.sample(SEED, 0))


class _Seeded(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        tf.random.set_seed(0)


# -- meta_test.py ------------------------------------------------------------------------------

def _convolutional_problem(kernel_shape):
    """`sum(conv(images, w) + b)` on fresh N(0, 1) images `[100, 100, 3, 10]` at every step.

    The original's: a Sonnet 1 `Conv2D` (one output channel, stride 1, SAME padding) whose
    variables are `conv/w` and `conv/b`.
    """
    fan_in = kernel_shape * kernel_shape * 10

    def init(seed):
        w = tf.random.stateless_truncated_normal(
            [kernel_shape, kernel_shape, 10, 1], problems.derive_seed(seed, 0),
            stddev=1.0 / np.sqrt(fan_in))
        return [w, tf.zeros([1])]

    def sample(seed, step):
        return tf.random.stateless_normal([100, 100, 3, 10], problems.derive_seed(seed, 1, step))

    def loss(params, images):
        w, b = params
        return tf.reduce_sum(tf.nn.conv2d(images, w, strides=1, padding="SAME") + b)

    return problems.Problem(("conv/w", "conv/b"), init, sample, loss)


def _while_loop_problem():
    """`x^2` from `x = 1`, squared inside a `tf.while_loop` of one iteration."""
    def loss(params, data):
        del data
        _, x_squared = tf.while_loop(lambda t, _: t < 1, lambda t, x: (t + 1, x * x),
                                     (tf.constant(0), params[0]))
        return x_squared

    return problems.Problem(("x",), lambda seed: [tf.ones([])], lambda seed, step: (), loss)


class MetaL2LTest(_Seeded, parameterized.TestCase):

    def test_results(self):
        """Ports meta_test.py L2LTest.testResults (the Torch results)."""
        optimizer = meta.MetaOptimizer(net=dict(
            net="CoordinateWiseDeepLSTM",
            net_options={"layers": (), "initializer": "zeros"}))
        minimize = optimizer.meta_minimize(problems.simple(), 5)  # The default learning rate.
        cost, final_x = _train(minimize, 1, 2)
        torch_cost, torch_final_x = 0.7325327, 0.8559
        self.assertAlmostEqual(cost, torch_cost, places=4)
        self.assertAlmostEqual(float(final_x[0]), torch_final_x, places=4)

    @parameterized.named_parameters(
        ("shared_optimizer", None,
         {"net": {"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (1, 1)}}}),
        ("explicit_sharing", [("net", ["x_0", "x_1"])],
         {"net": {"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (1,)}}}),
        ("different_optimizers", [("net1", ["x_0"]), ("net2", ["x_1"])],
         {"net1": {"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (1,)}},
          "net2": {"net": "Adam"}}),
        ("different_optimizers_for_the_same_variable", [("net1", ["x_0"]), ("net2", ["x_0"])],
         {"net1": {"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (1,)}},
          "net2": {"net": "CoordinateWiseDeepLSTM", "net_options": {"layers": (1,)}}}),
    )
    def test_multi_optimizer(self, net_assignments, net_config):
        """Ports meta_test.py L2LTest.testMultiOptimizer (all four assignments).

        The original only trains (one epoch of two unrolls of 3). Its meta.py leaves a variable
        that no network is assigned (x_1 in the last case) at its initial value; that, and a
        finite loss, are checked as well.
        """
        problem = problems.simple_multi_optimizer(num_dims=2)
        optimizer = meta.MetaOptimizer(**net_config)
        minimize = optimizer.meta_minimize(problem, 3, net_assignments=net_assignments)
        cost, final_x = _train(minimize, 1, 2)
        self.assertTrue(np.isfinite(cost))
        assigned = (set(problem.names) if net_assignments is None
                    else {name for _, names in net_assignments for name in names})
        for name, value in zip(problem.names, final_x):
            if name not in assigned:
                self.assertEqual(float(value), 1.0, name)

    def test_second_derivatives(self):
        """Ports meta_test.py L2LTest.testSecondDerivatives."""
        optimizer = meta.MetaOptimizer(net=dict(net="CoordinateWiseDeepLSTM",
                                                net_options={"layers": ()}))
        minimize = optimizer.meta_minimize(problems.simple(), 3, second_derivatives=True)
        cost, _ = _train(minimize, 1, 2)
        self.assertTrue(np.isfinite(cost))

    def test_convolutional(self):
        """Ports meta_test.py L2LTest.testConvolutional.

        A KernelDeepLSTM (4x4 kernels, one layer of 5) optimizes `conv/w` only; as in the
        original, `conv/b` is assigned to no network and so keeps its initial value.
        """
        kernel_shape = 4
        problem = _convolutional_problem(kernel_shape)
        optimizer = meta.MetaOptimizer(conv={
            "net": "KernelDeepLSTM",
            "net_options": {"kernel_shape": [kernel_shape] * 2, "layers": (5,)}})
        minimize = optimizer.meta_minimize(problem, 3, net_assignments=[("conv", ["conv/w"])])
        cost, (_, b) = _train(minimize, 1, 2)
        self.assertTrue(np.isfinite(cost))
        self.assertAllEqual(b, problem.init(tf.constant([0, 0]))[1])

    def test_while_loop_problem(self):
        """Ports meta_test.py L2LTest.testWhileLoopProblem."""
        optimizer = meta.MetaOptimizer(net=dict(net="CoordinateWiseDeepLSTM",
                                                net_options={"layers": ()}))
        minimize = optimizer.meta_minimize(_while_loop_problem(), 3)
        cost, _ = _train(minimize, 1, 2)
        self.assertTrue(np.isfinite(cost))

    def test_save_and_load(self):
        """Ports meta_test.py L2LTest.testSaveAndLoad.

        As the original: train, save, train on; then a new optimizer built from the same options
        plus the saved file trains from the saved weights to the same cost and x (3 places).
        The original's second and third trainings pass its `num_unrolls` and `num_epochs` in
        swapped order, so they run 2 epochs of 1 unroll; so do these.
        """
        net_options = {"layers": (2, 3), "initializer": "zeros"}
        problem = problems.simple()
        optimizer = meta.MetaOptimizer(net=dict(net="CoordinateWiseDeepLSTM",
                                                net_options=net_options))
        minimize = optimizer.meta_minimize(problem, 3)
        _train(minimize, 1, 2)
        net_path = optimizer.save(os.path.join(self.get_temp_dir(), "saved"))[0]
        cost, x = _train(minimize, 2, 1)

        loaded = meta.MetaOptimizer(net=dict(net="CoordinateWiseDeepLSTM",
                                             net_options=net_options, net_path=net_path))
        cost_loaded, x_loaded = _train(loaded.meta_minimize(problem, 3), 2, 1)
        self.assertAlmostEqual(cost, cost_loaded, places=3)
        self.assertAlmostEqual(float(x[0]), float(x_loaded[0]), places=3)


# -- networks_test.py --------------------------------------------------------------------------

# The original's initializer specs: a name, a dict of variable name to spec shared by all layers
# (with a key no layer has), a TensorFlow initializer and a one-element array to fill the bias,
# and a dict per layer.
_ZERO_OUTPUT_INITIALIZERS = (
    ("zeros", "zeros"),
    ("variable_dict", {"w": "zeros", "b": "zeros", "bad": "bad"}),
    ("tf_initializer_and_array", {"w": tf.zeros_initializer(), "b": np.array([0])}),
    ("layer_dict", {"linear": {"w": tf.zeros_initializer(), "b": "zeros"}}),
)


def _gradients(shape):
    return tf.random.stateless_normal(shape, seed=[1, 2])


class CoordinateWiseDeepLSTMTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports networks_test.py CoordinateWiseDeepLSTMTest.testShape."""
        shape = [10, 5]
        gradients = _gradients(shape)
        net = networks.CoordinateWiseDeepLSTM(layers=(1, 1))
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEqual(update.shape.as_list(), shape)

    def test_trainable(self):
        """Ports networks_test.py CoordinateWiseDeepLSTMTest.testTrainable.

        One LSTM layer and the linear layer: two variables each (gates' weights and biases;
        w and b).
        """
        gradients = _gradients([10, 5])
        net = networks.CoordinateWiseDeepLSTM(layers=(1,))
        net(gradients, net.initial_state_for_inputs(gradients))
        names = [v.name for v in net.trainable_variables]
        self.assertEqual(len(names), 4, names)

    @parameterized.named_parameters(*_ZERO_OUTPUT_INITIALIZERS)
    def test_results(self, initializer):
        """Ports networks_test.py CoordinateWiseDeepLSTMTest.testResults (all four specs)."""
        shape = [10]
        gradients = _gradients(shape)
        net = networks.CoordinateWiseDeepLSTM(layers=(1, 1), initializer=initializer)
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertAllEqual(update, np.zeros(shape))


class KernelDeepLSTMTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports networks_test.py KernelDeepLSTMTest.testShape."""
        kernel_shape = [5, 5]
        shape = kernel_shape + [2, 2]
        gradients = _gradients(shape)
        net = networks.KernelDeepLSTM(layers=(1, 1), kernel_shape=kernel_shape)
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEqual(update.shape.as_list(), shape)

    def test_trainable(self):
        """Ports networks_test.py KernelDeepLSTMTest.testTrainable."""
        kernel_shape = [5, 5]
        gradients = _gradients(kernel_shape + [2, 2])
        net = networks.KernelDeepLSTM(layers=(1,), kernel_shape=kernel_shape)
        net(gradients, net.initial_state_for_inputs(gradients))
        names = [v.name for v in net.trainable_variables]
        self.assertEqual(len(names), 4, names)

    @parameterized.named_parameters(*_ZERO_OUTPUT_INITIALIZERS)
    def test_results(self, initializer):
        """Ports networks_test.py KernelDeepLSTMTest.testResults (all four specs)."""
        kernel_shape = [5, 5]
        shape = kernel_shape + [2, 2]
        gradients = _gradients(shape)
        net = networks.KernelDeepLSTM(layers=(1, 1), kernel_shape=kernel_shape,
                                      initializer=initializer)
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertAllEqual(update, np.zeros(shape))


class SgdTest(_Seeded):

    def test_shape(self):
        """Ports networks_test.py SgdTest.testShape."""
        shape = [10, 5]
        gradients = _gradients(shape)
        net = networks.Sgd()
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEqual(update.shape.as_list(), shape)

    def test_non_trainable(self):
        """Ports networks_test.py SgdTest.testNonTrainable."""
        gradients = _gradients([10, 5])
        net = networks.Sgd()
        net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEmpty(net.trainable_variables)

    def test_results(self):
        """Ports networks_test.py SgdTest.testResults."""
        learning_rate = 0.01
        gradients = _gradients([10])
        net = networks.Sgd(learning_rate=learning_rate)
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertAllEqual(update, -learning_rate * gradients.numpy())


class AdamTest(_Seeded):

    def test_shape(self):
        """Ports networks_test.py AdamTest.testShape."""
        shape = [10, 5]
        gradients = _gradients(shape)
        net = networks.Adam()
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEqual(update.shape.as_list(), shape)

    def test_non_trainable(self):
        """Ports networks_test.py AdamTest.testNonTrainable."""
        gradients = _gradients([10, 5])
        net = networks.Adam()
        net(gradients, net.initial_state_for_inputs(gradients))
        self.assertEmpty(net.trainable_variables)

    def test_zero_learning_rate(self):
        """Ports networks_test.py AdamTest.testZeroLearningRate."""
        shape = [10]
        gradients = _gradients(shape)
        net = networks.Adam(learning_rate=0)
        update, _ = net(gradients, net.initial_state_for_inputs(gradients))
        self.assertAllEqual(update, np.zeros(shape))


# -- preprocess_test.py (the preprocessing lives in networks.py here) --------------------------

class ClampTest(_Seeded):

    def test_shape(self):
        """Ports preprocess_test.py ClampTest.testShape."""
        shape = [2, 3]
        output = networks.Clamp(min_value=-1.0, max_value=1.0)(_gradients(shape))
        self.assertEqual(output.shape.as_list(), shape)

    def test_min(self):
        """Ports preprocess_test.py ClampTest.testMin."""
        shape = [100]
        output = networks.Clamp(min_value=0.0)(_gradients(shape))
        self.assertTrue(np.all(np.greater_equal(output, np.zeros(shape))))

    def test_max(self):
        """Ports preprocess_test.py ClampTest.testMax."""
        shape = [100]
        output = networks.Clamp(max_value=0.0)(_gradients(shape))
        self.assertTrue(np.all(np.less_equal(output, np.zeros(shape))))

    def test_min_and_max(self):
        """Ports preprocess_test.py ClampTest.testMinAndMax."""
        shape = [100]
        output = networks.Clamp(min_value=0.0, max_value=0.0)(_gradients(shape))
        self.assertAllEqual(output, np.zeros(shape))


class LogAndSignTest(_Seeded):

    def test_shape(self):
        """Ports preprocess_test.py LogAndSignTest.testShape."""
        shape = [2, 3]
        output = networks.LogAndSign(k=1)(_gradients(shape))
        self.assertEqual(output.shape.as_list(), shape[:-1] + [shape[-1] * 2])

    def test_log_with_ones(self):
        """Ports preprocess_test.py LogAndSignTest.testLogWithOnes."""
        output = networks.LogAndSign(k=10)(tf.ones([1])).numpy()
        self.assertAlmostEqual(float(output[0]), 0.0)

    def test_sign(self):
        """Ports preprocess_test.py LogAndSignTest.testSign."""
        inputs = _gradients([2, 1])
        output = networks.LogAndSign(k=1)(inputs).numpy()
        self.assertAllEqual(np.sign(output[:, 1:]), np.sign(inputs.numpy()))


# -- problems_test.py --------------------------------------------------------------------------

_VALUES = ((-1,), (0,), (1,), (10,))


def _simple_ensemble(num_problems, weights=None):
    """The original's ensemble of `simple` problems, given by name and options."""
    problem_defs = [{"name": "simple", "options": {}} for _ in range(num_problems)]
    return problems.ensemble(problem_defs, weights=weights)


class SimpleTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports problems_test.py SimpleTest.testShape."""
        self.assertEqual(_initial_loss(problems.simple()).shape.as_list(), [])

    def test_variables(self):
        """Ports problems_test.py SimpleTest.testVariables."""
        problem = problems.simple()
        self.assertLen(problem.names, 1)
        params = problem.init(SEED)
        self.assertLen(params, 1)
        self.assertEqual(params[0].shape.as_list(), [])

    @parameterized.parameters(*_VALUES)
    def test_values(self, value):
        """Ports problems_test.py SimpleTest.testValues."""
        self.assertEqual(_loss_with(problems.simple(), {"x": value}), value**2)


class SimpleMultiOptimizerTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports problems_test.py SimpleMultiOptimizerTest.testShape."""
        problem = problems.simple_multi_optimizer(num_dims=3)
        self.assertEqual(_initial_loss(problem).shape.as_list(), [])

    def test_variables(self):
        """Ports problems_test.py SimpleMultiOptimizerTest.testVariables."""
        num_dims = 3
        problem = problems.simple_multi_optimizer(num_dims=num_dims)
        self.assertLen(problem.names, num_dims)
        params = problem.init(SEED)
        self.assertLen(params, num_dims)
        for param in params:
            self.assertEqual(param.shape.as_list(), [])

    @parameterized.parameters(*_VALUES)
    def test_values(self, value):
        """Ports problems_test.py SimpleMultiOptimizerTest.testValues."""
        problem = problems.simple_multi_optimizer(num_dims=1)
        self.assertEqual(_loss_with(problem, {"x_0": value}), value**2)


class QuadraticTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports problems_test.py QuadraticTest.testShape."""
        self.assertEqual(_initial_loss(problems.quadratic()).shape.as_list(), [])

    def test_variables(self):
        """Ports problems_test.py QuadraticTest.testVariables.

        Only `x` is a parameter; the original's non-trainable `w` and `y` are the sampled data.
        """
        batch_size, num_dims = 5, 3
        problem = problems.quadratic(batch_size=batch_size, num_dims=num_dims)
        self.assertLen(problem.names, 1)
        params = problem.init(SEED)
        self.assertLen(params, 1)
        self.assertEqual(params[0].shape.as_list(), [batch_size, num_dims])

    @parameterized.parameters(*_VALUES)
    def test_values(self, value):
        """Ports problems_test.py QuadraticTest.testValues (x, w and y fed)."""
        problem = problems.quadratic(batch_size=1, num_dims=1)
        w, y = 2.0, 3.0
        output = problem.loss([tf.constant([[value]], tf.float32)],
                              (tf.constant([[[w]]]), tf.constant([[y]])))
        self.assertEqual(output.numpy(), ((w * value) - y)**2)


class EnsembleTest(_Seeded, parameterized.TestCase):

    def test_shape(self):
        """Ports problems_test.py EnsembleTest.testShape."""
        self.assertEqual(_initial_loss(_simple_ensemble(3)).shape.as_list(), [])

    def test_variables(self):
        """Ports problems_test.py EnsembleTest.testVariables."""
        num_dims = 3
        ensemble = _simple_ensemble(num_dims)
        self.assertLen(ensemble.names, num_dims)
        params = ensemble.init(SEED)
        self.assertLen(params, num_dims)
        for param in params:
            self.assertEqual(param.shape.as_list(), [])

    @parameterized.parameters(*_VALUES)
    def test_values(self, value):
        """Ports problems_test.py EnsembleTest.testValues."""
        weight = 0.5
        ensemble = _simple_ensemble(1, weights=[weight])
        self.assertEqual(_loss_with(ensemble, {"problem_0/x": value}), weight * value**2)


# -- convergence_test.py -----------------------------------------------------------------------

class ConvergenceL2LTest(_Seeded):

    def test_simple(self):
        """Ports convergence_test.py L2LTest.testSimple.

        500 epochs of 5 unrolls of 20 steps; the cost is the last unroll's final loss, after all
        500 epochs, as the original fetches it.
        """
        optimizer = meta.MetaOptimizer(net=dict(
            net="CoordinateWiseDeepLSTM",
            net_options={"layers": (), "initializer": "zeros"}))
        minimize = optimizer.meta_minimize(problems.simple(), 20, learning_rate=1e-2)
        cost, _ = _train(minimize, 500, 5)
        self.assertLess(cost, 1e-5)


if __name__ == "__main__":
    tf.test.main()
