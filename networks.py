"""Optimizer networks (Andrychowicz et al., 2016): Sonnet 2 modules over pure step functions.

Every network maps the gradient of a parameter and its previous state to the step added to that
parameter (`x_next = x + step`) and its next state. Its arithmetic is one pure function,

    net.step(weights, gradients, state, params) -> Update(step, next_state, lambda_)

of explicit tensors only: `weights` is a plain structure of tensors (`net.step_weights()` reads
the module's variables into it), `state` a tuple of tensors, and `step` reads nothing else; the
module's static options (layer sizes, preprocessing, scale) are fixed at construction. So the
same function serves a compiled unroll (weights read once per unroll), a Keras optimizer
(frozen weights), a vectorised meta-batch and a rematerialised backward pass (see Sonnet 2's
`_lstm_fn` beside `snt.LSTM`, and optax's `update`). `net.update(g, s, p)` is the same step with
the module's own variables.

The learned networks are deep LSTMs; `Sgd` and `Adam` are hand-designed baselines with the same
interface; the lambda networks add `lambda * x` to the LSTM's step
(`x_next = x + delta + lambda * x`). The LSTM is Sonnet 1's, as the original's: one weight matrix
`w_gates` over `[inputs, hidden]` and one bias `b_gates`, gates in the order (i, j, f, o), the
forget bias (1.0) added at run time, every weight drawn from a truncated normal of stddev
`1/sqrt(inputs + hidden)`.
"""

import math
from typing import Any, NamedTuple, Optional

import util
util.import_tensorflow()  # Before Sonnet imports TensorFlow, so that it starts quietly.

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import sonnet as snt  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import configs  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position

# Bounds on sizes a configuration or a file may ask for, checked before anything is built.
MAX_UNITS = 4096
MAX_KERNEL_ELEMENTS = 4096


class Update(NamedTuple):
    """What a network returns for one optimizee step."""
    step: tf.Tensor  # Added to the parameter.
    next_state: Any
    lambda_: Optional[tf.Tensor] = None  # The lambda used (lambda networks only), for logging.


class LSTMState(NamedTuple):
    """One LSTM layer's state: `[batch, units]` (rows) or `[units, coordinates]` (columns)."""
    hidden: tf.Tensor
    cell: tf.Tensor


# -- Gradient preprocessing ---------------------------------------------------------------------

def clamp(inputs, min_value=None, max_value=None):
    """`inputs` clipped to `[min_value, max_value]`; either bound may be None."""
    output = inputs
    if min_value is not None:
        output = tf.maximum(output, tf.cast(min_value, inputs.dtype))
    if max_value is not None:
        output = tf.minimum(output, tf.cast(max_value, inputs.dtype))
    return output


def log_and_sign(gradients, k):
    """The paper's preprocessing (appendix A): `[..., 1] -> [..., 2]`.

    `[max(log(|g| + eps) / k, -1), clip(g * exp(k), -1, 1)]`: a magnitude on a log scale and a
    sign that is linear for tiny gradients, so that the LSTM sees inputs of order one whatever
    the scale of the gradient.
    """
    eps = np.finfo(gradients.dtype.as_numpy_dtype).eps
    log = tf.math.log(tf.abs(gradients) + eps)
    clamped_log = clamp(log / k, min_value=-1.0)
    sign = clamp(gradients * np.exp(k), min_value=-1.0, max_value=1.0)
    return tf.concat([clamped_log, sign], axis=-1)


class Clamp(snt.Module):
    """`clamp` as a module (the original's preprocessing class)."""

    def __init__(self, min_value=None, max_value=None, name="clamp"):
        super().__init__(name=name)
        bounds = {k: None if v is None else _finite(k, v)
                  for k, v in (("min_value", min_value), ("max_value", max_value))}
        if None not in bounds.values() and not bounds["min_value"] <= bounds["max_value"]:
            raise util.OptionError(f"Clamp needs min_value <= max_value, got {bounds}.")
        self._min, self._max = bounds["min_value"], bounds["max_value"]

    def __call__(self, inputs):
        return clamp(inputs, self._min, self._max)


class LogAndSign(snt.Module):
    """`log_and_sign` as a module (the original's preprocessing class)."""

    def __init__(self, k, name="log_and_sign"):
        super().__init__(name=name)
        if not _is_number(k) or not k > 0 or not math.isfinite(k):
            raise util.OptionError(f"LogAndSign needs a finite k > 0, got {k!r}.")
        self._k = float(k)

    def __call__(self, gradients):
        return log_and_sign(gradients, self._k)


PREPROCESSORS = {"identity": (tf.identity, 1), "Clamp": (Clamp, 1), "LogAndSign": (LogAndSign, 2)}


def _make_preprocess(name, options):
    """Returns `(fn, features_per_input)` for a preprocessing name."""
    if not isinstance(name, str) or name not in PREPROCESSORS:
        raise util.OptionError(f"Unknown preprocess_name {name!r}; "
                               f"expected one of {sorted(PREPROCESSORS)}.")
    if options is not None and not isinstance(options, dict):
        raise util.OptionError(f"preprocess_options must be a dict, got {options!r}.")
    fn, features = PREPROCESSORS[name]
    if name == "identity":
        if options:
            raise util.OptionError(f"Preprocessing 'identity' takes no options, got {options}.")
        return fn, features
    try:
        return fn(**(options or {})), features
    except TypeError as e:
        raise util.OptionError(f"Bad preprocess_options for {name}: {e}.") from None


# -- Checking options ---------------------------------------------------------------------------

def _is_number(value):
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _finite(name, value):
    if not _is_number(value) or not math.isfinite(value):
        raise util.OptionError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _sizes(name, values, upper, allow_empty=True):
    if not isinstance(values, (list, tuple)) or (not values and not allow_empty):
        raise util.OptionError(f"{name} must be a list of integers, got {values!r}.")
    sizes = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if not (_is_number(value) and math.isfinite(value) and value == int(value)):
                raise util.OptionError(f"{name} must be whole numbers, got {list(values)!r}.")
        if not 1 <= value <= upper:
            raise util.OptionError(f"{name} must lie in [1, {upper}], got {list(values)!r}.")
        sizes.append(int(value))
    return tuple(sizes)


_FLOAT_DTYPES = (tf.float32, tf.float64)


def _float_dtype(dtype):
    """A network's dtype: a TensorFlow float dtype given in code, never a file's or a flag's.

    Files and `--net_options` cannot choose it: their networks step the problems' float32
    parameters, and a float64 step would fail only once running.
    """
    if not isinstance(dtype, tf.dtypes.DType) or dtype not in _FLOAT_DTYPES:
        raise util.OptionError(f"dtype {dtype!r} is not an option of optimizer files or "
                               f"--net_options (their networks run in float32); in code, pass "
                               f"tf.float32 or tf.float64.")
    return dtype


# -- Initializers -------------------------------------------------------------------------------

class _ArrayInitializer(snt.initializers.Initializer):
    """Values from an array, filled to shape as TF1's `tf.constant_initializer` did.

    An array of the variable's size is reshaped to it; a smaller one fills the variable in
    row-major order and repeats its last value; a larger one is an error.
    """

    def __init__(self, value, where):
        self._value, self._where = np.asarray(value), where
        if not np.issubdtype(self._value.dtype, np.number) or self._value.dtype == bool:
            raise util.OptionError(f"Initializer of {where} is an array of "
                                   f"{self._value.dtype}, not numbers.")

    def __call__(self, shape, dtype):
        size = math.prod(shape)
        flat = self._value.reshape(-1)
        if flat.size > size or flat.size == 0:
            raise util.OptionError(f"Weights {self._where} have shape "
                                   f"{tuple(self._value.shape)}; the network needs "
                                   f"{tuple(shape)}, and {flat.size} values cannot fill {size}.")
        if flat.size < size:
            flat = np.concatenate([flat, np.full(size - flat.size, flat[-1], flat.dtype)])
        return tf.constant(flat.reshape(shape), dtype=dtype)


class _CallableInitializer(snt.initializers.Initializer):
    """Any `(shape, dtype) -> values` callable: a TensorFlow, Keras or Sonnet initializer."""

    def __init__(self, fn, where):
        self._fn, self._where = fn, where

    def __call__(self, shape, dtype):
        try:
            values = self._fn(list(shape), dtype=dtype)
        except ValueError as e:  # E.g. "orthogonal" for a bias: TF1's error, with its variable.
            raise util.OptionError(f"The initializer of {self._where} cannot make shape "
                                   f"{tuple(shape)}: {str(e).splitlines()[0]}") from None
        return tf.cast(tf.convert_to_tensor(values), dtype)


# The original resolved an initializer name `n` as `tf.<n>_initializer(dtype=tf.float32)`: TF1's
# initializers with TF1's defaults (random_normal and truncated_normal N(0, 1), random_uniform
# [0, 1), constant 0). Keras has initializers of the same names with other defaults (a stddev of
# 0.05, a range of [-0.05, 0.05]), so a name means TF1's, as it did in the original, or nothing.
_NAMED_INITIALIZERS = {
    name: getattr(tf.compat.v1, f"{name}_initializer")
    for name in ("constant", "glorot_normal", "glorot_uniform", "ones", "orthogonal",
                 "random_normal", "random_uniform", "truncated_normal", "uniform_unit_scaling",
                 "variance_scaling", "zeros")}


def _convert_initializer(spec, where):
    """A Sonnet initializer from a TF1 initializer name, an array or any initializer callable."""
    if isinstance(spec, str):
        if spec not in _NAMED_INITIALIZERS:
            raise util.OptionError(f"Unknown initializer {spec!r} for {where}; a name is one of "
                                   f"TF1's tf.<name>_initializer, as in the original: "
                                   f"{', '.join(_NAMED_INITIALIZERS)} (or pass an initializer, "
                                   f"a callable, an array or a dict).")
        return _CallableInitializer(_NAMED_INITIALIZERS[spec](dtype=tf.float32), where)
    if isinstance(spec, snt.initializers.Initializer):
        return spec
    if isinstance(spec, (np.ndarray, list, tuple, float, int, np.number)):
        return _ArrayInitializer(spec, where)
    if callable(spec):
        return _CallableInitializer(spec, where)
    raise util.OptionError(f"Cannot use {type(spec).__name__} as the initializer of {where}.")


def _layer_initializers(initializer, layer, fields):
    """Initializers of one layer's variables, as the original `_get_layer_initializers`.

    `initializer` is None (defaults), one spec for every variable, a dict of layer name to specs,
    or a dict of variable name to spec shared by all layers that have such a variable (the LSTMs'
    `w_gates`, `b_gates`; the linear layers' `w`, `b`).
    """
    if initializer is None:
        return {}
    if isinstance(initializer, dict) and layer in initializer:
        initializer = initializer[layer]
    if isinstance(initializer, dict):
        return {f: _convert_initializer(initializer[f], f"{layer}/{f}")
                for f in fields if f in initializer}
    return {f: _convert_initializer(initializer, f"{layer}/{f}") for f in fields}


# -- Layers -------------------------------------------------------------------------------------

class LSTM(snt.Module):
    """Sonnet 1's LSTM core as variables: `w_gates` `[inputs + units, 4 units]`, `b_gates`.

    It only owns the variables; `lstm_rows` and `lstm_columns` compute with them.
    """

    def __init__(self, input_size, units, initializer=None, dtype=tf.float32, name="lstm"):
        super().__init__(name=name)
        init = _layer_initializers(initializer, name, ("w_gates", "b_gates"))
        # Sonnet 1's default for both: truncated normal, one stddev for input and hidden rows.
        default = snt.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size + units))
        with self.name_scope:
            self.w_gates = tf.Variable(
                init.get("w_gates", default)([input_size + units, 4 * units], dtype),
                name="w_gates")
            self.b_gates = tf.Variable(init.get("b_gates", default)([4 * units], dtype),
                                       name="b_gates")


class Linear(snt.Module):
    """A linear layer's variables `w` `[inputs, outputs]` and `b` `[outputs]`.

    The defaults are Sonnet's: truncated normal of stddev `1/sqrt(inputs)` for `w`, zeros for `b`.
    """

    def __init__(self, input_size, output_size, initializer=None, w_default=None, b_default=None,
                 dtype=tf.float32, name="linear"):
        super().__init__(name=name)
        init = _layer_initializers(initializer, name, ("w", "b"))
        w_default = w_default or snt.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(input_size))
        b_default = b_default or snt.initializers.Zeros()
        with self.name_scope:
            self.w = tf.Variable(init.get("w", w_default)([input_size, output_size], dtype),
                                 name="w")
            self.b = tf.Variable(init.get("b", b_default)([output_size], dtype), name="b")


def _gates(gates, prev_cell, axis):
    """The LSTM's cell update from pre-activations in Sonnet 1's order (i, j, f, o)."""
    i, j, f, o = tf.split(gates, 4, axis=axis)
    cell = tf.sigmoid(f) * prev_cell + tf.sigmoid(i) * tf.tanh(j)
    return tf.sigmoid(o) * tf.tanh(cell), cell


def lstm_rows(w, b, inputs, state):
    """One LSTM step with a batch row per example: `inputs [batch, in]`, state `[batch, units]`.

    `b` holds the forget bias (see `lstm_weights`).
    """
    gates = tf.matmul(tf.concat([inputs, state.hidden], axis=1), w) + b
    hidden, cell = _gates(gates, state.cell, axis=1)
    return hidden, LSTMState(hidden, cell)


def lstm_columns(w, b, inputs, state):
    """One LSTM step with a column per coordinate: `inputs [in, n]`, state `[units, n]`.

    The same numbers as `lstm_rows` on the transposes; one matrix product `w^T [x; h]` and gates
    over contiguous rows, which is faster on a CPU for the many coordinates of an optimizee.
    """
    gates = tf.matmul(w, tf.concat([inputs, state.hidden], axis=0), transpose_a=True)
    hidden, cell = _gates(gates + b[:, tf.newaxis], state.cell, axis=0)
    return hidden, LSTMState(hidden, cell)


def lstm_weights(w_gates, b_gates, forget_bias=weights_file.FORGET_BIAS):
    """The pure step's weights of one LSTM layer: `b` with the forget bias added once."""
    units = b_gates.shape[0] // 4
    shift = np.zeros(4 * units, b_gates.dtype.as_numpy_dtype)
    shift[2 * units:3 * units] = forget_bias
    return {"w": w_gates, "b": b_gates + shift}


# -- Networks -----------------------------------------------------------------------------------

class Network(snt.Module):
    """Base of all optimizer networks: a recurrent core that outputs steps.

    Subclasses implement `step` (pure), `step_weights`, `initial_state_for_inputs` and
    `weight_shapes`, and record their constructor options in `self.options` (JSON-able; saved
    with the weights).
    """

    # True when the network treats every coordinate alike with shared weights, so that a caller
    # may feed all coordinates of all its parameters through one call.
    coordinatewise = False
    # True when `step` reports the lambda it used (the lambda networks).
    has_lambda = False

    def __init__(self, options, name):
        super().__init__(name=name)
        self._options = options

    @property
    def options(self):
        """Constructor options (JSON-able), saved with the weights."""
        # tf.Module wraps dict attributes for checkpoint tracking; hand out a plain copy.
        return weights_file.normalize(self._options)

    @classmethod
    def weight_shapes(cls, options):
        """`{layer: {variable: shape}}` of a network built with `options`, without building it.

        Raises:
          ValueError: the options are invalid.
        """
        del options
        return {}

    def initial_state_for_inputs(self, inputs):
        """The zero state for optimizing a parameter shaped like `inputs`."""
        raise NotImplementedError

    def weights(self):
        """The trainable weights as `{layer: {variable: tf.Variable}}` (the saved layout)."""
        return {}

    def step_weights(self, weights=None):
        """The pure step's weights from `weights` (the saved layout; default: the variables).

        Read the variables through this once per unroll, or pass frozen arrays of a file.
        """
        del weights
        return {}

    def step(self, weights, inputs, prev_state, param=None):
        """One optimizee step, pure: reads only its arguments and the static options.

        Args:
          weights: from `step_weights`.
          inputs: the gradient of the parameter.
          prev_state: the state from `initial_state_for_inputs` or the previous step.
          param: the parameter (the lambda networks need it).

        Returns:
          `Update(step, next_state, lambda_)`; `step` has the shape of `inputs`.
        """
        raise NotImplementedError

    def update(self, inputs, prev_state, param=None):
        """`step` with this module's variables."""
        return self.step(self.step_weights(), inputs, prev_state, param)

    def __call__(self, inputs, prev_state, param=None):
        """RNN-core form of `update`: returns `(step, next_state)`; add `step` to the parameter."""
        result = self.update(inputs, prev_state, param)
        return result.step, result.next_state

    def get_weights(self):
        """The weights as numpy arrays, in the layout `initializer` accepts."""
        return {layer: {name: v.numpy() for name, v in variables.items()}
                for layer, variables in self.weights().items()}


def _lstm_options(layers, preprocess_name, preprocess_options, scale):
    layers = _sizes("layers", layers, MAX_UNITS)
    _, features = _make_preprocess(preprocess_name, preprocess_options)
    return layers, features, _finite("scale", scale)


def _lstm_shapes(input_features, layers, outputs):
    shapes, fan_in = {}, input_features
    for i, units in enumerate(layers, start=1):
        shapes[f"lstm_{i}"] = {"w_gates": (fan_in + units, 4 * units), "b_gates": (4 * units,)}
        fan_in = units
    shapes["linear"] = {"w": (fan_in, outputs), "b": (outputs,)}
    return shapes


class StandardDeepLSTM(Network):
    """LSTM layers then a linear layer; output times `scale`.

    Each batch row (`[batch, d]` inputs) is preprocessed (every input feature separately) and fed
    to the LSTMs.
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
          initializer: None, one spec for every variable (a name such as "zeros", a TensorFlow,
            Keras or Sonnet initializer, an array), a dict per variable (`w_gates`, `b_gates`;
            `w`, `b`), or a dict per layer (`lstm_1`, ..., `linear`) of those, e.g. loaded
            weights. Arrays are filled to shape as TF1's `tf.constant_initializer` did.
          input_size: inputs per row before preprocessing; None creates the variables at the
            first call (or `initial_state_for_inputs`) and then records it in `options`.
          dtype: dtype of the variables and states.
          name: module name.
        """
        layers, features, scale = _lstm_options(layers, preprocess_name, preprocess_options,
                                                scale)
        output_size = _sizes("output_size", [output_size], MAX_KERNEL_ELEMENTS)[0]
        options = dict(output_size=output_size, layers=list(layers),
                       preprocess_name=preprocess_name,
                       preprocess_options=dict(preprocess_options or {}), scale=scale)
        super().__init__(options, name=name)
        self.layers = layers
        self._output_size = output_size
        self._scale = scale
        self._dtype = _float_dtype(dtype)
        self._preprocess, self._features = _make_preprocess(preprocess_name, preprocess_options)
        self._initializer = initializer
        self._lstms, self._linear = None, None  # Built once the input size is known.
        if input_size is not None:
            self._build(_sizes("input_size", [input_size], MAX_KERNEL_ELEMENTS)[0])

    @classmethod
    def weight_shapes(cls, options):
        options = dict(options)
        input_size = options.pop("input_size", None)
        layers, features, _ = _lstm_options(options.get("layers", ()),
                                            options.get("preprocess_name", "identity"),
                                            options.get("preprocess_options"),
                                            options.get("scale", 1.0))
        outputs = options.get("output_size", 1)
        # An unknown input size leaves the first layer's input rows open (None).
        fan_in = None if input_size is None else input_size * features
        shapes = _lstm_shapes(fan_in or 0, layers, outputs)
        if fan_in is None and layers:
            shapes["lstm_1"]["w_gates"] = (None, 4 * layers[0])
        elif fan_in is None:
            shapes["linear"]["w"] = (None, outputs)
        return shapes

    def _build(self, input_size):
        """Creates the variables for rows of `input_size` inputs."""
        self._options["input_size"] = int(input_size)
        fan_in, lstms = input_size * self._features, []
        with self.name_scope:
            for i, units in enumerate(self.layers, start=1):
                lstms.append(LSTM(fan_in, units, self._initializer, self._dtype, f"lstm_{i}"))
                fan_in = units
            self._linear = Linear(fan_in, self._output_size, self._initializer,
                                  dtype=self._dtype, name="linear")
        self._lstms = lstms

    @property
    def built(self):
        return self._linear is not None

    def _zero_state(self, batch_size, transpose=False):
        return tuple(LSTMState(*[tf.zeros([units, batch_size] if transpose else
                                          [batch_size, units], self._dtype)] * 2)
                     for units in self.layers)

    def _rows(self, inputs):
        """The batch rows the LSTM sees: `[batch, inputs per row]`."""
        if inputs.shape.rank != 2:
            raise ValueError(f"StandardDeepLSTM takes [batch, inputs] gradients, got shape "
                             f"{inputs.shape.as_list()}.")
        return inputs

    def initial_state_for_inputs(self, inputs):
        rows = self._rows(tf.convert_to_tensor(inputs))
        if not self.built:
            self._build(rows.shape[1])
        return self._zero_state(rows.shape[0])

    def weights(self):
        if not self.built:
            return {}
        result = {f"lstm_{i}": {"w_gates": lstm.w_gates, "b_gates": lstm.b_gates}
                  for i, lstm in enumerate(self._lstms, start=1)}
        result["linear"] = {"w": self._linear.w, "b": self._linear.b}
        return result

    def step_weights(self, weights=None):
        weights = self.weights() if weights is None else weights
        result = {layer: lstm_weights(values["w_gates"], values["b_gates"])
                  for layer, values in weights.items() if layer.startswith("lstm_")}
        result["linear"] = dict(weights["linear"])
        return result

    def _features_of_rows(self, rows):
        """Preprocessed rows, the features of one row side by side (as the original's reshape)."""
        features = self._preprocess(tf.expand_dims(tf.cast(rows, self._dtype), -1))
        return tf.reshape(features, [-1, rows.shape[1] * self._features])

    def _hidden_rows(self, weights, rows, prev_state):
        output, next_state = self._features_of_rows(rows), []
        for i, state in enumerate(prev_state, start=1):
            layer = weights[f"lstm_{i}"]
            output, state = lstm_rows(layer["w"], layer["b"], output, state)
            next_state.append(state)
        return output, tuple(next_state)

    def _delta_rows(self, weights, hidden):
        linear = weights["linear"]
        return (tf.matmul(hidden, linear["w"]) + linear["b"]) * self._scale

    def step(self, weights, inputs, prev_state, param=None):
        del param  # The plain LSTM does not look at the parameter.
        rows = self._rows(inputs)
        hidden, next_state = self._hidden_rows(weights, rows, prev_state)
        return Update(self._delta_rows(weights, hidden), next_state)

    def update(self, inputs, prev_state, param=None):
        if not self.built:
            self._build(self._rows(tf.convert_to_tensor(inputs)).shape[1])
        return super().update(inputs, prev_state, param)


class CoordinateWiseDeepLSTM(StandardDeepLSTM):
    """The L2L optimizer: one small LSTM shared by every coordinate of a tensor of any shape.

    Computed with coordinates as columns (`lstm_columns`): states are `[units, coordinates]`.
    """

    coordinatewise = True

    def __init__(self, layers=(20, 20), preprocess_name="identity", preprocess_options=None,
                 scale=1.0, initializer=None, dtype=tf.float32, name="cw_deep_lstm"):
        super().__init__(1, layers, preprocess_name, preprocess_options, scale, initializer,
                         input_size=1, dtype=dtype, name=name)
        del self._options["output_size"], self._options["input_size"]

    @classmethod
    def weight_shapes(cls, options):
        options = {k: v for k, v in options.items() if k in (
            "layers", "preprocess_name", "preprocess_options", "scale")}
        return StandardDeepLSTM.weight_shapes(dict(options, output_size=1, input_size=1))

    def initial_state_for_inputs(self, inputs):
        return self._zero_state(tf.convert_to_tensor(inputs).shape.num_elements(),
                                transpose=True)

    def _hidden_columns(self, weights, inputs, prev_state):
        """The LSTMs over coordinates as columns: `inputs` of any shape -> `[last, n]`."""
        coordinates = inputs.shape.num_elements()
        rows = tf.reshape(tf.cast(inputs, self._dtype), [coordinates, 1, 1])
        output = tf.transpose(tf.reshape(self._preprocess(rows), [coordinates, self._features]))
        next_state = []
        for i, state in enumerate(prev_state, start=1):
            layer = weights[f"lstm_{i}"]
            output, state = lstm_columns(layer["w"], layer["b"], output, state)
            next_state.append(state)
        return output, tuple(next_state)

    @staticmethod
    def _column_head(linear, hidden):
        """A linear layer of one output applied to every column of `hidden`: `[f, n] -> [n]`."""
        return tf.reshape(tf.matmul(linear["w"], hidden, transpose_a=True) + linear["b"], [-1])

    def _column_delta(self, weights, inputs, prev_state):
        """`(delta, hidden, next_state)`: the scaled step in `inputs`' shape, and what made it."""
        hidden, next_state = self._hidden_columns(weights, inputs, prev_state)
        delta = self._column_head(weights["linear"], hidden) * self._scale
        return tf.reshape(delta, inputs.shape), hidden, next_state

    def step(self, weights, inputs, prev_state, param=None):
        del param
        delta, _, next_state = self._column_delta(weights, inputs, prev_state)
        return Update(delta, next_state)

    def update(self, inputs, prev_state, param=None):
        return Network.update(self, inputs, prev_state, param)


class KernelDeepLSTM(StandardDeepLSTM):
    """An LSTM over convolution filters: one batch row per `kernel_shape` filter of a kernel.

    The parameter is a conv kernel `[k_h, k_w, in, out]`; each of its `in * out` filters is one row
    of `k_h * k_w` gradients, and the output is a step for the whole filter.
    """

    def __init__(self, kernel_shape, layers=(20, 20), preprocess_name="identity",
                 preprocess_options=None, scale=1.0, initializer=None, dtype=tf.float32,
                 name="kernel_deep_lstm"):
        self._kernel_shape = list(_kernel_shape(kernel_shape))
        size = math.prod(self._kernel_shape)
        super().__init__(size, layers, preprocess_name, preprocess_options, scale, initializer,
                         input_size=size, dtype=dtype, name=name)
        del self._options["output_size"], self._options["input_size"]
        self._options["kernel_shape"] = self._kernel_shape

    @classmethod
    def weight_shapes(cls, options):
        size = math.prod(_kernel_shape(options.get("kernel_shape")))
        options = {k: v for k, v in options.items() if k in (
            "layers", "preprocess_name", "preprocess_options", "scale")}
        return StandardDeepLSTM.weight_shapes(dict(options, output_size=size, input_size=size))

    def _rows(self, inputs):
        if inputs.shape.rank != 4 or list(inputs.shape[:2]) != list(self._kernel_shape):
            raise ValueError(f"KernelDeepLSTM with kernel_shape {list(self._kernel_shape)} cannot "
                             f"optimize a variable of shape {inputs.shape.as_list()}.")
        filters = tf.transpose(inputs, [2, 3, 0, 1])  # [in, out, k_h, k_w]
        return tf.reshape(filters, [-1, math.prod(self._kernel_shape)])

    def step(self, weights, inputs, prev_state, param=None):
        del param
        hidden, next_state = self._hidden_rows(weights, self._rows(inputs), prev_state)
        k_h, k_w, n_in, n_out = inputs.shape
        step = tf.reshape(self._delta_rows(weights, hidden), [n_in, n_out, k_h, k_w])
        return Update(tf.transpose(step, [2, 3, 0, 1]), next_state)


def _kernel_shape(kernel_shape):
    shape = _sizes("kernel_shape", kernel_shape, MAX_KERNEL_ELEMENTS, allow_empty=False)
    if len(shape) != 2 or math.prod(shape) > MAX_KERNEL_ELEMENTS:
        raise util.OptionError(f"kernel_shape must be two sizes [height, width] of at most "
                         f"{MAX_KERNEL_ELEMENTS} elements, got {list(kernel_shape)!r}.")
    return shape


class _LambdaDeepLSTM(CoordinateWiseDeepLSTM):
    """`x_next = x + delta + lambda * x`: the LSTM's step plus a lambda term.

    `delta` is the LSTM's step and `x` the parameter before the step, coordinate by coordinate.
    Subclasses differ only in where lambda comes from (`_lambda`).
    """

    has_lambda = True

    def _lambda(self, weights, hidden, param):
        """Lambda for this step: a scalar or one value per coordinate, `[coordinates]`.

        `hidden` is the last LSTM layer's output, `[units, coordinates]`.
        """
        raise NotImplementedError

    def step(self, weights, inputs, prev_state, param=None):
        if param is None:
            raise ValueError(f"{type(self).__name__} needs the parameter as well as the gradient.")
        delta, hidden, next_state = self._column_delta(weights, inputs, prev_state)
        lam = self._lambda(weights, hidden, param)
        per_coordinate = lam if lam.shape.rank == 0 else tf.reshape(lam, param.shape)
        return Update(delta + per_coordinate * param, next_state, lam)


class FixedLambdaDeepLSTM(_LambdaDeepLSTM):
    """The fork's fixed-lambda optimizer: `x_next = x + delta + fixed_lambda * x`."""

    def __init__(self, fixed_lambda=0.01, name="cw_fixed_lambda", **kwargs):
        fixed_lambda = _finite("fixed_lambda", fixed_lambda)
        super().__init__(name=name, **kwargs)
        self._options["fixed_lambda"] = fixed_lambda
        self._fixed_lambda = fixed_lambda

    @classmethod
    def weight_shapes(cls, options):
        _finite("fixed_lambda", options.get("fixed_lambda", 0.01))
        return super().weight_shapes(options)

    def _lambda(self, weights, hidden, param):
        return tf.constant(self._fixed_lambda, param.dtype)


LAMBDA_MODES = configs.LAMBDA_MODES


def _lambda_options(lambda_mode, init_lambda, lambda_max):
    if not isinstance(lambda_mode, str) or lambda_mode not in LAMBDA_MODES:
        raise util.OptionError(f"Unknown lambda_mode {lambda_mode!r}; expected one of "
                               f"{LAMBDA_MODES}.")
    init_lambda = _finite("init_lambda", init_lambda)
    lambda_max = _finite("lambda_max", lambda_max)
    if not lambda_max > 0 or not abs(init_lambda) < lambda_max:
        raise util.OptionError(f"init_lambda must lie strictly inside (-lambda_max, lambda_max); "
                         f"got init_lambda={init_lambda}, lambda_max={lambda_max}.")
    return init_lambda, lambda_max


class LearnedLambdaDeepLSTM(_LambdaDeepLSTM):
    """`x_next = x + delta + lambda * x` with lambda meta-learned, bounded by `lambda_max`.

    `lambda = lambda_max * tanh(a)` with `a` unconstrained: in mode "per_coordinate" a second
    linear head on the last LSTM layer gives each coordinate its own `a` at each step; in mode
    "scalar" `a` is one trainable variable. Either starts with lambda equal to `init_lambda`
    everywhere (head weights zero), so the learned optimizer starts exactly as the fixed one.
    """

    def __init__(self, lambda_mode="per_coordinate", init_lambda=0.01, lambda_max=0.1,
                 initializer=None, dtype=tf.float32, name="cw_learned_lambda", **kwargs):
        init_lambda, lambda_max = _lambda_options(lambda_mode, init_lambda, lambda_max)
        super().__init__(initializer=initializer, dtype=dtype, name=name, **kwargs)
        self._options.update(lambda_mode=lambda_mode, init_lambda=init_lambda,
                             lambda_max=lambda_max)
        self._mode, self._lambda_max = lambda_mode, lambda_max
        raw = float(np.arctanh(init_lambda / lambda_max))
        with self.name_scope:
            if lambda_mode == "per_coordinate":
                self._head = Linear(self._last_width(), 1, initializer,
                                    w_default=snt.initializers.Zeros(),
                                    b_default=snt.initializers.Constant(raw), dtype=dtype,
                                    name="lambda_head")
            else:
                init = _layer_initializers(initializer, "lambda", ("raw",))
                self._raw = tf.Variable(init.get("raw", snt.initializers.Constant(raw))([], dtype),
                                        name="raw")

    def _last_width(self):
        return self.layers[-1] if self.layers else self._features

    @classmethod
    def weight_shapes(cls, options):
        mode = options.get("lambda_mode", "per_coordinate")
        _lambda_options(mode, options.get("init_lambda", 0.01), options.get("lambda_max", 0.1))
        shapes = super().weight_shapes(options)
        if mode == "scalar":
            shapes["lambda"] = {"raw": ()}
        else:
            width = shapes["linear"]["w"][0]
            shapes["lambda_head"] = {"w": (width, 1), "b": (1,)}
        return shapes

    def weights(self):
        result = super().weights()
        if self._mode == "scalar":
            result["lambda"] = {"raw": self._raw}
        else:
            result["lambda_head"] = {"w": self._head.w, "b": self._head.b}
        return result

    def step_weights(self, weights=None):
        weights = self.weights() if weights is None else weights
        result = super().step_weights(weights)
        result["lambda"] = dict(weights["lambda" if self._mode == "scalar" else "lambda_head"])
        return result

    def _lambda(self, weights, hidden, param):
        raw = (weights["lambda"]["raw"] if self._mode == "scalar"
               else self._column_head(weights["lambda"], hidden))
        return self._lambda_max * tf.tanh(raw)


class MomentsState(NamedTuple):
    """`NormalizedMLP`'s state: optimizee steps taken, momenta and the second moment."""
    t: tf.Tensor  # [] float: steps taken (the same for every coordinate of one call).
    momenta: tf.Tensor  # [decays, n]: exponential moving averages of the gradient.
    second_moment: tf.Tensor  # [n]: of the squared gradient (decay `second_moment_decay`).


def _positive_fraction(name, value):
    value = _finite(name, value)
    if not 0 < value < 1:
        raise util.OptionError(f"{name} must lie strictly between 0 and 1, got {value!r}.")
    return value


def _fractions(name, values):
    if not isinstance(values, (list, tuple)) or not values or len(values) > 8:
        raise util.OptionError(f"{name} must be a list of 1 to 8 numbers, got {values!r}.")
    return tuple(_positive_fraction(name, v) for v in values)


def _time_scales(values):
    if not isinstance(values, (list, tuple)) or len(values) > 8:
        raise util.OptionError(f"time_scales must be a list of at most 8 numbers, got "
                               f"{values!r}.")
    scales = tuple(_finite("time_scales", v) for v in values)
    if any(not s > 0 for s in scales):
        raise util.OptionError(f"time_scales must be positive, got {list(values)!r}.")
    return scales


class NormalizedMLP(Network):
    """A per-coordinate MLP whose inputs do not depend on the gradient's scale and whose step
    cannot blow up; Adam (Kingma & Ba, 2015) at `initial_learning_rate` before training.

    Inputs of each coordinate (every one unchanged when the gradient is multiplied by a
    constant): the gradient and its momenta at `decays` (bias-corrected), each divided by the
    root of the bias-corrected second moment and clipped to `[-feature_clip, feature_clip]`;
    `tanh(t / s)` for each of `time_scales` (t: steps taken). Two outputs per coordinate, a
    direction `d` and a log step size `s`; the step is

        -exp(clip(log_lr + max_log_scale * tanh(s))) * (adam + max_direction * tanh(d))

    where `adam` is Adam's direction `m_hat / (sqrt(v_hat) + epsilon)` (momentum decay 0.9,
    clipped like the features) and `log_lr` one learned scalar. The output layer starts at
    zero, so that the untrained network is Adam with `initial_learning_rate` exactly; every
    step is bounded by `exp(max_log_lr) * (feature_clip + max_direction)`. Inputs and outputs in
    the spirit of google/learned_optimization's per-parameter MLP optimizers and RNNprop. State
    (4 floats per coordinate with the default 3 decays): momenta and second moment; returns the
    step to add.
    """

    coordinatewise = True

    def __init__(self, hidden=(32,), decays=(0.5, 0.9, 0.99), second_moment_decay=0.999,
                 time_scales=(10, 100), initial_learning_rate=1e-3, max_log_scale=3.0,
                 max_direction=1.0, feature_clip=5.0, epsilon=1e-8, max_log_lr=0.0,
                 initializer=None, dtype=tf.float32, name="normalized_mlp"):
        """Builds the network.

        Args:
          hidden: sizes of the hidden layers (ReLU); `()` leaves only the output layer. One
            layer of 32 costs about 300 multiply-adds per coordinate and step (the paper's
            2x20 LSTM about 5,000): on a CPU the optimizer must not cost more than the model.
          decays: the momenta's decays; 0.9 must be one of them (Adam's direction).
          second_moment_decay: of the second moment that normalises every gradient feature.
          time_scales: `tanh(t / s)` inputs; `()` for none.
          initial_learning_rate: the untrained network's Adam learning rate.
          max_log_scale: the per-coordinate step size lies within `exp(+-max_log_scale)` of
            `exp(log_lr)`.
          max_direction: bound of the learned change of direction.
          feature_clip: bound of every normalised feature.
          epsilon: Adam's, in the direction; also (squared) inside the features' square root.
          max_log_lr: bound of the log step size, so the step is bounded whatever the weights.
          initializer: as `StandardDeepLSTM`'s (layers `mlp_1`, ..., `output`, `step_size`).
          dtype: of the variables and state.
          name: module name.
        """
        options = dict(
            hidden=list(_sizes("hidden", hidden, MAX_UNITS)),
            decays=list(_fractions("decays", decays)),
            second_moment_decay=_positive_fraction("second_moment_decay", second_moment_decay),
            time_scales=list(_time_scales(time_scales)),
            initial_learning_rate=_finite("initial_learning_rate", initial_learning_rate),
            max_log_scale=_finite("max_log_scale", max_log_scale),
            max_direction=_finite("max_direction", max_direction),
            feature_clip=_finite("feature_clip", feature_clip),
            epsilon=_finite("epsilon", epsilon), max_log_lr=_finite("max_log_lr", max_log_lr))
        if 0.9 not in options["decays"]:
            raise util.OptionError(f"decays must include 0.9 (Adam's momentum), got "
                                   f"{options['decays']}.")
        for key in ("initial_learning_rate", "max_log_scale", "feature_clip", "epsilon"):
            if not options[key] > 0:
                raise util.OptionError(f"{key} must be positive, got {options[key]!r}.")
        if options["max_direction"] < 0:
            raise util.OptionError(f"max_direction must be >= 0, got {options['max_direction']}.")
        if not math.log(options["initial_learning_rate"]) <= options["max_log_lr"]:
            raise util.OptionError(f"initial_learning_rate must be at most exp(max_log_lr), got "
                                   f"{options['initial_learning_rate']} and "
                                   f"{options['max_log_lr']}.")
        super().__init__(options, name=name)
        self._dtype = _float_dtype(dtype)
        self._adam_index = options["decays"].index(0.9)
        shapes = self.weight_shapes(options)
        init = {}
        with self.name_scope:
            self._layers = []
            for layer, variables in shapes.items():
                if layer == "step_size":
                    default = snt.initializers.Constant(math.log(options["initial_learning_rate"]))
                    spec = _layer_initializers(initializer, layer, ("log_lr",))
                    init[layer] = {"log_lr": tf.Variable(
                        spec.get("log_lr", default)([], dtype), name="log_lr")}
                    continue
                fan_in, fan_out = variables["w"]
                # Zero output layer: the untrained network is exactly Adam.
                zero = snt.initializers.Zeros() if layer == "output" else None
                linear = Linear(fan_in, fan_out, initializer, w_default=zero, dtype=dtype,
                                name=layer)
                self._layers.append(linear)
                init[layer] = {"w": linear.w, "b": linear.b}
        self._variables_by_layer = init

    @classmethod
    def _feature_count(cls, options):
        return len(options.get("decays", (0.5, 0.9, 0.99))) + 1 + len(
            options.get("time_scales", (10, 100)))

    @classmethod
    def weight_shapes(cls, options):
        hidden = _sizes("hidden", options.get("hidden", (32,)), MAX_UNITS)
        _fractions("decays", options.get("decays", (0.5, 0.9, 0.99)))
        _time_scales(options.get("time_scales", (10, 100)))
        shapes, fan_in = {}, cls._feature_count(options)
        for i, units in enumerate(hidden, start=1):
            shapes[f"mlp_{i}"] = {"w": (fan_in, units), "b": (units,)}
            fan_in = units
        shapes["output"] = {"w": (fan_in, 2), "b": (2,)}
        shapes["step_size"] = {"log_lr": ()}
        return shapes

    def initial_state_for_inputs(self, inputs):
        n = tf.convert_to_tensor(inputs).shape.num_elements()
        decays = len(self._options["decays"])
        return MomentsState(tf.zeros([], self._dtype), tf.zeros([decays, n], self._dtype),
                            tf.zeros([n], self._dtype))

    def weights(self):
        return {layer: dict(variables) for layer, variables in self._variables_by_layer.items()}

    def step_weights(self, weights=None):
        weights = self.weights() if weights is None else weights
        return {layer: dict(variables) for layer, variables in weights.items()}

    def step(self, weights, inputs, prev_state, param=None):
        del param  # Scale-free inputs only: the parameter's value is not one.
        o = self._options
        dtype = self._dtype
        g = tf.reshape(tf.cast(inputs, dtype), [-1])
        t = prev_state.t + 1
        decays = tf.constant(o["decays"], dtype)[:, tf.newaxis]
        beta2 = tf.constant(o["second_moment_decay"], dtype)
        momenta = decays * prev_state.momenta + (1 - decays) * g
        second_moment = beta2 * prev_state.second_moment + (1 - beta2) * tf.square(g)
        m_hat = momenta / (1 - tf.pow(decays, t))
        v_hat = second_moment / (1 - tf.pow(beta2, t))
        clip = o["feature_clip"]
        eps = o["epsilon"]
        # The features' root has epsilon inside, so that its gradient (second derivatives)
        # stays finite where v is zero; Adam's direction keeps Adam's own epsilon outside.
        scale = tf.math.rsqrt(v_hat + eps**2)
        features = [tf.clip_by_value(g * scale, -clip, clip)[tf.newaxis],
                    tf.clip_by_value(m_hat * scale, -clip, clip)]
        n = tf.shape(g)[0]
        for s in o["time_scales"]:
            features.append(tf.fill([1, n], tf.tanh(t / s)))
        hidden = tf.concat(features, axis=0)  # [features, n]: coordinates as columns.
        for i in range(1, len(o["hidden"]) + 1):
            layer = weights[f"mlp_{i}"]
            hidden = tf.nn.relu(tf.matmul(layer["w"], hidden, transpose_a=True)
                                + layer["b"][:, tf.newaxis])
        output = weights["output"]
        direction, log_scale = tf.unstack(
            tf.matmul(output["w"], hidden, transpose_a=True) + output["b"][:, tf.newaxis])
        adam = tf.clip_by_value(m_hat[self._adam_index] / (tf.sqrt(v_hat) + eps), -clip, clip)
        log_lr = tf.minimum(weights["step_size"]["log_lr"] + o["max_log_scale"]
                            * tf.tanh(log_scale), o["max_log_lr"])
        step = -tf.exp(log_lr) * (adam + o["max_direction"] * tf.tanh(direction))
        return Update(tf.reshape(step, inputs.shape),
                      MomentsState(t, momenta, second_moment))


@snt.allow_empty_variables
class Sgd(Network):
    """Gradient descent as a network: step `-learning_rate * g`, no state, no weights."""

    coordinatewise = True

    def __init__(self, learning_rate=0.001, name="sgd"):
        learning_rate = _finite("learning_rate", learning_rate)
        super().__init__(dict(learning_rate=learning_rate), name=name)
        self._learning_rate = learning_rate

    def initial_state_for_inputs(self, inputs):
        return ()

    def step(self, weights, inputs, prev_state, param=None):
        del weights, prev_state, param
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
        options = {k: _finite(k, v) for k, v in dict(
            learning_rate=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon,
            eps_root=eps_root).items()}
        super().__init__(options, name=name)
        self._lr, self._b1, self._b2 = options["learning_rate"], options["beta1"], options["beta2"]
        self._eps, self._eps_root = options["epsilon"], options["eps_root"]

    def initial_state_for_inputs(self, inputs):
        inputs = tf.convert_to_tensor(inputs)
        zeros = tf.zeros([inputs.shape.num_elements(), 1], inputs.dtype)
        return tf.zeros([], inputs.dtype), zeros, zeros

    def step(self, weights, inputs, prev_state, param=None):
        del weights, param
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
    LearnedLambdaDeepLSTM, NormalizedMLP, Sgd, Adam)}
_NO_INITIALIZER = ("Sgd", "Adam")


# -- Saving and loading -------------------------------------------------------------------------

def save(network, path, metadata=None):
    """Writes `network`'s class, options and weights to `path` (see `weights_file.save`)."""
    weights_file.save(path, type(network).__name__, network.options, network.get_weights(),
                      metadata, tf.__version__)


def _build(net, options):
    try:
        return NETWORKS[net](**options)
    except TypeError as e:  # An option the class does not take.
        raise util.OptionError(f"Bad options for {net}: {e}.") from None


def factory(net, net_options=(), net_path=None):
    """Builds a network by class name, with weights from `net_path` if given.

    As the original, the file's weights replace any `initializer`. Options the file records and
    `net_options` does not give come from the file; options given that the file records must
    agree with it. The file is checked by `check_saved` before anything is built.

    Raises:
      ValueError: unknown class name (the message lists the valid ones) or bad options.
      util.WeightsFileError: the file cannot be read, does not fit, or records bad options.
    """
    if net not in NETWORKS:
        raise ValueError(f"Unknown network {net!r}; expected one of {sorted(NETWORKS)}.")
    net_options = dict(net_options)
    if net_path is None:
        return _build(net, net_options)
    saved = weights_file.load(net_path)
    if saved.net != net:
        raise util.WeightsFileError(f"{net_path} holds a {saved.net}, not a {net}.")
    net_options.pop("initializer", None)
    # How to run the network, not what it is: not recorded in files, not compared with them.
    dtype = net_options.pop("dtype", None)
    requested = weights_file.normalize(net_options)
    stored = weights_file.normalize(saved.net_options)
    clashes = {k: (requested[k], stored[k]) for k in requested
               if k in stored and requested[k] != stored[k]}
    if clashes:
        detail = ", ".join(f"{k}={stored_v!r} in the file but {req!r} asked for"
                           for k, (req, stored_v) in sorted(clashes.items()))
        raise util.WeightsFileError(f"{net_path} does not fit the network: {detail}.")
    options = check_saved(net, dict(saved.net_options, **net_options), saved.weights, net_path,
                          dtype or tf.float32)
    if dtype is not None:
        options["dtype"] = dtype
    return build_checked(net, options, saved.weights, net_path)


def build_checked(net, options, weights, where):
    """Builds a network `check_saved` passed, with `weights` (None: its initializers)."""
    try:
        if net in _NO_INITIALIZER or weights is None:
            return _build(net, options)
        return _build(net, dict(options, initializer=weights))
    except ValueError as e:
        raise util.WeightsFileError(f"{where} records bad options for a {net}: {e}") from None


def check_saved(net, net_options, weights, where, dtype=tf.float32):
    """The one check of a saved network's class, options and weights, before anything is built.

    `factory` runs it on `.l2l` files and `LearnedOptimizer` on the network a Keras config (a
    `.keras` file) names, so both refuse the same things with the same words. In this order, so
    that nothing is allocated for a network that cannot be: the class name; the options (each
    class's `weight_shapes` checks them without building); the sizes they make, within what an
    optimizer file can hold (`weights_file.check_storable`); then, if `weights` is given
    (`{layer: {variable: np.ndarray}}`), its layout, each array's shape and float dtype, and its
    values: finite, and within the range of `dtype`, in which the network computes (a float64
    1e300 would be infinite in a float32 step).

    Args:
      net, net_options: the class name and its options, as a file or config records them.
      weights: the arrays, or None to check the class and options only.
      where: what holds them, for messages (a file path, "LearnedOptimizer's network").
      dtype: the dtype the network will compute in.

    Returns:
      The options to build with (a StandardDeepLSTM file of before its input size was recorded
      gets it from its first layer).

    Raises:
      util.WeightsFileError: anything that does not make a working network; one line naming
        `where`.
    """
    if not isinstance(net, str) or net not in NETWORKS:
        raise util.WeightsFileError(f"{where} names network {str(net)[:40]!r}, which is none "
                                    f"of {sorted(NETWORKS)}.")
    if not isinstance(net_options, dict) or not all(isinstance(k, str) for k in net_options):
        raise util.WeightsFileError(f"{where} has network options {str(net_options)[:80]}, not a "
                                    f"JSON object of option names.")
    options = dict(net_options)
    # Chosen in code, never by a file or a config: the dtype (their networks step float32
    # parameters; another would fail only once running) and the initializer (the weights are
    # theirs).
    if "dtype" in options:
        raise util.WeightsFileError(f"{where} records bad options for a {net}: dtype "
                                    f"{str(options['dtype'])[:40]!r} is not an option of "
                                    f"optimizer files or --net_options (their networks run in "
                                    f"float32).")
    if "initializer" in options:
        raise util.WeightsFileError(f"{where} records option 'initializer', which a saved "
                                    f"network cannot have: its weights are its own.")
    try:
        expected = NETWORKS[net].weight_shapes(options)
        weights_file.check_storable(expected, "these options")
    except (ValueError, TypeError) as e:
        raise util.WeightsFileError(f"{where} records bad options for a {net}: {e}") from None
    if weights is None:
        return options
    _check_weights(where, net, weights, expected, dtype)
    if net == "StandardDeepLSTM" and options.get("input_size") is None and "lstm_1" in expected:
        # Files written before the input size was recorded: it follows from the first layer.
        rows = weights["lstm_1"]["w_gates"].shape[0] - options["layers"][0]
        features = _make_preprocess(options.get("preprocess_name", "identity"),
                                    options.get("preprocess_options"))[1]
        options["input_size"] = rows // features
    return options


def _check_weights(where, net, weights, expected, dtype):
    if not isinstance(weights, dict) or not all(isinstance(v, dict) for v in weights.values()):
        raise util.WeightsFileError(f"{where} holds weights that are not {{layer: {{variable: "
                                    f"array}}}}.")
    layout = {layer: set(vs) for layer, vs in weights.items()}
    wanted = {layer: set(vs) for layer, vs in expected.items()}
    if layout != wanted:
        raise util.WeightsFileError(f"{where} holds weights {_describe(layout)}; a {net} with "
                                    f"these options has {_describe(wanted)}.")
    limit = np.finfo(dtype.as_numpy_dtype).max
    for layer, variables in expected.items():
        for name, shape in variables.items():
            value = weights[layer][name]
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                raise util.WeightsFileError(f"{where}: {layer}/{name} holds {kind} values; "
                                            f"optimizer weights are float arrays.")
            found = tuple(value.shape)
            if len(found) != len(shape) or any(e is not None and e != f
                                               for e, f in zip(shape, found)):
                raise util.WeightsFileError(
                    f"{where} does not fit the network: {layer}/{name} has shape {found}, a {net} "
                    f"with these options needs {tuple(shape)}.")
            if not np.all(np.isfinite(value)):
                raise util.WeightsFileError(f"{where}: {layer}/{name} holds NaN or infinite "
                                            f"values; the optimizer is unusable (re-train it).")
            if value.size and np.max(np.abs(value)) > limit:
                raise util.WeightsFileError(
                    f"{where}: {layer}/{name} holds {np.max(np.abs(value)):.3g}, beyond "
                    f"{dtype.name}'s range, in which the network computes; re-train it.")


def _describe(layout):
    parts = [f"{layer}: {sorted(names)}" for layer, names in sorted(layout.items())]
    return "{" + ", ".join(parts) + "}"
