"""The shipped MNIST optimizer against tuned Adam, on the same test problems and batches."""

import numpy as np
import pytest

import configs
import meta
from conftest import REPO_ROOT, shared_path

# Adam's learning rate from the grid search of reproduce.sh (results/table.md).
ADAM_LEARNING_RATE = 0.03
EPOCHS = 20  # The losses of single epochs spread by about 0.05.


@pytest.mark.slow
def test_shipped_mnist_l2l_beats_tuned_adam_at_step_100():
    data_dir = str(shared_path("data", "mnist"))
    config = configs.get_config("mnist", "test", data_dir)
    net_config = configs.with_saved_paths(config.net_config,
                                       str(REPO_ROOT / "saved_optimizers" / "mnist"))
    learned = meta.MetaOptimizer(**net_config).meta_loss(config.problem, 100)
    adam = meta.BaselineUnroll(config.problem, "Adam", ADAM_LEARNING_RATE, 100)

    def mean_final_loss(unroll):
        seeds = [meta.epoch_seed(0, meta.TEST, e) for e in range(EPOCHS)]
        return np.mean([meta.run_epoch(unroll, 1, seed).final_loss for seed in seeds])

    l2l_loss, adam_loss = mean_final_loss(learned), mean_final_loss(adam)
    assert l2l_loss < adam_loss, (l2l_loss, adam_loss)  # Measured: 0.281 against 0.304.
    assert l2l_loss < 0.30  # The paper's LSTM: about 0.25 (its figure, +-10%).
