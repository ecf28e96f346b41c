"""Tests for datasets.py: the file formats, their checks, the search order and the splits.

Plain pytest rather than tf.test.TestCase: the module under test needs no TensorFlow, and not
importing it keeps this file fast. Generated files use the real formats, written by the small
writers below; tensorflow_datasets is always replaced by a fake so that no test downloads.
"""

import gzip
import socket
import sys
import time
import types

import numpy as np
import pytest

import datasets
from conftest import shared_path
from fake_data import (MNIST_FILES, cifar_bytes, idx_bytes, make_mnist, random_images,
                       write_idx)

@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No cached reads, no L2L_DATA_DIR, no system folders, and no real tensorflow_datasets."""
    for cached in (datasets._read_part, datasets._read_tfds):
        cached.cache_clear()
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    empty = tmp_path / "empty_system_dir"
    empty.mkdir()
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion_mnist": (str(empty),)})
    # A None entry makes `import tensorflow_datasets` raise ImportError: nothing downloads.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    yield
    for cached in (datasets._read_part, datasets._read_tfds):
        cached.cache_clear()


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# read_idx.

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 5, 4)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    array = random_images(shape[0], shape[1:], seed=1)
    got = datasets.read_idx(write_idx(tmp_path / "f", array, gz=gz))
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, array)
    assert not got.flags.writeable


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    gz_named_raw = write_idx(tmp_path / "labels.gz", array, gz=False)
    raw_named_gz = write_idx(tmp_path / "labels", array, gz=True)
    np.testing.assert_array_equal(datasets.read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(datasets.read_idx(raw_named_gz), array)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut, match", [(1, "truncated: 11 data bytes"),
                                        (16, "truncated IDX header"),
                                        (26, "2 bytes is too short for an IDX header")])
def test_read_idx_truncated(tmp_path, gz, cut, match):
    data = idx_bytes(np.zeros((3, 2, 2)))[:-cut]  # 16 header bytes + 12 data bytes, cut.
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(datasets.DatasetError, match=match) as excinfo:
        datasets.read_idx(path)
    assert_one_line_error(excinfo, str(path))


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4)) + b"\x00\x00\x00")
    with pytest.raises(datasets.DatasetError, match="3 unexpected trailing bytes") as excinfo:
        datasets.read_idx(path)
    assert_one_line_error(excinfo, str(path))


@pytest.mark.parametrize("magic", [0x00000802, 0x00000D03, 0x08030000, 0x12345678])
def test_read_idx_wrong_magic(tmp_path, magic):
    path = write_idx(tmp_path / "images", np.zeros((2, 3, 3)), magic=magic)
    with pytest.raises(datasets.DatasetError, match=f"magic number 0x{magic:08X}") as excinfo:
        datasets.read_idx(path)
    assert_one_line_error(excinfo, str(path), "0x00000803", "0x00000801")


@pytest.mark.parametrize("damage", ["flip", "cut", "bad_crc"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
    data = bytearray(gzip.compress(idx_bytes(random_images(4, (28, 28), seed=2))))
    if damage == "flip":  # Garbles the deflate stream itself.
        data[20:40] = bytes(b ^ 0xFF for b in data[20:40])
    elif damage == "cut":
        data = data[:len(data) // 2]
    else:  # The CRC-32 is the trailer's first 4 bytes.
        data[-8] ^= 0xFF
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match="corrupt or truncated gzip") as excinfo:
        datasets.read_idx(path)
    assert_one_line_error(excinfo, str(path))


# read_cifar_binary.

@pytest.mark.parametrize("num_label_bytes", [1, 2])
def test_cifar_pixel_layout(tmp_path, num_label_bytes):
    # Bytes laid out by hand, independent of the writer: record = labels, R plane, G, B.
    row, col, channel, value = 3, 17, 2, 200
    record = bytearray(num_label_bytes + 3072)
    record[num_label_bytes - 1] = 7
    record[num_label_bytes + channel * 1024 + row * 32 + col] = value
    path = tmp_path / "batch.bin"
    path.write_bytes(bytes(record) * 2)
    images, labels = datasets.read_cifar_binary(path, num_label_bytes)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [7, 7])
    assert images[0, row, col, channel] == value and images[1, row, col, channel] == value
    assert images.sum() == 2 * value  # Every other pixel is zero.


def test_cifar10_round_trip(tmp_path):
    images = random_images(5, (32, 32, 3), seed=3)
    labels = np.array([0, 9, 3, 3, 1])
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(cifar_bytes(images, labels))
    got_images, got_labels = datasets.read_cifar_binary(path, 1)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_cifar100_uses_fine_label(tmp_path):
    images = random_images(3, (32, 32, 3), seed=4)
    fine, coarse = np.array([99, 0, 42]), np.array([19, 4, 0])
    path = tmp_path / "train.bin"
    path.write_bytes(cifar_bytes(images, fine, coarse=coarse))
    got_images, got_labels = datasets.read_cifar_binary(path, 2)
    np.testing.assert_array_equal(got_labels, fine)
    np.testing.assert_array_equal(got_images, images)


@pytest.mark.parametrize("size", [0, 3073 * 2 + 1, 3073 * 2 - 100])
def test_cifar_size_not_multiple_of_record(tmp_path, size):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(size))
    with pytest.raises(datasets.DatasetError, match="3073-byte") as excinfo:
        datasets.read_cifar_binary(path, 1)
    assert_one_line_error(excinfo, str(path), f"size {size} bytes")


@pytest.mark.parametrize("num_label_bytes, label_bytes, match", [
    (1, [10], "label 10, outside 0..9"),
    (2, [3, 100], "fine label 100, outside 0..99"),
    (2, [20, 5], "coarse label 20, outside 0..19"),
])
def test_cifar_label_out_of_range(tmp_path, num_label_bytes, label_bytes, match):
    good = bytes(num_label_bytes + 3072)
    bad = bytes(label_bytes) + bytes(3072)
    path = tmp_path / "batch.bin"
    path.write_bytes(good + bad)
    with pytest.raises(datasets.DatasetError, match=f"record 1 has {match}") as excinfo:
        datasets.read_cifar_binary(path, num_label_bytes)
    assert_one_line_error(excinfo, str(path))


def test_cifar_rejects_bad_num_label_bytes(tmp_path):
    with pytest.raises(ValueError, match="num_label_bytes must be 1 .* or 2 .*, got 3"):
        datasets.read_cifar_binary(tmp_path / "unused.bin", 3)


# load: arguments, splits and files.

def test_load_rejects_unknown_name_and_split():
    with pytest.raises(ValueError, match=r"Unknown dataset 'svhn'; expected one of \['mnist'"):
        datasets.load("svhn", "train")
    with pytest.raises(ValueError, match=r"Unknown split 'valid'; expected one of \['train', "
                                         r"'validation', 'test'\]"):
        datasets.load("mnist", "valid")


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_splits(tmp_path, monkeypatch, gz):
    monkeypatch.setitem(datasets.VALIDATION_SIZES, "mnist", 4)
    x_train, y_train, x_test, y_test = make_mnist(tmp_path, num_train=12, num_test=5, gz=gz)
    splits = {s: datasets.load("mnist", s, data_dir=tmp_path) for s in datasets.SPLITS}
    assert [len(splits[s][0]) for s in datasets.SPLITS] == [8, 4, 5]
    for x, y in splits.values():
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28, 1) and y.dtype == np.int32
        assert not x.flags.writeable and not y.flags.writeable
    # Validation is the last 4 training examples: train + validation is the training file.
    np.testing.assert_array_equal(
        np.concatenate([splits["train"][0], splits["validation"][0]])[..., 0], x_train)
    np.testing.assert_array_equal(
        np.concatenate([splits["train"][1], splits["validation"][1]]), y_train)
    np.testing.assert_array_equal(splits["test"][0][..., 0], x_test)
    np.testing.assert_array_equal(splits["test"][1], y_test)


def test_load_reads_training_files_once_and_guards_the_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.VALIDATION_SIZES, "mnist", 4)
    make_mnist(tmp_path)
    reads = []
    real_read_idx = datasets.read_idx
    monkeypatch.setattr(datasets, "read_idx", lambda path: reads.append(path) or
                        real_read_idx(path))
    x_train, _ = datasets.load("mnist", "train", data_dir=tmp_path)
    datasets.load("mnist", "validation", data_dir=str(tmp_path))
    assert len(reads) == 2  # One images and one labels file, for both splits.
    with pytest.raises(ValueError, match="read-only"):
        x_train[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        x_train.flags.writeable = True


def test_load_too_few_training_examples(tmp_path):
    make_mnist(tmp_path, num_train=12)
    with pytest.raises(datasets.DatasetError, match="only 12 mnist training examples, not more "
                                                    "than the 10000 held out") as excinfo:
        datasets.load("mnist", "train", data_dir=tmp_path)
    assert_one_line_error(excinfo, str(tmp_path))


def test_load_cifar10_concatenates_batches_in_order(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.VALIDATION_SIZES, "cifar10", 3)
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"  # As the official archive unpacks.
    folder.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        images, labels = random_images(2, (32, 32, 3), seed=10 + i), np.array([i, 9 - i])
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_bytes(images, labels))
        batches.append((images, labels))
    test_images = random_images(4, (32, 32, 3), seed=20)
    (folder / "test_batch.bin").write_bytes(cifar_bytes(test_images, np.array([0, 1, 2, 3])))
    x_train, y_train = datasets.load("cifar10", "train", data_dir=tmp_path)
    x_val, y_val = datasets.load("cifar10", "validation", data_dir=tmp_path)
    x_test, y_test = datasets.load("cifar10", "test", data_dir=tmp_path)
    assert (len(x_train), len(x_val), len(x_test)) == (7, 3, 4)
    assert x_train.shape[1:] == (32, 32, 3) and y_train.dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([y_train, y_val]),
                                  [1, 8, 2, 7, 3, 6, 4, 5, 5, 4])
    np.testing.assert_array_equal(np.concatenate([x_train, x_val]),
                                  np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(x_test, test_images)


def test_load_cifar100_from_archive_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.VALIDATION_SIZES, "cifar100", 2)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    images = random_images(6, (32, 32, 3), seed=5)
    fine, coarse = np.array([0, 99, 50, 7, 8, 9]), np.array([0, 19, 10, 1, 1, 1])
    (folder / "train.bin").write_bytes(cifar_bytes(images, fine, coarse=coarse))
    (folder / "test.bin").write_bytes(cifar_bytes(images[:2], fine[:2], coarse=coarse[:2]))
    x_val, y_val = datasets.load("cifar100", "validation", data_dir=tmp_path)
    np.testing.assert_array_equal(y_val, [8, 9])
    np.testing.assert_array_equal(x_val, images[4:])
    assert len(datasets.load("cifar100", "train", data_dir=tmp_path)[0]) == 4


def test_load_missing_partner_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(datasets.DatasetError, match="lacks t10k-labels-idx1-ubyte") as excinfo:
        datasets.load("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, str(tmp_path))


def test_load_image_label_count_mismatch(tmp_path):
    make_mnist(tmp_path, num_test=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6), gz=True)
    with pytest.raises(datasets.DatasetError, match="has 5 images but .* has 6 labels") as excinfo:
        datasets.load("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def test_load_mnist_label_out_of_range(tmp_path):
    make_mnist(tmp_path, num_test=5)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", [1, 2, 10, 3, 4], gz=True)
    with pytest.raises(datasets.DatasetError, match="label 10 at index 2 is outside 0..9"):
        datasets.load("mnist", "test", data_dir=tmp_path)


def test_load_mnist_wrong_image_size(tmp_path):
    make_mnist(tmp_path, num_test=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 32, 32)), gz=True)
    with pytest.raises(datasets.DatasetError, match=r"images have shape \[32, 32, 1\], "
                                                    r"expected \[28, 28, 1\]"):
        datasets.load("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize("held, asked", [("mnist", "fashion_mnist"), ("fashion_mnist", "mnist")])
@pytest.mark.parametrize("split, part, labels_file", [("test", "test", "t10k-labels-idx1-ubyte.gz"),
                                                     ("validation", "train",
                                                      "train-labels-idx1-ubyte.gz")])
def test_load_refuses_the_other_mnist_datasets_files(tmp_path, held, asked, split, part,
                                                     labels_file):
    # The two datasets' files share names; the official files' first labels tell them apart.
    make_mnist(tmp_path, num_train=12, num_test=12)
    first = datasets._FIRST_LABELS[held, part]
    write_idx(tmp_path / labels_file, [*first, 0, 1], gz=True)
    if split == "test":  # The same files load as what they are (validation needs 10,000 more).
        datasets.load(held, split, data_dir=tmp_path)
    with pytest.raises(datasets.DatasetError) as excinfo:
        datasets.load(asked, split, data_dir=tmp_path)
    assert_one_line_error(excinfo, f"holds {held}'s files", "DIR/mnist/ and DIR/fashion_mnist/")


def test_real_mnist_files_are_not_taken_for_fashion_mnist():
    folder = shared_path("data", "mnist")
    with pytest.raises(datasets.DatasetError, match="holds mnist's files"):
        datasets.load("fashion_mnist", "test", data_dir=folder)


def test_load_swapped_labels_and_images(tmp_path):
    make_mnist(tmp_path, num_test=5)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(5), gz=True)
    with pytest.raises(datasets.DatasetError, match="has 1 dimensions, expected 3"):
        datasets.load("mnist", "test", data_dir=tmp_path)


# load: where it looks.

def test_search_name_subfolder_beats_data_dir(tmp_path):
    _, _, in_subfolder, _ = make_mnist(tmp_path / "mnist", seed=10)
    make_mnist(tmp_path, seed=20)
    x, _ = datasets.load("mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x[..., 0], in_subfolder)


def test_search_data_dir_itself(tmp_path):
    (tmp_path / "mnist").mkdir()  # An empty subfolder is no hit.
    _, _, x_test, _ = make_mnist(tmp_path, seed=30, gz=False)
    np.testing.assert_array_equal(datasets.load("mnist", "test", data_dir=tmp_path)[0][..., 0],
                                  x_test)


def test_search_env_var_when_no_data_dir(tmp_path, monkeypatch):
    _, _, x_test, _ = make_mnist(tmp_path / "env" / "mnist", seed=40)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    np.testing.assert_array_equal(datasets.load("mnist", "test")[0][..., 0], x_test)


def test_search_data_dir_beats_env_var(tmp_path, monkeypatch):
    _, _, from_flag, _ = make_mnist(tmp_path / "flag", seed=50)
    make_mnist(tmp_path / "env", seed=60)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    x, _ = datasets.load("mnist", "test", data_dir=tmp_path / "flag")
    np.testing.assert_array_equal(x[..., 0], from_flag)


def test_search_env_var_when_data_dir_lacks_dataset(tmp_path, monkeypatch):
    (tmp_path / "flag").mkdir()
    _, _, from_env, _ = make_mnist(tmp_path / "env", seed=70)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    x, _ = datasets.load("mnist", "test", data_dir=tmp_path / "flag")
    np.testing.assert_array_equal(x[..., 0], from_env)


def test_search_system_dir_last(tmp_path, monkeypatch):
    _, _, x_test, _ = make_mnist(tmp_path / "system", seed=80)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion_mnist": (str(tmp_path / "system"),)})
    np.testing.assert_array_equal(datasets.load("fashion_mnist", "test")[0][..., 0], x_test)
    with pytest.raises(datasets.DatasetError, match="'mnist' not found"):
        datasets.load("mnist", "test")  # The system folder is Fashion-MNIST's only.


def test_broken_present_file_raises_instead_of_falling_through(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist")
    make_mnist(tmp_path)  # Good copies in data_dir itself ...
    make_mnist(tmp_path / "env")  # ... and under the environment variable.
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    broken = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-5])
    with pytest.raises(datasets.DatasetError, match="corrupt or truncated gzip") as excinfo:
        datasets.load("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, str(broken))


# load: the last resort, tensorflow_datasets.

def fake_tfds(prepared=True, load=None):
    """A stand-in tensorflow_datasets module; records the arguments of each `load` call."""
    module = types.ModuleType("tensorflow_datasets")
    module.calls = []
    module.builder = lambda name, data_dir=None: types.SimpleNamespace(
        is_prepared=lambda: prepared)

    def fake_load(name, **kwargs):
        module.calls.append((name, kwargs))
        return load(name, **kwargs)

    module.load = fake_load
    module.as_numpy = lambda tree: tree
    return module


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_dataset_error_without_tfds(name):
    with pytest.raises(datasets.DatasetError) as excinfo:
        datasets.load(name, "train")
    assert_one_line_error(excinfo, f"Dataset {name!r} not found", "--data_dir",
                          datasets.ENV_VAR, "tensorflow_datasets is not importable",
                          "go online")
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    if name == "fashion_mnist":
        assert "dataset-fashion-mnist" in str(excinfo.value)
    if name == "mnist":
        assert "train-images-idx3-ubyte[.gz]" in str(excinfo.value)
    if name == "cifar10":
        assert "data_batch_1.bin" in str(excinfo.value)


def test_missing_dataset_error_lists_searched_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(datasets.DatasetError) as excinfo:
        datasets.load("cifar10", "test", data_dir=tmp_path / "empty")
    assert_one_line_error(excinfo, f"{tmp_path / 'empty' / 'cifar10'} (absent)",
                          f"{tmp_path / 'empty' / 'cifar-10-batches-bin'} (absent)")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_data_dir_that_is_no_folder_is_refused_before_any_other_source(tmp_path, monkeypatch,
                                                                          name):
    make_mnist(tmp_path / "env")  # A source that would otherwise be used.
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env"))
    module = fake_tfds(prepared=True, load=None)  # Nor is tensorflow_datasets asked.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    with pytest.raises(datasets.DatasetError) as excinfo:
        datasets.load(name, "test", data_dir=tmp_path / "typo")
    assert_one_line_error(excinfo, f"--data_dir {tmp_path / 'typo'} does not exist; fix the "
                                   f"path, or create the folder for tensorflow_datasets")
    (tmp_path / "file").write_text("x")
    with pytest.raises(datasets.DatasetError, match="is not a folder; pass the folder that holds"):
        datasets.load(name, "train", data_dir=tmp_path / "file")
    assert module.calls == []


def test_tfds_any_failure_becomes_one_line(monkeypatch):
    def broken_load(name, **kwargs):
        raise RuntimeError("download failed\nwith a long\ntraceback")

    module = fake_tfds(prepared=True, load=broken_load)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    with pytest.raises(datasets.DatasetError) as excinfo:
        datasets.load("mnist", "test")
    assert_one_line_error(excinfo, "tensorflow_datasets failed (RuntimeError: download failed)",
                          "--data_dir", datasets.ENV_VAR)
    assert len(module.calls) == 1


def test_tfds_offline_fails_fast_without_downloading(monkeypatch):
    probed = []
    module = fake_tfds(prepared=False, load=None)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    monkeypatch.setattr(datasets, "_reachable", lambda host, port: probed.append(host) or False)
    with pytest.raises(datasets.DatasetError, match="no prepared copy and www.cs.toronto.edu is "
                                                    "unreachable") as excinfo:
        datasets.load("cifar100", "train")
    assert_one_line_error(excinfo, "--data_dir", datasets.ENV_VAR)
    assert probed == ["www.cs.toronto.edu"] and module.calls == []


def test_reachable_on_loopback_only():
    with socket.socket() as server:  # Loopback only: tests never touch the network.
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert datasets._reachable("127.0.0.1", port, timeout=2.0)
    start = time.monotonic()
    assert not datasets._reachable("127.0.0.1", port, timeout=2.0)  # Now closed: refused.
    assert time.monotonic() - start < 2.0


def test_tfds_provides_splits(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.VALIDATION_SIZES, "fashion_mnist", 2)
    train = random_images(5, (28, 28, 1), seed=90), np.array([0, 1, 2, 3, 9], np.int64)
    test = random_images(3, (28, 28, 1), seed=91), np.array([4, 5, 6], np.int64)
    module = fake_tfds(prepared=True, load=lambda name, split, **kw: {"train": train,
                                                                       "test": test}[split])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
    x_train, y_train = datasets.load("fashion_mnist", "train", data_dir=tmp_path)
    x_val, y_val = datasets.load("fashion_mnist", "validation", data_dir=tmp_path)
    x_test, y_test = datasets.load("fashion_mnist", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(x_train, train[0][:3])
    np.testing.assert_array_equal(y_val, [3, 9])
    np.testing.assert_array_equal(x_test, test[0])
    assert y_train.dtype == np.int32 and not x_val.flags.writeable
    assert [c[1]["split"] for c in module.calls] == ["train", "test"]  # Train read once.
    assert module.calls[0] == ("fashion_mnist", {"split": "train", "data_dir": str(tmp_path),
                                                 "batch_size": -1, "as_supervised": True})


def test_tfds_result_is_checked(monkeypatch):
    bad = random_images(3, (32, 32, 3), seed=92), np.zeros(3, np.int64)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        fake_tfds(prepared=True, load=lambda name, **kw: bad))
    with pytest.raises(datasets.DatasetError, match=r"tensorflow_datasets mnist test: images "
                                                    r"have shape \[32, 32, 3\]"):
        datasets.load("mnist", "test")


# Iris.

FISHER_MEANS = (5.843, 3.057, 3.758, 1.199)


def test_iris_facts():
    parts = [datasets.load("iris", s) for s in datasets.SPLITS]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    assert x.shape == (150, 4) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [50, 50, 50])
    np.testing.assert_array_equal(np.round(x.astype(np.float64).mean(axis=0), 3), FISHER_MEANS)
    features, labels = datasets._parse_iris(datasets.IRIS_PATH)
    np.testing.assert_array_equal(features[0], np.float32([5.1, 3.5, 1.4, 0.2]))  # Fisher's 1st.
    assert labels[0] == 0 and labels[50] == 1 and labels[100] == 2


def test_iris_split_is_stratified_disjoint_and_fixed():
    features, labels = datasets._parse_iris(datasets.IRIS_PATH)
    indices = datasets._iris_split_indices(labels)
    sizes = {s: len(i) for s, i in indices.items()}
    assert sizes == {"train": 90, "validation": 30, "test": 30}
    for split, idx in indices.items():
        expected = datasets.IRIS_SPLIT_PER_CLASS[split]
        np.testing.assert_array_equal(np.bincount(labels[idx]), [expected] * 3)
        x, y = datasets.load("iris", split)
        np.testing.assert_array_equal(x, features[idx])
        np.testing.assert_array_equal(y, labels[idx])
    everything = np.concatenate(list(indices.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(150))  # Disjoint, complete.
    # Pinned: RandomState(0) is frozen across numpy versions, so the split never moves.
    np.testing.assert_array_equal(indices["validation"][:5], [1, 5, 6, 12, 17])
    np.testing.assert_array_equal(indices["test"][:5], [0, 3, 9, 19, 21])
    np.testing.assert_array_equal(datasets._iris_split_indices(labels)["train"],
                                  indices["train"])


def test_iris_ignores_global_rng():
    np.random.seed(123)
    first = datasets._iris_split_indices(datasets._parse_iris(datasets.IRIS_PATH)[1])
    np.random.seed(456)
    second = datasets._iris_split_indices(datasets._parse_iris(datasets.IRIS_PATH)[1])
    for split in datasets.SPLITS:
        np.testing.assert_array_equal(first[split], second[split])


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows[:-1], "149 data rows, expected 150"),
    (lambda rows: rows[:3] + ["5.0,3.0,1.0"] + rows[4:], "is not 4 numbers and a class"),
    (lambda rows: rows[:3] + ["5.0,3.0,1.0,0.2,setosa"] + rows[4:], "is not 4 numbers"),
    (lambda rows: rows[:-1] + ["5.9,3.0,5.1,1.8,0"], r"class counts \[51, 50, 49\]"),
])
def test_iris_malformed_csv(tmp_path, edit, match):
    lines = datasets.IRIS_PATH.read_text().splitlines()
    comments = [line for line in lines if line.startswith("#")]
    header, rows = lines[len(comments)], lines[len(comments) + 1:]
    path = tmp_path / "iris.csv"
    path.write_text("\n".join(comments + [header] + edit(rows)) + "\n")
    with pytest.raises(datasets.DatasetError, match=match) as excinfo:
        datasets._parse_iris(path)
    assert_one_line_error(excinfo, str(path))


# Real data, when present.

def test_real_mnist():
    folder = shared_path("data", "mnist")
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = [
        datasets.load("mnist", s, data_dir=folder) for s in datasets.SPLITS]
    assert (len(x_train), len(x_val), len(x_test)) == (50_000, 10_000, 10_000)
    np.testing.assert_array_equal(y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    x_all, y_all = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    assert round(float(x_all.mean(dtype=np.float64)), 4) == 33.3184
    assert round(float(x_test.mean(dtype=np.float64)), 4) == 33.7912
    np.testing.assert_array_equal(
        np.bincount(y_all), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    assert x_train.shape[1:] == (28, 28, 1) and y_test.dtype == np.int32


def test_real_fashion_mnist_from_debian_package(monkeypatch):
    folder = datasets._FASHION_MNIST_DEBIAN_DIR
    if not all((datasets.pathlib.Path(folder) / (f + ".gz")).is_file() for f in MNIST_FILES):
        pytest.skip(f"{folder} is absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion_mnist": (folder,)})
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = [
        datasets.load("fashion_mnist", s) for s in datasets.SPLITS]
    assert (len(x_train), len(x_val), len(x_test)) == (50_000, 10_000, 10_000)
    np.testing.assert_array_equal(np.bincount(np.concatenate([y_train, y_val])), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert x_test.shape[1:] == (28, 28, 1)
