"""The plateau warning (train.py and meta.fit) and meta.fit, the library's epoch loop."""

import os

import numpy as np
import pytest

import fault_test
import meta
import problems

_QUICK_START = ['--net_options={"preprocess_name": "LogAndSign", "preprocess_options": {"k": 5},'
                ' "scale": 0.1}', "--problem=quadratic", "--num_epochs=12", "--num_steps=100",
                "--evaluation_period=100", "--log_period=100", "--plateau_epochs=10"]


def test_plateau_speaks_once_for_a_flat_noisy_loss_and_never_for_a_falling_one():
    rng = np.random.default_rng(0)
    flat = meta.Plateau(epochs=20)
    messages = [flat.update(100 + rng.normal()) for _ in range(40)]
    assert [i for i, m in enumerate(messages) if m] == [19]
    assert "has not moved in 20 epochs" in messages[19]
    falling = meta.Plateau(epochs=20)
    assert not any(falling.update(100 * 0.99**i + rng.normal(scale=0.1)) for i in range(40))
    rising = meta.Plateau(epochs=20)  # Getting worse is learning nothing too.
    assert any(rising.update(100 + i) for i in range(20))
    assert meta.Plateau(epochs=0).update(1.0) is None


@pytest.mark.parametrize("learning_rate, said", [("1e-12", True), ("0.003", False)])
def test_train_says_when_the_meta_loss_does_not_move(learning_rate, said):
    result = fault_test._run("train.py", *_QUICK_START, f"--learning_rate={learning_rate}")
    assert result.returncode == 0, result.stderr
    assert ("Epoch 10: The meta-loss has not moved in 10 epochs" in result.stdout) == said


def test_fit_evaluates_keeps_the_best_and_warns(tmp_path):
    optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_options": {
        "layers": (5,), "preprocess_name": "LogAndSign", "preprocess_options": {"k": 5},
        "scale": 0.1}})
    problem = problems.quadratic(batch_size=8, num_dims=4)
    training = optimizer.meta_minimize(problem, 10, learning_rate=0.003, mode="graph")
    evaluation = optimizer.meta_loss(problem, 20, mode="graph", meta_batch_size=2)
    lines, saved = [], []

    def save(epoch, loss):
        saved.append((epoch, loss))
        optimizer.save(str(tmp_path / "best"))

    best, epoch = meta.fit(training, 2, 30, evaluation=evaluation, evaluation_epochs=4,
                           evaluation_period=10, save=save, plateau_epochs=10, log=lines.append)
    evaluations = [float(line.split("mean final loss ")[1].split()[0])
                   for line in lines if line.startswith("Evaluation")]
    assert len(evaluations) == 3
    assert best == pytest.approx(min(evaluations), rel=1e-3) and epoch == saved[-1][0]
    assert evaluations[-1] < evaluations[0]  # It learned.
    assert os.path.exists(tmp_path / "best" / "cw.l2l")
    assert not any("has not moved" in line for line in lines)
    # The same evaluation epochs every time: the kept optimizer reproduces its loss.
    reloaded = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM",
                                      "net_path": str(tmp_path / "best" / "cw.l2l")})
    check = reloaded.meta_loss(problem, 20, mode="graph", meta_batch_size=2)
    again = meta.run_epochs(check, 1, np.stack([meta.epoch_seed(0, meta.VALIDATION, i)
                                                 for i in range(2)]))
    first = meta.run_epochs(check, 1, np.stack([meta.epoch_seed(0, meta.VALIDATION, i)
                                                 for i in range(2, 4)]))
    assert np.mean([r.final_loss for r in again + first]) == pytest.approx(best, rel=1e-4)
