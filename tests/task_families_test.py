"""Tests for task_families.py: pools, draws, and the held-out models kept out of the families."""

import numpy as np
import pytest

import meta
import task_families
import util

HELD_OUT_WIDTHS = {20, 32, 64}
HELD_OUT_CHANNELS = {(8, 16)}


@pytest.mark.parametrize("name", sorted(task_families.FAMILIES))
def test_families_hold_none_of_the_held_out_models(name):
    family = task_families.FAMILIES[name]
    for config in family.pool:
        if config.architecture == "mlp":
            assert not HELD_OUT_WIDTHS & set(config.layers), config
        else:
            assert tuple(config.layers) not in HELD_OUT_CHANNELS, config
    assert len(family.pool) <= 24  # One compiled unroll per configuration: bounded.


def test_draws_are_reproducible_and_cover_the_pool():
    family = task_families.FAMILIES["mlp_conv"]
    seeds = [meta.epoch_seed(0, meta.TRAIN, e, b) for e in range(200) for b in range(4)]
    draws = [family.draw(seed) for seed in seeds]
    assert draws == [family.draw(seed) for seed in seeds]
    counts = np.bincount(draws, minlength=len(family.pool))
    assert counts.min() > 0
    # Uniform: each count within 4 standard deviations of 800 / pool.
    expected = len(draws) / len(family.pool)
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))


def test_names_and_unknown_family():
    assert "family:mlp_conv" in task_families.names()
    assert task_families.get("family:mlp").name == "mlp"
    with pytest.raises(util.FlagError, match=r"Unknown task family 'family:cnn'; expected one "
                                             r"of family:mlp_conv, family:mlp"):
        task_families.get("family:cnn")


def test_config_names():
    config = task_families.TaskConfig("mlp", (96, 24), 64)
    assert config.name == "mlp-96x24-b64"
