"""Optimizer weight files: this project's format, the TF1-era pickles, and how files are named.

This project writes a zip of `.npy` arrays (one per variable, `<layer>/<variable>.npy`) and a
JSON header (`__header__.json`: format, version, network class, options, metadata), never a
pickle. `load` reads that format or a legacy `.l2l` pickle (through `legacy`), checking
everything before it allocates: the header against a schema, each array's `.npy` header (parsed
here, its length capped), its declared shape and dtype against its size, the total size against
a cap, the values for NaN and infinity. A file that fails any check is one
`util.WeightsFileError` naming it. The same caps bound the networks that may be trained
(`check_storable`): none that a file could not hold.

Files in a save folder are named after the network's key in the configuration and its kind:
`cw.l2l` (L2L or a hand-designed network), `cwfixed0.01.l2l`, `cwlearned.l2l`; `file_name`
and `parse_file_name` are the one home of that rule.
"""

import ast
import io
import json
import math
import os
import re
import zipfile
from typing import NamedTuple, Optional

import numpy as np

import legacy
import util

FORMAT_NAME = "l2l-weights"
# Version 2: LSTM layers as Sonnet 1's `w_gates`, `b_gates` (gates i, j, f, o; forget bias added
# at run time). Version 1 held Sonnet 2's `w_i`, `w_h`, `b` (gates i, f, g, o; forget bias in
# `b`); it is read and converted.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
FORGET_BIAS = 1.0  # Added to the LSTMs' forget gates at run time (Sonnet 1's default).
SUFFIX = ".l2l"
ZIP_MAGIC = b"PK\x03\x04"  # This project's files are zip archives.
PICKLE_MAGIC = b"\x80"  # Pickle protocol 2 and later: the TF1-era files.
_HEADER_NAME = "__header__.json"

# Limits on what a file may declare, checked before anything is allocated. The networks this
# project trains have thousands of weights; a million per array and a few million in all leave
# room for much larger ones.
MAX_FILE_BYTES = 64 * 2**20
MAX_HEADER_BYTES = 2**20
MAX_ARRAY_ELEMENTS = 2**24
MAX_TOTAL_ELEMENTS = 2**25
MAX_HEADER_DEPTH = 8
# numpy writes a `.npy` header of about 120 bytes; a longer one is not numpy's.
MAX_NPY_HEADER_BYTES = 4096
_NPY_MAGIC = b"\x93NUMPY"
_NPY_LENGTH_BYTES = {1: 2, 2: 4}  # Bytes of the header length in `.npy` versions 1.0 and 2.0.
_FLOAT_DESCRS = ("<f4", "<f8")  # float32 and float64, as numpy writes them.

WeightsFileError = util.WeightsFileError


class SavedNetwork(NamedTuple):
    """The contents of a weights file."""
    net: str  # Class name.
    net_options: dict
    weights: dict  # {layer: {variable: np.ndarray}}
    metadata: dict = {}  # What the saver recorded beside the weights (e.g. its evaluation).


# -- Names ------------------------------------------------------------------------------------

KINDS = ("L2L", "fixed", "learned")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class FileName(NamedTuple):
    key: str  # The network's key in the configuration (`cw`, `conv`, `fc`, ...).
    kind: str  # One of KINDS; "L2L" also for hand-designed networks.
    fixed_lambda: Optional[float] = None


# The network class of each kind of learned optimizer; hand-designed networks count as "L2L".
KIND_NETS = {"L2L": "CoordinateWiseDeepLSTM", "fixed": "FixedLambdaDeepLSTM",
             "learned": "LearnedLambdaDeepLSTM"}


def kind_of(net):
    """The kind of optimizer a network class name is (hand-designed ones: "L2L")."""
    return {v: k for k, v in KIND_NETS.items()}.get(net, "L2L")


def file_name(key, kind="L2L", fixed_lambda=None):
    """`cw.l2l`, `cwfixed0.01.l2l` or `cwlearned.l2l`."""
    if kind == "fixed":
        return f"{key}fixed{float(fixed_lambda)!r}{SUFFIX}"
    if kind == "learned":
        return f"{key}learned{SUFFIX}"
    return f"{key}{SUFFIX}"


def network_file_name(key, net, net_options):
    """The file name of network class `net` with `net_options` saved under `key`."""
    return file_name(key, kind_of(net), net_options.get("fixed_lambda"))


def parse_file_name(name):
    """The key, kind and lambda a file name says (any folder part is ignored).

    Raises:
      ValueError: `fixed` is followed by something other than a finite number.
    """
    stem = os.path.basename(name)
    stem = stem[:-len(SUFFIX)] if stem.endswith(SUFFIX) else stem
    key, fixed, text = stem.rpartition("fixed")
    if fixed:
        if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
            raise ValueError(f"cannot read lambda {text!r} from the file name; name fixed-lambda "
                             f"files <key>fixed<lambda>{SUFFIX} (e.g. cwfixed0.01{SUFFIX}), other "
                             f"files without 'fixed'.")
        return FileName(key, "fixed", float(text))
    if stem.endswith("learned"):
        return FileName(stem[:-len("learned")], "learned")
    return FileName(stem, "L2L")


# -- Writing ----------------------------------------------------------------------------------

def _json_ready(value):
    """Options as stored in JSON: tuples become lists, keys strings."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def normalize(options):
    """`options` as they read back from a file, so that two configurations compare equal."""
    return json.loads(json.dumps(_json_ready(options)))


def save(path, net, net_options, weights, metadata=None, tensorflow_version=None):
    """Writes a network's class name, options and weights (`{layer: {name: array}}`) to `path`.

    Atomic (see `util.atomic_write`); `metadata` (JSON-able) is stored beside them.
    """
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "net": net,
              "net_options": normalize(net_options), "metadata": normalize(metadata or {})}
    if tensorflow_version:
        header["tensorflow"] = tensorflow_version
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(_HEADER_NAME, json.dumps(header, indent=1, sort_keys=True))
        for layer, variables in weights.items():
            for name, value in variables.items():
                array_bytes = io.BytesIO()
                np.lib.format.write_array(array_bytes, np.asarray(value), allow_pickle=False)
                archive.writestr(f"{layer}/{name}.npy", array_bytes.getvalue())
    util.atomic_write(path, buffer.getvalue(), what="optimizer file")


def check_storable(shapes, what):
    """Refuses a network whose weights a file could not hold, before it is built or trained.

    `shapes` is `{layer: {variable: shape}}` (`Network.weight_shapes`; None for a size not yet
    known, counted as 1). The limits on what a file may declare bound what can be trained too:
    a network too large to save would also exhaust memory long before it learned anything.

    Raises:
      util.OptionError: an array or the total is over the limits; the message names `what`.
    """
    total = 0
    for layer, variables in shapes.items():
        for name, shape in variables.items():
            count = math.prod(1 if n is None else n for n in shape)
            if count > MAX_ARRAY_ELEMENTS:
                raise util.OptionError(
                    f"{what} would have {count} weights in {layer}/{name}, more than the "
                    f"{MAX_ARRAY_ELEMENTS} an optimizer file holds in one array; use smaller "
                    f"layers.")
            total += count
    if total > MAX_TOTAL_ELEMENTS:
        raise util.OptionError(f"{what} would have {total} weights, more than the "
                               f"{MAX_TOTAL_ELEMENTS} an optimizer file holds; use smaller "
                               f"layers.")


# -- Reading ----------------------------------------------------------------------------------

def load(path, where=None):
    """Reads a weights file: this project's format, or a legacy TF1-era `.l2l` pickle.

    `where` names the file in messages about its content instead of `path` (a file unpacked
    from a `.keras` archive into a temporary folder is better called after the archive).

    Raises:
      WeightsFileError: the file is missing, not a regular file, too large, damaged, not an
        optimizer file, or holds non-finite or non-float weights.
    """
    data = util.read_file(path, MAX_FILE_BYTES, what="optimizer file", error=WeightsFileError)
    where = path if where is None else where
    if data[:4] == ZIP_MAGIC:
        return _load_own(where, data)
    if data[:1] == PICKLE_MAGIC:
        return _load_legacy(path, data)
    raise WeightsFileError(f"{where} is not an optimizer file (neither this project's format "
                           f"nor a legacy .l2l pickle).")


def _load_legacy(path, data):
    try:
        fixed_lambda = parse_file_name(path).fixed_lambda
    except ValueError as e:
        raise legacy.LegacyFormatError(f"{path}: {e}") from None
    net, net_options, weights = legacy.load(path, data, fixed_lambda)
    return SavedNetwork(net, net_options, weights)


def _damaged(path, detail):
    return WeightsFileError(f"{path} is a damaged optimizer file ({detail}); re-save or re-train "
                            f"it.")


def _depth(value, limit):
    """Nesting depth of JSON `value`, counting no further than `limit + 1`."""
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


# Zip flag bits this project never writes, each of which zipfile meets with an exception of its
# own when the member is opened (RuntimeError, NotImplementedError), not a BadZipFile.
_UNREAD_FLAGS = {0x1: "is encrypted", 0x20: "holds patch data", 0x40: "is strongly encrypted"}


def _check_member(path, info):
    """Refuses a member that is encrypted or compressed otherwise than stored or deflated.

    This project writes neither, and zipfile would meet them only once the member is opened,
    with exceptions that read as bugs.
    """
    for bit, what in _UNREAD_FLAGS.items():
        if info.flag_bits & bit:
            raise _damaged(path, f"{info.filename[:80]} {what}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _damaged(path, f"{info.filename[:80]} uses compression method "
                             f"{info.compress_type}, not stored or deflated")


def _read_header(path, archive):
    try:
        info = archive.getinfo(_HEADER_NAME)
    except KeyError:
        raise _damaged(path, f"no {_HEADER_NAME}") from None
    if info.file_size > MAX_HEADER_BYTES:
        raise _damaged(path, f"a header of {info.file_size} bytes")
    _check_member(path, info)
    try:
        with archive.open(info) as member:
            text = member.read(MAX_HEADER_BYTES + 1)
        header = json.loads(text)
    except RecursionError:
        raise _damaged(path, "a header nested too deeply") from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise _damaged(path, f"unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise _damaged(path, f"its header is a {type(header).__name__}, not an object")
    if _depth(header, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH:
        raise _damaged(path, "a header nested too deeply")
    # `type(...) is int`: JSON's true (== 1) and 2.0 (== 2) are not versions.
    if (header.get("format") != FORMAT_NAME or type(header.get("version")) is not int
            or header["version"] not in _READABLE_VERSIONS):
        raise WeightsFileError(f"{path} has format {str(header.get('format'))[:40]!r} version "
                               f"{repr(header.get('version'))[:20]}; this code reads "
                               f"{FORMAT_NAME!r} versions {list(_READABLE_VERSIONS)}.")
    expected = {"net": str, "net_options": dict, "metadata": dict, "tensorflow": str}
    for field, kind in expected.items():
        if field not in header:
            if field in ("metadata", "tensorflow"):
                continue
            raise _damaged(path, f"its header has no {field!r}")
        if not isinstance(header[field], kind):
            raise _damaged(path, f"header field {field!r} is a {type(header[field]).__name__}, "
                                 f"not a {'string' if kind is str else 'JSON object'}")
    return header


def _read_npy_header(path, member, info):
    """`(shape, dtype)` from a `.npy` member's header, parsed here with a length cap.

    numpy's own reader allocates whatever header length the file declares (up to 4 GiB) before
    looking at it, and lets tokenizer errors through; this one checks the length against a cap
    and the member's size first, and reads only the three fields a weight array has.
    """
    preamble = member.read(len(_NPY_MAGIC) + 2)
    version = tuple(preamble[len(_NPY_MAGIC):])
    if len(preamble) < len(_NPY_MAGIC) + 2 or not preamble.startswith(_NPY_MAGIC):
        raise _damaged(path, f"{info.filename} is not a .npy array")
    if version[1] != 0 or version[0] not in _NPY_LENGTH_BYTES:
        raise _damaged(path, f"{info.filename} is a .npy file of version {version[0]}."
                             f"{version[1]}, not 1.0 or 2.0")
    length_bytes = member.read(_NPY_LENGTH_BYTES[version[0]])
    length = int.from_bytes(length_bytes, "little")
    if (len(length_bytes) < _NPY_LENGTH_BYTES[version[0]] or length > MAX_NPY_HEADER_BYTES
            or len(preamble) + len(length_bytes) + length > info.file_size):
        raise _damaged(path, f"{info.filename} declares a .npy header of {length} bytes")
    try:
        # Literals only (ast.literal_eval runs no code), as numpy reads it.
        header = ast.literal_eval(member.read(length).decode("latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise _damaged(path, f"{info.filename} has an unreadable .npy header "
                             f"({type(e).__name__})") from None
    if (not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}
            or type(header["fortran_order"]) is not bool or not isinstance(header["shape"], tuple)
            or not all(type(n) is int and n >= 0 for n in header["shape"])):
        raise _damaged(path, f"{info.filename} has a .npy header that is not a weight array's: "
                             f"{str(header)[:80]}")
    descr = header["descr"]
    if descr not in _FLOAT_DESCRS or header["fortran_order"]:
        try:
            kind = np.dtype(descr) if isinstance(descr, str) else "structured"
        except (TypeError, ValueError):
            kind = repr(descr)[:40]
        order = " in Fortran order" if header["fortran_order"] else ""
        raise WeightsFileError(f"{path}: {info.filename} holds {kind} values{order}; optimizer "
                               f"weights are float32 or float64 arrays.")
    return header["shape"], np.dtype(descr)


def _read_array(path, archive, info):
    """One `.npy` member, its header and its shape checked against its size before it is read."""
    _check_member(path, info)
    try:
        with archive.open(info) as member:
            shape, dtype = _read_npy_header(path, member, info)
            count = math.prod(shape)
            if count > MAX_ARRAY_ELEMENTS:
                raise _damaged(path, f"{info.filename} declares shape {shape}")
            size = count * dtype.itemsize
            if info.file_size - member.tell() != size:
                raise _damaged(path, f"{info.filename} declares shape {shape} but holds "
                                     f"{info.file_size - member.tell()} bytes of data")
            data = member.read(size + 1)  # Bounded, whatever the stream inflates to.
    except WeightsFileError:
        raise
    except (ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise _damaged(path, f"{info.filename}: {e}") from None
    if len(data) != size:
        raise _damaged(path, f"{info.filename} holds {len(data)} bytes, not {size}")
    array = np.frombuffer(data, dtype).reshape(shape).copy()
    if not np.all(np.isfinite(array)):
        raise WeightsFileError(f"{path}: {info.filename[:-len('.npy')]} holds NaN or infinite "
                               f"values; the optimizer is unusable (re-train it).")
    return array


def _load_own(path, data):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            header = _read_header(path, archive)
            weights, total = {}, 0
            for info in archive.infolist():
                if info.filename == _HEADER_NAME:
                    continue
                parts = info.filename[:-len(".npy")].split("/")
                if (not info.filename.endswith(".npy") or len(parts) != 2
                        or not all(parts) or info.filename.count("/") != 1):
                    raise _damaged(path, f"unexpected entry {info.filename[:80]!r}")
                array = _read_array(path, archive, info)
                total += array.size
                if total > MAX_TOTAL_ELEMENTS:
                    raise _damaged(path, "more weights than any optimizer network has")
                layer, name = parts
                if name in weights.get(layer, {}):
                    raise _damaged(path, f"{info.filename} appears twice")
                weights.setdefault(layer, {})[name] = array
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, WeightsFileError):
            raise
        raise _damaged(path, e) from None
    if header["version"] == 1:
        weights = _upgrade_version_1(path, weights)
    return SavedNetwork(header["net"], dict(header["net_options"]), weights,
                        dict(header.get("metadata", {})))


def _upgrade_version_1(path, weights):
    """Version 1's Sonnet 2 LSTM variables as Sonnet 1's `w_gates` and `b_gates`.

    Sonnet 2 orders the gates (i, f, g, o) and keeps the forget bias in `b`; Sonnet 1 orders them
    (i, j, f, o) with `j` Sonnet 2's `g`, and adds the forget bias at run time. Reordering is
    exact; the forget-gate biases lose at most a rounding when 1.0 is taken off (below 0.5).
    """
    result = {}
    for layer, variables in weights.items():
        if set(variables) != {"w_i", "w_h", "b"}:
            result[layer] = variables
            continue
        w = np.concatenate([variables["w_i"], variables["w_h"]], axis=0)
        b = variables["b"]
        if w.ndim != 2 or b.ndim != 1 or w.shape[1] != b.shape[0] or b.shape[0] % 4:
            raise _damaged(path, f"{layer} has w_i {variables['w_i'].shape}, w_h "
                                 f"{variables['w_h'].shape} and b {b.shape}")
        i, f, g, o = np.split(w, 4, axis=1)
        b_i, b_f, b_g, b_o = np.split(b, 4)
        result[layer] = {"w_gates": np.concatenate([i, g, f, o], axis=1),
                         "b_gates": np.concatenate([b_i, b_g, b_f - b.dtype.type(FORGET_BIAS),
                                                    b_o])}
    return result
