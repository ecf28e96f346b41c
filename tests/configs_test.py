"""Tests for configs.py: named configurations and choosing saved optimizers."""

import os
import re
import subprocess
import sys
import tempfile

import tensorflow as tf

import configs
import datasets
import networks
from conftest import REPO_ROOT


class ConfigTest(tf.test.TestCase):

    def test_unknown_problem_lists_the_valid_ones(self):
        with self.assertRaisesRegex(ValueError, "Unknown problem 'cifar5'; expected one of"):
            configs.get_config("cifar5")

    def test_unknown_split(self):
        with self.assertRaisesRegex(ValueError, "Unknown split 'dev'; expected one of "
                                    + re.escape(str(datasets.SPLITS))):
            configs.get_config("quadratic", "dev")

    def test_the_command_lines_flags_import_no_tensorflow(self):
        # configs (with datasets, the home of the splits) and cli's shared flags are what
        # train.py and evaluate.py import before parsing their flags: --help answers at once.
        code = ("import sys, cli, configs; cli.define_problem_flags(); "
                "print([m for m in ('tensorflow', 'keras', 'sonnet') if m in sys.modules])")
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")

    def test_simple_multi_assigns_each_variable(self):
        config = configs.get_config("simple-multi")
        self.assertEqual(config.net_assignments, [("cw", ["x_0"]), ("adam", ["x_1"])])
        self.assertEqual(config.net_config["adam"]["net_options"], {"learning_rate": 0.1})


class SavedPathsTest(tf.test.TestCase):

    def _directory(self, names):
        directory = tempfile.mkdtemp(dir=self.get_temp_dir())
        net = networks.CoordinateWiseDeepLSTM(layers=())
        for name in names:
            networks.save(net, os.path.join(directory, name))
        return directory

    def _config(self):
        return configs.get_config("quadratic").net_config

    def test_l2l_file_in_a_directory(self):
        directory = self._directory(["cw.l2l", "cwfixed0.01.l2l"])
        config = configs.with_saved_paths(self._config(), directory)
        self.assertEqual(config, {"cw": {"net": "CoordinateWiseDeepLSTM",
                                         "net_path": os.path.join(directory, "cw.l2l")}})

    def test_fixed_lambda_chosen_by_value(self):
        directory = self._directory(["cwfixed0.01.l2l", "cwfixed1e-05.l2l"])
        config = configs.with_saved_paths(self._config(), directory, "fixed", fixed_lambda=1e-5)
        self.assertEqual(config["cw"]["net"], "FixedLambdaDeepLSTM")
        self.assertEqual(os.path.basename(config["cw"]["net_path"]), "cwfixed1e-05.l2l")

    def test_several_fixed_lambdas_and_no_choice_is_an_error_listing_them(self):
        directory = self._directory(["cwfixed0.01.l2l", "cwfixed0.1.l2l"])
        with self.assertRaisesRegex(ValueError, r"several fixed-lambda optimizers "
                                    r"\(cwfixed0.01.l2l, cwfixed0.1.l2l\); choose one with "
                                    r"--fixed_lambda"):
            configs.with_saved_paths(self._config(), directory, "fixed")
        with self.assertRaisesRegex(ValueError, "No cwfixed0.5.l2l in"):
            configs.with_saved_paths(self._config(), directory, "fixed", fixed_lambda=0.5)

    def test_missing_file_lists_what_is_there(self):
        directory = self._directory(["cwfixed0.01.l2l"])
        with self.assertRaisesRegex(ValueError, r"No L2L optimizer for network 'cw' in .*: "
                                    r"expected cw.l2l, found cwfixed0.01.l2l"):
            configs.with_saved_paths(self._config(), directory)
        with self.assertRaisesRegex(ValueError, "does not exist"):
            configs.with_saved_paths(self._config(), os.path.join(directory, "nope"))

    def test_a_file_serves_one_network_only(self):
        directory = self._directory(["cw.l2l"])
        path = os.path.join(directory, "cw.l2l")
        self.assertEqual(configs.with_saved_paths(self._config(), path)["cw"]["net_path"], path)
        with self.assertRaisesRegex(ValueError, "is one file, but this problem has networks"):
            configs.with_saved_paths(configs.get_config("simple-multi").net_config, path)


if __name__ == "__main__":
    tf.test.main()
