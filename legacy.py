"""Reads optimizer files written by the TF1 / Sonnet 1 learning-to-learn code (`.l2l` pickles).

Those files are `dill` pickles of `{module: {variable: float32 array}}` (the format is described in
`shared/legacy/README.md`). They are untrusted input, so they are never handed to `pickle` as they
are: a restricted unpickler resolves only the handful of globals such files use, to stand-ins
that check every argument, and nothing in the stream reaches numpy until its values are checked.
The arrays then tell the network's layout, and are the weights of the Sonnet 1 LSTM that
`networks` builds as they are. This module returns plain arrays and options;
`weights_file.load` is what reads any optimizer file, this format included.
"""

import io
import math
import pickle
import re

import numpy as np

import util

try:
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct  # numpy >= 2.
except ImportError:  # numpy 1.x, where `numpy.core` is not yet deprecated.
    from numpy.core.multiarray import _reconstruct as _numpy_reconstruct

# The module dill recorded for `_reconstruct`; the only module a legacy file may import.
_MULTIARRAY_MODULE = "numpy.core._multiarray_umath"
# What the number of input features of the first LSTM says about the original configuration
# (its `get_config`): 1 feature for the quadratic (no preprocessing), 2 for MNIST (LogAndSign).
_CONFIG_BY_FEATURES = {
    1: dict(preprocess_name="identity", preprocess_options={}, scale=1.0),
    2: dict(preprocess_name="LogAndSign", preprocess_options={"k": 5}, scale=0.01),
}


class LegacyFormatError(util.WeightsFileError):
    """A legacy `.l2l` file that is unsafe, damaged, or not a network this code can convert."""


class _Refused(Exception):
    """Raised inside the unpickler; `read_pickle` adds the file name."""


# -- Restricted unpickling ----------------------------------------------------------------------

def _show(value):
    """A short description of an untrusted value for an error message (never its full repr)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "a large int"  # Python refuses to print ints of over 4300 digits.
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (str, bytes)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, (_Token, _PendingArray, _PendingDtype)):
        return repr(value)
    return f"a {type(value).__name__}"


class _Token:
    """What the unpickler hands to the stream in place of a global.

    The stream can call it (REDUCE) only if it has a checked implementation, and cannot change it
    (BUILD, attributes), so that no file affects how the next one is read.
    """

    __slots__ = ("_name", "_call")

    def __init__(self, name, call=None):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_call", call)

    def __call__(self, *args, **kwargs):
        if self._call is None or kwargs:
            raise _Refused(f"refused call of {self._name}")
        return self._call(*args)

    def __setattr__(self, name, value):
        raise _Refused(f"refused setting {name!r} on {self._name}")

    def __setstate__(self, state):
        raise _Refused(f"refused BUILD on {self._name}")

    def __repr__(self):
        return self._name


class _PendingDtype:
    """Stands for `numpy.dtype('f4')` until its pickled state (the byte order) is checked."""

    __slots__ = ("byteorder",)

    def __init__(self):
        self.byteorder = None

    def __setstate__(self, state):
        # numpy's own dtype.__setstate__ would accept any flags, e.g. "holds Python objects" on a
        # float32 dtype; only the state a plain float32 dtype pickles to is let through.
        if (self.byteorder is not None or type(state) is not tuple or len(state) != 8
                or state[0] != 3 or state[1] not in ("<", ">", "=")
                or state[2:] != (None, None, None, -1, -1, 0)):
            raise _Refused(f"refused dtype state {_show(state)}; legacy files hold plain float32")
        self.byteorder = state[1]

    def __repr__(self):
        return "numpy.dtype('f4')"


class _PendingArray:
    """An empty array from `_reconstruct`; its pickled state is checked before numpy reads it."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None or type(state) is not tuple or len(state) != 5:
            raise _Refused(f"refused array state {_show(state)}")
        version, shape, dtype, fortran, data = state
        if (version != 1 or type(shape) is not tuple or len(shape) > 32
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _Refused(f"refused array state version {_show(version)} shape {_show(shape)}")
        if type(dtype) is not _PendingDtype or type(fortran) is not bool:
            raise _Refused(f"refused array state with dtype {_show(dtype)}, "
                           f"fortran order {_show(fortran)}")
        size = math.prod(shape) * 4
        if type(data) is not bytes:
            raise _Refused(f"refused array data {_show(data)}; legacy files store bytes")
        if len(data) != size:
            raise _Refused(f"an array of shape {shape} has {len(data)} bytes of data, not {size}")
        array = _numpy_reconstruct(np.ndarray, (0,), b"b")
        array.__setstate__((1, shape, np.dtype((dtype.byteorder or "=") + "f4"), fortran, data))
        # A copy: native byte order, writable, and not a view of the file's bytes.
        self.array = np.array(array, dtype=np.float32, order="C")

    def __repr__(self):
        return "an array without data" if self.array is None else f"an array {self.array.shape}"


def _load_type(name):
    if name != "dict":
        raise _Refused(f"refused dill._dill._load_type({_show(name)}); legacy files load only "
                       f"'dict'")
    return _DICT


def _import_module(name):
    if name != _MULTIARRAY_MODULE:
        raise _Refused(f"refused dill._dill._import_module({_show(name)}); legacy files import "
                       f"only {_MULTIARRAY_MODULE!r}")
    return _MULTIARRAY


def _get_attr(obj, name):
    if obj is not _MULTIARRAY or name != "_reconstruct":
        raise _Refused(f"refused dill._dill._get_attr({_show(obj)}, {_show(name)}); legacy files "
                       f"fetch only _reconstruct from {_MULTIARRAY_MODULE}")
    return _RECONSTRUCT


def _defaultdict(factory):
    if factory is not _DICT:
        raise _Refused(f"refused collections.defaultdict({_show(factory)}); legacy files use "
                       f"defaultdict(dict)")
    # A plain dict holds the same items and has no default factory that a lookup could call.
    return {}


def _reconstruct(subtype, shape, typecode):
    if not (subtype is _NDARRAY and type(shape) is tuple and shape == (0,)
            and type(typecode) is bytes and typecode == b"b"):
        raise _Refused(f"refused _reconstruct({_show(subtype)}, {_show(shape)}, "
                       f"{_show(typecode)}); legacy files use _reconstruct(numpy.ndarray, (0,), "
                       f"b'b')")
    return _PendingArray()


def _dtype(spec, align=False, copy=False):
    flags_ok = all(type(v) in (bool, int) and v in (0, 1) for v in (align, copy)) and not align
    if type(spec) is not str or spec != "f4" or not flags_ok:
        raise _Refused(f"refused numpy.dtype({_show(spec)}, {_show(align)}, {_show(copy)}); "
                       f"legacy files hold float32 ('f4') arrays only")
    return _PendingDtype()


_DICT = _Token("dict")
_MULTIARRAY = _Token(_MULTIARRAY_MODULE)
_NDARRAY = _Token("numpy.ndarray")  # Only an argument of `_reconstruct`; never called.
_RECONSTRUCT = _Token("numpy.core.multiarray._reconstruct", _reconstruct)
_GLOBALS = {
    ("collections", "defaultdict"): _Token("collections.defaultdict", _defaultdict),
    ("dill._dill", "_load_type"): _Token("dill._dill._load_type", _load_type),
    ("dill._dill", "_import_module"): _Token("dill._dill._import_module", _import_module),
    ("dill._dill", "_get_attr"): _Token("dill._dill._get_attr", _get_attr),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Token("numpy.dtype", _dtype),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of `_GLOBALS`, to checked stand-ins; imports nothing."""

    def find_class(self, module, name):
        # Also reached by INST and the EXT opcodes, so every global goes through here.
        if (module, name) not in _GLOBALS:
            raise _Refused(f"refused global {module}.{name}; legacy .l2l files use only "
                           f"{', '.join(sorted('.'.join(k) for k in _GLOBALS))}")
        return _GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise _Refused(f"refused persistent id {_show(pid)}")


def read_pickle(path, data=None):
    """Unpickles a legacy `.l2l` file without running any code it names.

    Args:
      path: the file's path, for messages (and to read it when `data` is None).
      data: the file's bytes.

    Returns:
      `{module: {variable: np.ndarray}}` as plain dicts of native-order float32 arrays.

    Raises:
      LegacyFormatError: the stream names anything but the globals legacy files use, calls them
        with other arguments, is damaged, has bytes after its end, or does not hold a dict of
        dicts of float32 arrays. Float64 arrays are refused, not cast: the TF1 code wrote float32.
    """
    if data is None:
        data = util.read_file(path, 64 * 2**20, what="legacy optimizer file",
                              error=LegacyFormatError)
    stream = io.BytesIO(data)
    try:
        obj = _RestrictedUnpickler(stream, fix_imports=False).load()
    except _Refused as e:
        raise LegacyFormatError(f"{path} is not a safe legacy .l2l file: {e}.") from None
    except Exception as e:  # pylint: disable=broad-except
        # Whatever a damaged stream makes pickle raise (EOFError, UnpicklingError, ValueError,
        # TypeError, MemoryError, ...): one line, never a traceback.
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise LegacyFormatError(f"{path} is a damaged or truncated legacy .l2l pickle ({detail})."
                                ) from None
    if stream.tell() != len(data):
        raise LegacyFormatError(f"{path} has {len(data) - stream.tell()} bytes after the end of "
                                f"its pickle; it is damaged or not a legacy .l2l file.")
    return _plain_arrays(path, obj)


def _plain_arrays(path, obj):
    """Checks the unpickled structure; returns it as plain dicts of arrays."""
    if type(obj) is not dict:
        raise LegacyFormatError(f"{path} holds {_show(obj)}, not the dict of modules of a legacy "
                                f".l2l file.")
    result = {}
    for module, variables in obj.items():
        if type(module) is not str:
            raise LegacyFormatError(f"{path} has a module named {_show(module)}; legacy files "
                                    f"name modules with strings.")
        if type(variables) is not dict:
            raise LegacyFormatError(f"{path}: module {module!r} holds {_show(variables)}, not a "
                                    f"dict of arrays.")
        result[module] = {}
        for name, value in variables.items():
            if type(name) is not str:
                raise LegacyFormatError(f"{path}: module {module!r} has a variable named "
                                        f"{_show(name)}; legacy files name variables with "
                                        f"strings.")
            if type(value) is not _PendingArray or value.array is None:
                raise LegacyFormatError(f"{path}: {module}/{name} is {_show(value)}, not a "
                                        f"float32 array.")
            result[module][name] = value.array
    return result


# -- Conversion ---------------------------------------------------------------------------------

def _check_variables(path, arrays, module, names):
    found = set(arrays[module])
    if found != set(names):
        raise LegacyFormatError(f"{path}: module {module!r} holds {sorted(found)}; a Sonnet 1 "
                                f"{'LSTM' if module != 'linear' else 'Linear'} of the original's "
                                f"networks holds {sorted(names)}.")


def _infer_layers(path, arrays):
    """`(hidden sizes, input features)` of the network the arrays belong to; checks all shapes."""
    num_layers = sum(1 for m in arrays if re.fullmatch(r"lstm_[1-9]\d*", m))
    expected = {f"lstm_{i}" for i in range(1, num_layers + 1)} | {"linear"}
    if set(arrays) != expected:
        raise LegacyFormatError(f"{path} holds modules {sorted(arrays)}; a legacy coordinatewise "
                                f"optimizer holds lstm_1, lstm_2, ... (numbered from 1) and "
                                f"linear.")
    layers, features, fan_in = [], None, None
    for i in range(1, num_layers + 1):
        module = f"lstm_{i}"
        _check_variables(path, arrays, module, ("w_gates", "b_gates"))
        w_gates, b_gates = arrays[module]["w_gates"], arrays[module]["b_gates"]
        if b_gates.ndim != 1 or not b_gates.shape[0] or b_gates.shape[0] % 4:
            raise LegacyFormatError(f"{path}: {module}/b_gates has shape {b_gates.shape}; "
                                    f"expected [4 * hidden].")
        hidden = b_gates.shape[0] // 4
        if w_gates.ndim != 2 or w_gates.shape[1] != 4 * hidden:
            raise LegacyFormatError(f"{path}: {module}/w_gates has shape {w_gates.shape}; "
                                    f"b_gates {b_gates.shape} needs [inputs + {hidden}, "
                                    f"{4 * hidden}].")
        if fan_in is None:  # The first layer's inputs are the preprocessed gradient.
            if w_gates.shape[0] <= hidden:
                raise LegacyFormatError(f"{path}: {module}/w_gates has shape {w_gates.shape}; "
                                        f"it needs [inputs + {hidden}, {4 * hidden}].")
            features = fan_in = w_gates.shape[0] - hidden
        if w_gates.shape[0] != fan_in + hidden:
            raise LegacyFormatError(f"{path}: {module}/w_gates has shape {w_gates.shape}; after "
                                    f"a layer of {fan_in} units it needs "
                                    f"{(fan_in + hidden, 4 * hidden)}.")
        layers.append(hidden)
        fan_in = hidden
    _check_variables(path, arrays, "linear", ("w", "b"))
    w, b = arrays["linear"]["w"], arrays["linear"]["b"]
    if w.ndim != 2 or w.shape[1] != 1 or b.shape != (1,):
        raise LegacyFormatError(f"{path}: linear has w {w.shape} and b {b.shape}; a "
                                f"coordinatewise optimizer needs w [inputs, 1] and b (1,).")
    if features is None:  # No LSTM: the linear layer sees the preprocessed gradient.
        features = fan_in = w.shape[0]
    if w.shape[0] != fan_in:
        raise LegacyFormatError(f"{path}: linear/w has shape {w.shape}; after a layer of "
                                f"{fan_in} units it needs {(fan_in, 1)}.")
    if features not in _CONFIG_BY_FEATURES:
        raise LegacyFormatError(f"{path}: the network takes {features} input features per "
                                f"coordinate; legacy optimizers take 1 (no preprocessing) or 2 "
                                f"(LogAndSign).")
    for module, variables in arrays.items():
        for name, value in variables.items():
            if not np.all(np.isfinite(value)):
                raise LegacyFormatError(f"{path}: {module}/{name} holds NaN or infinite values; "
                                        f"the optimizer is unusable.")
    return layers, features


def load(path, data=None, fixed_lambda=None):
    """Reads a legacy `.l2l` file as the network this project builds for it.

    The class is `FixedLambdaDeepLSTM` when `fixed_lambda` is given (legacy files record lambda
    only in their name, `<key>fixed<lambda>.l2l`, which `weights_file` reads) and
    `CoordinateWiseDeepLSTM` otherwise; layer sizes come from the arrays, and preprocessing and
    scale from the number of input features (see `_CONFIG_BY_FEATURES`).

    Args:
      path: the file's path, for messages (and to read it when `data` is None).
      data: the file's bytes.
      fixed_lambda: the lambda of a fixed-lambda optimizer, or None.

    Returns:
      `(net class name, net options, {layer: {variable: array}})` in the layout and with the
      options `networks` records.

    Raises:
      LegacyFormatError: see `read_pickle`; also a network this code cannot rebuild.
    """
    arrays = read_pickle(path, data)
    layers, features = _infer_layers(path, arrays)
    net_options = dict(layers=layers, **_CONFIG_BY_FEATURES[features])
    net_options["preprocess_options"] = dict(net_options["preprocess_options"])
    net = "CoordinateWiseDeepLSTM"
    if fixed_lambda is not None:
        net = "FixedLambdaDeepLSTM"
        net_options["fixed_lambda"] = float(fixed_lambda)
    # `networks` builds Sonnet 1's LSTM, so the arrays are the weights as they are.
    return net, net_options, {module: dict(variables) for module, variables in arrays.items()}
