"""LearnedOptimizer: a trained network as a Keras optimizer, against meta.Unroll's numbers.

Also: the shipped optimizers by name, the module docstring's example, what a `.keras` file
carries (a small config, the network among the assets) and how crafted configs and bad
arguments are refused.
"""

import ast
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from unittest import mock
import zipfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import keras

import learned_optimizer
import meta
import networks
import problems
import util
import weights_file
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


def _unroll_losses(path, problem, steps=STEPS, mode="graph", step_scale=1.0):
    """The losses `meta.Unroll` gives for the file's network, from the same start and batches."""
    optimizer = meta.MetaOptimizer(cw={"net": _net_name(path), "net_path": path})
    unroll = optimizer.meta_loss(problem, steps, mode=mode, step_scale=step_scale)
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

    def test_learning_rate_is_the_unrolls_step_scale(self):
        # What evaluate.py --step_scales tunes is what a Keras user sets: the general
        # optimizer at learning_rate 3 loses what the unroll with step_scale 3 loses, each step
        # of the first 50 (after that the large steps have amplified float rounding, which
        # differs between Keras' gradients and the problem's, beyond 1e-4).
        path = str(REPO_ROOT / "saved_optimizers" / "general" / "cw.l2l")
        problem = _problem()
        x, y = _batches(problem)
        losses = _loop_losses(_model(problem),
                              learned_optimizer.LearnedOptimizer(path, learning_rate=3.0), x, y)
        self.assertAllClose(losses[:50], _unroll_losses(path, problem, step_scale=3.0)[:50],
                            rtol=1e-4, atol=0)
        self.assertNotAllClose(losses[:50], _unroll_losses(path, problem)[:50], rtol=1e-2)

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


@contextlib.contextmanager
def _working_directory(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class ShippedOptimizersTest(tf.test.TestCase):

    def test_every_shipped_file_has_one_name_and_a_folder_means_its_l2l_file(self):
        names = learned_optimizer.shipped_optimizers()
        self.assertContainsSubset(["mnist", "quadratic", "fashion_mnist", "mnist/cwlearned",
                                   "mnist/cwfixed0.01"], names)
        self.assertNotIn("mnist/cw", names)  # The folder's name says it.
        files = sorted(str(p) for p in (REPO_ROOT / "saved_optimizers").glob("*/*.l2l"))
        self.assertEqual(sorted(learned_optimizer.shipped_path(n) for n in names), files)
        # From any working directory, with or without the suffix.
        with _working_directory(self.get_temp_dir()):
            for name, file, net in (("mnist", "mnist/cw.l2l", "CoordinateWiseDeepLSTM"),
                                    ("mnist/cwlearned", "mnist/cwlearned.l2l",
                                     "LearnedLambdaDeepLSTM"),
                                    ("quadratic/cwfixed0.01.l2l", "quadratic/cwfixed0.01.l2l",
                                     "FixedLambdaDeepLSTM")):
                optimizer = learned_optimizer.LearnedOptimizer(name)
                self.assertEqual(optimizer.path, str(REPO_ROOT / "saved_optimizers" / file))
                self.assertEqual(type(optimizer.network).__name__, net)

    def test_an_unknown_or_ambiguous_name_is_one_line_naming_the_choices(self):
        directory = self.get_temp_dir()
        with _working_directory(directory):
            for name in ("mnsit", "../mnist", "mnist/cw.l2l/x", "mnist/nothing"):
                with self.assertRaisesRegex(util.WeightsFileError, "no shipped optimizer has "
                                            "that name \\(they are fashion_mnist, general, "
                                            "mnist, mnist/cwfixed0.01,") as caught:
                    learned_optimizer.LearnedOptimizer(name)
                self.assertNotIn("\n", str(caught.exception))
            os.makedirs("quadratic")
            networks.save(networks.Sgd(0.1), os.path.join("quadratic", "mine.l2l"))
            with self.assertRaisesRegex(util.WeightsFileError, "'quadratic' is both a shipped "
                                        "optimizer and a path here; write './quadratic' for the "
                                        "path"):
                learned_optimizer.LearnedOptimizer("quadratic")
            mine = learned_optimizer.LearnedOptimizer("./quadratic")
            self.assertEqual(type(mine.network).__name__, "Sgd")

    def test_later_folders_are_found_by_name_too(self):
        shipped = os.path.join(self.get_temp_dir(), "saved_optimizers")
        for folder, files in (("general", ["cwlearned.l2l"]), ("two", ["a.l2l", "b.l2l"])):
            os.makedirs(os.path.join(shipped, folder))
            for file in files:
                shutil.copyfile(REPO_ROOT / "saved_optimizers" / "mnist" / "cwlearned.l2l",
                                os.path.join(shipped, folder, file))
        with mock.patch.object(learned_optimizer, "SHIPPED_DIR", shipped):
            self.assertEqual(learned_optimizer.shipped_optimizers(),
                             ["general", "two/a", "two/b"])
            optimizer = learned_optimizer.LearnedOptimizer("general")
            self.assertEqual(optimizer.path, os.path.join(shipped, "general", "cwlearned.l2l"))
            with self.assertRaisesRegex(util.WeightsFileError, r"they are general, two/a, two/b"):
                learned_optimizer.LearnedOptimizer("two")

    def test_the_module_docstring_example_trains(self):
        # Its first indented block, run as written (`from l2l import ...` works in a clone too).
        docstring = ast.get_docstring(ast.parse((REPO_ROOT / "learned_optimizer.py").read_text()))
        code = "\n".join(line[4:] for line in docstring.split("\n\n")[1].splitlines())
        self.assertIn('LearnedOptimizer("mnist")', code)
        self.assertIn("from_logits=True", code)  # Its model outputs logits.
        keras.utils.set_random_seed(0)
        namespace = {}
        exec(code, namespace)  # pylint: disable=exec-used
        losses = namespace["model"].history.history["loss"]
        self.assertLen(losses, 10)
        self.assertLess(losses[-1], 0.1 * losses[0])  # Measured: 2.27 to 0.023.


def _tiny_model_file(directory, path=SHIPPED["l2l"]):
    """A .keras file of a Dense layer fitted 2 steps with a shipped optimizer."""
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model.compile(optimizer=learned_optimizer.LearnedOptimizer(str(REPO_ROOT / path)),
                  loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    model.fit(x, x[:, :3], batch_size=4, epochs=1, verbose=0)
    file = os.path.join(directory, "model.keras")
    model.save(file)
    return file


def _rewrite(source, destination, network=None, asset=None, drop_assets=False):
    """A copy of a .keras file with its optimizer's `network` config, or its network asset,
    replaced (`network` a function of the config's network, returning the new one)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "config.json" and network is not None:
                config = json.loads(data)
                optimizer = config["compile_config"]["optimizer"]["config"]
                optimizer["network"] = network(optimizer["network"])
                data = json.dumps(config).encode()  # NaN and Infinity as Python writes them.
            if info.filename.startswith("assets/"):
                if drop_assets:
                    continue
                data = data if asset is None else asset
            copy.writestr(info.filename, data)
    return destination


def _with_weights(network, path=SHIPPED["l2l"], change=None):
    """The network config as the code before this one wrote it: weights as nested lists."""
    weights = {layer: {name: value.tolist() for name, value in variables.items()}
               for layer, variables in weights_file.load(str(REPO_ROOT / path)).weights.items()}
    if change:
        change(weights)
    return {"net": network["net"], "net_options": network["net_options"], "weights": weights}


def _set(layer, name, value):
    def change(weights):
        weights[layer][name] = value
    return change


def _options(**options):
    return lambda network: dict(network, net_options=dict(network["net_options"], **options))


# (name, new network config from the saved one, message): each refused when the .keras file is
# loaded, in one line, before any network is built.
_CRAFTED_CONFIGS = [
    ("weights_nan", lambda n: _with_weights(n, change=_set("linear", "b", [math.nan])),
     "linear/b holds NaN or infinite values"),
    ("weights_inf", lambda n: _with_weights(n, change=_set("linear", "b", [math.inf])),
     "linear/b holds NaN or infinite values"),
    ("weights_1e300", lambda n: _with_weights(n, change=_set("linear", "b", [1e300])),
     r"linear/b holds 1e\+300, beyond float32's range"),
    ("weights_null", lambda n: _with_weights(n, change=_set("linear", "b", [None])),
     "linear/b holds NoneType 'None' among its weights, which are numbers"),
    ("weights_string", lambda n: _with_weights(n, change=_set("linear", "b", ["0.5"])),
     "linear/b holds str '0.5' among its weights"),
    ("weights_boolean", lambda n: _with_weights(n, change=_set("linear", "b", [True])),
     "linear/b holds bool 'True' among its weights"),
    ("weights_ragged", lambda n: _with_weights(n, change=_set("linear", "b", [[1.0], 2.0])),
     "linear/b holds weights that are not an array of numbers"),
    ("weights_shape", lambda n: _with_weights(n, change=_set("linear", "w", [[0.0] * 20])),
     r"linear/w has shape \(1, 20\), a CoordinateWiseDeepLSTM with these options needs "
     r"\(20, 1\)"),
    ("weights_no_linear", lambda n: _with_weights(n, change=lambda w: w.pop("linear")),
     r"holds weights \{lstm_1: .*\}; a CoordinateWiseDeepLSTM with these options has "
     r"\{.*linear: \['b', 'w'\].*\}"),
    ("weights_not_layers", lambda n: dict(_with_weights(n), weights=[1.0]),
     "has weights that are not {layer: {variable: array}}"),
    ("layers_4096", _options(layers=[4096, 4096]),
     "would have 67141632 weights in lstm_1/w_gates, more than the 16777216 an optimizer file "
     "holds in one array; use smaller layers"),
    ("layers_4096_with_weights", lambda n: _with_weights(_options(layers=[4096, 4096])(n)),
     "would have 67141632 weights in lstm_1/w_gates"),
    ("layers_string", _options(layers="big"), "layers must be a list of integers, got 'big'"),
    ("scale_list", _options(scale=[1]), r"scale must be a finite number, got \[1\]"),
    ("preprocess_options_list", _options(preprocess_options=[5]),
     r"preprocess_options must be a dict, got \[5\]"),
    ("dtype", _options(dtype="float64"), "dtype 'float64' is not an option of optimizer files"),
    ("initializer", _options(initializer="zeros"), "records option 'initializer'"),
    ("options_list", lambda n: dict(n, net_options=[20, 20]),
     r"has network options \[20, 20\], not a JSON object"),
    ("net_unknown", lambda n: dict(n, net="EvilNet"), "names network 'EvilNet', which is none "
     r"of \['Adam', 'CoordinateWiseDeepLSTM'"),
    ("net_kernel", lambda n: dict(n, net="KernelDeepLSTM"),
     "holds a KernelDeepLSTM, which steps only tensors of one layout"),
    ("net_missing", lambda n: {"net_options": n["net_options"]}, "has no 'net'; it takes"),
    ("unknown_key", lambda n: dict(n, code="print(1)"), r"has unknown keys \['code'\]"),
    ("not_a_dict", lambda n: "mnist", "is a str, not a dict"),
    ("digest_number", lambda n: dict(n, digest=3), "has digest 3, not a string"),
]


class KerasFileTest(tf.test.TestCase, parameterized.TestCase):
    """What a .keras file carries of the optimizer, and how a crafted one is refused."""

    def test_the_config_names_the_network_and_the_assets_carry_it(self):
        file = _tiny_model_file(self.get_temp_dir())
        with zipfile.ZipFile(file) as archive:
            config = json.loads(archive.read("config.json"))
            asset = archive.read(f"assets/optimizer/{learned_optimizer.NETWORK_ASSET}")
        network = config["compile_config"]["optimizer"]["config"]["network"]
        self.assertEqual(sorted(network), ["digest", "net", "net_options"])
        self.assertLess(len(json.dumps(config)), 3000)  # 114 KB with the weights in it.
        saved_asset = os.path.join(self.get_temp_dir(), "asset.l2l")
        with open(saved_asset, "wb") as f:
            f.write(asset)
        original = weights_file.load(str(REPO_ROOT / SHIPPED["l2l"]))
        carried = weights_file.load(saved_asset)
        self.assertEqual(carried.net, original.net)
        for layer, variables in original.weights.items():
            for name, value in variables.items():
                self.assertAllEqual(carried.weights[layer][name], value)

    def test_load_model_without_the_import_fails_in_a_few_lines(self):
        file = _tiny_model_file(self.get_temp_dir())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([sys.executable, "-c", "import keras, sys; "
                                 "keras.models.load_model(sys.argv[1])", file],
                                cwd=self.get_temp_dir(), env=env, capture_output=True,
                                text=True, timeout=300)
        self.assertNotEqual(result.returncode, 0)
        error = result.stderr.strip().splitlines()[-1]
        self.assertIn("Could not locate class 'LearnedOptimizer'", error)
        self.assertLess(len(error), 1500)  # With the weights in the config: 114 KB.
        self.assertLess(len(result.stderr), 8000, result.stderr[:3000])

    def test_the_state_is_320_bytes_per_parameter_for_the_2x20_lstm(self):
        # As the README says: 2 layers x (hidden + cell) x 20 units x 4 bytes.
        optimizer = learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]))
        variables = [tf.Variable(tf.zeros([7, 3])), tf.Variable(tf.zeros([5]))]
        optimizer.build(variables)
        state_bytes = sum(v.numpy().nbytes for v in optimizer._state)
        self.assertEqual(state_bytes / 26, 2 * 2 * 20 * 4)

    def test_a_keras_file_with_the_weights_in_its_config_still_loads_and_resumes(self):
        # What the code before the assets wrote: the weights as JSON lists, no assets.
        problem = _problem()
        x, y = _batches(problem, 20)
        path = str(REPO_ROOT / SHIPPED["l2l"])
        whole = _fit_losses(_model(problem), learned_optimizer.LearnedOptimizer(path), x, y)
        model = _model(problem)
        first = _fit_losses(model, learned_optimizer.LearnedOptimizer(path), x[:10], y[:10])
        new = os.path.join(self.get_temp_dir(), "new.keras")
        model.save(new)
        old = _rewrite(new, os.path.join(self.get_temp_dir(), "old.keras"), _with_weights,
                       drop_assets=True)
        restored = keras.models.load_model(old)
        self.assertFalse(restored.optimizer._weights_pending)
        dataset = tf.data.Dataset.from_tensor_slices((x[10:], y[10:]))
        second = restored.fit(dataset, epochs=10, steps_per_epoch=1, shuffle=False,
                              verbose=0).history["loss"]
        self.assertAllClose(np.concatenate([first, second]), whole, rtol=1e-6, atol=0)

    def test_a_config_of_a_network_without_weights_is_complete(self):
        # Sgd(0.1) has no weights to wait for: made again from its config alone (as
        # keras.optimizers.deserialize does), the optimizer steps as SGD of rate 0.1.
        path = os.path.join(self.get_temp_dir(), "sgd.l2l")
        networks.save(networks.Sgd(0.1), path)
        config = learned_optimizer.LearnedOptimizer(path, learning_rate=0.5).get_config()
        optimizer = learned_optimizer.LearnedOptimizer.from_config(config)
        variable = tf.Variable([1.0, -2.0])
        optimizer.apply([tf.constant([4.0, 2.0])], [variable])
        self.assertAllClose(variable, [1.0 - 0.05 * 4.0, -2.0 - 0.05 * 2.0])

    @parameterized.named_parameters(*_CRAFTED_CONFIGS)
    def test_crafted_configs_are_one_line_before_anything_is_built(self, network, message):
        directory = self.get_temp_dir()
        crafted = _rewrite(_tiny_model_file(directory), os.path.join(directory, "crafted.keras"),
                           network)
        # Building a network of the crafted options would allocate what they ask (2.5 GB for
        # layers [4096, 4096]): every case must be refused first.
        with mock.patch.object(networks, "_build", side_effect=AssertionError("built")), \
                self.assertRaisesRegex(util.WeightsFileError, message) as caught:
            keras.models.load_model(crafted)
        self.assertNotIn("\n", str(caught.exception))
        self.assertLess(len(str(caught.exception)), 600)
        self.assertIn("LearnedOptimizer's network", str(caught.exception))

    def test_a_damaged_or_foreign_network_asset_is_named(self):
        directory = self.get_temp_dir()
        file = _tiny_model_file(directory)
        for name, asset, message in (
                ("garbage", b"PK\x03\x04garbage", " is a damaged optimizer file"),
                ("other_weights", (REPO_ROOT / "saved_optimizers" / "fashion_mnist" /
                                   "cw.l2l").read_bytes(), "has digest [0-9a-f]{16}, not the "
                 "[0-9a-f]{16} its config names; re-save the model"),
                ("other_network", (REPO_ROOT / SHIPPED["learned"]).read_bytes(),
                 "is a LearnedLambdaDeepLSTM with options .*, not the CoordinateWiseDeepLSTM its "
                 "config names")):
            crafted = _rewrite(file, os.path.join(directory, f"{name}.keras"), asset=asset)
            # Keras gathers the errors of loading the state into one ValueError of its own.
            with self.assertRaisesRegex(ValueError, "The .keras file's optimizer network "
                                        f"\\(network.l2l\\).*{message}", msg=name):
                keras.models.load_model(crafted)
        # Without its assets, the model loads (Keras reads none), and the optimizer says so at
        # its first step instead of stepping with a network it does not have.
        restored = keras.models.load_model(
            _rewrite(file, os.path.join(directory, "bare.keras"), drop_assets=True))
        with self.assertRaisesRegex(util.WeightsFileError, "made from a config, which names its "
                                    "network but does not hold its weights"):
            restored.fit(np.zeros((4, 5)), np.zeros((4, 3)), verbose=0)


class ArgumentsTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters((math.nan, ValueError), (math.inf, ValueError),
                              (-1.0, ValueError), (10**400, ValueError), (True, TypeError),
                              ("1.0", TypeError),
                              (None, TypeError))
    def test_a_learning_rate_that_cannot_work_is_refused(self, learning_rate, error):
        with self.assertRaisesRegex(error, "learning_rate must be a .*number >= 0"):
            learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]),
                                               learning_rate=learning_rate)

    def test_learning_rates_keras_takes_are_taken(self):
        schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 10, 0.5)
        for learning_rate in (0, 2, 0.5, np.float32(0.25), schedule):
            optimizer = learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]),
                                                           learning_rate=learning_rate)
            variable = tf.Variable([1.0, 2.0])
            optimizer.apply([tf.constant([0.1, -0.1])], [variable])
            self.assertTrue(np.all(np.isfinite(variable.numpy())))

    @parameterized.parameters((2**70, "state_reset_period must be at most 9223372036854775807"),
                              (-1, "state_reset_period must be a whole number >= 0"),
                              (1.5, "state_reset_period must be a whole number >= 0"))
    def test_a_state_reset_period_that_cannot_work_is_refused(self, period, message):
        with self.assertRaisesRegex(ValueError, message):
            learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]),
                                               state_reset_period=period)

    def test_a_network_argument_without_net_is_one_line(self):
        with self.assertRaisesRegex(util.WeightsFileError, "has no 'net'; it takes"):
            learned_optimizer.LearnedOptimizer(network={"net_options": {}})

    def test_a_checkpoint_restores_only_into_an_optimizer_of_the_same_network(self):
        # Two networks of the same layer sizes: the state would fit, and step wrongly.
        variable = tf.Variable(tf.ones([6]))
        mnist = learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]))
        mnist.apply([tf.fill([6], 0.1)], [variable])
        prefix = tf.train.Checkpoint(optimizer=mnist).save(
            os.path.join(self.get_temp_dir(), "ckpt"))
        fashion = learned_optimizer.LearnedOptimizer(
            str(REPO_ROOT / "saved_optimizers" / "fashion_mnist" / "cw.l2l"))
        fashion.build([variable])
        with self.assertRaisesRegex(util.WeightsFileError, "This checkpoint holds the state of "
                                    "LearnedOptimizer network [0-9a-f]{16}, not of this "
                                    "optimizer's \\([0-9a-f]{16}\\); restore it into an "
                                    "optimizer made from the same file"):
            tf.train.Checkpoint(optimizer=fashion).restore(prefix)
        same = learned_optimizer.LearnedOptimizer(str(REPO_ROOT / SHIPPED["l2l"]))
        same.build([variable])
        tf.train.Checkpoint(optimizer=same).restore(prefix).assert_existing_objects_matched()
        self.assertAllEqual(same._state[0], mnist._state[0])


if __name__ == "__main__":
    tf.test.main()


class GeneralOptimizerTest(tf.test.TestCase):
    """The shipped general optimizer by name: a NormalizedMLP, on a model the MNIST one fails."""

    def test_general_trains_a_relu_mlp_the_mnist_optimizer_diverges_on(self):
        rng = np.random.default_rng(0)
        x = (rng.random([2048, 784]) < 0.1).astype(np.float32)
        y = (x @ np.random.default_rng(1).normal(size=[784, 10])).argmax(axis=1)
        final = {}
        for name in ("general", "mnist", "adam"):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(64, "relu"),
                                      keras.layers.Dense(32, "relu"), keras.layers.Dense(10)])
            optimizer = (keras.optimizers.Adam() if name == "adam" else
                         learned_optimizer.LearnedOptimizer(name))
            model.compile(optimizer=optimizer,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(x, y, batch_size=128, epochs=3, verbose=0)
            final[name] = history.history["loss"]
        self.assertEqual(type(learned_optimizer.LearnedOptimizer("general").network).__name__,
                         "NormalizedMLP")
        # 48 steps: the general optimizer ahead of Keras' default Adam (measured 1.51 against
        # 1.96), where the MNIST optimizer's loss climbs tenfold.
        self.assertLess(final["general"][-1], 0.8 * final["adam"][-1])
        self.assertLess(final["general"][-1], 0.75 * final["general"][0])
        self.assertGreater(final["mnist"][-1], 10 * final["mnist"][0])
