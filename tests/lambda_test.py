"""Tests of the fixed- and learned-lambda optimizers: rule, meta-gradient, save/load, CLI."""

import os
import re
import subprocess
import sys

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

import cli
import configs
import meta
import networks
import problems
from conftest import REPO_ROOT


def _quadratic(dtype=tf.float32):
    return problems.quadratic(batch_size=3, num_dims=4, stddev=1.0, dtype=dtype)


def _config(net, **options):
    options.setdefault("layers", (4,))
    return {"cw": {"net": net, "net_options": options}}


class FixedLambdaTest(tf.test.TestCase):

    def test_zero_delta_gives_geometric_growth(self):
        lam, steps = 0.05, 6
        optimizer = meta.MetaOptimizer(**_config("FixedLambdaDeepLSTM", fixed_lambda=lam,
                                                 initializer="zeros"))
        unroll = optimizer.meta_loss(_quadratic(), steps, mode="graph")
        unroll.reset([1, 2])
        x0 = unroll.carry.params[0].numpy()
        unroll()
        # delta = 0, so x_{t+1} = x_t + lambda x_t: x_T = (1 + lambda)^T x_0.
        self.assertAllClose(unroll.carry.params[0], (1 + lam) ** steps * x0, rtol=1e-6)

    def test_lambda_zero_is_l2l_bit_for_bit(self):
        def train(net, **options):
            tf.random.set_seed(4)
            optimizer = meta.MetaOptimizer(**_config(net, **options))
            unroll = optimizer.meta_minimize(configs.get_config("quadratic").problem, 5,
                                             learning_rate=0.01, mode="graph")
            unroll.reset([0, 0])
            losses = [unroll().losses.numpy() for _ in range(3)]
            return losses, [v.numpy() for v in unroll.variables]

        fixed_losses, fixed_weights = train("FixedLambdaDeepLSTM", fixed_lambda=0.0)
        l2l_losses, l2l_weights = train("CoordinateWiseDeepLSTM")
        self.assertAllEqual(fixed_losses, l2l_losses)
        for a, b in zip(fixed_weights, l2l_weights):
            self.assertAllEqual(a, b)


class LearnedLambdaTest(tf.test.TestCase, parameterized.TestCase):

    def _unroll(self, mode, minimize=False, dtype=tf.float32, **options):
        tf.random.set_seed(5)
        optimizer = meta.MetaOptimizer(**_config(
            "LearnedLambdaDeepLSTM", lambda_mode=mode, init_lambda=0.02, lambda_max=0.1,
            scale=0.5, dtype=dtype, **options))
        net = optimizer.nets["cw"]
        if minimize:
            return net, optimizer.meta_minimize(_quadratic(dtype), 3, learning_rate=0.01,
                                                mode="graph")
        return net, optimizer.meta_loss(_quadratic(dtype), 3, second_derivatives=True,
                                        mode="eager")

    def _lambda_variables(self, net):
        return [v for layer in ("lambda", "lambda_head") for v in
                net.weights().get(layer, {}).values()]

    @parameterized.parameters("per_coordinate", "scalar")
    def test_initial_lambda_is_the_fixed_lambda(self, mode):
        _, unroll = self._unroll(mode)
        unroll.reset([0, 0])
        mean, low, high = unroll().lambdas["cw"].numpy()
        self.assertAllClose([mean, low, high], [0.02] * 3, rtol=1e-6)

    @parameterized.parameters("per_coordinate", "scalar")
    def test_meta_gradient_reaches_lambda_and_matches_finite_differences(self, mode):
        net, unroll = self._unroll(mode, dtype=tf.float64)
        variables = self._lambda_variables(net)

        def meta_loss():
            unroll.reset([6, 7])
            return unroll().meta_loss

        with tf.GradientTape() as tape:
            loss = meta_loss()
        grads = tape.gradient(loss, variables)
        eps = 1e-6
        for variable, grad in zip(variables, grads):
            theta = variable.numpy()
            for index in list(np.ndindex(*theta.shape))[:4]:
                bump = np.zeros_like(theta)
                bump[index] = eps
                variable.assign(theta + bump)
                upper = meta_loss().numpy()
                variable.assign(theta - bump)
                lower = meta_loss().numpy()
                variable.assign(theta)
                numeric = (upper - lower) / (2 * eps)
                self.assertNotEqual(float(grad.numpy()[index]), 0.0)
                self.assertAllClose(grad.numpy()[index], numeric, rtol=1e-6, atol=1e-10)

    @parameterized.parameters("per_coordinate", "scalar")
    def test_meta_training_changes_lambda_and_save_load_restores_it(self, mode):
        net, unroll = self._unroll(mode, minimize=True)
        before = [v.numpy() for v in self._lambda_variables(net)]
        unroll.reset([0, 0])
        for _ in range(3):
            unroll()
        after = [v.numpy() for v in self._lambda_variables(net)]
        self.assertTrue(any(np.any(a != b) for a, b in zip(after, before)))
        path = os.path.join(self.get_temp_dir(), f"{mode}.l2l")
        networks.save(net, path)
        loaded = networks.factory("LearnedLambdaDeepLSTM", net_path=path)
        self.assertEqual(loaded.options["lambda_mode"], mode)
        for a, b in zip(self._lambda_variables(loaded), self._lambda_variables(net)):
            self.assertAllEqual(a, b)
        grad = tf.random.stateless_normal([5], seed=[1, 1])
        self.assertAllEqual(loaded.update(grad, loaded.initial_state_for_inputs(grad), grad).step,
                            net.update(grad, net.initial_state_for_inputs(grad), grad).step)


class OptimizerKindTest(tf.test.TestCase):

    def test_with_optimizer_kind_converts_only_the_lstms(self):
        config = configs.get_config("simple-multi").net_config
        fixed = configs.with_optimizer_kind(config, "fixed", fixed_lambda=0.03)
        self.assertEqual(fixed["cw"]["net"], "FixedLambdaDeepLSTM")
        self.assertEqual(fixed["cw"]["net_options"]["fixed_lambda"], 0.03)
        self.assertEqual(fixed["adam"], config["adam"])
        learned = configs.with_optimizer_kind(config, "learned", 0.03, "scalar", 0.2)
        self.assertEqual(learned["cw"]["net_options"]["lambda_mode"], "scalar")
        self.assertEqual(learned["cw"]["net_options"]["init_lambda"], 0.03)
        self.assertEqual(configs.with_optimizer_kind(config, "L2L"), config)


def _run(script, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "L2L_DEBUG")}
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


class LambdaCliTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("fixed", "cwfixed0.02.l2l"), ("learned", "cwlearned.l2l"))
    def test_train_then_evaluate_with_history(self, kind, file_name):
        save_path = os.path.join(self.get_temp_dir(), kind)
        train = _run("train.py", "--problem=quadratic", f"--which_aml={kind}",
                     "--fixed_lambda=0.02", "--num_epochs=2", "--log_period=1",
                     "--evaluation_period=2", "--evaluation_epochs=1", "--num_steps=4",
                     "--unroll_length=2", f"--save_path={save_path}")
        self.assertEqual(train.returncode, 0, train.stderr)
        self.assertEqual([f for f in os.listdir(save_path) if f.endswith(".l2l")], [file_name])
        lambda_lines = re.findall(r"^Lambda cw: (.*)$", train.stdout, re.M)
        self.assertLen(lambda_lines, 2)
        if kind == "fixed":
            self.assertEqual(lambda_lines[0], "0.02")
        else:
            self.assertRegex(lambda_lines[0], r"mean 0\.0\d+ min 0\.0\d+ max 0\.0\d+")

        history = os.path.join(self.get_temp_dir(), f"{kind}.csv")
        evaluate = _run("evaluate.py", "--problem=quadratic", f"--optimizer={kind}",
                        f"--path={save_path}", "--num_epochs=3", "--num_steps=4",
                        f"--history_path={history}")
        self.assertEqual(evaluate.returncode, 0, evaluate.stderr)
        self.assertIn("Log Mean Final Error", evaluate.stdout)
        header, rows = cli.read_history(history)
        self.assertEqual(rows.shape, (3, 4))  # One row per epoch, one column per step.
        self.assertIn(f"optimizer={kind} problem=quadratic num_steps=4", header)
        if kind == "fixed":
            self.assertIn("fixed_lambda=0.02", header)  # Read from the file, not from a flag.
        # The last column is the final loss the stats line averages.
        final = float(re.search(r"Log Mean Final Error: (-?\d+\.\d+)", evaluate.stdout)[1])
        self.assertAlmostEqual(final, np.log10(np.mean(rows[:, -1])), delta=0.006)

    def test_adam_history_goes_to_the_default_path(self):
        directory = self.get_temp_dir()
        result = subprocess.run(
            [sys.executable, str(REPO_ROOT / "evaluate.py"), "--problem=quadratic",
             "--optimizer=Adam", "--learning_rate=0.1", "--num_epochs=2", "--num_steps=5"],
            cwd=directory, capture_output=True, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
        self.assertEqual(result.returncode, 0, result.stderr)
        header, rows = cli.read_history(
            os.path.join(directory, "saved_histories",
                         "quadratic_Adam_lr0.1_numsteps5_numepochs2.csv"))
        self.assertEqual(rows.shape, (2, 5))
        self.assertIn("learning_rate=0.1", header)

    def test_several_fixed_files_need_a_choice(self):
        directory = self.get_temp_dir()
        for lam in (0.01, 0.1):
            networks.save(networks.FixedLambdaDeepLSTM(fixed_lambda=lam, layers=(20, 20)),
                          os.path.join(directory, f"cwfixed{lam!r}.l2l"))
        result = _run("evaluate.py", "--problem=quadratic", "--optimizer=fixed",
                      f"--path={directory}", "--num_epochs=1", "--num_steps=2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("several fixed-lambda optimizers (cwfixed0.01.l2l, cwfixed0.1.l2l); "
                      "choose one with --fixed_lambda", result.stderr)
        chosen = _run("evaluate.py", "--problem=quadratic", "--optimizer=fixed",
                      f"--path={directory}", "--fixed_lambda=0.1", "--num_epochs=1",
                      "--num_steps=2", f"--history_path={directory}/h.csv")
        self.assertEqual(chosen.returncode, 0, chosen.stderr)
        self.assertIn("fixed_lambda=0.1", cli.read_history(f"{directory}/h.csv")[0])

    def test_validation_objective_needs_data(self):
        result = _run("train.py", "--problem=quadratic", "--meta_objective=validation",
                      "--num_steps=4", "--unroll_length=2")
        self.assertEqual(result.returncode, 1)
        self.assertIn("needs a problem with held-out data", result.stderr)


if __name__ == "__main__":
    tf.test.main()
