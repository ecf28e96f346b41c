"""The original's convergence test: a tiny learned optimizer solves f(x) = x^2."""

import tensorflow as tf

import configs
import meta


class ConvergenceTest(tf.test.TestCase):

    def test_learned_optimizer_reaches_below_1e_5_on_simple(self):
        tf.random.set_seed(0)
        config = configs.get_config("simple")  # LSTM with no hidden layers, zero initializer.
        optimizer = meta.MetaOptimizer(**config.net_config)
        minimize = optimizer.meta_minimize(config.problem, 20, learning_rate=0.01)
        cost = float("inf")
        for epoch in range(500):
            cost = meta.run_epoch(minimize, 5, meta.epoch_seed(0, meta.TRAIN, epoch)).final_loss
            if cost < 1e-5:
                break
        self.assertLess(cost, 1e-5)


if __name__ == "__main__":
    tf.test.main()
