"""Tests for util.py: configs, seeds, the epoch loop and choosing saved optimizers."""

import os
import tempfile

import numpy as np
import tensorflow as tf

import meta
import networks
import util


class ConfigTest(tf.test.TestCase):

    def test_unknown_problem_lists_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Unknown problem 'cifar5'; expected one of"):
            util.get_config("cifar5")

    def test_unknown_split(self):
        with self.assertRaisesRegex(ValueError, "Unknown split 'dev'"):
            util.get_config("quadratic", "dev")

    def test_simple_multi_assigns_each_variable(self):
        config = util.get_config("simple-multi")
        self.assertEqual(config.net_assignments, [("cw", ["x_0"]), ("adam", ["x_1"])])
        self.assertEqual(config.net_config["adam"]["net_options"], {"learning_rate": 0.1})


class SeedTest(tf.test.TestCase):

    def test_epoch_seeds_are_deterministic_and_distinct(self):
        a = util.epoch_seed(0, util.TRAIN, 5)
        self.assertEqual(a.dtype, np.int32)
        self.assertAllEqual(a, util.epoch_seed(0, util.TRAIN, 5))
        others = [util.epoch_seed(0, util.TRAIN, 6), util.epoch_seed(0, util.TEST, 5),
                  util.epoch_seed(1, util.TRAIN, 5)]
        for other in others:
            self.assertNotAllClose(a, other)

    def test_eval_unroll_length(self):
        self.assertEqual(util.eval_unroll_length(100), 100)
        self.assertEqual(util.eval_unroll_length(200), 100)
        self.assertEqual(util.eval_unroll_length(150), 75)
        self.assertEqual(util.eval_unroll_length(101), 1)


class RunEpochTest(tf.test.TestCase):

    def test_history_counts_every_step_once(self):
        optimizer = meta.MetaOptimizer(sgd={"net": "Sgd", "net_options": {"learning_rate": 0.25}})
        unroll = optimizer.meta_loss(util.get_config("simple").problem, 2, mode="graph")
        epoch = util.run_epoch(unroll, 3, util.epoch_seed(0, util.TEST, 0))
        # SGD on x^2 with lr 0.25 halves x: the loss after step t is 0.25^t.
        self.assertAllClose(epoch.history, 0.25 ** np.arange(1, 7), rtol=1e-6)
        self.assertAllClose(epoch.final_loss, 0.25**6, rtol=1e-6)
        self.assertGreater(epoch.time, 0.0)


class SavedPathsTest(tf.test.TestCase):

    def _directory(self, names):
        directory = tempfile.mkdtemp(dir=self.get_temp_dir())
        net = networks.CoordinateWiseDeepLSTM(layers=())
        for name in names:
            networks.save(net, os.path.join(directory, name))
        return directory

    def _config(self):
        return util.get_config("quadratic").net_config

    def test_l2l_file_in_a_directory(self):
        directory = self._directory(["cw.l2l", "cwfixed0.01.l2l"])
        config = util.with_saved_paths(self._config(), directory)
        self.assertEqual(config, {"cw": {"net": "CoordinateWiseDeepLSTM",
                                         "net_path": os.path.join(directory, "cw.l2l")}})

    def test_fixed_lambda_chosen_by_value(self):
        directory = self._directory(["cwfixed0.01.l2l", "cwfixed1e-05.l2l"])
        config = util.with_saved_paths(self._config(), directory, "fixed", fixed_lambda=1e-5)
        self.assertEqual(config["cw"]["net"], "FixedLambdaDeepLSTM")
        self.assertEqual(os.path.basename(config["cw"]["net_path"]), "cwfixed1e-05.l2l")

    def test_several_fixed_lambdas_and_no_choice_is_an_error_listing_them(self):
        directory = self._directory(["cwfixed0.01.l2l", "cwfixed0.1.l2l"])
        with self.assertRaisesRegex(ValueError, r"several fixed-lambda optimizers "
                                    r"\(cwfixed0.01.l2l, cwfixed0.1.l2l\); choose one with "
                                    r"--fixed_lambda"):
            util.with_saved_paths(self._config(), directory, "fixed")
        with self.assertRaisesRegex(ValueError, "No cwfixed0.5.l2l in"):
            util.with_saved_paths(self._config(), directory, "fixed", fixed_lambda=0.5)

    def test_missing_file_lists_what_is_there(self):
        directory = self._directory(["cwfixed0.01.l2l"])
        with self.assertRaisesRegex(ValueError, r"No L2L optimizer for network 'cw' in .*: "
                                    r"expected cw.l2l, found cwfixed0.01.l2l"):
            util.with_saved_paths(self._config(), directory)
        with self.assertRaisesRegex(ValueError, "does not exist"):
            util.with_saved_paths(self._config(), os.path.join(directory, "nope"))

    def test_a_file_serves_one_network_only(self):
        directory = self._directory(["cw.l2l"])
        path = os.path.join(directory, "cw.l2l")
        self.assertEqual(util.with_saved_paths(self._config(), path)["cw"]["net_path"], path)
        with self.assertRaisesRegex(ValueError, "is one file, but this problem has networks"):
            util.with_saved_paths(util.get_config("simple-multi").net_config, path)


if __name__ == "__main__":
    tf.test.main()
