"""Tests for legacy.py and convert.py: safe unpickling, inference, and Sonnet 1's numbers.

Legacy pickles are written here in the layout of the TF1 code's `dill` files (without dill), so
the tests run without the shared fixtures; with them, the real files are checked as well.
"""

import collections
import contextlib
import io
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import types

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from conftest import REPO_ROOT, shared_path
import convert
import legacy
import networks
import util
import weights_file

_FOLDERS = {"quadratic": dict(preprocess_name="identity", preprocess_options={}, scale=1.0),
            "mnist": dict(preprocess_name="LogAndSign", preprocess_options={"k": 5}, scale=0.01)}
_LAMBDAS = {"cwfixed1e-05.l2l": 1e-05, "cwfixed0.0001.l2l": 0.0001, "cwfixed0.001.l2l": 0.001,
            "cwfixed0.01.l2l": 0.01, "cwfixed0.1.l2l": 0.1}


# -- Writing legacy pickles without dill --------------------------------------------------------

class _Ref:
    """Stands for an object that dill pickles as a call of one of its helpers."""

    def __call__(self, *args):  # Pickle wants the function of a reduce tuple to be callable.
        raise AssertionError("only pickled, never called")


_MODULE_REF, _RECONSTRUCT_REF = _Ref(), _Ref()


def _dill_helper(name):
    def helper(*args):
        raise AssertionError(f"only pickled, never called: {name}{args}")
    helper.__module__, helper.__name__, helper.__qualname__ = "dill._dill", name, name
    return helper


_LOAD_TYPE, _IMPORT_MODULE, _GET_ATTR = (
    _dill_helper(n) for n in ("_load_type", "_import_module", "_get_attr"))


class _DillLikePickler(pickle.Pickler):
    """Writes the globals and calls dill wrote for `defaultdict(dict)` of numpy arrays."""

    def reducer_override(self, obj):
        if obj is dict:
            return _LOAD_TYPE, ("dict",)
        if obj is _MODULE_REF:
            return _IMPORT_MODULE, ("numpy.core._multiarray_umath",)
        if obj is _RECONSTRUCT_REF:
            return _GET_ATTR, (_MODULE_REF, "_reconstruct")
        if type(obj) is np.ndarray:
            fortran = not obj.flags.c_contiguous
            data = obj.tobytes(order="F" if fortran else "C")
            # A new `(0,)` for each array, as numpy made (the real files do not share it).
            return _RECONSTRUCT_REF, (np.ndarray, tuple([0]), b"b"), (1, obj.shape, obj.dtype,
                                                                      fortran, data)
        return NotImplemented


@contextlib.contextmanager
def _fake_dill():
    """Puts a `dill._dill` module holding the helpers in `sys.modules`, for pickle's lookups."""
    dill, dill_dill = types.ModuleType("dill"), types.ModuleType("dill._dill")
    for helper in (_LOAD_TYPE, _IMPORT_MODULE, _GET_ATTR):
        setattr(dill_dill, helper.__name__, helper)
    dill._dill = dill_dill
    saved = {name: sys.modules.get(name) for name in ("dill", "dill._dill")}
    sys.modules.update({"dill": dill, "dill._dill": dill_dill})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


def legacy_bytes(modules, protocol=3):
    """`{module: {variable: value}}` pickled as the TF1 code's dill did (protocol 3)."""
    content = collections.defaultdict(dict)
    for module, variables in modules.items():
        content[module] = dict(variables) if isinstance(variables, dict) else variables
    stream = io.BytesIO()
    with _fake_dill():
        _DillLikePickler(stream, protocol=protocol).dump(content)
    return stream.getvalue()


def random_arrays(seed, features, layers):
    """Sonnet 1 weights of the README's shapes, random; `layers` hidden sizes."""
    rng = np.random.default_rng(seed)
    arrays, fan_in = {}, features
    for i, hidden in enumerate(layers, start=1):
        w = rng.normal(0.0, 1.0 / np.sqrt(fan_in + hidden), (fan_in + hidden, 4 * hidden))
        b = rng.normal(0.0, 0.5, 4 * hidden)
        arrays[f"lstm_{i}"] = {"w_gates": w.astype(np.float32), "b_gates": b.astype(np.float32)}
        fan_in = hidden
    arrays["linear"] = {"w": rng.normal(0.0, 0.5, (fan_in, 1)).astype(np.float32),
                        "b": rng.normal(0.0, 0.1, 1).astype(np.float32)}
    return arrays


def write(directory, name, content):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else legacy_bytes(content))
    return path


# -- Hand-written pickle streams ----------------------------------------------------------------

def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _call(function, *args):
    return function + b"(" + b"".join(args) + b"tR"


def _stream(body):
    return b"\x80\x03" + body + b"."


_DILL_MODULE = _call(_global("dill._dill", "_import_module"), _str("numpy.core._multiarray_umath"))
_DTYPE = _call(_global("numpy", "dtype"), _str("f4"), b"\x89\x88")  # dtype('f4', False, True)


# -- The Sonnet 1 network in numpy (README formulas) --------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sonnet1_step(arrays, grads, state, scale, k=5.0):
    """One step of the original coordinatewise network, in float64: `(step, next_state)`.

    `state` is `[(h, c)]` per LSTM layer; the gradient's features are 1 (raw) or 2 (LogAndSign)
    as the first layer's weights say.
    """
    x = grads.reshape(-1, 1).astype(np.float64)
    features = (arrays["lstm_1"]["w_gates"].shape[0] - arrays["lstm_1"]["b_gates"].shape[0] // 4
                if "lstm_1" in arrays else arrays["linear"]["w"].shape[0])
    if features == 2:
        eps = np.finfo(np.float32).eps
        x = np.concatenate([np.maximum(np.log(np.abs(x) + eps) / k, -1.0),
                            np.clip(x * np.exp(k), -1.0, 1.0)], axis=1)
    next_state = []
    for layer, (h, c) in enumerate(state, start=1):
        w, b = arrays[f"lstm_{layer}"]["w_gates"], arrays[f"lstm_{layer}"]["b_gates"]
        gates = np.concatenate([x, h], axis=1) @ w.astype(np.float64) + b
        i, j, f, o = np.split(gates, 4, axis=1)
        c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
        h = np.tanh(c) * _sigmoid(o)
        next_state.append((h, c))
        x = h
    step = (x @ arrays["linear"]["w"].astype(np.float64) + arrays["linear"]["b"]) * scale
    return step.reshape(grads.shape), next_state


def _outline(data):
    """The globals, strings and calls of a pickle stream, in order."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(data)
            if op.name in ("GLOBAL", "STACK_GLOBAL", "BINUNICODE", "REDUCE", "BUILD", "SETITEMS")]


def _gradients(rng, n):
    """Gradients over many magnitudes (both LogAndSign clamps act), with a zero."""
    g = np.sign(rng.normal(size=n)) * 10.0 ** rng.uniform(-9.0, 1.0, n)
    g[0] = 0.0
    return g.astype(np.float32)


class UnpicklingTest(tf.test.TestCase, parameterized.TestCase):

    def test_reads_a_generated_file(self):
        arrays = random_arrays(0, 2, (6, 5))
        read = legacy.read_pickle("gen.l2l", legacy_bytes(arrays))
        self.assertEqual(list(read), ["lstm_1", "lstm_2", "linear"])
        for module, variables in arrays.items():
            self.assertEqual(type(read[module]), dict)
            for name, value in variables.items():
                self.assertEqual(read[module][name].dtype, np.float32)
                self.assertAllEqual(read[module][name], value)

    def test_reads_protocol_4(self):
        # README: "protocol 4 or lower"; protocol 4 frames the stream and uses STACK_GLOBAL.
        arrays = random_arrays(0, 1, (3,))
        data = legacy_bytes(arrays, protocol=4)
        self.assertIn("STACK_GLOBAL", {op.name for op, _, _ in pickletools.genops(data)})
        tf.nest.map_structure(self.assertAllEqual, legacy.read_pickle("x", data), arrays)

    def test_reads_big_endian_and_fortran_arrays(self):
        w = np.arange(12, dtype=">f4").reshape(3, 4)
        read = legacy.read_pickle("x", legacy_bytes({"m": {"w": np.asfortranarray(w)}}))
        self.assertEqual(read["m"]["w"].dtype, np.dtype("=f4"))
        self.assertAllEqual(read["m"]["w"], w)

    def test_generated_pickles_match_the_real_files(self):
        # The real files hold `dtype('f4', False, True)` except mnist/cw.l2l, pickled by an older
        # numpy as `dtype('f4', 0, 1)`; the others are reproduced byte for byte.
        for folder in _FOLDERS:
            for name in ["cw.l2l", *_LAMBDAS]:
                path = shared_path("legacy", "saved_optimizers", folder, name)
                data = path.read_bytes()
                regenerated = legacy_bytes(legacy.read_pickle(str(path), data))
                self.assertEqual(_outline(data), _outline(regenerated), f"{folder}/{name}")
                if (folder, name) != ("mnist", "cw.l2l"):
                    self.assertEqual(data, regenerated, f"{folder}/{name}")

    def test_refuses_code_execution_and_creates_no_marker(self):
        marker = os.path.join(self.get_temp_dir(), "marker")
        code = f"open({marker!r}, 'w').close()"
        attack = _stream(_call(_global("builtins", "exec"), _str(code)))
        pickle.loads(attack)  # Loaded naively, the stream runs its code...
        self.assertTrue(os.path.exists(marker))
        os.remove(marker)
        with self.assertRaisesRegex(legacy.LegacyFormatError,
                                    r"^evil.l2l is not a safe legacy .l2l file: refused global "
                                    r"builtins.exec;"):
            legacy.read_pickle("evil.l2l", attack)  # ... but not here.
        self.assertFalse(os.path.exists(marker))
        with self.assertRaisesRegex(legacy.LegacyFormatError, "refused global os.system"):
            legacy.read_pickle("evil.l2l", _stream(_call(_global("os", "system"),
                                                         _str(f"touch {marker}"))))
        self.assertFalse(os.path.exists(marker))

    @parameterized.named_parameters(
        ("load_type_list", _call(_global("dill._dill", "_load_type"), _str("list")),
         r"refused dill._dill._load_type\('list'\)"),
        ("import_os", _call(_global("dill._dill", "_import_module"), _str("os")),
         r"refused dill._dill._import_module\('os'\)"),
        ("load_type_huge_int", _call(_global("dill._dill", "_load_type"),
                                     b"\x8b" + struct.pack("<i", 3000) + b"\x01" * 3000),
         r"refused dill._dill._load_type\(a large int\)"),
        ("get_attr_system", _call(_global("dill._dill", "_get_attr"), _DILL_MODULE,
                                  _str("system")),
         r"refused dill._dill._get_attr\(numpy.core._multiarray_umath, 'system'\)"),
        ("get_attr_of_dict", _call(_global("dill._dill", "_get_attr"),
                                   _call(_global("dill._dill", "_load_type"), _str("dict")),
                                   _str("__subclasses__")),
         r"refused dill._dill._get_attr\(dict, '__subclasses__'\)"),
        ("inst_opcode", b"(" + _str("echo") + b"ios\nsystem\n", "refused global os.system"),
        ("persistent_id", _str("anything") + b"Q", "refused persistent id 'anything'"),
        ("defaultdict_of_other", _call(_global("collections", "defaultdict"),
                                       _global("numpy", "dtype")),
         r"refused collections.defaultdict\(numpy.dtype\)"),
        ("ndarray_called", _call(_global("numpy", "ndarray"), b"K\x02\x85"),
         "refused call of numpy.ndarray"),
        ("object_dtype", _call(_global("numpy", "dtype"), _str("O"), b"\x89\x88"),
         r"refused numpy.dtype\('O'"),
        ("float64_dtype", _call(_global("numpy", "dtype"), _str("f8"), b"\x89\x88"),
         r"refused numpy.dtype\('f8'.*float32"),
        # BUILD the state numpy's dtype.__setstate__ would take: float32 flagged as holding objects.
        ("dtype_with_object_flags",
         _DTYPE + b"(K\x03" + _str("<") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + b"K\x3ftb",
         "refused dtype state"),
        ("build_on_a_global", _global("numpy", "dtype") + b"}b", "refused BUILD on numpy.dtype"),
        ("reconstruct_other_shape", _call(_call(_global("dill._dill", "_get_attr"), _DILL_MODULE,
                                                _str("_reconstruct")),
                                          _global("numpy", "ndarray"), b"K\x09\x85C\x01b"),
         r"refused _reconstruct\(numpy.ndarray, a tuple"),
    )
    def test_refuses(self, body, message):
        with self.assertRaisesRegex(legacy.LegacyFormatError, "^x.l2l is not a safe legacy "
                                    ".l2l file: " + message):
            legacy.read_pickle("x.l2l", _stream(body))

    def test_refuses_an_array_whose_data_does_not_fit_its_shape(self):
        good = legacy_bytes({"linear": {"b": np.zeros(1, np.float32)}})
        bad = good.replace(b"C\x04\x00\x00\x00\x00", b"C\x03\x00\x00\x00")
        self.assertNotEqual(good, bad)
        with self.assertRaisesRegex(legacy.LegacyFormatError,
                                    r"an array of shape \(1,\) has 3 bytes of data, not 4"):
            legacy.read_pickle("x.l2l", bad)

    def test_damaged_streams_are_one_line_errors(self):
        data = legacy_bytes(random_arrays(1, 1, (4,)))
        rng = np.random.default_rng(0)
        garbage = b"\x80" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        for bad in (data[:len(data) // 2], data[:-1], b"\x80", b"\x80\x03\xff\xfe", garbage,
                    b"\x80\x03\x82\x01."):  # The last one: an unregistered extension code.
            with self.assertRaisesRegex(legacy.LegacyFormatError,
                                        r"^x.l2l is a damaged or truncated legacy .l2l pickle "
                                        r"\(\w+: [^\n]*\)\.$"):
                legacy.read_pickle("x.l2l", bad)

    def test_refuses_bytes_after_the_end(self):
        with self.assertRaisesRegex(legacy.LegacyFormatError, "x.l2l has 4 bytes after the end"):
            legacy.read_pickle("x.l2l", legacy_bytes({"linear": {}}) + b"junk")

    @parameterized.named_parameters(
        ("list", pickle.dumps([1, 2], protocol=3), "x.l2l holds a list, not the dict of modules"),
        ("module_not_dict", legacy_bytes({"linear": [1.0]}),
         "x.l2l: module 'linear' holds a list, not a dict of arrays"),
        ("number", legacy_bytes({"linear": {"w": 3.0}}), "x.l2l: linear/w is 3.0, not a float32"),
        ("string", legacy_bytes({"linear": {"w": "abc"}}), "linear/w is 'abc', not a float32"),
        ("int_key", pickle.dumps({1: {}}, protocol=3), "x.l2l has a module named 1"),
        ("unbuilt_array", _stream(b"}" + _str("m") + b"}" + _str("w") + _call(
            _call(_global("dill._dill", "_get_attr"), _DILL_MODULE, _str("_reconstruct")),
            _global("numpy", "ndarray"), b"K\x00\x85C\x01b") + b"ss"),
         "x.l2l: m/w is an array without data"),
    )
    def test_refuses_other_structures(self, data, message):
        with self.assertRaisesRegex(legacy.LegacyFormatError, message):
            legacy.read_pickle("x.l2l", data)


class NumericalTest(tf.test.TestCase, parameterized.TestCase):
    """The converted network computes what the Sonnet 1 network computed, step after step."""

    def assert_matches_sonnet1(self, path, arrays, scale, steps=5, n=40, seed=0):
        net = networks.factory("CoordinateWiseDeepLSTM", net_path=path)
        rng = np.random.default_rng(seed)
        grads = _gradients(rng, n)
        state = net.initial_state_for_inputs(tf.constant(grads))
        ref_state = [(np.zeros((n, s)), np.zeros((n, s))) for s in net.layers]
        for t in range(steps):
            grads = _gradients(rng, n)
            step, state = net(tf.constant(grads), state)
            ref_step, ref_state = sonnet1_step(arrays, grads, ref_state, scale)
            self.assertAllClose(step, ref_step, rtol=1e-5, atol=1e-6 * scale, msg=f"step {t}")
            # The coordinatewise network keeps its states as [hidden, coordinates].
            for layer, (lstm_state, (h, c)) in enumerate(zip(state, ref_state), start=1):
                self.assertAllClose(tf.transpose(lstm_state.hidden), h, rtol=1e-5, atol=1e-6,
                                    msg=f"h of layer {layer} at step {t}")
                self.assertAllClose(tf.transpose(lstm_state.cell), c, rtol=1e-5, atol=1e-6,
                                    msg=f"c of layer {layer} at step {t}")

    @parameterized.parameters((1, (6, 5)), (2, (6, 5)), (2, (3,)), (1, ()))
    def test_random_weights(self, features, layers):
        arrays = random_arrays(features * 10 + len(layers), features, layers)
        path = write(self.get_temp_dir(), f"cw{features}{len(layers)}.l2l", arrays)
        scale = {1: 1.0, 2: 0.01}[features]
        self.assertEqual(weights_file.load(path).net_options["layers"], list(layers))
        self.assert_matches_sonnet1(path, arrays, scale)

    @parameterized.parameters("quadratic", "mnist")
    def test_real_files(self, folder):
        path = str(shared_path("legacy", "saved_optimizers", folder, "cw.l2l"))
        self.assert_matches_sonnet1(path, legacy.read_pickle(path), _FOLDERS[folder]["scale"])

    def test_fixed_lambda_adds_lambda_times_the_parameter(self):
        arrays = random_arrays(3, 2, (4, 3))
        path = write(self.get_temp_dir(), "cwfixed0.01.l2l", arrays)
        net = networks.factory("FixedLambdaDeepLSTM", net_path=path)
        grads, param = _gradients(np.random.default_rng(1), 6), np.linspace(-1, 1, 6)
        state = net.initial_state_for_inputs(tf.constant(grads))
        step, _ = net(tf.constant(grads), state, tf.constant(param, tf.float32))
        ref_state = [(np.zeros((6, s)), np.zeros((6, s))) for s in (4, 3)]
        delta, _ = sonnet1_step(arrays, grads, ref_state, 0.01)
        self.assertAllClose(step, delta + 0.01 * param, rtol=1e-5, atol=1e-8)


class InferenceTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(*[(folder, name) for folder in _FOLDERS
                                for name in ["cw.l2l", *_LAMBDAS]])
    def test_real_files(self, folder, name):
        path = str(shared_path("legacy", "saved_optimizers", folder, name))
        saved = weights_file.load(path)
        expected = dict(layers=[20, 20], **_FOLDERS[folder])
        if name in _LAMBDAS:
            expected["fixed_lambda"] = _LAMBDAS[name]
        self.assertEqual(saved.net, "FixedLambdaDeepLSTM" if name in _LAMBDAS
                         else "CoordinateWiseDeepLSTM")
        self.assertEqual(saved.net_options, expected)
        self.assertEqual({k: sorted(v) for k, v in saved.weights.items()},
                         {"lstm_1": ["b_gates", "w_gates"], "lstm_2": ["b_gates", "w_gates"],
                          "linear": ["b", "w"]})

    @parameterized.parameters(("cw.l2l", None), ("fc.l2l", None), ("cwfixed0.01.l2l", 0.01),
                              ("cwfixed1e-05.l2l", 1e-05), ("convfixed0.1.l2l", 0.1),
                              ("prefixedfixed2.l2l", 2.0), ("anything", None))
    def test_class_and_lambda_from_the_name(self, name, fixed_lambda):
        path = write(self.get_temp_dir(), name, random_arrays(0, 2, (3,)))
        saved = weights_file.load(path)
        self.assertEqual(saved.net, "FixedLambdaDeepLSTM" if fixed_lambda else
                         "CoordinateWiseDeepLSTM")
        self.assertEqual(saved.net_options.get("fixed_lambda"), fixed_lambda)
        # The options are exactly those the network records.
        network = networks.factory(saved.net, net_path=path)
        self.assertEqual(network.options, saved.net_options)

    @parameterized.parameters("cwfixedabc.l2l", "cwfixed.l2l", "cwfixednan.l2l", "cwfixed1e999.l2l",
                              "cwfixed0.01x.l2l")
    def test_bad_lambda_in_the_name(self, name):
        path = write(self.get_temp_dir(), name, random_arrays(0, 2, (3,)))
        with self.assertRaisesRegex(legacy.LegacyFormatError, f"{name}: cannot read lambda .* from "
                                    r"the file name; name fixed-lambda files"):
            weights_file.load(path)

    def test_bad_networks(self):
        def variant(change):
            arrays = random_arrays(0, 2, (6, 5))
            change(arrays)
            return arrays

        cases = [
            (variant(lambda a: a["lstm_1"].update(w_gates=np.zeros((3 + 6, 24), np.float32))),
             "the network takes 3 input features per coordinate; legacy optimizers take 1 .* or 2"),
            (variant(lambda a: a["lstm_2"].update(w_gates=np.zeros((7 + 5, 20), np.float32))),
             r"lstm_2/w_gates has shape \(12, 20\); after a layer of 6 units it needs \(11, 20\)"),
            (variant(lambda a: a["lstm_1"].update(w_gates=np.zeros((6, 24), np.float32))),
             r"lstm_1/w_gates has shape \(6, 24\); it needs \[inputs \+ 6, 24\]"),
            (variant(lambda a: a["lstm_1"].update(b_gates=np.zeros(25, np.float32))),
             r"lstm_1/b_gates has shape \(25,\); expected \[4 \* hidden\]"),
            (variant(lambda a: a["lstm_1"].update(w_gates=np.zeros((8, 20), np.float32))),
             r"lstm_1/w_gates has shape \(8, 20\); b_gates \(24,\) needs \[inputs \+ 6, 24\]"),
            (variant(lambda a: a["linear"].update(w=np.zeros((5, 2), np.float32))),
             r"linear has w \(5, 2\) and b \(1,\); .* needs w \[inputs, 1\] and b \(1,\)"),
            (variant(lambda a: a["linear"].update(w=np.zeros((6, 1), np.float32))),
             r"linear/w has shape \(6, 1\); after a layer of 5 units it needs \(5, 1\)"),
            (variant(lambda a: a.pop("linear")), r"holds modules \['lstm_1', 'lstm_2'\]; .* "
                                                 r"holds lstm_1, lstm_2, ... \(numbered from 1\)"),
            (variant(lambda a: a.update(lstm_3=a.pop("lstm_2"))), r"holds modules \['linear', "
                                                                  r"'lstm_1', 'lstm_3'\]"),
            (variant(lambda a: a["lstm_1"].update(w_f_diag=np.zeros(6, np.float32))),
             r"module 'lstm_1' holds \['b_gates', 'w_f_diag', 'w_gates'\]; a Sonnet 1 LSTM"),
            (variant(lambda a: a["linear"].update(b=np.array([np.nan], np.float32))),
             "linear/b holds NaN or infinite values"),
            (variant(lambda a: a["linear"].update(b=np.zeros(1))), r"refused numpy.dtype\('f8'"),
            (variant(lambda a: a["linear"].update(b=1.0)), "linear/b is 1.0, not a float32 array"),
        ]
        for arrays, message in cases:
            path = write(self.get_temp_dir(), "cw.l2l", arrays)
            with self.assertRaisesRegex(legacy.LegacyFormatError, message):
                weights_file.load(path)

    def test_networks_load_and_factory(self):
        path = write(self.get_temp_dir(), "cwfixed0.01.l2l", random_arrays(2, 1, (4, 4)))
        saved = weights_file.load(path)
        expected = weights_file.load(path)
        self.assertEqual((saved.net, saved.net_options), (expected.net, expected.net_options))
        tf.nest.map_structure(self.assertAllEqual, saved.weights, expected.weights)
        network = networks.factory("FixedLambdaDeepLSTM", net_path=path)
        tf.nest.map_structure(self.assertAllEqual, network.get_weights(), saved.weights)
        with self.assertRaisesRegex(util.WeightsFileError, "cwfixed0.01.l2l holds a "
                                    "FixedLambdaDeepLSTM, not a CoordinateWiseDeepLSTM"):
            networks.factory("CoordinateWiseDeepLSTM", net_path=path)
        with self.assertRaisesRegex(util.WeightsFileError, "does not fit the network: "
                                    r"layers=\[4, 4\] in the file but \[20, 20\] asked for"):
            networks.factory("FixedLambdaDeepLSTM", {"layers": (20, 20)}, net_path=path)


class ConvertTest(tf.test.TestCase):

    def _legacy_dir(self):
        directory = os.path.join(self.get_temp_dir(), "legacy")
        os.makedirs(directory, exist_ok=True)
        write(directory, "cw.l2l", random_arrays(4, 2, (5, 4)))
        write(directory, "cwfixed0.1.l2l", random_arrays(5, 1, (3,)))
        return directory

    def assert_same_steps(self, legacy_path, converted_path):
        net_name = weights_file.load(legacy_path).net
        legacy_net = networks.factory(net_name, net_path=legacy_path)
        converted_net = networks.factory(net_name, net_path=converted_path)
        self.assertEqual(converted_net.options, legacy_net.options)
        grads = tf.constant(_gradients(np.random.default_rng(2), 10))
        states = [net.initial_state_for_inputs(grads) for net in (legacy_net, converted_net)]
        for _ in range(3):
            steps = []
            for i, net in enumerate((legacy_net, converted_net)):
                step, states[i] = net(grads, states[i], grads)
                steps.append(step)
            self.assertAllEqual(steps[0], steps[1])  # Bit-identical.

    def _run(self, *args):
        # As a user runs it: conftest's TF_CPP_MIN_LOG_LEVEL=2 would let TF's C++ errors through
        # (e.g. "failed call to cuInit" without a GPU), which convert.py otherwise keeps quiet.
        env = {k: v for k, v in os.environ.items()
               if k not in ("L2L_DEBUG", "TF_CPP_MIN_LOG_LEVEL")}
        return subprocess.run([sys.executable, "convert.py", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    def test_command_line(self):
        source = self._legacy_dir()
        output_dir = os.path.join(self.get_temp_dir(), "out", "new")
        result = self._run(f"--path={source}", f"--output_dir={output_dir}")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertLen(lines, 2)
        self.assertStartsWith(lines[0], f"cw.l2l -> {output_dir}/cw.l2l: CoordinateWiseDeepLSTM "
                                        f"layers=[5, 4] preprocess_name='LogAndSign'")
        self.assertIn("FixedLambdaDeepLSTM layers=[3] preprocess_name='identity'", lines[1])
        self.assertEndsWith(lines[1], "fixed_lambda=0.1")
        for name in ("cw.l2l", "cwfixed0.1.l2l"):
            converted = os.path.join(output_dir, name)
            with open(converted, "rb") as f:
                self.assertEqual(f.read(4), b"PK\x03\x04")
            self.assert_same_steps(os.path.join(source, name), converted)
        # Again: every destination exists now.
        result = self._run(f"--path={source}/cw.l2l", f"--output_dir={output_dir}")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, f"convert.py: error: {output_dir}/cw.l2l exists; refusing "
                                        f"to overwrite it (remove it or choose another "
                                        f"--output_dir).\n")

    def test_refusals(self):
        source = self._legacy_dir()
        output_dir = os.path.join(self.get_temp_dir(), "refusals")
        with self.assertRaisesRegex(ValueError, "is the input directory; choose another"):
            convert.convert(source, source + "/.")
        with self.assertRaisesRegex(ValueError, "is the input directory"):
            convert.convert(os.path.join(source, "cw.l2l"), source)
        with self.assertRaisesRegex(ValueError, "--path /nonexistent does not exist."):
            convert.convert("/nonexistent", output_dir)
        fifo = os.path.join(self.get_temp_dir(), "fifo.l2l")
        os.mkfifo(fifo)  # Said as what it is, and never opened (that would block).
        with self.assertRaisesRegex(util.FlagError, r"--path .*fifo.l2l is a FIFO \(named "
                                    r"pipe\); give a .l2l file or a folder of them."):
            convert.convert(fifo, output_dir)
        with self.assertRaisesRegex(ValueError, "holds no .l2l file"):
            empty = os.path.join(self.get_temp_dir(), "empty")
            os.makedirs(empty, exist_ok=True)
            convert.convert(empty, output_dir)
        write(source, "zz.l2l", b"\x80\x03garbage")
        with self.assertRaisesRegex(legacy.LegacyFormatError, "zz.l2l is a damaged"):
            convert.convert(source, output_dir)
        self.assertFalse(os.path.exists(output_dir))  # Nothing written: one file was bad.
        os.remove(os.path.join(source, "zz.l2l"))
        os.makedirs(output_dir)
        write(output_dir, "cwfixed0.1.l2l", b"already there")
        with self.assertRaisesRegex(ValueError, "cwfixed0.1.l2l exists; refusing to overwrite"):
            convert.convert(source, output_dir)
        self.assertFalse(os.path.exists(os.path.join(output_dir, "cw.l2l")))

    def test_files_in_this_format_are_reported_not_copied(self):
        source = self._legacy_dir()
        first = os.path.join(self.get_temp_dir(), "first")
        self.assertLen(convert.convert(source, first), 2)
        lines = convert.convert(first, os.path.join(self.get_temp_dir(), "second"))
        self.assertEqual(lines, ["cw.l2l: already in this project's format; not copied.",
                                 "cwfixed0.1.l2l: already in this project's format; not copied."])
        self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(), "second")))

    def test_bad_input_on_the_command_line_is_one_line(self):
        path = write(self.get_temp_dir(), "bad.l2l", b"\x80\x03cos\nsystem\n.")
        result = self._run(f"--path={path}", f"--output_dir={self.get_temp_dir()}/o")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertRegex(result.stderr, "^convert.py: error: .*bad.l2l is not a safe legacy .l2l "
                                        "file: refused global os.system;")
