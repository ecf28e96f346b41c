"""A trained optimizer network as a Keras 3 optimizer, for any Keras model.

    from l2l import LearnedOptimizer  # In a clone, without the install: from learned_optimizer.
    import keras
    import numpy as np
    x = (np.random.default_rng(0).random([512, 784]) < 0.1).astype(np.float32)  # Sparse, as MNIST.
    y = (x @ np.random.default_rng(1).normal(size=[784, 10])).argmax(axis=1)  # Learnable labels.
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(20, activation="sigmoid"),
                              keras.layers.Dense(10)])  # Logits: hence from_logits=True.
    model.compile(optimizer=LearnedOptimizer("mnist"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=128, epochs=10, verbose=0)

`LearnedOptimizer` runs a network's pure step (`networks.Network.step`) with the network's weights
frozen as constants: each model variable gets the network's state as optimizer variables (so
checkpoints, `model.save(".keras")` and `keras.models.load_model` carry the whole optimizer, and
training resumes exactly), and each step adds `learning_rate * update` to the variable, where
`update` is what the network would add in `meta.Unroll`. Keras' own machinery (learning-rate
schedules, `clipnorm`, `weight_decay`, gradient accumulation, EMA, `tf.distribute`) works as for
its own optimizers.

The optimizers shipped in `saved_optimizers/` are found by name (`shipped_optimizers()` lists
them): `"mnist"` is `saved_optimizers/mnist/cw.l2l`, the L2L optimizer, and `"mnist/cwlearned"`
another file of that folder. Any other string is a path.

The network's weights do not go into the Keras config, which names only the class, its options
and a digest of the weights: a `.keras` file carries them as an `.l2l` file among its assets,
read and checked by the same code as any `.l2l` file (`networks.check_saved`), and a config is
checked by it too before anything is built. A `tf.train.Checkpoint` holds the state only, with
the digest, so that it cannot be restored into an optimizer of another network.

Conversions, documented rather than refused: a variable of another float dtype is stepped in
float32 (the network's dtype) and the update cast back; a sparse gradient (`IndexedSlices`, as
an `Embedding` gives) is made dense, since every coordinate's LSTM state moves at every step.
"""

import hashlib
import json
import math
import os

import numpy as np

import util
util.import_tensorflow()

import keras  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import meta  # noqa: E402  pylint: disable=wrong-import-position
import networks  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position

# Beside this file in a clone and in the installed package alike.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_optimizers")
# The file a shipped optimizer's bare name means: the folder's L2L optimizer.
DEFAULT_FILE = weights_file.file_name("cw")
# The `.keras` archive's copy of the network, among the optimizer's assets.
NETWORK_ASSET = "network.l2l"
# `iterations` counts steps in an int64; a longer period could never come round.
MAX_STATE_RESET_PERIOD = np.iinfo(np.int64).max
# What the config's `network` may hold: `weights` only in configs written before the weights
# moved to the assets (nested JSON lists), still read so that those files load.
_NETWORK_KEYS = ("net", "net_options", "digest", "weights")
_WHERE_CONFIG = "LearnedOptimizer's network (its network argument or a .keras file's config)"
_WHERE_ASSET = f"The .keras file's optimizer network ({NETWORK_ASSET})"


# -- Shipped optimizers -----------------------------------------------------------------------

def shipped_optimizers():
    """The names of the shipped optimizers, sorted: `"mnist"` (its `cw.l2l`) and `"mnist/<file>"`
    for the folder's other files (`"mnist/cwlearned"`, ...)."""
    names = []
    if not os.path.isdir(SHIPPED_DIR):
        return names
    for folder in sorted(os.listdir(SHIPPED_DIR)):
        directory = os.path.join(SHIPPED_DIR, folder)
        if not os.path.isdir(directory):
            continue
        files = sorted(f for f in os.listdir(directory) if f.endswith(weights_file.SUFFIX))
        if DEFAULT_FILE in files or len(files) == 1:
            names.append(folder)
        names.extend(f"{folder}/{f[:-len(weights_file.SUFFIX)]}" for f in files
                     if f != DEFAULT_FILE and len(files) > 1)
    return names


def shipped_path(name):
    """The file of a shipped optimizer's name (see `shipped_optimizers`).

    Raises:
      util.WeightsFileError: no shipped optimizer has that name; the message lists them.
    """
    folder, _, stem = str(name).partition("/")
    stem = stem[:-len(weights_file.SUFFIX)] if stem.endswith(weights_file.SUFFIX) else stem
    # Names are looked up among the folders and files there, never joined blindly ("..").
    folders = os.listdir(SHIPPED_DIR) if os.path.isdir(SHIPPED_DIR) else []
    directory = os.path.join(SHIPPED_DIR, folder)
    if folder in folders and os.path.isdir(directory):
        files = sorted(f for f in os.listdir(directory) if f.endswith(weights_file.SUFFIX))
        if stem and stem + weights_file.SUFFIX in files:
            return os.path.join(directory, stem + weights_file.SUFFIX)
        if not stem and (DEFAULT_FILE in files or len(files) == 1):
            return os.path.join(directory, DEFAULT_FILE if DEFAULT_FILE in files else files[0])
    raise util.WeightsFileError(f"No shipped optimizer is named {str(name)[:80]!r}; the shipped "
                                f"ones are {', '.join(shipped_optimizers()) or 'none'}.")


def find_weights_file(path):
    """The file a `LearnedOptimizer` argument means: a shipped name's, the path's, or the one
    `.l2l` file in a directory.

    A shipped name is looked up first, so that `"mnist"` means the same file from any working
    directory; where another file or folder here has that name too, the call is refused as
    ambiguous rather than guessed (`./mnist` then means the folder).

    Raises:
      util.WeightsFileError: no such name or path, an ambiguous one, or a directory with no or
        several `.l2l` files.
    """
    try:
        shipped = shipped_path(path)
    except util.WeightsFileError:
        shipped = None
    if shipped is not None:
        here = os.path.realpath(path)
        if os.path.lexists(path) and here not in (os.path.realpath(shipped),
                                                  os.path.dirname(os.path.realpath(shipped))):
            raise util.WeightsFileError(
                f"{path!r} is both a shipped optimizer and a path here; write "
                f"{os.path.join('.', path)!r} for the path, or shipped_path({path!r}) for the "
                f"shipped file.")
        return shipped
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(weights_file.SUFFIX))
        if len(found) != 1:
            listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
            raise util.WeightsFileError(f"{path} holds {len(found) or 'no'} optimizer files"
                                        f"{f' ({listed})' if found else ''}; pass the file to "
                                        f"use.")
        return os.path.join(path, found[0])
    if not os.path.lexists(path):
        raise util.WeightsFileError(
            f"Cannot read optimizer file {path}: no such file or directory, and no shipped "
            f"optimizer has that name (they are {', '.join(shipped_optimizers()) or 'none'}).")
    return path


# -- Checking what a config or a file says the network is --------------------------------------

def _check_usable(net, where):
    if isinstance(net, str) and net in networks.NETWORKS and not networks.NETWORKS[
            net].coordinatewise:
        usable = sorted(n for n, cls in networks.NETWORKS.items() if cls.coordinatewise)
        raise util.WeightsFileError(
            f"{where} holds a {net}, which steps only tensors of one layout; LearnedOptimizer "
            f"takes {', '.join(usable)}.")


def _config_array(value, where):
    """A weight from a config: an array, or nested JSON lists of numbers (as float64).

    numpy would quietly make numbers of booleans and numeric strings, and objects of nulls: each
    leaf is checked first, and the count bounded, as an optimizer file's arrays are.
    """
    if isinstance(value, np.ndarray):
        return value
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (list, tuple)):
            pending.extend(item)
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise util.WeightsFileError(f"{where} holds {type(item).__name__} "
                                        f"{str(item)[:20]!r} among its weights, which are "
                                        f"numbers; re-save the model.")
        count += 1
        if count > weights_file.MAX_ARRAY_ELEMENTS:
            raise util.WeightsFileError(f"{where} holds an array of more than "
                                        f"{weights_file.MAX_ARRAY_ELEMENTS} weights.")
    try:
        return np.array(value, dtype=np.float64)
    except (ValueError, OverflowError) as e:
        raise util.WeightsFileError(f"{where} holds weights that are not an array of numbers "
                                    f"({str(e).splitlines()[0][:80]}); re-save the model."
                                    ) from None


def _network_from_config(network):
    """`(net, options, weights or None, digest or None)` from a `network` argument, checked.

    Nothing is built here: `networks.check_saved` bounds the sizes first.
    """
    if not isinstance(network, dict):
        raise util.WeightsFileError(f"{_WHERE_CONFIG} is a {type(network).__name__}, not a dict "
                                    f"with keys {list(_NETWORK_KEYS)}.")
    unknown = sorted(str(k)[:40] for k in network if k not in _NETWORK_KEYS)
    missing = [k for k in ("net", "net_options") if k not in network]
    if unknown or missing:
        raise util.WeightsFileError(
            f"{_WHERE_CONFIG} has {'unknown keys ' + str(unknown) if unknown else ''}"
            f"{' and ' if unknown and missing else ''}"
            f"{'no ' + ' or '.join(map(repr, missing)) if missing else ''}; it takes "
            f"{list(_NETWORK_KEYS)} (what get_config writes).")
    net, options, digest = network["net"], network["net_options"], network.get("digest")
    _check_usable(net, _WHERE_CONFIG)
    if digest is not None and not isinstance(digest, str):
        raise util.WeightsFileError(f"{_WHERE_CONFIG} has digest {repr(digest)[:40]}, not a "
                                    f"string.")
    weights = network.get("weights")
    if weights is not None:
        if not isinstance(weights, dict) or not all(isinstance(v, dict)
                                                    for v in weights.values()):
            raise util.WeightsFileError(f"{_WHERE_CONFIG} has weights that are not {{layer: "
                                        f"{{variable: array}}}}; re-save the model.")
        # The options first: they bound the sizes before any array is made.
        networks.check_saved(net, options, None, _WHERE_CONFIG)
        weights = {layer: {name: _config_array(value, f"{_WHERE_CONFIG}: {layer}/{name}")
                           for name, value in variables.items()}
                   for layer, variables in weights.items()}
    options = networks.check_saved(net, options, weights, _WHERE_CONFIG)
    return net, options, weights, digest


def network_digest(net):
    """A digest of a network's class, options and weights (16 hex digits of a SHA-256)."""
    digest = hashlib.sha256(json.dumps([type(net).__name__, net.options], sort_keys=True)
                            .encode())
    for layer, variables in sorted(net.get_weights().items()):
        for name, value in sorted(variables.items()):
            value = np.ascontiguousarray(value, np.float32)
            digest.update(f"{layer}/{name}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def _load_network(path, where, expected=None):
    """The network of an `.l2l` file, checked by `networks.check_saved` before it is built.

    `expected`, `(class, options)`, is what a config says the file holds.
    """
    saved = weights_file.load(path, where)
    _check_usable(saved.net, where)
    if expected is not None and (saved.net, weights_file.normalize(saved.net_options)) != (
            expected[0], weights_file.normalize(expected[1])):
        raise util.WeightsFileError(f"{where} is a {saved.net} with options "
                                    f"{weights_file.normalize(saved.net_options)}, not the "
                                    f"{expected[0]} its config names; re-save the model.")
    options = networks.check_saved(saved.net, saved.net_options, saved.weights, where)
    return networks.build_checked(saved.net, options, saved.weights, where)


def _check_learning_rate(learning_rate):
    """A number must be finite and >= 0; schedules, callables and variables are Keras'."""
    if isinstance(learning_rate, (bool, str, bytes)) or learning_rate is None:
        raise TypeError(f"learning_rate must be a number >= 0, a schedule or a callable, got "
                        f"{learning_rate!r}.")
    if isinstance(learning_rate, (int, float, np.number)):
        try:
            value = float(learning_rate)
        except OverflowError:  # An int beyond float's range.
            value = math.inf
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"learning_rate must be a finite number >= 0 (1.0 is the trained "
                             f"optimizer), got {str(learning_rate)[:40]}.")
        return value
    return learning_rate


def _concat(tensors):
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=0)


class _Frozen:
    """Holds the network out of sight of variable tracking: only its pure step is used."""

    def __init__(self, net):
        self.net = net


class _NetworkIdentity(tf.__internal__.tracking.Trackable):
    """The network's digest in a `tf.train.Checkpoint`, checked when it is restored.

    A state of one network restored into an optimizer of another (of the same layer sizes)
    would run without complaint and step wrongly.
    """

    def __init__(self, digest):
        self.digest = digest

    def _serialize_to_tensors(self):
        return {"digest": tf.constant(self.digest)}

    def _restore_from_tensors(self, restored_tensors):
        restored = restored_tensors["digest"]
        if tf.executing_eagerly():  # Restores run eagerly; a graph has no value to compare.
            restored = restored.numpy().decode("utf-8", "replace")
            if restored != self.digest:
                raise util.WeightsFileError(
                    f"This checkpoint holds the state of LearnedOptimizer network {restored}, "
                    f"not of this optimizer's ({self.digest}); restore it into an optimizer made "
                    f"from the same file.")
        return tf.no_op()


@keras.saving.register_keras_serializable(package="l2l")
class LearnedOptimizer(keras.optimizers.Optimizer):
    """A learned optimizer (a shipped one or an `.l2l` file) as a `keras.optimizers.Optimizer`.

    Args:
      path: a shipped optimizer's name (`"mnist"`, `"quadratic"`, `"mnist/cwlearned"`: see
        `shipped_optimizers()`), an `.l2l` file (this project's format or a TF1-era one), or a
        directory with one.
      learning_rate: multiplies the network's update; 1.0 is exactly the trained optimizer.
        A number >= 0, a schedule or a callable, as for any Keras optimizer.
      state_reset_period: zero the network's state every that many steps; 0 never (as the
        network was meta-trained by default).
      network: instead of `path`, `{"net": class, "net_options": {...}, "digest": ...}`, what
        `get_config` records: `keras.models.load_model` then reads the weights from the `.keras`
        file. (`"weights": {layer: {name: nested lists}}`, as configs written before held them,
        is read too.)
      **kwargs: those of `keras.optimizers.Optimizer` (`clipnorm`, `weight_decay`, `use_ema`,
        `gradient_accumulation_steps`, `name`, ...).

    Raises:
      util.WeightsFileError: no such name or file, a damaged one, a network that cannot step
        arbitrary variables (a KernelDeepLSTM or StandardDeepLSTM), or a `network` that does not
        make a working one.
      ValueError, TypeError: a bad `learning_rate` or `state_reset_period`.
    """

    def __init__(self, path=None, learning_rate=1.0, state_reset_period=0, network=None,
                 name="learned_optimizer", **kwargs):
        if (path is None) == (network is None):
            raise ValueError("LearnedOptimizer needs a shipped optimizer's name or a path to an "
                             ".l2l file (or, as get_config writes, a network), not both.")
        learning_rate = _check_learning_rate(learning_rate)
        state_reset_period = meta.check_count(state_reset_period, "state_reset_period", 0)
        if state_reset_period > MAX_STATE_RESET_PERIOD:
            raise ValueError(f"state_reset_period must be at most {MAX_STATE_RESET_PERIOD} (the "
                             f"step counter is an int64), got {state_reset_period}.")
        # Everything checked and the network built before Keras makes its variables.
        if path is not None:
            path = find_weights_file(os.fspath(path))
            net, digest, pending = _load_network(path, path), None, False
        else:
            net_name, options, weights, digest = _network_from_config(network)
            net = networks.build_checked(net_name, options, weights, _WHERE_CONFIG)
            # Without weights, the network is a shape only until `load_assets` brings them
            # (Sgd and Adam have none to wait for).
            pending = weights is None and bool(net.weights())
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.state_reset_period = state_reset_period
        self.path = path
        self._expected_digest = digest
        self._set_network(net, pending)

    def _set_network(self, net, pending=False):
        digest = self._expected_digest if pending else network_digest(net)
        if not pending and self._expected_digest not in (None, digest):
            raise util.WeightsFileError(f"{_WHERE_ASSET} has digest {digest}, not the "
                                        f"{self._expected_digest} its config names; re-save the "
                                        f"model.")
        self._frozen = _Frozen(net)
        self._weights_pending = pending
        # Constants: the network's weights are part of the optimizer, never trained here.
        self._step_weights = None if pending else net.step_weights(
            tf.nest.map_structure(tf.constant, net.get_weights()))
        self._digest = digest  # None: a config made by hand, without one.
        self._network_identity = _NetworkIdentity(digest or "")

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
        if self._weights_pending:
            raise util.WeightsFileError(
                "This LearnedOptimizer was made from a config, which names its network but does "
                "not hold its weights: they come with the .keras file (keras.models.load_model), "
                "or make the optimizer from the .l2l file or shipped name instead.")
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
        """Keras' options, `state_reset_period` and the network's class, options and digest.

        The weights are not in it (a 20x20 LSTM's would be about 100 KB of JSON): `save_assets`
        puts them in the `.keras` file.
        """
        config = super().get_config()
        config.update(state_reset_period=self.state_reset_period, network={
            "net": type(self.network).__name__, "net_options": self.network.options,
            "digest": self._digest})
        return config

    def save_assets(self, dir_path):
        """Writes the network as an `.l2l` file into the `.keras` archive's assets."""
        if not self._weights_pending:
            networks.save(self.network, os.path.join(dir_path, NETWORK_ASSET))

    def load_assets(self, dir_path):
        """Reads the network the `.keras` archive holds, checked as any `.l2l` file is."""
        path = os.path.join(dir_path, NETWORK_ASSET)
        if not os.path.exists(path):
            if self._weights_pending:
                raise util.WeightsFileError(f"The .keras file has no {NETWORK_ASSET} for its "
                                            f"LearnedOptimizer (damaged, or not saved by "
                                            f"model.save); re-save the model.")
            return  # A config of before the assets held the weights itself.
        config = self.get_config()["network"]
        self._set_network(_load_network(path, _WHERE_ASSET,
                                        (config["net"], config["net_options"])))


@keras.saving.register_keras_serializable(package="l2l")
class DivergenceWarning(keras.callbacks.Callback):
    """Says once, during `fit`, when the training loss rises steeply: a learned optimizer meta-
    trained on other models may take steps too large for this one (the paper's MNIST optimizer
    on a ReLU MLP or a CNN at learning_rate 1.0: the loss climbs into the hundreds).

        model.fit(x, y, callbacks=[DivergenceWarning()])

    Rising steeply: a batch's loss above `factor` times the smallest seen so far (after the
    first batch), or not finite. The remedy it names: a lower `learning_rate` of
    `LearnedOptimizer` (it multiplies every step), or the general optimizer
    (`LearnedOptimizer("general")`), whose steps start as Adam's and stay bounded.

    Args:
      factor: how many times the lowest loss a loss may reach before the warning.
      stop: also stop training (`model.stop_training`) when it warns.
      log: where the message goes (default: print).
    """

    def __init__(self, factor=10.0, stop=False, log=None):
        super().__init__()
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
            raise ValueError(f"factor must be a number above 1, got {factor!r}.")
        self.factor, self.stop, self._log = float(factor), bool(stop), log or print
        self.warned, self._lowest, self._batches = False, math.inf, 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.warned:
            return
        loss = float(loss)
        self._batches += 1
        if self._batches > 1 and (not math.isfinite(loss) or loss > self.factor * self._lowest):
            self.warned = True
            rate = getattr(self.model.optimizer, "learning_rate", None)
            rate = f" (now {float(keras.ops.convert_to_numpy(rate)):.3g})" if rate is not None \
                else ""
            self._log(f"DivergenceWarning: the training loss rose to {loss:.4g} after "
                      f"{self._lowest:.4g} by batch {self._batches}: the optimizer's steps are "
                      f"too large for this model. Lower LearnedOptimizer's learning_rate{rate} "
                      f"(e.g. 10 times), or use LearnedOptimizer(\"general\").")
            if self.stop:
                self.model.stop_training = True
        if math.isfinite(loss):
            self._lowest = min(self._lowest, loss)

    def get_config(self):
        return {"factor": self.factor, "stop": self.stop}
