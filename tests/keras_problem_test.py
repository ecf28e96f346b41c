"""problems.keras_problem: meta-training an optimizer on a user's own Keras model."""

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import keras

import meta
import networks
import problems


def _images(n, seed):
    """8x8 one-channel images whose class a fixed linear map of the pixels decides."""
    x = np.random.default_rng(seed).normal(size=[n, 8, 8, 1]).astype(np.float32)
    teacher = np.random.default_rng(99).normal(size=[64, 3])
    return x, np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int32)


def _cnn(dtype="float32"):
    return keras.Sequential([
        keras.Input((8, 8, 1), dtype=dtype),
        keras.layers.Conv2D(4, 3, activation="relu", dtype=dtype),
        keras.layers.Flatten(dtype=dtype),
        keras.layers.Dense(3, dtype=dtype)])


def _loss(dtype=None):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


class KerasProblemTest(tf.test.TestCase, parameterized.TestCase):

    def test_parameters_are_the_models_and_fresh_per_seed_from_its_initializers(self):
        problem = problems.keras_problem(_cnn, *_images(64, 0), _loss())
        self.assertEqual([name.split("/")[-1] for name in problem.names],
                         ["kernel", "bias", "kernel", "bias"])  # The model's variable paths.
        a, b = problem.init(tf.constant([1, 2])), problem.init(tf.constant([1, 3]))
        again = problem.init(tf.constant([1, 2]))
        kernel = a[0].numpy()
        self.assertEqual(kernel.shape, (3, 3, 1, 4))
        # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)) = sqrt(6 / (9 + 36)).
        self.assertLessEqual(np.max(np.abs(kernel)), np.sqrt(6 / 45))
        self.assertGreater(np.std(kernel), 0.5 * np.sqrt(6 / 45) / np.sqrt(3))
        self.assertAllEqual(a[1], np.zeros(4))  # The bias initializer: zeros.
        self.assertNotAllClose(a[0], b[0])
        for x, y in zip(a, again):
            self.assertAllEqual(x, y)

    def test_loss_is_the_models_and_its_gradient_matches_finite_differences(self):
        x, y = _images(16, 1)
        problem = problems.keras_problem(lambda: _cnn("float64"), x.astype(np.float64), y,
                                         _loss("float64"), batch_size=16)
        params = problem.init(tf.constant([0, 0]))
        data = problem.sample(tf.constant([0, 0]), tf.constant(0))
        model = _cnn("float64")
        model.set_weights([p.numpy() for p in params])
        self.assertAllClose(problem.loss(params, data), _loss("float64")(data[1], model(data[0])),
                            rtol=1e-12)
        _, grads = meta.loss_and_gradients(problem, params, data)
        eps = 1e-6
        for i in (0, 2):  # The conv kernel and the dense kernel.
            for index in [(0, 0, 0, 1), (2, 1, 0, 3)] if i == 0 else [(5, 2), (100, 0)]:
                bump = np.zeros(params[i].shape)
                bump[index] = eps
                up = [p + bump if j == i else p for j, p in enumerate(params)]
                down = [p - bump if j == i else p for j, p in enumerate(params)]
                numeric = (problem.loss(up, data) - problem.loss(down, data)) / (2 * eps)
                self.assertAllClose(grads[i].numpy()[index], numeric, rtol=1e-6, atol=1e-10)

    def test_a_few_meta_training_epochs_lower_the_meta_loss(self):
        tf.random.set_seed(0)
        problem = problems.keras_problem(_cnn, *_images(256, 2), _loss(), batch_size=32)
        optimizer = meta.MetaOptimizer(cw={"net": "CoordinateWiseDeepLSTM", "net_options": {
            "layers": (8,), "preprocess_name": "LogAndSign", "preprocess_options": {"k": 5},
            "scale": 0.1}})
        evaluation = optimizer.meta_loss(problem, 20, mode="graph")

        def held_out_meta_loss():
            seeds = [meta.epoch_seed(0, meta.VALIDATION, e) for e in range(3)]
            return np.mean([meta.run_epoch(evaluation, 1, s).meta_loss for s in seeds])

        before = held_out_meta_loss()
        training = optimizer.meta_minimize(problem, 10, learning_rate=0.01, mode="graph")
        for epoch in range(15):
            meta.run_epoch(training, 2, meta.epoch_seed(0, meta.TRAIN, epoch))
        after = held_out_meta_loss()
        self.assertLess(after, 0.9 * before)
        # The trained optimizer is an ordinary weights file.
        path = optimizer.save(self.get_temp_dir())[0]
        self.assertEqual(os.path.basename(path), "cw.l2l")
        self.assertEqual(networks.factory("CoordinateWiseDeepLSTM", net_path=path).layers, (8,))

    @parameterized.named_parameters(
        ("nan_x", dict(x=np.full([4, 3], np.nan)), r"^keras_problem's x holds 12 NaN or "
                                                   r"infinite values, so the losses would not be "
                                                   r"finite; clean or drop those examples\.$"),
        ("inf_y", dict(y=np.array([0.0, np.inf, 1.0, -np.inf])), r"'s y holds 2 NaN or infinite"),
        ("nan_validation", dict(validation_data=(np.zeros([2, 3]), np.array([np.nan, 1.0]))),
         r"^keras_problem's validation_data's y holds 1 NaN or infinite values"),
        ("text_x", dict(x=np.array([["a"] * 3] * 4)), r"^keras_problem's x must be an array of "
                                                       r"numbers, one row per example; got <U1"),
        ("scalar_y", dict(y=3.0), r"'s y must be an array of numbers, one row per example; got "
                                  r"float64 of shape \(\)"),
        ("batch_size_0", dict(batch_size=0), r"^keras_problem's batch_size must be a whole number "
                                            r"of examples, at least 1, got 0\.$"),
        ("batch_size_float", dict(batch_size=2.5), r"batch_size must be a whole number .* 2.5"),
        ("validation_lengths", dict(validation_data=(np.zeros([5, 3]), np.zeros(4))),
         r"^keras_problem needs as many targets as examples in validation_data, got 5 examples "
         r"and 4 targets\.$"),
        ("validation_empty", dict(validation_data=(np.zeros([0, 3]), np.zeros(0))),
         r"as many targets as examples in validation_data, got 0 examples"),
        ("validation_shape", dict(validation_data=(np.zeros([4, 5]), np.zeros(4))),
         r"^keras_problem's validation_data x has examples of shape \(5,\), the training x "
         r"\(3,\)\.$"),
        ("validation_not_a_pair", dict(validation_data=np.zeros([4, 3])),
         r"validation_data must be a pair \(x, y\), got ndarray"),
        ("model_none", dict(build_model=lambda: None), r"^keras_problem's build_model must "
                                                        r"return a keras.Model, got NoneType\.$"),
        ("model_layer", dict(build_model=lambda: keras.layers.Dense(2)),
         r"build_model must return a keras.Model, got Dense"),
    )
    def test_bad_data_batch_size_or_model_is_one_clear_error_before_building(self, changes,
                                                                            message):
        built = []

        def dense():
            built.append(1)
            return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])

        args = dict(build_model=dense, x=np.zeros([4, 3], np.float32), y=np.zeros(4), loss="mse")
        args.update(changes)
        with self.assertRaisesRegex(ValueError, message):
            problems.keras_problem(**args)
        self.assertEqual(built, [])  # Refused before any model was built.

    def test_bad_input_is_a_clear_error(self):
        with self.assertRaisesRegex(ValueError, "as many targets as examples, got 4 examples "
                                                "and 3 targets"):
            problems.keras_problem(_cnn, np.zeros([4, 8, 8, 1]), np.zeros(3), _loss())
        with self.assertRaisesRegex(ValueError, "needs a built model"):
            problems.keras_problem(lambda: keras.Sequential([keras.layers.Dense(2)]),
                                   np.zeros([4, 3]), np.zeros(4), "mse")


if __name__ == "__main__":
    tf.test.main()
