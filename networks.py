"""Optimizer networks (Andrychowicz et al., 2016) as Sonnet 2 modules.

Every network is a recurrent core that maps the gradient of a parameter and its previous state to
the step the meta-optimizer adds to that parameter (`x_next = x + step`) and its next state.
The learned ones are deep LSTMs; `Sgd` and `Adam` are hand-designed baselines with the same
interface; the lambda networks add `lambda * x` to the LSTM's step
(`x_next = x + delta + lambda * x`).

Weights are saved in a zip of arrays with a JSON header (never a pickle), which records the
network class and options so that a load can check that the file fits the network.
"""

import io
import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple, Optional

import numpy as np
import sonnet as snt
import tensorflow as tf

FORMAT_NAME = "l2l-weights"
FORMAT_VERSION = 1
_HEADER_KEY = "__header__"


class Update(NamedTuple):
    """What a network returns for one optimizee step."""
    step: tf.Tensor  # Added to the parameter.
    next_state: Any
    lambda_: Optional[tf.Tensor] = None  # The lambda used (lambda networks only), for logging.


# -- Gradient preprocessing ---------------------------------------------------------------------

class Clamp(snt.Module):
    """Clips its input to `[min_value, max_value]`; either bound may be None."""

    def __init__(self, min_value=None, max_value=None, name="clamp"):
        super().__init__(name=name)
        self._min, self._max = min_value, max_value

    def __call__(self, inputs):
        output = inputs
        if self._min is not None:
            output = tf.maximum(output, tf.cast(self._min, inputs.dtype))
        if self._max is not None:
            output = tf.minimum(output, tf.cast(self._max, inputs.dtype))
        return output


class LogAndSign(snt.Module):
    """Gradient preprocessing of the paper's appendix A; `[..., 1] -> [..., 2]`.

    Features `[max(log(|g| + eps) / k, -1), clip(g * exp(k), -1, 1)]`: a magnitude feature on a log
    scale and a sign feature that is linear for tiny gradients, so that the LSTM sees inputs of
    order one whatever the scale of the gradient.
    """

    def __init__(self, k, name="log_and_sign"):
        super().__init__(name=name)
        if k <= 0:
            raise ValueError(f"LogAndSign needs k > 0, got {k}.")
        self._k = float(k)

    def __call__(self, gradients):
        eps = np.finfo(gradients.dtype.as_numpy_dtype).eps
        log = tf.math.log(tf.abs(gradients) + eps)
        clamped_log = Clamp(min_value=-1.0)(log / self._k)
        sign = Clamp(min_value=-1.0, max_value=1.0)(gradients * np.exp(self._k))
        return tf.concat([clamped_log, sign], axis=-1)


PREPROCESSORS = {"identity": (tf.identity, 1), "Clamp": (Clamp, 1), "LogAndSign": (LogAndSign, 2)}


def _make_preprocess(name, options):
    """Returns `(fn, features_per_input)` for a preprocessing name."""
    if name not in PREPROCESSORS:
        raise ValueError(f"Unknown preprocess_name {name!r}; "
                         f"expected one of {sorted(PREPROCESSORS)}.")
    fn, features = PREPROCESSORS[name]
    if name == "identity":
        if options:
            raise ValueError(f"Preprocessing 'identity' takes no options, got {options}.")
        return fn, features
    return fn(**(options or {})), features


# -- Initializers -------------------------------------------------------------------------------

class _ArrayInitializer(snt.initializers.Initializer):
    """Initializes a variable with given values; a shape mismatch is a clear error."""

    def __init__(self, value, where):
        self._value, self._where = np.asarray(value), where

    def __call__(self, shape, dtype):
        if tuple(self._value.shape) != tuple(shape):
            raise ValueError(f"Weights {self._where} have shape {tuple(self._value.shape)}; "
                             f"the network needs {tuple(shape)}.")
        return tf.constant(self._value, dtype=dtype)


_NAMED_INITIALIZERS = {"zeros": snt.initializers.Zeros, "ones": snt.initializers.Ones}


def _convert_initializer(spec, where):
    if isinstance(spec, str):
        if spec not in _NAMED_INITIALIZERS:
            raise ValueError(f"Unknown initializer {spec!r} for {where}; "
                             f"expected one of {sorted(_NAMED_INITIALIZERS)}, arrays or a dict.")
        return _NAMED_INITIALIZERS[spec]()
    if isinstance(spec, (np.ndarray, list, tuple, float, int)):
        return _ArrayInitializer(spec, where)
    if isinstance(spec, snt.initializers.Initializer):
        return spec
    raise TypeError(f"Cannot use {type(spec).__name__} as the initializer of {where}.")


def _layer_initializers(initializer, layer, fields):
    """Initializers of one layer's variables, as the original `_get_layer_initializers`.

    `initializer` is None (defaults), one spec for every variable (a name such as "zeros"), a dict
    of layer name to specs, or a dict of variable name to spec shared by all layers. A spec is a
    name, an array (e.g. loaded weights) or a Sonnet initializer.
    """
    if initializer is None:
        return {}
    if isinstance(initializer, dict) and layer in initializer:
        initializer = initializer[layer]
    if isinstance(initializer, dict):
        return {f: _convert_initializer(initializer[f], f"{layer}/{f}")
                for f in fields if f in initializer}
    return {f: _convert_initializer(initializer, f"{layer}/{f}") for f in fields}


def _gate_initializer(input_size, hidden_size):
    # Sonnet 1's LSTM default (the original's): one stddev for input and hidden rows alike.
    return snt.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size + hidden_size))


# -- Networks -----------------------------------------------------------------------------------

class Network(snt.Module):
    """Base of all optimizer networks: a recurrent core that outputs steps.

    Subclasses implement `update` and `initial_state_for_inputs` and record their constructor
    options in `self.options` (JSON-able; saved with the weights).
    """

    # True when the network treats every coordinate alike with shared weights, so that the
    # meta-optimizer may feed all coordinates of all its variables through one call.
    coordinatewise = False
    # True when `update` reports the lambda it used (the lambda networks).
    has_lambda = False

    def __init__(self, options, name):
        super().__init__(name=name)
        self._options = options

    @property
    def options(self):
        """Constructor options (JSON-able), saved with the weights."""
        # tf.Module wraps dict attributes for checkpoint tracking; hand out a plain copy.
        return _normalize_options(self._options)

    def initial_state_for_inputs(self, inputs):
        """The zero state for optimizing a parameter shaped like `inputs`."""
        raise NotImplementedError

    def update(self, inputs, prev_state, param=None):
        """One optimizee step: `inputs` is the gradient, `param` the parameter; returns `Update`."""
        raise NotImplementedError

    def __call__(self, inputs, prev_state, param=None):
        """RNN-core form of `update`: returns `(step, next_state)`; add `step` to the parameter."""
        result = self.update(inputs, prev_state, param)
        return result.step, result.next_state

    def weights(self):
        """The trainable weights as `{layer: {variable: tf.Variable}}` (the saved layout)."""
        return {}

    def get_weights(self):
        """The weights as numpy arrays, in the layout `initializer` accepts."""
        return {layer: {name: v.numpy() for name, v in variables.items()}
                for layer, variables in self.weights().items()}


class StandardDeepLSTM(Network):
    """LSTM layers then a linear layer; output times `scale`.

    Each batch row is preprocessed (every input feature separately) and fed to the LSTMs.
    """

    def __init__(self, output_size, layers, preprocess_name="identity", preprocess_options=None,
                 scale=1.0, initializer=None, input_size=None, dtype=tf.float32,
                 name="deep_lstm"):
        """Builds the network.

        Args:
          output_size: size of the output (per batch row).
          layers: hidden sizes of the LSTM layers; `()` leaves only the linear layer.
          preprocess_name: "identity", "Clamp" or "LogAndSign".
          preprocess_options: keyword arguments of the preprocessing, e.g. `{"k": 5}`.
          scale: multiplies the output.
          initializer: None, a name ("zeros"), or a dict per layer (`lstm_1`, ..., `linear`) and
            variable (`w_i`, `w_h`, `b`; `w`, `b`) of names or arrays, e.g. loaded weights.
            Array biases are taken as they are, forget-gate bias included.
          input_size: number of inputs per row before preprocessing, to create the variables now;
            None creates them at the first call.
          dtype: dtype of the variables and states.
          name: module name.
        """
        layers = tuple(int(size) for size in layers)
        options = dict(output_size=int(output_size), layers=list(layers),
                       preprocess_name=preprocess_name,
                       preprocess_options=dict(preprocess_options or {}), scale=float(scale))
        super().__init__(options, name=name)
        if any(size < 1 for size in layers):
            raise ValueError(f"LSTM layer sizes must be positive, got {layers}.")
        self.layers = layers
        self._scale = float(scale)
        self._dtype = dtype
        self._preprocess, self._features = _make_preprocess(preprocess_name, preprocess_options)
        self._initializer = initializer
        self._cores = None  # Built once the input size is known.
        with self.name_scope:
            init = _layer_initializers(initializer, "linear", ("w", "b"))
            self._linear = snt.Linear(output_size, w_init=init.get("w"), b_init=init.get("b"),
                                      name="linear")
        if input_size is not None:
            self._build(input_size)

    def _build(self, input_size):
        """Creates the LSTM layers and all variables for rows of `input_size` inputs."""
        layer_inputs = (input_size * self._features,) + self.layers[:-1]
        cores = []
        with self.name_scope:
            for i, (fan_in, size) in enumerate(zip(layer_inputs, self.layers), start=1):
                init = _layer_initializers(self._initializer, f"lstm_{i}", ("w_i", "w_h", "b"))
                gate_init = _gate_initializer(fan_in, size)
                cores.append(snt.LSTM(
                    size, w_i_init=init.get("w_i", gate_init),
                    w_h_init=init.get("w_h", gate_init), b_init=init.get("b"),
                    # Given biases already hold the forget bias (as saved); else add Sonnet's 1.0.
                    forget_bias=0.0 if isinstance(init.get("b"), _ArrayInitializer) else 1.0,
                    dtype=self._dtype, name=f"lstm_{i}"))
        self._cores = cores
        # Sonnet creates variables at the first call; make them now, before any tf.function
        # (checkpoints and the meta-optimizer's slots need them).
        hidden, _ = self._hidden(tf.zeros([1, input_size], self._dtype), self._zero_state(1))
        self._linear(hidden)

    def _zero_state(self, batch_size):
        # Not snt.LSTM.initial_state: its dtype is fixed at construction, ours follows `dtype`.
        return tuple(snt.LSTMState(hidden=tf.zeros([batch_size, size], self._dtype),
                                   cell=tf.zeros([batch_size, size], self._dtype))
                     for size in self.layers)

    def initial_state_for_inputs(self, inputs):
        return self._zero_state(inputs.shape[0])

    def _hidden(self, inputs, prev_state):
        """Preprocessed inputs through the LSTMs: `[batch, d] -> ([batch, last], next_state)`."""
        inputs = tf.convert_to_tensor(inputs, self._dtype)
        if self._cores is None:
            self._build(inputs.shape[1])
        features = self._preprocess(tf.expand_dims(inputs, -1))
        # The features of one row side by side, as the original's reshape.
        output = tf.reshape(features, [-1, inputs.shape[1] * self._features])
        next_state = []
        for core, state in zip(self._cores, prev_state):
            output, state = core(output, state)
            next_state.append(state)
        return output, tuple(next_state)

    def _delta(self, hidden):
        return self._linear(hidden) * self._scale

    def update(self, inputs, prev_state, param=None):
        del param  # The plain LSTM does not look at the parameter.
        hidden, next_state = self._hidden(inputs, prev_state)
        return Update(self._delta(hidden), next_state)

    def weights(self):
        result = {}
        for i, core in enumerate(self._cores or (), start=1):
            result[f"lstm_{i}"] = {"w_i": core.input_to_hidden, "w_h": core.hidden_to_hidden,
                                   "b": core.b}
        if self._cores is not None:
            result["linear"] = {"w": self._linear.w, "b": self._linear.b}
        return result


class CoordinateWiseDeepLSTM(StandardDeepLSTM):
    """The L2L optimizer: one small LSTM shared by every coordinate of a tensor of any shape.

    The same network as `StandardDeepLSTM` with one scalar input per coordinate and one output,
    computed with coordinates as columns: states are `[hidden, coordinates]`, and each layer is
    one matrix product `w^T [x; h]` (the Sonnet LSTM's input and hidden weights together) and
    elementwise gates over contiguous rows. On a CPU this is faster than a batch row per
    coordinate, with the same numbers; `_hidden`, Sonnet's own row-wise call, is the reference.
    """

    coordinatewise = True

    def __init__(self, layers=(20, 20), preprocess_name="identity", preprocess_options=None,
                 scale=1.0, initializer=None, dtype=tf.float32, name="cw_deep_lstm"):
        super().__init__(1, layers, preprocess_name, preprocess_options, scale, initializer,
                         input_size=1, dtype=dtype, name=name)
        del self._options["output_size"]

    def initial_state_for_inputs(self, inputs):
        coordinates = inputs.shape.num_elements()
        return tuple(snt.LSTMState(hidden=tf.zeros([size, coordinates], self._dtype),
                                   cell=tf.zeros([size, coordinates], self._dtype))
                     for size in self.layers)

    def _columns(self, inputs, prev_state):
        """The LSTMs over coordinates as columns: `inputs` of any shape -> `[last, coords]`."""
        coordinates = inputs.shape.num_elements()
        rows = tf.reshape(tf.cast(inputs, self._dtype), [coordinates, 1, 1])
        output = tf.transpose(tf.reshape(self._preprocess(rows), [coordinates, self._features]))
        next_state = []
        for core, state in zip(self._cores, prev_state):
            weights = tf.concat([core.input_to_hidden, core.hidden_to_hidden], axis=0)
            gates = (tf.matmul(weights, tf.concat([output, state.hidden], axis=0),
                               transpose_a=True) + core.b[:, tf.newaxis])
            i, f, g, o = tf.split(gates, 4, axis=0)  # Sonnet 2's gate order.
            cell = tf.sigmoid(f) * state.cell + tf.sigmoid(i) * tf.tanh(g)
            output = tf.sigmoid(o) * tf.tanh(cell)
            next_state.append(snt.LSTMState(hidden=output, cell=cell))
        return output, tuple(next_state)

    def _column_head(self, linear, hidden):
        """A `Linear(1)` layer applied to every column of `hidden`: `[features, n] -> [n]`."""
        return tf.reshape(tf.matmul(linear.w, hidden, transpose_a=True) + linear.b, [-1])

    def _column_delta(self, inputs, prev_state):
        """`(delta, hidden, next_state)`: the scaled step in `inputs`' shape, and what made it."""
        hidden, next_state = self._columns(inputs, prev_state)
        delta = self._column_head(self._linear, hidden) * self._scale
        return tf.reshape(delta, inputs.shape), hidden, next_state

    def update(self, inputs, prev_state, param=None):
        del param
        delta, _, next_state = self._column_delta(inputs, prev_state)
        return Update(delta, next_state)


class KernelDeepLSTM(StandardDeepLSTM):
    """An LSTM over convolution filters: one batch row per `kernel_shape` filter of a kernel.

    The parameter is a conv kernel `[k_h, k_w, in, out]`; each of its `in * out` filters is one row
    of `k_h * k_w` gradients, and the output is a step for the whole filter.
    """

    def __init__(self, kernel_shape, layers=(20, 20), preprocess_name="identity",
                 preprocess_options=None, scale=1.0, initializer=None, dtype=tf.float32,
                 name="kernel_deep_lstm"):
        self._kernel_shape = [int(k) for k in kernel_shape]
        size = int(np.prod(self._kernel_shape))
        super().__init__(size, layers, preprocess_name, preprocess_options, scale, initializer,
                         input_size=size, dtype=dtype, name=name)
        del self._options["output_size"]
        self._options["kernel_shape"] = self._kernel_shape

    def _rows(self, inputs):
        if inputs.shape.rank != 4 or list(inputs.shape[:2]) != list(self._kernel_shape):
            raise ValueError(f"KernelDeepLSTM with kernel_shape {list(self._kernel_shape)} cannot "
                             f"optimize a variable of shape {inputs.shape.as_list()}.")
        filters = tf.transpose(inputs, [2, 3, 0, 1])  # [in, out, k_h, k_w]
        return tf.reshape(filters, [-1, int(np.prod(self._kernel_shape))])

    def initial_state_for_inputs(self, inputs):
        return self._zero_state(self._rows(inputs).shape[0])

    def update(self, inputs, prev_state, param=None):
        del param
        hidden, next_state = self._hidden(self._rows(inputs), prev_state)
        k_h, k_w, n_in, n_out = inputs.shape
        step = tf.reshape(self._delta(hidden), [n_in, n_out, k_h, k_w])
        return Update(tf.transpose(step, [2, 3, 0, 1]), next_state)


class _LambdaDeepLSTM(CoordinateWiseDeepLSTM):
    """`x_next = x + delta + lambda * x`: the LSTM's step plus a lambda term.

    `delta` is the LSTM's step and `x` the parameter before the step, coordinate by coordinate.
    Subclasses differ only in where lambda comes from (`_lambda`).
    """

    has_lambda = True

    def _lambda(self, hidden, param):
        """Lambda for this step: a scalar or one value per coordinate, `[coordinates]`.

        `hidden` is the last LSTM layer's output, `[hidden, coordinates]`.
        """
        raise NotImplementedError

    def update(self, inputs, prev_state, param=None):
        if param is None:
            raise ValueError(f"{type(self).__name__} needs the parameter as well as the gradient.")
        delta, hidden, next_state = self._column_delta(inputs, prev_state)
        lam = self._lambda(hidden, param)
        per_coordinate = lam if lam.shape.rank == 0 else tf.reshape(lam, param.shape)
        return Update(delta + per_coordinate * param, next_state, lam)


class FixedLambdaDeepLSTM(_LambdaDeepLSTM):
    """The fork's fixed-lambda optimizer: `x_next = x + delta + fixed_lambda * x`."""

    def __init__(self, fixed_lambda=0.01, name="cw_fixed_lambda", **kwargs):
        super().__init__(name=name, **kwargs)
        self._options["fixed_lambda"] = float(fixed_lambda)
        self._fixed_lambda = float(fixed_lambda)

    def _lambda(self, hidden, param):
        return tf.constant(self._fixed_lambda, param.dtype)


LAMBDA_MODES = ("per_coordinate", "scalar")


class LearnedLambdaDeepLSTM(_LambdaDeepLSTM):
    """`x_next = x + delta + lambda * x` with lambda meta-learned, bounded by `lambda_max`.

    `lambda = lambda_max * tanh(a)` with `a` unconstrained: in mode "per_coordinate" a second
    linear head on the last LSTM layer gives each coordinate its own `a` at each step; in mode
    "scalar" `a` is one trainable variable. Either starts with lambda equal to `init_lambda`
    everywhere (head weights zero), so the learned optimizer starts exactly as the fixed one.
    """

    def __init__(self, lambda_mode="per_coordinate", init_lambda=0.01, lambda_max=0.1,
                 initializer=None, dtype=tf.float32, name="cw_learned_lambda", **kwargs):
        if lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"Unknown lambda_mode {lambda_mode!r}; "
                             f"expected one of {LAMBDA_MODES}.")
        if not lambda_max > 0 or not abs(init_lambda) < lambda_max:
            raise ValueError(f"init_lambda must lie strictly inside (-lambda_max, lambda_max); "
                             f"got init_lambda={init_lambda}, lambda_max={lambda_max}.")
        super().__init__(initializer=initializer, dtype=dtype, name=name, **kwargs)
        self._options.update(lambda_mode=lambda_mode, init_lambda=float(init_lambda),
                            lambda_max=float(lambda_max))
        self._mode, self._lambda_max = lambda_mode, float(lambda_max)
        raw = float(np.arctanh(init_lambda / lambda_max))
        with self.name_scope:
            if lambda_mode == "per_coordinate":
                init = _layer_initializers(initializer, "lambda_head", ("w", "b"))
                self._head = snt.Linear(1, w_init=init.get("w", snt.initializers.Zeros()),
                                        b_init=init.get("b", snt.initializers.Constant(raw)),
                                        name="lambda_head")
                hidden_size = self.layers[-1] if self.layers else self._features
                self._head(tf.zeros([1, hidden_size], dtype))  # Creates its variables now.
            else:
                init = _layer_initializers(initializer, "lambda", ("raw",))
                raw_init = init.get("raw", snt.initializers.Constant(raw))
                self._raw = tf.Variable(raw_init([], dtype), name="raw")

    def _lambda(self, hidden, param):
        raw = self._raw if self._mode == "scalar" else self._column_head(self._head, hidden)
        return self._lambda_max * tf.tanh(raw)

    def weights(self):
        result = super().weights()
        if self._mode == "scalar":
            result["lambda"] = {"raw": self._raw}
        else:
            result["lambda_head"] = {"w": self._head.w, "b": self._head.b}
        return result


@snt.allow_empty_variables
class Sgd(Network):
    """Gradient descent as a network: step `-learning_rate * g`, no state, no weights."""

    coordinatewise = True

    def __init__(self, learning_rate=0.001, name="sgd"):
        super().__init__(dict(learning_rate=float(learning_rate)), name=name)
        self._learning_rate = float(learning_rate)

    def initial_state_for_inputs(self, inputs):
        return ()

    def update(self, inputs, prev_state, param=None):
        del prev_state, param
        return Update(-self._learning_rate * inputs, ())


@snt.allow_empty_variables
class Adam(Network):
    """Adam (Kingma & Ba, 2015) as a network with bias correction; state `(t, m, v)`, no weights.

    `eps_root` is added inside the square root; make it positive when differentiating through the
    step (second derivatives), where `sqrt` at zero has an infinite slope.
    """

    coordinatewise = True

    def __init__(self, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, eps_root=0.0,
                 name="adam"):
        super().__init__(dict(learning_rate=float(learning_rate), beta1=float(beta1),
                              beta2=float(beta2), epsilon=float(epsilon),
                              eps_root=float(eps_root)), name=name)
        self._lr, self._b1, self._b2 = float(learning_rate), float(beta1), float(beta2)
        self._eps, self._eps_root = float(epsilon), float(eps_root)

    def initial_state_for_inputs(self, inputs):
        zeros = tf.zeros([inputs.shape.num_elements(), 1], inputs.dtype)
        return tf.zeros([], inputs.dtype), zeros, zeros

    def update(self, inputs, prev_state, param=None):
        del param
        t, m, v = prev_state
        g = tf.reshape(inputs, [-1, 1])
        t_next = t + 1
        m_next = self._b1 * m + (1 - self._b1) * g
        v_next = self._b2 * v + (1 - self._b2) * tf.square(g)
        m_hat = m_next / (1 - tf.pow(tf.cast(self._b1, g.dtype), t_next))
        v_hat = v_next / (1 - tf.pow(tf.cast(self._b2, g.dtype), t_next))
        step = -self._lr * m_hat / (tf.sqrt(v_hat + self._eps_root) + self._eps)
        return Update(tf.reshape(step, inputs.shape), (t_next, m_next, v_next))


NETWORKS = {cls.__name__: cls for cls in (
    StandardDeepLSTM, CoordinateWiseDeepLSTM, KernelDeepLSTM, FixedLambdaDeepLSTM,
    LearnedLambdaDeepLSTM, Sgd, Adam)}
_NO_INITIALIZER = ("Sgd", "Adam")


# -- Saving and loading -------------------------------------------------------------------------

class WeightsFileError(ValueError):
    """A saved optimizer that cannot be read or does not fit the network asked for."""


class SavedNetwork(NamedTuple):
    net: str  # Class name.
    net_options: dict
    weights: dict  # {layer: {variable: np.ndarray}}
    metadata: dict = {}  # What the saver recorded beside the weights (e.g. its evaluation).


def _plain(value):
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _normalize_options(options):
    """Options as stored in JSON: tuples become lists, so that two configs compare equal."""
    return json.loads(json.dumps(_plain(options)))


def save(network, path, metadata=None):
    """Writes `network`'s class, options and weights to `path`, atomically (write, then rename).

    `metadata` (JSON-able) is stored beside them, e.g. the evaluation that made it the best.
    """
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "net": type(network).__name__,
              "net_options": _normalize_options(network.options),
              "metadata": _normalize_options(metadata or {}), "tensorflow": tf.__version__}
    arrays = {f"{layer}/{name}": value
              for layer, variables in network.get_weights().items()
              for name, value in variables.items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(_HEADER_KEY + ".json", json.dumps(header, indent=1, sort_keys=True))
        for key, value in arrays.items():
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, np.asarray(value),
                                      allow_pickle=False)
            archive.writestr(key + ".npy", array_bytes.getvalue())
    atomic_write(path, buffer.getvalue())


def atomic_write(path, data):
    """Writes bytes to `path` so that a reader sees the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # As open() would create it; mkstemp makes it private.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path):
    """Reads a saved network: this project's format, or a legacy TF1-era `.l2l` pickle.

    Raises:
      WeightsFileError: the file is missing, unreadable, or not an optimizer file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WeightsFileError(f"Cannot read optimizer file {path}: {e.strerror}.") from None
    if data[:4] == b"PK\x03\x04":
        return _load_own(path, data)
    if data[:1] == b"\x80":  # Pickle protocol 2+: the TF1-era format.
        import legacy  # pylint: disable=import-outside-toplevel
        return legacy.load(path, data)
    raise WeightsFileError(f"{path} is not an optimizer file (neither this project's format "
                           f"nor a legacy .l2l pickle).")


def _load_own(path, data):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            header = json.loads(archive.read(_HEADER_KEY + ".json"))
            weights = {}
            for info in archive.infolist():
                if info.filename == _HEADER_KEY + ".json":
                    continue
                if not info.filename.endswith(".npy") or info.filename.count("/") != 1:
                    raise ValueError(f"unexpected entry {info.filename!r}")
                layer, name = info.filename[:-len(".npy")].split("/")
                array = np.lib.format.read_array(io.BytesIO(archive.read(info)),
                                                 allow_pickle=False)
                weights.setdefault(layer, {})[name] = array
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
        raise WeightsFileError(f"{path} is a damaged optimizer file ({e}); "
                               f"re-save or re-train it.") from None
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise WeightsFileError(f"{path} has format {header.get('format')!r} version "
                               f"{header.get('version')!r}; this code reads {FORMAT_NAME!r} "
                               f"version {FORMAT_VERSION}.")
    if header.get("net") not in NETWORKS:
        raise WeightsFileError(f"{path} holds an unknown network {header.get('net')!r}.")
    return SavedNetwork(header["net"], dict(header["net_options"]), weights,
                        dict(header.get("metadata", {})))


def _check_fit(path, saved, net, net_options):
    if saved.net != net:
        raise WeightsFileError(f"{path} holds a {saved.net}, not a {net}.")
    requested = _normalize_options(dict(net_options))
    stored = _normalize_options(saved.net_options)
    clashes = {k: (requested[k], stored.get(k)) for k in requested if requested[k] != stored.get(k)}
    if clashes:
        detail = ", ".join(f"{k}={stored_v!r} in the file but {req!r} asked for"
                           for k, (req, stored_v) in sorted(clashes.items()))
        raise WeightsFileError(f"{path} does not fit the network: {detail}.")


def factory(net, net_options=(), net_path=None):
    """Builds a network by class name, with weights from `net_path` if given.

    With `net_path`, options missing from `net_options` come from the file, and options given in
    both must agree; the file's weights must match the network's shapes exactly.

    Raises:
      ValueError: unknown class name (the message lists the valid ones) or bad options.
      WeightsFileError: the file cannot be read or does not fit.
    """
    if net not in NETWORKS:
        raise ValueError(f"Unknown network {net!r}; expected one of {sorted(NETWORKS)}.")
    net_options = dict(net_options)
    if net_path is None:
        try:
            return NETWORKS[net](**net_options)
        except TypeError as e:  # An option the class does not take.
            raise ValueError(f"Bad options for {net}: {e}.") from None
    saved = load(net_path)
    _check_fit(net_path, saved, net, net_options)
    options = dict(saved.net_options, **net_options)
    if net in _NO_INITIALIZER:
        network = NETWORKS[net](**options)
    else:
        try:
            network = NETWORKS[net](initializer=saved.weights, **options)
        except ValueError as e:
            raise WeightsFileError(f"{net_path} does not fit the network: {e}") from None
    expected = {layer: set(vs) for layer, vs in network.weights().items()}
    found = {layer: set(vs) for layer, vs in saved.weights.items()}
    if expected != found:
        raise WeightsFileError(f"{net_path} holds weights {_describe(found)}; a {net} with these "
                               f"options has {_describe(expected)}.")
    return network


def _describe(layout):
    parts = [f"{layer}: {sorted(names)}" for layer, names in sorted(layout.items())]
    return "{" + ", ".join(parts) + "}"
