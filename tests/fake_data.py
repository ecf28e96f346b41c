"""Small dataset files in the real formats (IDX, CIFAR binary), written by the tests."""

import gzip

import numpy as np

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array, magic=None):
    """An uint8 array in IDX format: magic `0x000008<ndim>`, big-endian dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path, array, gz=False, **kwargs):
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def cifar_bytes(images, labels, coarse=None):
    """CIFAR records from HWC images: label byte(s), then the R, G and B planes, each 32x32."""
    images = np.asarray(images, dtype=np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    label_columns = [labels] if coarse is None else [coarse, labels]
    label_bytes = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([label_bytes, planes], axis=1).tobytes()


def random_images(num, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(num,) + shape, dtype=np.uint8)


def make_mnist(folder, num_train=12, num_test=5, gz=True, seed=0):
    """Writes the 4 standard MNIST files in `folder`; returns (x_train, y_train, x_test, y_test)."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, x_test = random_images(num_train, (28, 28), seed), random_images(num_test, (28, 28),
                                                                               seed + 1)
    y_train, y_test = np.arange(num_train) % 10, (np.arange(num_test) * 3) % 10
    suffix = ".gz" if gz else ""
    for base, array in zip(MNIST_FILES, (x_train, y_train, x_test, y_test)):
        write_idx(folder / (base + suffix), array, gz=gz)
    return x_train, y_train, x_test, y_test
