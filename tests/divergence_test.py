"""learned_optimizer.DivergenceWarning: a steeply rising loss in Keras is said, with its remedy."""

import keras
import numpy as np
import pytest

import learned_optimizer


def _fit(hidden, activation, learning_rate=1.0, **options):
    rng = np.random.default_rng(0)
    x = (rng.random([2048, 784]) < 0.1).astype(np.float32)  # Sparse pixels, as MNIST's.
    y = (x @ np.random.default_rng(1).normal(size=[784, 10])).argmax(axis=1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,))]
                             + [keras.layers.Dense(n, activation=activation) for n in hidden]
                             + [keras.layers.Dense(10)])
    model.compile(optimizer=learned_optimizer.LearnedOptimizer("mnist",
                                                              learning_rate=learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lines = []
    callback = learned_optimizer.DivergenceWarning(log=lines.append, **options)
    history = model.fit(x, y, batch_size=128, epochs=3, verbose=0, callbacks=[callback])
    return history.history["loss"], lines, model


def test_a_relu_mlp_under_the_mnist_optimizer_is_said_once_with_the_remedy():
    losses, lines, _ = _fit((64, 32), "relu")
    assert losses[-1] > 10 * losses[0]  # The documented case: the loss climbs.
    assert len(lines) == 1
    assert "Lower LearnedOptimizer's learning_rate (now 1)" in lines[0]
    assert 'LearnedOptimizer("general")' in lines[0]


def test_the_remedy_works_and_the_home_model_is_not_warned():
    losses, lines, _ = _fit((64, 32), "relu", learning_rate=0.1)  # The remedy it names.
    assert not lines and losses[-1] < losses[0]
    losses, lines, _ = _fit((20,), "sigmoid")  # The MNIST optimizer's own kind of model.
    assert not lines and losses[-1] < losses[0]


def test_stop_ends_training_and_bad_factor():
    losses, lines, model = _fit((64, 32), "relu", stop=True)
    assert len(lines) == 1 and model.stop_training
    assert len(losses) < 3
    with pytest.raises(ValueError, match="factor must be a number above 1, got 0.5"):
        learned_optimizer.DivergenceWarning(factor=0.5)
