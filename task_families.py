"""Task families: distributions of problems to meta-train a learned optimizer that generalises.

A family is a fixed pool of task shapes (architecture, widths, batch size), datasets and
activations, and a rule that draws, from an instance's seed, which shapes the instance has.
Every instance is then `(problem, seed)`: the problem of its shapes, and the seed of its dataset,
activation, initial weights and batches (drawn inside the compiled unroll, so that one graph
serves them all). The pool is small so that compiling stays bounded: one compiled unroll per
shape, built the first time it is drawn (as google/learned_optimization's parametric task
families sample configurations from fixed ranges with `TaskFamily.sample(key)`).

The families hold none of the held-out models that `docs/results.md` evaluates a general
optimizer on (a ReLU MLP 784-64-32-10 on MNIST and on Fashion-MNIST, a tanh MLP 784-128-10, a
CNN with 8 and 16 channels, the paper's sigmoid MLP 784-20-10): no family configuration has
those widths (20, 32, 64) or channels.

Importing this module does not import TensorFlow: configurations are plain tuples, and a
problem is built when asked for.
"""

import importlib
from typing import Dict, NamedTuple, Tuple

import numpy as np

import util

PREFIX = "family:"


class TaskConfig(NamedTuple):
    """The shapes of one task of a family: one compiled unroll serves all its instances."""
    architecture: str  # "mlp" (hidden widths) or "conv" (channels, then a linear layer).
    layers: Tuple[int, ...]
    batch_size: int

    @property
    def name(self):
        """E.g. `mlp-96x24-b64`."""
        return f"{self.architecture}-{'x'.join(map(str, self.layers))}-b{self.batch_size}"


class TaskFamily(NamedTuple):
    """A named pool of task shapes, and the datasets and activations every instance draws from.

    An instance's seed draws its shapes in Python (`draw`: which compiled unroll runs it) and,
    inside the compiled unroll, its dataset and activation (`problems.mlp` with lists), its
    initial weights (as Keras initialises Dense and Conv2D) and its batches.
    """
    name: str
    description: str
    datasets: Tuple[str, ...]
    activations: Tuple[str, ...]
    pool: Tuple[TaskConfig, ...]

    def draw(self, seed):
        """The pool index of the instance of seed `seed` (two ints): uniform over the pool."""
        entropy = [int(x) & 0xFFFFFFFF for x in np.asarray(seed).ravel()] + [0x7A5C]
        return int(np.random.default_rng(np.random.SeedSequence(entropy))
                   .integers(len(self.pool)))

    def problem(self, index, split="train", data_dir=None, loader=None):
        """The `problems.Problem` of pool entry `index` on `split`."""
        problems = importlib.import_module("problems")
        config = self.pool[index]
        if config.architecture == "conv":
            return problems.convnet(self.datasets, config.layers, self.activations,
                                    config.batch_size, split, data_dir, loader)
        return problems.mlp(self.datasets, config.layers, self.activations, config.batch_size,
                            split, data_dir, loader, initialization="glorot")


def _pool(architectures, batch_sizes):
    return tuple(TaskConfig(a, layers, b) for a, layers in architectures for b in batch_sizes)


# MLPs of depth 1-3 and widths 16-128 (never 20, 32 or 64: the held-out models' widths) and small
# convnets (never 8 and 16 channels); each on MNIST or Fashion-MNIST, with one of four
# activations, in batches of 32 or 128.
_MLPS = (("mlp", (16,)), ("mlp", (48,)), ("mlp", (128,)), ("mlp", (96, 24)),
         ("mlp", (48, 48)), ("mlp", (24, 24, 24)))
_CONVS = (("conv", (4, 8)), ("conv", (12,)))
_IMAGES = ("mnist", "fashion_mnist")
_ACTIVATIONS = ("sigmoid", "relu", "tanh", "gelu")
FAMILIES: Dict[str, TaskFamily] = {
    "mlp_conv": TaskFamily(
        "mlp_conv", "MLPs (depth 1-3, widths 16-128) and small convnets on MNIST or "
        "Fashion-MNIST; sigmoid, relu, tanh or gelu; batches of 32 or 128", _IMAGES,
        _ACTIVATIONS, _pool(_MLPS + _CONVS, (32, 128))),
    "mlp": TaskFamily(
        "mlp", "MLPs (depth 1-3, widths 16-128) on MNIST or Fashion-MNIST; sigmoid, relu, "
        "tanh or gelu; batches of 32 or 128", _IMAGES, _ACTIVATIONS, _pool(_MLPS, (32, 128))),
}


def is_family(problem_name):
    """Whether a --problem names a task family (`family:<name>`)."""
    return isinstance(problem_name, str) and problem_name.startswith(PREFIX)


def names():
    """The --problem names of the families."""
    return tuple(PREFIX + name for name in FAMILIES)


def get(problem_name):
    """The family a --problem names.

    Raises:
      util.FlagError: no such family (the message lists them).
    """
    name = problem_name[len(PREFIX):] if is_family(problem_name) else problem_name
    if name not in FAMILIES:
        raise util.FlagError(f"Unknown task family {problem_name!r}; expected one of "
                             f"{', '.join(names())}.")
    return FAMILIES[name]


class FamilyProblems:
    """The problems of a family's pool on one split, each built once, when first drawn.

    Building a problem loads its datasets (cached by `datasets`) and holds them as tensors.
    """

    def __init__(self, family, split="train", data_dir=None, loader=None):
        self.family, self._split, self._data_dir, self._loader = family, split, data_dir, loader
        self._built = {}

    @property
    def held_out(self):
        """Whether the instances have held-out (validation) batches: on the training split."""
        return self._split == "train"

    def problem(self, index):
        if index not in self._built:
            self._built[index] = self.family.problem(index, self._split, self._data_dir,
                                                     self._loader)
        return self._built[index]

    def instances(self, seeds):
        """`[(pool index, problem)]` of each instance seed (`[instances, 2]`)."""
        indices = [self.family.draw(seed) for seed in np.asarray(seeds).reshape(-1, 2)]
        return [(index, self.problem(index)) for index in indices]
