"""Standard classification datasets as verified, in-memory numpy arrays.

`load(name, split)` returns `(x, y)`: uint8 images `[N, H, W, C]` (MNIST, Fashion-MNIST,
CIFAR-10/100) or float32 Iris features `[N, 4]`, and int32 labels `[N]`. Pixels are not
scaled; callers convert batches to float themselves. Returned arrays are read-only views of a
per-process cache, so asking for `train` and then `validation` reads the files once.

Files are read in their standard distribution formats (IDX, optionally gzipped, and the CIFAR
binary records) and checked as they are read: a file that is present but broken raises
`DatasetError` naming it instead of silently falling back to another source.
"""

import contextlib
import functools
import gzip
import io
import logging
import os
import pathlib
import socket
import threading
import zlib

import numpy as np

import util

NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "iris")
SPLITS = ("train", "validation", "test")

# Validation is the END of the official training data (never test data); train is the rest.
VALIDATION_SIZES = {"mnist": 10_000, "fashion_mnist": 10_000, "cifar10": 5_000, "cifar100": 5_000}

# Iris has no official split: per class (50 rows each), a fixed permutation gives these counts.
IRIS_SPLIT_PER_CLASS = {"train": 30, "validation": 10, "test": 10}
IRIS_SPLIT_SEED = 0
IRIS_NUM_ROWS, IRIS_NUM_FEATURES, IRIS_NUM_CLASSES = 150, 4, 3
IRIS_PATH = pathlib.Path(__file__).resolve().parent / "data" / "iris.csv"

# Searched like `data_dir` when `load` is not given one that holds the dataset.
ENV_VAR = "L2L_DATA_DIR"

# Folders that OS packages install datasets to, searched after data_dir and L2L_DATA_DIR.
_FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SYSTEM_DIRS = {"fashion_mnist": (_FASHION_MNIST_DEBIAN_DIR,)}
# OS packages to suggest when a dataset is missing: (package, folder it installs to).
_SYSTEM_PACKAGES = {"fashion_mnist": ("Debian package dataset-fashion-mnist",
                                      _FASHION_MNIST_DEBIAN_DIR)}

_IMAGE_SHAPES = {
    "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
}
# The shape of one example and the number of classes of every dataset (the problems' sizes).
EXAMPLE_SHAPES = dict(_IMAGE_SHAPES, iris=(IRIS_NUM_FEATURES,))
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
               "iris": IRIS_NUM_CLASSES}

# (images, labels) file names of the official train and test parts; each may end in `.gz`.
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC_LABELS, _IDX_MAGIC_IMAGES = 0x00000801, 0x00000803
_GZIP_MAGIC = b"\x1f\x8b"
# MNIST and Fashion-MNIST files have the same names and format; the official files' first ten
# labels tell them apart, so a folder holding the other dataset is an error, not a silent swap.
_FIRST_LABELS = {
    ("mnist", "train"): (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
    ("mnist", "test"): (7, 2, 1, 0, 4, 1, 4, 9, 5, 9),
    ("fashion_mnist", "train"): (9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
    ("fashion_mnist", "test"): (9, 2, 1, 1, 6, 1, 4, 6, 5, 7),
}
_OTHER_MNIST = {"mnist": "fashion_mnist", "fashion_mnist": "mnist"}

_CIFAR_FILES = {
    "cifar10": {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                "test": ("test_batch.bin",)},
    "cifar100": {"train": ("train.bin",), "test": ("test.bin",)},
}
_CIFAR_ARCHIVE_DIRS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
_CIFAR_LABEL_BYTES = {"cifar10": 1, "cifar100": 2}
_CIFAR_IMAGE_BYTES = 3 * 32 * 32

# Hosts that tensorflow_datasets 4.9 downloads from. Offline, tfds retries each file with
# backoff for about 3.5 minutes; a 3-second connection attempt first makes it fail fast.
_TFDS_DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),
    "cifar10": ("www.cs.toronto.edu", 443),
    "cifar100": ("www.cs.toronto.edu", 443),
}
_ONLINE_TIMEOUT_SECONDS = 3.0


class DatasetError(util.MissingDataError):
    """A dataset is missing, truncated or malformed; the message is one line with the fix."""


class _TfdsUnavailable(Exception):
    """tensorflow_datasets could not provide a dataset; the message says why, in one line."""


def _one_line(error, limit=200):
    """`Type: first line of message`, short enough to embed in another one-line message."""
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    first = first if len(first) <= limit else first[:limit - 3] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# What a dataset file may hold once inflated: the largest official file (MNIST's training images)
# is 47 MB; a file that inflates past this is not a dataset file (a "gzip bomb" is refused
# before it fills the memory).
MAX_FILE_BYTES = 512 * 2**20


def _open_stream(path):
    """A binary stream of the file's contents, gunzipped when they start with the gzip magic.

    Only regular files are opened (a FIFO would block, a device never end), up to
    `MAX_FILE_BYTES` on disk.
    """
    path = pathlib.Path(path)
    try:
        raw = util.read_file(path, MAX_FILE_BYTES, what="dataset file", error=DatasetError)
    except DatasetError as e:
        raise DatasetError(f"{e} Check the path and permissions.") from None
    stream = io.BytesIO(raw)
    return gzip.GzipFile(fileobj=stream) if raw[:2] == _GZIP_MAGIC else stream


def _read(path, stream, size):
    """Exactly `size` bytes of `stream`, or fewer at its end; a broken gzip is one line."""
    try:
        return stream.read(size)
    except (OSError, EOFError, ValueError, zlib.error) as e:  # BadGzipFile is an OSError.
        raise DatasetError(f"{path}: corrupt or truncated gzip stream ({_one_line(e)}); "
                           "replace it with a fresh copy.") from None


def _read_bytes(path):
    """File contents (gunzipped), at most `MAX_FILE_BYTES` of them."""
    data = _read(path, _open_stream(path), MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise DatasetError(f"{path}: inflates to more than {MAX_FILE_BYTES} bytes; it is not a "
                           f"dataset file.")
    return data


def read_idx(path):
    """Reads an unsigned-byte IDX file (MNIST format), gzipped or raw.

    Gzip is detected from the content's magic bytes, not from the file name. The header is read
    first; only the number of bytes it declares is inflated (plus one, to detect trailing ones).

    Args:
        path: str or path-like, the IDX file.

    Returns:
        A read-only uint8 array with the file's dimensions: `[N, rows, cols]` for images
        (magic 0x00000803) or `[N]` for labels (magic 0x00000801).

    Raises:
        DatasetError: the file is unreadable, its gzip stream is corrupt, its magic number is
            not one of the two above, or its payload is shorter or longer than its header says.
    """
    stream = _open_stream(path)
    fix = "replace it with a fresh copy of the standard file"
    head = _read(path, stream, 4)
    if len(head) < 4:
        raise DatasetError(f"{path}: {len(head)} bytes is too short for an IDX header; {fix}.")
    magic = int.from_bytes(head, "big")
    if magic not in (_IDX_MAGIC_LABELS, _IDX_MAGIC_IMAGES):
        raise DatasetError(
            f"{path}: IDX magic number 0x{magic:08X} is not 0x{_IDX_MAGIC_IMAGES:08X} (uint8 "
            f"images) or 0x{_IDX_MAGIC_LABELS:08X} (uint8 labels); {fix}.")
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    dims_bytes = _read(path, stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header ({4 + len(dims_bytes)} of "
                           f"{header_size} bytes); {fix}.")
    dims = tuple(int.from_bytes(dims_bytes[4 * i:4 * i + 4], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if expected > MAX_FILE_BYTES:
        raise DatasetError(f"{path}: its header declares {expected} bytes of data (shape "
                           f"{list(dims)}), more than any dataset file has; {fix}.")
    data = _read(path, stream, expected + 1)
    payload = len(data)
    if payload < expected:
        raise DatasetError(f"{path}: truncated: {payload} data bytes but the header's shape "
                           f"{list(dims)} needs {expected}; {fix}.")
    if payload > expected:
        trailing = payload - expected + len(_read(path, stream, 2**20))  # Counted up to 1 MiB.
        raise DatasetError(f"{path}: {trailing} unexpected trailing bytes after the "
                           f"{expected} that the header's shape {list(dims)} needs; {fix}.")
    # frombuffer over immutable bytes: a read-only array with no extra copy.
    return np.frombuffer(data[:expected], dtype=np.uint8).reshape(dims)


def read_cifar_binary(path, num_label_bytes):
    """Reads a CIFAR binary batch: records of label byte(s) then R, G, B planes of 32x32.

    Args:
        path: str or path-like, e.g. `data_batch_1.bin` (CIFAR-10) or `train.bin` (CIFAR-100).
        num_label_bytes: 1 for CIFAR-10 (label); 2 for CIFAR-100 (coarse label, fine label).

    Returns:
        `(images, labels)`: uint8 `[N, 32, 32, 3]` (height, width, RGB channel) and int64 `[N]`;
        for CIFAR-100 the labels are the fine (100-class) ones.

    Raises:
        ValueError: `num_label_bytes` is not 1 or 2.
        DatasetError: the file is empty, its size is not a multiple of the record size, or a
            label is out of range (10 classes; CIFAR-100: 100 fine, 20 coarse).
    """
    if num_label_bytes not in (1, 2):
        raise ValueError(f"num_label_bytes must be 1 (CIFAR-10) or 2 (CIFAR-100), got "
                         f"{num_label_bytes!r}.")
    data = _read_bytes(path)
    record = num_label_bytes + _CIFAR_IMAGE_BYTES
    if not data or len(data) % record:
        raise DatasetError(
            f"{path}: size {len(data)} bytes is not a positive multiple of the {record}-byte "
            f"CIFAR-{10 if num_label_bytes == 1 else 100} record; replace it with a fresh copy "
            "from the official binary archive.")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    # CIFAR-100 stores (coarse, fine); CIFAR-10 only the class.
    limits = ((10, "label"),) if num_label_bytes == 1 else ((20, "coarse label"),
                                                            (100, "fine label"))
    for column, (num_classes, what) in enumerate(limits):
        bad = np.flatnonzero(records[:, column] >= num_classes)
        if bad.size:
            raise DatasetError(
                f"{path}: record {bad[0]} has {what} {records[bad[0], column]}, outside "
                f"0..{num_classes - 1}; check num_label_bytes={num_label_bytes} matches the "
                "file or replace the file.")
    labels = records[:, num_label_bytes - 1].astype(np.int64)
    planes = records[:, num_label_bytes:].reshape(-1, 3, 32, 32)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1)), labels


def _pick_idx(folder, base):
    """The raw or gzipped file `folder/base[.gz]` (raw first), or None."""
    for candidate in (folder / base, folder / (base + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _holds(name, folder):
    """Whether `folder` holds any standard file of dataset `name` (so it is the source)."""
    if name in _CIFAR_FILES:
        files = [f for part in _CIFAR_FILES[name].values() for f in part]
        return any((folder / f).is_file() for f in files)
    return any(_pick_idx(folder, base) for pair in _IDX_FILES.values() for base in pair)


def _candidate_dirs(name, data_dir):
    """Folders to search for `name`, in order: data_dir, then L2L_DATA_DIR, then the system."""
    roots = [data_dir, os.environ.get(ENV_VAR) or None]
    folders = []
    for root in roots:
        if root is None:
            continue
        root = pathlib.Path(root).expanduser()
        for base in (root / name, root):  # A flag may point at the dataset's own folder.
            folders.append(base)
            if name in _CIFAR_ARCHIVE_DIRS:  # Where the official tar.gz archives unpack to.
                folders.append(base / _CIFAR_ARCHIVE_DIRS[name])
    folders.extend(pathlib.Path(d) for d in SYSTEM_DIRS.get(name, ()))
    return folders


def _read_only(*arrays):
    for array in arrays:
        array.flags.writeable = False
    return arrays


def _check_images_labels(name, source, x, y, image_source=None, label_source=None):
    """Checks counts, image shape and label range of one part; returns read-only (x, y int32)."""
    image_source, label_source = image_source or source, label_source or source
    shape = _IMAGE_SHAPES[name]
    if x.ndim != 4 or x.shape[1:] != shape:
        raise DatasetError(f"{image_source}: images have shape {list(x.shape[1:])}, expected "
                           f"{list(shape)} for {name}; check this is the {name} file.")
    if y.ndim != 1:
        raise DatasetError(f"{label_source}: labels have shape {list(y.shape)}, expected [N]; "
                           f"check this is the {name} labels file.")
    if len(x) != len(y):
        raise DatasetError(f"{image_source} has {len(x)} images but {label_source} has "
                           f"{len(y)} labels; replace them with a matching pair.")
    num_classes = NUM_CLASSES[name]
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise DatasetError(f"{label_source}: label {int(y[bad])} at index {bad} is outside "
                           f"0..{num_classes - 1} for {name}; replace the file.")
    return _read_only(x, y.astype(np.int32))


@functools.lru_cache(maxsize=8)
def _read_part(name, folder, part):
    """The official `part` ('train' or 'test') of `name` from files in `folder`; cached."""
    folder = pathlib.Path(folder)
    if name in _CIFAR_FILES:
        paths = [folder / f for f in _CIFAR_FILES[name][part]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{folder} holds {name} files but lacks {', '.join(missing)}; "
                               f"add the missing files of the official {name} binary archive.")
        pieces = [read_cifar_binary(p, _CIFAR_LABEL_BYTES[name]) for p in paths]
        if len(pieces) == 1:
            x, y = pieces[0]
        else:  # Batches concatenate in file order: data_batch_1 first.
            x = np.concatenate([p[0] for p in pieces])
            y = np.concatenate([p[1] for p in pieces])
        return _check_images_labels(name, f"{folder} ({name} {part})", x, y)
    image_base, label_base = _IDX_FILES[part]
    image_path, label_path = _pick_idx(folder, image_base), _pick_idx(folder, label_base)
    missing = [b + "[.gz]" for b, p in ((image_base, image_path), (label_base, label_path))
               if p is None]
    if missing:
        raise DatasetError(f"{folder} holds {name} files but lacks {', '.join(missing)}; add the "
                           f"missing standard {name} files there.")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise DatasetError(f"{image_path}: has {images.ndim} dimensions, expected 3 "
                           "([N, 28, 28] images); check the file is not a labels file.")
    return _check_images_labels(name, folder, images[..., np.newaxis], labels,
                                image_source=image_path, label_source=label_path)


@contextlib.contextmanager
def _quiet_logger(name):
    """Silences `name`'s warnings (tfds notes each empty variant folder it probes)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reachable(host, port, timeout=_ONLINE_TIMEOUT_SECONDS):
    """Whether a TCP connection to `host:port` opens within `timeout` seconds (DNS included)."""
    opened = []

    def attempt():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    # A thread bounds the DNS lookup too, which `create_connection` does not time out.
    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


@functools.lru_cache(maxsize=8)
def _read_tfds(name, data_dir, part):
    """The official `part` of `name` from tensorflow_datasets; cached; raises _TfdsUnavailable."""
    try:
        import tensorflow_datasets as tfds  # Slow to import: only for this last resort.
    except Exception as e:  # A broken install can fail with more than ImportError.
        raise _TfdsUnavailable(f"tensorflow_datasets is not importable ({_one_line(e)})") from None
    try:
        with _quiet_logger("absl"):
            prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        host, port = _TFDS_DOWNLOAD_HOSTS[name]
        if not prepared and not _reachable(host, port):
            raise _TfdsUnavailable(f"tensorflow_datasets has no prepared copy and {host} is "
                                   "unreachable (offline?)")
        x, y = tfds.as_numpy(tfds.load(name, split=part, data_dir=data_dir, batch_size=-1,
                                       as_supervised=True))
    except _TfdsUnavailable:
        raise
    except Exception as e:  # Any failure of this last resort ends in the one-line error.
        raise _TfdsUnavailable(f"tensorflow_datasets failed ({_one_line(e)})") from None
    return _check_images_labels(name, f"tensorflow_datasets {name} {part}", np.asarray(x),
                                np.asarray(y))


def _expected_files(name):
    if name in _CIFAR_FILES:
        files = [f for part in _CIFAR_FILES[name].values() for f in part]
        listed = (", ".join(files) if len(files) <= 2
                  else f"{files[0]} ... {files[-2]}, {files[-1]}")
        return f"{listed} (or DIR/{_CIFAR_ARCHIVE_DIRS[name]}/ unpacked from the official archive)"
    return ", ".join(b + "[.gz]" for pair in _IDX_FILES.values() for b in pair)


def _missing_error(name, folders, reason):
    """The one-line DatasetError for a dataset found nowhere, listing every way to provide it."""
    looked = "; ".join(f"{f}" + ("" if f.is_dir() else " (absent)") for f in folders)
    ways = [f"pass --data_dir=DIR or set {ENV_VAR}=DIR, where DIR or DIR/{name}/ holds "
            f"{_expected_files(name)}"]
    if name in _SYSTEM_PACKAGES:
        package, folder = _SYSTEM_PACKAGES[name]
        ways.append(f"install the {package} (files in {folder})")
    ways.append("go online so tensorflow_datasets can download it")
    looked = looked or f"no folders, since neither data_dir nor {ENV_VAR} was given"
    return DatasetError(f"Dataset {name!r} not found (searched: {looked}; "
                        f"{reason}). To fix, {', or '.join(ways)}.")


def check_data_dir(data_dir):
    """A `data_dir` given must be a folder: a mistyped one would otherwise fall through to
    tensorflow_datasets, which answers only after trying the network (about 12 s offline).

    Raises:
      DatasetError: it does not exist or is not a folder (one line naming --data_dir).
    """
    if data_dir is None:
        return
    path = pathlib.Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise DatasetError(f"--data_dir {data_dir} is not a folder; pass the folder that holds "
                           f"the dataset's files.")
    if not path.exists():
        raise DatasetError(f"--data_dir {data_dir} {util.unreachable(path)}; fix the path, or "
                           f"create the folder for tensorflow_datasets to download into.")


def _find_and_read(name, part, data_dir):
    """(x, y, source) of the official `part`: the first folder holding `name`, else tfds."""
    folders = _candidate_dirs(name, data_dir)
    for folder in folders:
        if _holds(name, folder):
            # A present but broken file raises here rather than falling through to a source.
            x, y = _read_part(name, str(folder.resolve()), part)
            other = _OTHER_MNIST.get(name)
            if other and tuple(y[:10]) == _FIRST_LABELS[other, part]:
                raise DatasetError(
                    f"{folder} holds {other}'s files (their labels are {other}'s), not {name}'s: "
                    f"the two datasets' files have the same names, so keep each in its own "
                    f"folder, DIR/mnist/ and DIR/fashion_mnist/, and pass --data_dir=DIR.")
            return x, y, str(folder)
    tfds_dir = None if data_dir is None else str(pathlib.Path(data_dir).expanduser())
    try:
        x, y = _read_tfds(name, tfds_dir, part)
    except _TfdsUnavailable as e:
        raise _missing_error(name, folders, str(e)) from None
    return x, y, "tensorflow_datasets"


def _parse_iris(path):
    """(features float32 [150, 4], labels int32 [150]) from our CSV; checks every count."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({_one_line(e)}); restore data/iris.csv "
                           "from the repository.") from None
    fix = "restore data/iris.csv from the repository"
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    rows = []
    for number, line in lines[1:]:  # lines[0] is the header.
        fields = line.split(",")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = None
        if values is None or len(values) != IRIS_NUM_FEATURES + 1:
            raise DatasetError(f"{path}: line {number} {line!r} is not {IRIS_NUM_FEATURES} "
                               f"numbers and a class; {fix}.")
        rows.append(values)
    if len(rows) != IRIS_NUM_ROWS:
        raise DatasetError(f"{path}: {len(rows)} data rows, expected {IRIS_NUM_ROWS}; {fix}.")
    table = np.array(rows)
    labels = table[:, -1]
    counts = np.bincount(labels.astype(np.int64), minlength=IRIS_NUM_CLASSES)
    per_class = IRIS_NUM_ROWS // IRIS_NUM_CLASSES
    if (np.any(labels != np.round(labels)) or labels.min() < 0
            or len(counts) != IRIS_NUM_CLASSES or np.any(counts != per_class)):
        raise DatasetError(f"{path}: class counts {counts.tolist()}, expected {per_class} each "
                           f"of classes 0..{IRIS_NUM_CLASSES - 1}; {fix}.")
    return table[:, :-1].astype(np.float32), labels.astype(np.int32)


def _iris_split_indices(labels):
    """Row indices of each split: per class, a fixed permutation cut 30 / 10 / 10, sorted."""
    # RandomState's stream is frozen across numpy versions (Generator's is not), so the split
    # stays the same everywhere; a local instance leaves the global RNG state alone.
    rng = np.random.RandomState(IRIS_SPLIT_SEED)
    picked = {split: [] for split in SPLITS}
    for label in range(IRIS_NUM_CLASSES):
        members = np.flatnonzero(labels == label)[rng.permutation(np.sum(labels == label))]
        start = 0
        for split in SPLITS:
            stop = start + IRIS_SPLIT_PER_CLASS[split]
            picked[split].append(members[start:stop])
            start = stop
    return {split: np.sort(np.concatenate(parts)) for split, parts in picked.items()}


@functools.lru_cache(maxsize=1)
def _load_iris():
    """Every Iris split as read-only (x, y), from the CSV shipped in the repository."""
    features, labels = _parse_iris(IRIS_PATH)
    indices = _iris_split_indices(labels)
    return {split: _read_only(features[idx], labels[idx]) for split, idx in indices.items()}


def load(name, split, data_dir=None):
    """Loads one split of a dataset into memory.

    Train and validation come from the official training data: validation is its last
    `VALIDATION_SIZES[name]` examples and train the rest. Test is the official test data.
    Iris (150 rows, no official split) always comes from `data/iris.csv` beside this module,
    split per class 30 / 10 / 10 by a fixed permutation (`IRIS_SPLIT_SEED`), rows kept in file
    order; `data_dir` is ignored for it.

    The files of other datasets are searched for in, first hit wins: `data_dir/<name>/`, then
    `data_dir` itself (for CIFAR each also with the archive's `cifar-10-batches-bin/` or
    `cifar-100-binary/`); the same under the `L2L_DATA_DIR` environment variable; then
    `SYSTEM_DIRS`; finally tensorflow_datasets, which downloads when online.

    Args:
        name: one of `NAMES`.
        split: one of `SPLITS`.
        data_dir: optional folder (str or path-like) holding the standard files.

    Returns:
        `(x, y)`, read-only: x is uint8 `[N, 28, 28, 1]` (MNIST, Fashion-MNIST) or
        `[N, 32, 32, 3]` (CIFAR), or float32 `[N, 4]` features in cm (Iris); y is int32 `[N]`.

    Raises:
        ValueError: unknown `name` or `split`.
        DatasetError: `data_dir` is not a folder, the dataset is nowhere to be found, or a file
          found is broken.
    """
    if name not in NAMES:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {list(NAMES)}.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLITS)}.")
    if name == "iris":
        x, y = _load_iris()[split]
        return x[:], y[:]  # Views: a caller cannot flip a view of a read-only base writable.
    check_data_dir(data_dir)
    part = "test" if split == "test" else "train"
    x, y, source = _find_and_read(name, part, data_dir)
    if split == "test":
        return x[:], y[:]
    num_validation = VALIDATION_SIZES[name]
    if len(x) <= num_validation:
        raise DatasetError(f"{source}: only {len(x)} {name} training examples, not more than "
                           f"the {num_validation} held out for validation; use the complete "
                           "official training files.")
    cut = len(x) - num_validation
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
