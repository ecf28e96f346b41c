"""Optimizee problems: pure loss functions whose parameters the meta-optimizer substitutes.

A `Problem` is a tuple of pure functions of explicit seeds, so that every call is reproducible and
safe inside compiled (and XLA) code: `init` draws fresh parameters for an epoch, `sample` draws
the data for one optimizee step (a batch, or the fixed instance of an analytic problem), and
`loss` maps parameters and data to a scalar. Seeds are `int32 [2]` tensors.
"""

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import util
util.import_tensorflow()

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import datasets  # noqa: E402  pylint: disable=wrong-import-position


class Problem(NamedTuple):
    """An optimizee: `loss(init(seed), sample(seed, step))` is the loss at the start of an epoch.

    Attributes:
      names: one name per parameter tensor, for `net_assignments`.
      init: `seed -> [params]`, the initial parameters of an epoch.
      sample: `(seed, step) -> data` for optimizee step `step` (int32) of the epoch `seed`.
      loss: `(params, data) -> scalar`.
      sample_validation: like `sample`, but from held-out data (a validation split of the
        training data) for the validation meta-objective; None for problems without data.
      suits_xla: whether XLA speeds the problem's unroll up (the default compilation, see
        `meta.default_mode`). False for convolutions: on a CPU, XLA's convolutions and their
        gradients run the 2-conv MNIST CNN's steps 11x slower than the graph (measured: 14.1 s
        against 1.2 s for 200 steps of batch 128).
    """
    names: Tuple[str, ...]
    init: Callable
    sample: Callable
    loss: Callable
    sample_validation: Optional[Callable] = None
    suits_xla: bool = True


# Random numbers that are the same bits in every compilation mode. TensorFlow's stateless
# *integer* draws and `fold_in` agree between XLA and the graph executor, but its float uniform
# and normal draws do not (XLA maps bits to floats its own way); floats are made from integers.
_RNG_ALG = "philox"
_MANTISSA_BITS = 24  # float32 holds every multiple of 2^-24 in [0, 1) exactly.


def derive_seed(seed, *salts):
    """A new stateless seed from `seed` and integers: independent streams from one seed."""
    seed = tf.convert_to_tensor(seed, tf.int32)
    for salt in salts:
        seed = tf.random.experimental.stateless_fold_in(seed, salt, alg=_RNG_ALG)
    return seed


def random_indices(shape, seed, maxval):
    """Uniform int32 in [0, maxval)."""
    return tf.random.stateless_uniform(shape, seed, minval=0, maxval=maxval, dtype=tf.int32,
                                       alg=_RNG_ALG)


def random_uniform(shape, seed, dtype=tf.float32):
    """Uniform on [0, 1) in steps of 2^-24."""
    bits = random_indices(shape, seed, 2**_MANTISSA_BITS)
    return tf.cast(bits, dtype) * (2.0**-_MANTISSA_BITS)


def random_normal(shape, seed, stddev=1.0, dtype=tf.float32):
    """Normal by Box-Muller; modes may differ in the last bit of log and cos, not more."""
    u1 = random_uniform(shape, derive_seed(seed, 0), dtype)
    u2 = random_uniform(shape, derive_seed(seed, 1), dtype)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-u1))  # 1 - u1 lies in (0, 1]: the log is finite.
    return stddev * radius * tf.cos((2.0 * np.pi) * u2)


def simple():
    """`f(x) = x^2` from `x = 1`: the original's convergence problem."""
    return Problem(
        names=("x",),
        init=lambda seed: [tf.ones([], tf.float32)],
        sample=lambda seed, step: (),
        loss=lambda params, data: tf.square(params[0]))


def simple_multi_optimizer(num_dims=2):
    """`sum_i x_i^2` over `num_dims` scalars `x_0, x_1, ...`, each from 1; one net per scalar."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}.")
    return Problem(
        names=tuple(f"x_{i}" for i in range(num_dims)),
        init=lambda seed: [tf.ones([], tf.float32) for _ in range(num_dims)],
        sample=lambda seed, step: (),
        loss=lambda params, data: tf.add_n([tf.square(x) for x in params]))


def quadratic(batch_size=128, num_dims=10, stddev=0.01, dtype=tf.float32):
    """Batched quadratics `mean_b ||W_b x_b - y_b||^2`, W and y uniform on [0, 1).

    `x` starts from N(0, stddev); W and y are one random instance per epoch (a new one at each
    reset, as the original's non-trainable variables).
    """
    def init(seed):
        return [random_normal([batch_size, num_dims], derive_seed(seed, 0), stddev, dtype)]

    def sample(seed, step):
        del step  # One instance for the whole epoch.
        w = random_uniform([batch_size, num_dims, num_dims], derive_seed(seed, 1), dtype)
        y = random_uniform([batch_size, num_dims], derive_seed(seed, 2), dtype)
        return w, y

    def loss(params, data):
        (x,), (w, y) = params, data
        residual = tf.linalg.matvec(w, x) - y
        return tf.reduce_mean(tf.reduce_sum(tf.square(residual), axis=1))

    return Problem(("x",), init, sample, loss)


# The problems `ensemble` builds from the original's `{"name": ..., "options": ...}` specs.
_BY_NAME = ("simple", "simple_multi_optimizer", "quadratic", "mnist", "cifar10")


def _from_spec(spec):
    """A `Problem`, or one built from the original's spec `{"name": ..., "options": {...}}`."""
    if isinstance(spec, Problem):
        return spec
    if not isinstance(spec, dict) or spec.get("name") not in _BY_NAME:
        raise ValueError(f"ensemble takes Problems or {{'name': ..., 'options': ...}} specs with "
                         f"a name in {_BY_NAME}; got {spec!r}.")
    return globals()[spec["name"]](**spec.get("options", {}))


def ensemble(problems: Sequence, weights: Optional[Sequence[float]] = None):
    """The (weighted) sum of independent problems; parameter names get a `problem_<i>/` prefix.

    `problems` are `Problem`s or, as the original's, specs `{"name": "quadratic", "options":
    {...}}` of the problems of this module.
    """
    problems = [_from_spec(p) for p in problems]
    if not problems:
        raise ValueError("ensemble needs at least one problem.")
    if weights and len(weights) != len(problems):
        raise ValueError(f"ensemble got {len(weights)} weights for {len(problems)} problems.")
    weights = [float(w) for w in weights] if weights else [1.0] * len(problems)
    sizes = [len(p.names) for p in problems]

    def split(params):
        parts, start = [], 0
        for size in sizes:
            parts.append(params[start:start + size])
            start += size
        return parts

    def init(seed):
        return [x for i, p in enumerate(problems) for x in p.init(derive_seed(seed, i))]

    def sample(seed, step):
        return tuple(p.sample(derive_seed(seed, i), step) for i, p in enumerate(problems))

    def loss(params, data):
        return tf.add_n([w * p.loss(x, d)
                         for p, w, x, d in zip(problems, weights, split(params), data)])

    def sample_validation(seed, step):
        return tuple(p.sample_validation(derive_seed(seed, i), step)
                     for i, p in enumerate(problems))

    names = tuple(f"problem_{i}/{name}" for i, p in enumerate(problems) for name in p.names)
    has_validation = all(p.sample_validation is not None for p in problems)
    return Problem(names, init, sample, loss, sample_validation if has_validation else None)


# -- Classification problems on real data -------------------------------------------------------

_ACTIVATIONS = {"sigmoid": tf.sigmoid, "relu": tf.nn.relu, "tanh": tf.tanh,
                "gelu": lambda x: tf.nn.gelu(x, approximate=False)}  # Keras' "gelu".
_INIT_STDDEV = 0.01  # The original's N(0, 0.01) for every weight and bias.
# How an MLP's weights start: "original", the original code's N(0, 0.01) for weights and biases;
# "fan_in", weights from N(0, 1/fan_in) and zero biases (see docs/results.md, mnist-2layer);
# "glorot", Keras' default for Dense and Conv2D: weights uniform in +-sqrt(6 / (fan_in +
# fan_out)), zero biases (the models users write).
INITIALIZATIONS = ("original", "fan_in", "glorot")
_BATCH_NORM_EPSILON = 1e-3  # Sonnet 1's BatchNorm default.
# Salts of the seed streams within an epoch.
_INIT, _TRAIN_BATCH, _VALIDATION_BATCH, _CHOICE = 0, 1, 2, 3


def _activation(name):
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def _original_name(ours, ours_value, theirs, theirs_value, default):
    """The value of an argument that also has the original's name (`mode` for `split`, `path`
    for `data_dir`): either name, not two values."""
    if ours_value is not None and theirs_value is not None and ours_value != theirs_value:
        raise ValueError(f"{ours}={ours_value!r} and {theirs}={theirs_value!r} disagree: "
                         f"{theirs} is the original's name for {ours}; give one of them.")
    for value in (ours_value, theirs_value):
        if value is not None:
            return value
    return default


def _loader(dataset, data_dir, loader):
    if loader is not None:
        return loader
    return lambda split: datasets.load(dataset, split, data_dir)


def _batch(data, batch_size, seed, salt, step):
    """`batch_size` examples of in-memory `data = (x, y)` drawn uniformly (with replacement)."""
    x, y = data
    indices = random_indices([batch_size], derive_seed(seed, salt, step), x.shape[0])
    return tf.gather(x, indices), tf.gather(y, indices)


# The tensors of data already held, by the arrays they were made of: the problems of a task
# family (one per shape) share their datasets instead of holding a copy each.
_DEVICE_DATA = {}


def _device_data(parts, flatten):
    """`(x, y, sizes)`: the examples of `parts` (`[(x, y)]` arrays) concatenated as tensors."""
    key = (flatten,) + tuple((x.__array_interface__["data"][0], x.shape,
                              y.__array_interface__["data"][0], y.shape) for x, y in parts)
    if key not in _DEVICE_DATA:
        # Images stay uint8 in memory (a quarter of float32) and are scaled per batch.
        x = np.concatenate([x.reshape(len(x), -1) if flatten else x for x, _ in parts])
        y = np.concatenate([y for _, y in parts]).astype(np.int32)
        # The arrays are kept with the tensors, so that their addresses stay theirs.
        _DEVICE_DATA[key] = (parts, (tf.constant(x), tf.constant(y), [len(x) for x, _ in parts]))
        if len(_DEVICE_DATA) > 16:  # A process of many datasets: forget the oldest.
            del _DEVICE_DATA[next(iter(_DEVICE_DATA))]
    return _DEVICE_DATA[key][1]


def _dataset_problem(load, split, batch_size, params, forward, flatten, activations=None,
                     suits_xla=True):
    """A classification problem: a batch of `batch_size` examples drawn uniformly at each step.

    Args:
      load: `split -> (x, y)` numpy arrays, e.g. `datasets.load` of one dataset; or a list of
        such loaders (datasets of one example shape and class count), of which each instance
        (epoch seed) draws one.
      split: "train" (with "validation" as held-out data), "validation" or "test".
      batch_size: examples per optimizee step.
      params: `[(name, shape, initial value)]`: "normal" (N(0, 0.01)), "fan_in"
        (N(0, 1/shape[0])), "glorot" (uniform, Keras' `glorot_uniform`) or "zeros".
      forward: `(params, inputs) -> logits`; with `activations`, `(params, inputs,
        activation) -> logits`.
      flatten: feed `[batch, features]` instead of images.
      activations: None, or a list of activation functions of which each instance draws one
        (passed to `forward` as one function that runs the drawn one).

    With a list of loaders or `activations`, the draws are a function of the seed only, inside
    the compiled unroll: one graph serves every dataset and activation of the same shapes.
    """
    loads = load if isinstance(load, (list, tuple)) else [load]
    mixed = len(loads) > 1 or activations is not None

    def in_memory(which):
        parts = [loader(which) for loader in loads]
        return _device_data(parts, flatten)

    train = in_memory(split)
    held_out = in_memory("validation") if split == "train" else None

    def init(seed):
        values = []
        for i, (_, shape, how) in enumerate(params):
            if how == "zeros":
                values.append(tf.zeros(shape))
                continue
            if how == "glorot":
                receptive = math.prod(shape[:-2])  # A conv kernel's window; 1 for a matrix.
                limit = math.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
                uniform = random_uniform(shape, derive_seed(seed, _INIT, i))
                values.append((2.0 * uniform - 1.0) * limit)
                continue
            stddev = _INIT_STDDEV if how == "normal" else 1.0 / math.sqrt(shape[0])
            values.append(random_normal(shape, derive_seed(seed, _INIT, i), stddev))
        return values

    def batch(data, seed, salt, step):
        x, y, sizes = data
        if len(sizes) == 1:
            inputs, labels = _batch((x, y), batch_size, seed, salt, step)
        else:  # The instance's dataset: a stretch of the concatenated examples.
            which = random_indices([], derive_seed(seed, _CHOICE, 0), len(sizes))
            offsets = tf.constant(np.cumsum([0] + sizes[:-1]), tf.int32)
            indices = tf.gather(offsets, which) + random_indices(
                [batch_size], derive_seed(seed, salt, step), tf.gather(sizes, which))
            inputs, labels = tf.gather(x, indices), tf.gather(y, indices)
        if inputs.dtype == tf.uint8:
            inputs = tf.cast(inputs, tf.float32) / 255.0  # Pixels to [0, 1].
        if not mixed:
            return inputs, labels
        choice = (tf.zeros([], tf.int32) if activations is None else
                  random_indices([], derive_seed(seed, _CHOICE, 1), len(activations)))
        return inputs, labels, choice

    def loss(params_, data):
        if mixed:
            inputs, labels, choice = data

            def activation(h):
                return tf.switch_case(choice, [lambda f=f: f(h) for f in activations])

            logits = forward(params_, inputs, activation)
        else:
            inputs, labels = data
            logits = forward(params_, inputs)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    return Problem(
        names=tuple(name for name, _, _ in params), init=init,
        sample=lambda seed, step: batch(train, seed, _TRAIN_BATCH, step), loss=loss,
        sample_validation=(None if held_out is None else
                           lambda seed, step: batch(held_out, seed, _VALIDATION_BATCH, step)),
        suits_xla=suits_xla)


def _mlp_params(sizes, batch_norm=False, initialization="original"):
    """The parameters of an MLP over `sizes`, named as Sonnet 1 did (`mlp/linear_0/w`, ...).

    With `batch_norm`, each hidden layer has a batch-norm offset after it, named as Sonnet 1
    named the modules the original created one per layer: `mlp/batch_norm/beta`, then
    `mlp/batch_norm_1/beta`, ... `initialization` is one of `INITIALIZATIONS`.
    """
    if initialization not in INITIALIZATIONS:
        raise ValueError(f"Unknown initialization {initialization!r}; expected one of "
                         f"{INITIALIZATIONS}.")
    w_init, b_init = {"original": ("normal", "normal"), "fan_in": ("fan_in", "zeros"),
                      "glorot": ("glorot", "zeros")}[initialization]
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params += [(f"mlp/linear_{i}/w", [fan_in, fan_out], w_init),
                   (f"mlp/linear_{i}/b", [fan_out], b_init)]
        if batch_norm and i < len(sizes) - 2:
            suffix = f"_{i}" if i else ""
            params.append((f"mlp/batch_norm{suffix}/beta", [fan_out], "zeros"))
    return params


def _mlp_forward(activation, num_layers):
    def forward(params, inputs, activation=activation):
        hidden = inputs
        for i in range(num_layers):
            w, b = params[2 * i], params[2 * i + 1]
            hidden = tf.matmul(hidden, w) + b
            if i < num_layers - 1:
                hidden = activation(hidden)
        return hidden
    return forward


def _datasets_and_activations(dataset, activation, images=False):
    """`(dataset names, activation functions or None)`: one name or several of each.

    Several datasets (of one example shape and class count) or activations make a problem whose
    every instance draws one of each from its seed (see `_dataset_problem`).
    """
    names = (dataset,) if isinstance(dataset, str) else tuple(dataset)
    valid = sorted(d for d, s in datasets.EXAMPLE_SHAPES.items() if len(s) == 3 or not images)
    for name in names:
        if name not in valid:
            raise ValueError(f"Unknown {'image ' if images else ''}dataset {name!r}; expected "
                             f"one of {valid}.")
    if not names or len({(datasets.EXAMPLE_SHAPES[n], datasets.NUM_CLASSES[n])
                         for n in names}) != 1:
        raise ValueError(f"Datasets {list(names)} must share one example shape and class count.")
    several = not isinstance(activation, str)
    activations = tuple(_activation(a) for a in (activation if several else (activation,)))
    if not activations:
        raise ValueError("At least one activation is needed.")
    return names, (activations if several else None)


def _loaders(names, data_dir, loader):
    return [_loader(name, data_dir, loader) for name in names]


def mlp(dataset, layers=(20,), activation="sigmoid", batch_size=128, split="train",
        data_dir=None, loader=None, initialization="original"):
    """Classification of a dataset's flattened examples by an MLP (the original's `mnist`).

    Hidden layers `layers` with `activation`, a linear output per class, softmax cross-entropy;
    weights and biases start from N(0, 0.01) (`initialization="original"`), weights from
    N(0, 1/fan_in) and biases from zero (`"fan_in"`), or as Keras' Dense (`"glorot"`). Parameter
    names follow Sonnet 1's (`mlp/linear_0/w`, ...). The data comes from
    `datasets.load(dataset, split, data_dir)`, or from `loader(split) -> (x, y)` when given (e.g.
    synthetic data of the same shapes). `dataset` and `activation` may be lists: each instance
    then draws one of each from its seed (task families).
    """
    names, activations = _datasets_and_activations(dataset, activation)
    first = names[0]
    sizes = [math.prod(datasets.EXAMPLE_SHAPES[first]), *layers, datasets.NUM_CLASSES[first]]
    act = activations[0] if activations else _activation(activation)
    return _dataset_problem(_loaders(names, data_dir, loader), split, batch_size,
                            _mlp_params(sizes, initialization=initialization),
                            _mlp_forward(act, len(sizes) - 1), flatten=True,
                            activations=activations)


def convnet(dataset, channels=(8, 16), activation="relu", batch_size=128, split="train",
            data_dir=None, loader=None, kernel_size=3):
    """A small convolutional classifier, as a user would write it in Keras.

    Each of `channels`: a `kernel_size` convolution (stride 1, SAME, bias), `activation`, 2x2
    max-pooling (stride 2, SAME); then a linear layer to the classes. Glorot-uniform weights and
    zero biases (Keras' defaults); names `conv_net/conv_<i>/w`, ..., `conv_net/linear/w`.
    `dataset` and `activation` may be lists, as for `mlp`.
    """
    names, activations = _datasets_and_activations(dataset, activation, images=True)
    act = activations[0] if activations else _activation(activation)
    if not channels:
        raise ValueError("convnet needs at least one convolution (channels).")
    height, width, depth = datasets.EXAMPLE_SHAPES[names[0]]
    params = []
    for i, out in enumerate(channels):
        params += [(f"conv_net/conv_{i}/w", [kernel_size, kernel_size, depth, out], "glorot"),
                   (f"conv_net/conv_{i}/b", [out], "zeros")]
        depth, height, width = out, (height + 1) // 2, (width + 1) // 2
    classes = datasets.NUM_CLASSES[names[0]]
    params += [("conv_net/linear/w", [height * width * depth, classes], "glorot"),
               ("conv_net/linear/b", [classes], "zeros")]

    def forward(values, images, activation=act):
        hidden = images
        for i in range(len(channels)):
            w, b = values[2 * i], values[2 * i + 1]
            hidden = activation(tf.nn.conv2d(hidden, w, strides=1, padding="SAME") + b)
            hidden = tf.nn.max_pool2d(hidden, ksize=2, strides=2, padding="SAME")
        hidden = tf.reshape(hidden, [tf.shape(hidden)[0], -1])
        return tf.matmul(hidden, values[-2]) + values[-1]

    return _dataset_problem(_loaders(names, data_dir, loader), split, batch_size, params,
                            forward, flatten=False, activations=activations, suits_xla=False)


def mnist(layers=(20,), activation="sigmoid", batch_size=128, split=None, data_dir=None,
          loader=None, mode=None, initialization="original"):
    """MNIST digits by an MLP, 784 -> `layers` -> 10 (the paper's problem: one layer of 20).

    `mode` is the original's name for `split` ("train", "validation" or "test"; default train).
    """
    return mlp("mnist", layers, activation, batch_size,
               _original_name("split", split, "mode", mode, "train"), data_dir, loader,
               initialization)


def _batch_norm(x, beta, axes):
    """Batch normalization with the batch's own statistics and a learned offset only."""
    mean, variance = tf.nn.moments(x, axes)
    return (x - mean) * tf.math.rsqrt(variance + _BATCH_NORM_EPSILON) + beta


def _whole_number(name, value, lowest):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(f"{name} must be a whole number >= {lowest}, got {value!r}.")


def cifar10(path=None, conv_channels=(16, 16, 16), linear_layers=(32,), batch_norm=True,
            batch_size=128, num_threads=4, min_queue_examples=1000, mode=None, *, split=None,
            data_dir=None, dataset="cifar10", loader=None):
    """The original's CIFAR convolutional network, with the original's arguments in its order.

    Each conv layer: 5x5, stride 1, SAME, bias, batch norm (offset only; with `batch_norm`),
    ReLU, 2x2 max-pool (stride 2, SAME); then an MLP whose hidden layers apply batch norm (with
    `batch_norm`) and ReLU.

    `path` and `mode` are the original's names for `data_dir` (where the files are; the folder
    the original's download unpacked into serves as it is) and `split` ("train", "validation" or
    "test"; default train). `num_threads` and `min_queue_examples` sized the original's input
    queue; here there is no queue (every batch is drawn uniformly from the whole split), so they
    are checked and have no effect.
    """
    split = _original_name("split", split, "mode", mode, "train")
    data_dir = _original_name("data_dir", data_dir, "path", path, None)
    _whole_number("num_threads", num_threads, 1)
    _whole_number("min_queue_examples", min_queue_examples, 0)
    params, channels, side = [], 3, 32
    for i, out in enumerate(conv_channels):
        params += [(f"conv_net_2d/conv_2d_{i}/w", [5, 5, channels, out], "normal"),
                   (f"conv_net_2d/conv_2d_{i}/b", [out], "normal")]
        if batch_norm:
            params.append((f"conv_net_2d/batch_norm_{i}/beta", [out], "zeros"))
        channels, side = out, (side + 1) // 2
    sizes = [side * side * channels, *linear_layers, datasets.NUM_CLASSES[dataset]]
    params += _mlp_params(sizes, batch_norm=batch_norm)
    num_conv = len(conv_channels)

    def normalized(hidden, values, k, axes):
        """`(ReLU of hidden, after batch norm when asked, index of the next parameter)`."""
        if not batch_norm:
            return tf.nn.relu(hidden), k
        return tf.nn.relu(_batch_norm(hidden, values[k], axes)), k + 1

    def forward(values, images):
        hidden, k = images, 0
        for _ in range(num_conv):
            w, b = values[k:k + 2]
            hidden = tf.nn.conv2d(hidden, w, strides=1, padding="SAME") + b
            hidden, k = normalized(hidden, values, k + 2, axes=[0, 1, 2])
            hidden = tf.nn.max_pool2d(hidden, ksize=2, strides=2, padding="SAME")
        hidden = tf.reshape(hidden, [tf.shape(hidden)[0], -1])
        for i in range(len(sizes) - 1):
            w, b = values[k:k + 2]
            hidden = tf.matmul(hidden, w) + b
            k += 2
            if i < len(sizes) - 2:
                hidden, k = normalized(hidden, values, k, axes=[0])
        return hidden

    return _dataset_problem(_loader(dataset, data_dir, loader), split, batch_size, params,
                            forward, flatten=False, suits_xla=False)


# -- Any Keras model ----------------------------------------------------------------------------

def keras_problem(build_model, x, y, loss, batch_size=128, validation_data=None, training=True):
    """A Keras model and in-memory data as a `Problem`: meta-train an optimizer on your model.

        problem = problems.keras_problem(
            lambda: keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, "sigmoid"),
                                      keras.layers.Dense(10)]),
            x_train, y_train, keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    The parameters are the model's trainable variables (named by their paths). Each epoch starts
    from fresh weights drawn by the model's own initializers under the epoch's seed; each step
    draws a batch of `batch_size` examples inside the compiled unroll; the loss runs the model
    through `model.stateless_call` with the parameters given. Non-trainable variables (batch-norm
    statistics) keep their initial values; with `training=True` batch norm uses the batch's.

    Args:
      build_model: `() -> keras.Model` with known input shape (e.g. starting with keras.Input).
      x, y: the training examples and targets (arrays of equal length).
      loss: a Keras loss (name, object or function of `(y_true, y_pred)`); averaged over the batch.
      batch_size: examples per optimizee step.
      validation_data: `(x, y)` held-out examples for the validation meta-objective.
      training: run the model in training mode (dropout, batch statistics).
    """
    import keras  # pylint: disable=import-outside-toplevel  # Only this problem needs Keras.

    # Checked before anything is built: a NaN example, an empty batch or misaligned validation
    # arrays would otherwise give NaN or silently wrong (XLA clamps gathers) losses, not errors.
    x, y = _examples(x, y)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError(f"keras_problem's validation_data must be a pair (x, y), got "
                             f"{type(validation_data).__name__}.")
        validation_data = _examples(*validation_data, "validation_data")
        for name, train, held_out in zip("xy", (x, y), validation_data):
            if train.shape[1:] != held_out.shape[1:]:
                raise ValueError(f"keras_problem's validation_data {name} has examples of shape "
                                 f"{held_out.shape[1:]}, the training {name} {train.shape[1:]}.")
    if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
            or batch_size < 1):
        raise ValueError(f"keras_problem's batch_size must be a whole number of examples, at "
                         f"least 1, got {batch_size!r}.")
    model = _built_model(keras, build_model)
    # The same model again with its variables left uninitialized, to keep its initializers.
    with keras.StatelessScope(initialize_variables=False):
        blueprint = _built_model(keras, build_model)
    initializers = []
    for variable in blueprint.trainable_variables:
        initializer = getattr(variable, "_initializer", None)
        if initializer is None:
            raise ValueError(f"keras_problem cannot find the initializer of {variable.path}; "
                             f"create weights with layer.add_weight(initializer=...).")
        initializers.append(_seeded_initializer(keras, initializer))
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    dtypes = [v.dtype for v in model.trainable_variables]
    fixed = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    train = (tf.constant(x), tf.constant(y))
    held_out = (None if validation_data is None else
                tuple(tf.constant(a) for a in validation_data))

    def init(seed):
        values = []
        for i, ((initializer, generator), shape, dtype) in enumerate(
                zip(initializers, shapes, dtypes)):
            if generator is None:
                values.append(tf.convert_to_tensor(initializer(shape, dtype)))
                continue
            state = tf.cast(derive_seed(seed, _INIT, i), generator.state.dtype)
            with keras.StatelessScope(state_mapping=[(generator.state, state)]):
                values.append(tf.convert_to_tensor(initializer(shape, dtype)))
        return values

    def loss_(params, data):
        inputs, targets = data
        outputs, _ = model.stateless_call(list(params), fixed, inputs, training=training)
        return tf.reduce_mean(loss_fn(targets, outputs))

    return Problem(
        names=tuple(v.path for v in model.trainable_variables), init=init,
        sample=lambda seed, step: _batch(train, batch_size, seed, _TRAIN_BATCH, step),
        loss=loss_,
        sample_validation=(None if held_out is None else lambda seed, step: _batch(
            held_out, batch_size, seed, _VALIDATION_BATCH, step)))


def _examples(x, y, argument=None):
    """`(x, y)` as arrays of numbers of equal, non-zero length with finite values, or a
    ValueError naming keras_problem's argument (None: its x and y; "validation_data")."""
    x, y = np.asarray(x), np.asarray(y)
    prefix = f"{argument}'s " if argument else ""
    for name, array in ((f"{prefix}x", x), (f"{prefix}y", y)):
        if array.dtype.kind not in "biuf" or not array.ndim:
            raise ValueError(f"keras_problem's {name} must be an array of numbers, one row per "
                             f"example; got {array.dtype} of shape {array.shape}.")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise ValueError(f"keras_problem's {name} holds {bad} NaN or infinite values, so "
                             f"the losses would not be finite; clean or drop those examples.")
    if len(x) != len(y) or not len(x):
        where = f" in {argument}" if argument else ""
        raise ValueError(f"keras_problem needs as many targets as examples{where}, got "
                         f"{len(x)} examples and {len(y)} targets.")
    return x, y


def _built_model(keras, build_model):
    """`build_model()`, checked to be a built Keras model."""
    model = build_model()
    if not isinstance(model, keras.Model):
        raise ValueError(f"keras_problem's build_model must return a keras.Model, got "
                         f"{type(model).__name__}.")
    if not model.built:
        raise ValueError("keras_problem needs a built model: give it an input shape (e.g. "
                         "start a Sequential with keras.Input(shape)).")
    return model


def _seeded_initializer(keras, initializer):
    """`(initializer, seed generator)`: a copy of a random initializer that draws from a seed
    generator (whose state the epoch's seed then sets), or `(initializer, None)`."""
    if getattr(initializer, "seed", None) is None:
        return initializer, None  # Not random (zeros, ones, constants).
    copy = type(initializer).from_config({**initializer.get_config(), "seed": None})
    generator = keras.random.SeedGenerator(0)
    copy.seed = generator
    return copy, generator
