"""A trained optimizer network as a Keras 3 optimizer, for any Keras model.

    import learned_optimizer
    model.compile(optimizer=learned_optimizer.LearnedOptimizer("saved_optimizers/mnist"),
                  loss="sparse_categorical_crossentropy")

`LearnedOptimizer` runs a network's pure step (`networks.Network.step`) with the network's weights
frozen as constants: each model variable gets the network's state as optimizer variables (so
checkpoints, `model.save(".keras")` and `keras.models.load_model` carry the whole optimizer, and
training resumes exactly), and each step adds `learning_rate * update` to the variable, where
`update` is what the network would add in `meta.Unroll`. Keras' own machinery (learning-rate
schedules, `clipnorm`, `weight_decay`, gradient accumulation, EMA, `tf.distribute`) works as for
its own optimizers.

Conversions, documented rather than refused: a variable of another float dtype is stepped in
float32 (the network's dtype) and the update cast back; a sparse gradient (`IndexedSlices`, as
an `Embedding` gives) is made dense, since every coordinate's LSTM state moves at every step.
"""

import os

import numpy as np

import util
util.import_tensorflow()

import keras  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import meta  # noqa: E402  pylint: disable=wrong-import-position
import networks  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position

# Networks that can step a variable of any shape, coordinate by coordinate.
_USABLE = ("CoordinateWiseDeepLSTM", "FixedLambdaDeepLSTM", "LearnedLambdaDeepLSTM", "Sgd",
           "Adam")


def find_weights_file(path):
    """`path` if it is a file; the one `.l2l` file in it if it is a directory.

    Raises:
      util.WeightsFileError: no such path, or a directory with no or several `.l2l` files.
    """
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(weights_file.SUFFIX))
        if len(found) != 1:
            raise util.WeightsFileError(
                f"{path} holds {len(found) or 'no'} optimizer files"
                f"{' (' + ', '.join(found) + ')' if found else ''}; pass the file to use.")
        return os.path.join(path, found[0])
    if not os.path.exists(path):
        raise util.WeightsFileError(f"Cannot read optimizer file {path}: no such file or "
                                    f"directory.")
    return path


def _concat(tensors):
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=0)


class _Frozen:
    """Holds the network out of sight of variable tracking: only its pure step is used."""

    def __init__(self, net):
        self.net = net


@keras.saving.register_keras_serializable(package="l2l")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """A learned optimizer (an `.l2l` file) as a `keras.optimizers.Optimizer`.

    Args:
      path: a `.l2l` file (this project's format or a TF1-era one) or a directory with one.
      learning_rate: multiplies the network's update; 1.0 is exactly the trained optimizer.
        A float, a schedule or a callable, as for any Keras optimizer.
      state_reset_period: zero the network's state every that many steps; 0 never (as the
        network was meta-trained by default).
      network: instead of `path`, `{"net": class, "net_options": {...}, "weights": {layer:
        {name: nested lists}}}` (what `get_config` records, so that a saved model reloads
        without the file).
      **kwargs: those of `keras.optimizers.Optimizer` (`clipnorm`, `weight_decay`, `use_ema`,
        `gradient_accumulation_steps`, `name`, ...).

    Raises:
      util.WeightsFileError: the file is missing, damaged, or holds a network that cannot step
        arbitrary variables (a KernelDeepLSTM or StandardDeepLSTM).
    """

    def __init__(self, path=None, learning_rate=1.0, state_reset_period=0, network=None,
                 name="learned_optimizer", **kwargs):
        if (path is None) == (network is None):
            raise ValueError("LearnedOptimizer needs a path to an .l2l file (or, as get_config "
                             "writes, a network), not both.")
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.state_reset_period = meta.check_count(state_reset_period, "state_reset_period", 0)
        if path is not None:
            path = find_weights_file(os.fspath(path))
            saved = weights_file.load(path)
            net_name, net_options, weights = saved.net, saved.net_options, saved.weights
        else:
            net_name, net_options = network["net"], network["net_options"]
            weights = {layer: {name_: np.asarray(value, np.float32)
                               for name_, value in variables.items()}
                       for layer, variables in network["weights"].items()}
        if net_name not in _USABLE:
            raise util.WeightsFileError(
                f"{path or 'network'} holds a {net_name}, which steps only tensors of one "
                f"layout; LearnedOptimizer takes {', '.join(_USABLE)}.")
        self.path = path
        self._network_config = {"net": net_name, "net_options": net_options}
        self._weights = weights
        if path is not None:
            net = networks.factory(net_name, net_path=path)
        else:
            net = networks.factory(net_name, dict(net_options, initializer=weights)
                                   if weights else net_options)
        self._frozen = _Frozen(net)
        # Constants: the network's weights are part of the optimizer, never trained here.
        self._step_weights = net.step_weights(tf.nest.map_structure(tf.constant, weights))

    @property
    def network(self):
        """The optimizer network (a `networks.Network`)."""
        return self._frozen.net

    def build(self, variables):
        """Creates the network's state for all coordinates of `variables`, as optimizer variables.

        The coordinates of every variable, in order, go through one network call per step, as
        in `meta.Unroll`: one state tensor per state field, `[..., total coordinates]`.
        """
        if self.built:
            return
        for variable in variables:
            if not tf.as_dtype(variable.dtype).is_floating:
                # Its update would be cast to an integer: zero, silently.
                raise TypeError(f"LearnedOptimizer steps floating-point variables; "
                                f"{variable.name} is {tf.as_dtype(variable.dtype).name}: leave it "
                                f"out of the trainable variables.")
        super().build(variables)
        sizes = [int(np.prod(v.shape)) for v in variables]
        self._sizes = sizes
        self._state_structure = self.network.initial_state_for_inputs(
            tf.zeros([sum(sizes)], tf.float32))
        self._state = [self.add_variable(shape=leaf.shape, dtype=leaf.dtype, name=f"state_{i}")
                       for i, leaf in enumerate(tf.nest.flatten(self._state_structure))]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """One network call for every coordinate of every variable, then the assignments."""
        variables = [v.value if isinstance(v, keras.Variable) else v
                     for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(zip(grads, variables))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_update, self._distribution_strategy, grads_and_vars,
            learning_rate)

    def _distributed_update(self, distribution, grads_and_vars, learning_rate):
        # One update of the first variable runs the whole step on each device; the others (and
        # the state) are assigned inside it, which in an update context means their copy on
        # that device, as Keras' own optimizers assign their slots in `update_step`.
        grads_and_vars = list(grads_and_vars)
        distribution.extended.update(grads_and_vars[0][1], self._update_all,
                                     args=(grads_and_vars, learning_rate), group=False)

    def _update_all(self, _, grads_and_vars, learning_rate):
        given = {self._var_key(v): g for g, v in grads_and_vars}
        variables = self._trainable_variables
        grads, params = [], []
        for variable in variables:
            value = variable.value if isinstance(variable, keras.Variable) else variable
            grad = given.get(self._var_key(variable))
            if grad is None:  # Not in the loss: a zero gradient (its state still moves).
                grad = tf.zeros(value.shape, tf.float32)
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            grads.append(tf.reshape(tf.cast(grad, tf.float32), [-1]))
            params.append(tf.reshape(tf.cast(tf.convert_to_tensor(value), tf.float32), [-1]))
        state = tf.nest.pack_sequence_as(self._state_structure,
                                          [tf.convert_to_tensor(v) for v in self._state])
        if self.state_reset_period:
            due = tf.equal(self.iterations % self.state_reset_period, 0)
            state = tf.nest.map_structure(lambda s: tf.where(due, tf.zeros_like(s), s), state)
        update = self.network.step(self._step_weights, _concat(grads), state, _concat(params))
        for state_variable, value in zip(self._state, tf.nest.flatten(update.next_state)):
            self.assign(state_variable, value)
        steps = tf.split(tf.cast(learning_rate, tf.float32) * update.step, self._sizes)
        for variable, step in zip(variables, steps):
            value = variable.value if isinstance(variable, keras.Variable) else variable
            self.assign_add(value, tf.cast(tf.reshape(step, value.shape), value.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            state_reset_period=self.state_reset_period,
            network=dict(self._network_config, weights={
                layer: {name: np.asarray(value).tolist() for name, value in variables.items()}
                for layer, variables in self._weights.items()}))
        return config
