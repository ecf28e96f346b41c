"""LearnedOptimizer: a trained network as a Keras optimizer, against meta.Unroll's numbers."""

import os
import subprocess
import sys

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import keras

import learned_optimizer
import meta
import networks
import problems
from conftest import REPO_ROOT, shared_path

STEPS = 100
SEED = [3, 4]


def _data(n=600, seed=0):
    """Images of MNIST's shape whose labels a linear map of the pixels decides (learnable)."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(0, 256, [n, 784]) / 255.0).astype(np.float32)
    teacher = np.random.default_rng(9).normal(size=[784, 10])
    return x, np.argmax(x @ teacher, axis=1).astype(np.int32)


def _problem():
    """The MNIST MLP as a Keras problem: the unroll differentiates the very model Keras fits."""
    return problems.keras_problem(_mlp, *_data(), _loss())


def _mlp():
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, activation="sigmoid"),
                             keras.layers.Dense(10)])


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _batches(problem, steps=STEPS):
    batches = [problem.sample(tf.constant(SEED), tf.constant(t)) for t in range(steps)]
    return np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])


def _model(problem):
    model = _mlp()
    model.set_weights([v.numpy() for v in problem.init(tf.constant(SEED))])
    return model


def _unroll_losses(path, problem, steps=STEPS, mode="graph"):
    """The losses `meta.Unroll` gives for the file's network, from the same start and batches."""
    optimizer = meta.MetaOptimizer(cw={"net": _net_name(path), "net_path": path})
    unroll = optimizer.meta_loss(problem, steps, mode=mode)
    unroll.reset(SEED)
    return unroll().losses.numpy()[:steps]


def _net_name(path):
    import weights_file  # pylint: disable=import-outside-toplevel
    return weights_file.load(path).net


def _fit_losses(model, optimizer, x, y, jit_compile=False):
    """One batch per epoch, in order: `history` then holds every step's loss."""
    model.compile(optimizer=optimizer, loss=_loss(), jit_compile=jit_compile)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    history = model.fit(dataset, epochs=len(x), steps_per_epoch=1, shuffle=False, verbose=0)
    return np.array(history.history["loss"])


def _loop_losses(model, optimizer, x, y):
    """A custom training loop, compiled as users write it."""
    loss_fn = _loss()

    @tf.function
    def train_step(bx, by):
        with tf.GradientTape() as tape:
            loss = loss_fn(by, model(bx, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return np.array([float(train_step(bx, by)) for bx, by in zip(x, y)])


SHIPPED = {"l2l": "saved_optimizers/mnist/cw.l2l",
           "fixed": "saved_optimizers/mnist/cwfixed0.01.l2l",
           "learned": "saved_optimizers/mnist/cwlearned.l2l"}


class TrajectoryTest(tf.test.TestCase, parameterized.TestCase):
    """100 steps on the same MLP and batches: the loss at every step is meta.Unroll's."""

    @parameterized.named_parameters(
        ("l2l_fit", SHIPPED["l2l"], "fit", False),
        ("l2l_fit_xla", SHIPPED["l2l"], "fit", True),
        ("l2l_custom_loop", SHIPPED["l2l"], "loop", False),
        ("fixed_fit", SHIPPED["fixed"], "fit", False),
        ("fixed_custom_loop", SHIPPED["fixed"], "loop", False),
        ("learned_fit", SHIPPED["learned"], "fit", False),
        ("learned_custom_loop", SHIPPED["learned"], "loop", False),
    )
    def test_same_losses_as_the_unroll(self, path, how, jit_compile):
        path = str(REPO_ROOT / path)
        problem = _problem()
        x, y = _batches(problem)
        optimizer = learned_optimizer.LearnedOptimizer(path)
        model = _model(problem)
        losses = (_fit_losses(model, optimizer, x, y, jit_compile) if how == "fit"
                  else _loop_losses(model, optimizer, x, y))
        # XLA rounds differently from the graph, and the optimizee amplifies rounding
        # differences (about 10x every 3 steps here): a jit-compiled fit is compared with the
        # XLA unroll, the others with the graph's; each agrees at every one of the 100 steps.
        reference = _unroll_losses(path, problem, mode="xla" if jit_compile else "graph")
        self.assertAllClose(losses, reference, rtol=1e-4, atol=0)
        self.assertLess(losses[-1], 0.5 * losses[0])  # It does optimize.

    def test_tf1_era_file(self):
        path = str(shared_path("legacy", "saved_optimizers", "mnist", "cw.l2l"))
        problem = _problem()
        x, y = _batches(problem)
        losses = _fit_losses(_model(problem), learned_optimizer.LearnedOptimizer(path), x, y)
        self.assertAllClose(losses, _unroll_losses(path, problem), rtol=1e-4, atol=0)

    def test_learning_rate_scales_the_update(self):
        # With Sgd as the network, LearnedOptimizer(lr) is plain SGD of rate 0.1 * lr.
        path = os.path.join(self.get_temp_dir(), "sgd.l2l")
        networks.save(networks.Sgd(0.1), path)
        variable = tf.Variable([1.0, -2.0])
        optimizer = learned_optimizer.LearnedOptimizer(path, learning_rate=0.5)
        optimizer.apply([tf.constant([4.0, 2.0])], [variable])
        self.assertAllClose(variable, [1.0 - 0.05 * 4.0, -2.0 - 0.05 * 2.0])

    def test_state_reset_period_matches_the_unroll(self):
        path = str(REPO_ROOT / SHIPPED["l2l"])
        problem = _problem()
        x, y = _batches(problem, 12)
        losses = _loop_losses(_model(problem), learned_optimizer.LearnedOptimizer(
            path, state_reset_period=5), x, y)
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_path": path})
        unroll = optimizer.meta_loss(problem, 12, state_reset_period=5, mode="graph")
        unroll.reset(SEED)
        self.assertAllClose(losses, unroll().losses.numpy()[:12], rtol=1e-4, atol=0)
        carried = _loop_losses(_model(problem), learned_optimizer.LearnedOptimizer(path), x, y)
        self.assertNotAllClose(losses, carried)


class SaveRestoreTest(tf.test.TestCase):
    """Interrupted and resumed from a checkpoint or a .keras file: the same trajectory."""

    def _setup(self):
        problem = _problem()
        x, y = _batches(problem, 20)
        path = str(REPO_ROOT / SHIPPED["learned"])
        whole = _fit_losses(_model(problem), learned_optimizer.LearnedOptimizer(path), x, y)
        return problem, x, y, path, whole

    def test_keras_file_round_trip(self):
        problem, x, y, path, whole = self._setup()
        model = _model(problem)
        first = _fit_losses(model, learned_optimizer.LearnedOptimizer(path), x[:10], y[:10])
        saved = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(saved)
        restored = keras.models.load_model(saved)
        self.assertIsInstance(restored.optimizer, learned_optimizer.LearnedOptimizer)
        dataset = tf.data.Dataset.from_tensor_slices((x[10:], y[10:]))
        second = restored.fit(dataset, epochs=10, steps_per_epoch=1, shuffle=False,
                              verbose=0).history["loss"]
        self.assertAllClose(np.concatenate([first, second]), whole, rtol=1e-6, atol=0)

    def test_checkpoint_round_trip(self):
        problem, x, y, path, whole = self._setup()
        model, optimizer = _model(problem), learned_optimizer.LearnedOptimizer(path)
        first = _fit_losses(model, optimizer, x[:10], y[:10])
        prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
            os.path.join(self.get_temp_dir(), "ckpt"))
        model2, optimizer2 = _mlp(), learned_optimizer.LearnedOptimizer(path)
        model2.compile(optimizer=optimizer2, loss=_loss())
        optimizer2.build(model2.trainable_variables)
        tf.train.Checkpoint(model=model2, optimizer=optimizer2).restore(prefix).assert_consumed()
        dataset = tf.data.Dataset.from_tensor_slices((x[10:], y[10:]))
        second = model2.fit(dataset, epochs=10, steps_per_epoch=1, shuffle=False,
                            verbose=0).history["loss"]
        self.assertAllClose(np.concatenate([first, second]), whole, rtol=1e-6, atol=0)


_MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import learned_optimizer
x = np.random.default_rng(0).normal(size=(8, 64, 5)).astype(np.float32)
y = np.random.default_rng(1).integers(0, 3, size=(8, 64)).astype(np.int32)
weights = [np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32) * 0.1,
           np.zeros(3, np.float32)]

def run(strategy):
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
        model.set_weights(weights)
        model.compile(optimizer=learned_optimizer.LearnedOptimizer(sys.argv[1]),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((x, y))
    model.fit(data, epochs=8, steps_per_epoch=1, verbose=0)
    return np.concatenate([w.ravel() for w in model.get_weights()])

single = run(tf.distribute.get_strategy())
mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("MAXDIFF", float(np.max(np.abs(single - mirrored))), float(np.max(np.abs(single))))
"""


class DistributedTest(tf.test.TestCase):

    def test_mirrored_strategy_on_two_cpus_gives_the_single_device_weights(self):
        script = os.path.join(self.get_temp_dir(), "mirrored.py")
        with open(script, "w") as f:
            f.write(_MIRRORED_SCRIPT)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        result = subprocess.run([sys.executable, script, str(REPO_ROOT / SHIPPED["l2l"])],
                                capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        line = next(l for l in result.stdout.splitlines() if l.startswith("MAXDIFF"))
        diff, scale = map(float, line.split()[1:])
        self.assertGreater(scale, 0.01)
        self.assertLess(diff, 1e-5 * max(scale, 1.0))


class ConversionsAndErrorsTest(tf.test.TestCase):

    def test_float64_variables_step_in_float32(self):
        path = str(REPO_ROOT / SHIPPED["l2l"])
        grads = tf.random.stateless_normal([6], seed=[1, 1]) * 0.1
        v32 = tf.Variable(tf.ones([6], tf.float32))
        v64 = tf.Variable(tf.ones([6], tf.float64))
        opt32 = learned_optimizer.LearnedOptimizer(path)
        opt64 = learned_optimizer.LearnedOptimizer(path)
        for _ in range(3):
            opt32.apply([grads], [v32])
            opt64.apply([tf.cast(grads, tf.float64)], [v64])
        self.assertEqual(v64.dtype, tf.float64)
        self.assertAllClose(v64, tf.cast(v32, tf.float64), rtol=1e-6)
        self.assertNotAllClose(v32, tf.ones([6]))

    def test_sparse_gradients_are_made_dense(self):
        # An Embedding's IndexedSlices gradient steps the table as its dense equivalent does.
        path = str(REPO_ROOT / SHIPPED["l2l"])
        sparse = tf.IndexedSlices(tf.constant([[0.5, -1.0], [2.0, 0.1]]), tf.constant([3, 0]),
                                  tf.constant([4, 2]))
        tables = [tf.Variable(tf.ones([4, 2])) for _ in range(2)]
        for gradient, table in zip((sparse, tf.convert_to_tensor(sparse)), tables):
            optimizer = learned_optimizer.LearnedOptimizer(path)
            for _ in range(3):
                optimizer.apply([gradient], [table])
        self.assertAllEqual(tables[0], tables[1])
        self.assertNotAllClose(tables[0], tf.ones([4, 2]))

    def test_files_that_cannot_step_any_variable_are_refused(self):
        path = os.path.join(self.get_temp_dir(), "kernel.l2l")
        networks.save(networks.KernelDeepLSTM([3, 3], layers=(2,)), path)
        with self.assertRaisesRegex(ValueError, "holds a KernelDeepLSTM, which steps only "
                                    "tensors of one layout; LearnedOptimizer takes"):
            learned_optimizer.LearnedOptimizer(path)
        with self.assertRaisesRegex(ValueError, "Cannot read optimizer file /nonexistent"):
            learned_optimizer.LearnedOptimizer("/nonexistent")
        with self.assertRaisesRegex(ValueError, "holds 3 optimizer files .*; pass the file"):
            learned_optimizer.LearnedOptimizer(str(REPO_ROOT / "saved_optimizers" / "mnist"))

    def test_integer_variables_are_refused_not_left_unchanged(self):
        optimizer = learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]))
        with self.assertRaisesRegex(TypeError, "steps floating-point variables; .* is int32"):
            optimizer.build([tf.Variable([1, 2], name="counts")])
        with self.assertRaisesRegex(ValueError, "state_reset_period must be a whole number >= 0"):
            learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]),
                                               state_reset_period=-1)

    def test_a_directory_with_one_file_is_enough(self):
        optimizer = learned_optimizer.LearnedOptimizer(
            str(REPO_ROOT / "saved_optimizers" / "fashion_mnist"))
        self.assertEqual(optimizer.network.options["layers"], [20, 20])


if __name__ == "__main__":
    tf.test.main()
