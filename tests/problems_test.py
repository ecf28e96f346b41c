"""Tests for problems.py: loss values, seeds and the ensemble."""

import numpy as np
import tensorflow as tf

import problems

SEED = tf.constant([3, 4])


class AnalyticProblemTest(tf.test.TestCase):

    def test_simple(self):
        problem = problems.simple()
        self.assertEqual(problem.names, ("x",))
        params = problem.init(SEED)
        self.assertAllEqual(params[0], 1.0)
        self.assertAllClose(problem.loss([tf.constant(3.0)], problem.sample(SEED, 0)), 9.0)

    def test_simple_multi(self):
        problem = problems.simple_multi_optimizer(num_dims=3)
        self.assertEqual(problem.names, ("x_0", "x_1", "x_2"))
        params = problem.init(SEED)
        self.assertAllClose(problem.loss(params, ()), 3.0)
        with self.assertRaisesRegex(ValueError, "num_dims must be >= 1"):
            problems.simple_multi_optimizer(0)

    def test_quadratic_loss_matches_numpy(self):
        problem = problems.quadratic(batch_size=4, num_dims=3)
        (x,) = problem.init(SEED)
        w, y = problem.sample(SEED, 0)
        expected = np.mean(np.sum((np.einsum("bij,bj->bi", w, x) - y) ** 2, axis=1))
        self.assertAllClose(problem.loss([x], (w, y)), expected, rtol=1e-6)

    def test_quadratic_instance_is_fixed_within_an_epoch_and_new_across_epochs(self):
        problem = problems.quadratic(batch_size=4, num_dims=3)
        w0, y0 = problem.sample(SEED, 0)
        w7, y7 = problem.sample(SEED, 7)
        self.assertAllEqual(w0, w7)
        self.assertAllEqual(y0, y7)
        w_other, _ = problem.sample(tf.constant([3, 5]), 0)
        self.assertNotAllClose(w0, w_other)

    def test_quadratic_draws_have_the_documented_distributions(self):
        problem = problems.quadratic(batch_size=128, num_dims=10, stddev=0.01)
        (x,) = problem.init(SEED)
        w, y = problem.sample(SEED, 0)
        self.assertAllClose(np.std(x), 0.01, rtol=0.05)
        self.assertAllClose(np.mean(x), 0.0, atol=0.002)
        self.assertAllClose([np.min(w), np.max(w), np.mean(w)], [0.0, 1.0, 0.5], atol=0.01)
        self.assertAllClose(np.mean(y), 0.5, atol=0.02)

    def test_same_seed_same_draws(self):
        problem = problems.quadratic()
        self.assertAllEqual(problem.init(SEED)[0], problem.init(tf.constant([3, 4]))[0])

    def test_random_helpers(self):
        u = problems.random_uniform([100000], SEED).numpy()
        self.assertGreaterEqual(u.min(), 0.0)
        self.assertLess(u.max(), 1.0)
        self.assertAllClose(u * 2**24, np.round(u * 2**24))  # Multiples of 2^-24.
        n = problems.random_normal([100000], SEED, stddev=2.0).numpy()
        self.assertAllClose([n.mean(), n.std()], [0.0, 2.0], atol=0.02)
        i = problems.random_indices([100000], SEED, 7).numpy()
        self.assertAllEqual(np.unique(i), np.arange(7))
        self.assertNotAllClose(problems.derive_seed(SEED, 1), problems.derive_seed(SEED, 2))

    def test_ensemble_weights_and_names(self):
        quad = problems.quadratic(batch_size=2, num_dims=2)
        problem = problems.ensemble([quad, problems.simple()], weights=[2.0, 0.5])
        self.assertEqual(problem.names, ("problem_0/x", "problem_1/x"))
        params = problem.init(SEED)
        data = problem.sample(SEED, 0)
        expected = (2.0 * quad.loss(params[:1], data[0]) + 0.5 * 1.0)
        self.assertAllClose(problem.loss(params, data), expected, rtol=1e-6)
        with self.assertRaisesRegex(ValueError, "ensemble got 1 weights for 2 problems"):
            problems.ensemble([quad, quad], weights=[1.0])


if __name__ == "__main__":
    tf.test.main()
