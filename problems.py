"""Optimizee problems: pure loss functions whose parameters the meta-optimizer substitutes.

A `Problem` is a tuple of pure functions of explicit seeds, so that every call is reproducible and
safe inside compiled (and XLA) code: `init` draws fresh parameters for an epoch, `sample` draws
the data for one optimizee step (a batch, or the fixed instance of an analytic problem), and
`loss` maps parameters and data to a scalar. Seeds are `int32 [2]` tensors.
"""

from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf


class Problem(NamedTuple):
    """An optimizee: `loss(init(seed), sample(seed, step))` is the loss at the start of an epoch.

    Attributes:
      names: one name per parameter tensor, for `net_assignments`.
      init: `seed -> [params]`, the initial parameters of an epoch.
      sample: `(seed, step) -> data` for optimizee step `step` (int32) of the epoch `seed`.
      loss: `(params, data) -> scalar`.
      sample_validation: like `sample`, but from held-out data (a validation split of the
        training data) for the validation meta-objective; None for problems without data.
    """
    names: Tuple[str, ...]
    init: Callable
    sample: Callable
    loss: Callable
    sample_validation: Optional[Callable] = None


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


def ensemble(problems: Sequence[Problem], weights: Optional[Sequence[float]] = None):
    """The (weighted) sum of independent problems; parameter names get a `problem_<i>/` prefix."""
    problems = list(problems)
    if not problems:
        raise ValueError("ensemble needs at least one problem.")
    if weights is not None and len(weights) != len(problems):
        raise ValueError(f"ensemble got {len(weights)} weights for {len(problems)} problems.")
    weights = [1.0] * len(problems) if weights is None else [float(w) for w in weights]
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
