"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al., 2016).

`MetaOptimizer` holds one or more optimizer networks and unrolls them over a problem: at each of
`unroll_length` optimizee steps it takes the gradient of the problem's loss, asks each network for
the step of the parameters assigned to it, and adds the step (`x_next = x + step`). The meta-loss
is the sum of the optimizee's losses at every iterate. `meta_minimize` adds an Adam step on the
networks' weights: truncated backpropagation through time, since each call continues the epoch
where the previous one stopped (parameters and network states carried, gradient stopped).

One call is one compiled function around the whole unroll (forward, meta-gradient and update),
with no Python between optimizee steps.
"""

import functools
import os
from typing import Any, Dict, List, NamedTuple

import numpy as np
import sonnet as snt
import tensorflow as tf

import networks

DEFAULT_NET_CONFIG = {
    "coordinatewise": {
        "net": "CoordinateWiseDeepLSTM",
        "net_options": {"layers": (20, 20), "preprocess_name": "LogAndSign",
                        "preprocess_options": {"k": 5}, "scale": 0.01},
    }
}
MODES = ("eager", "graph", "xla")
META_OBJECTIVES = ("train", "validation")


def default_mode(training=True):
    """The fastest compilation mode measured for the device (see bench/README.md).

    XLA on a GPU. On a CPU, the plain graph for meta-training (XLA's backward pass is slower
    there) and XLA for unrolls without a meta-gradient (it fuses the LSTM's elementwise gates).
    """
    if tf.config.list_physical_devices("GPU"):
        return "xla"
    return "graph" if training else "xla"


class Carry(NamedTuple):
    """What one unroll hands to the next within an epoch."""
    params: List[tf.Tensor]  # The optimizee's parameters.
    states: List[Any]  # One state per network group (see `MetaOptimizer._plan`).
    step: tf.Tensor  # int32: optimizee steps taken so far in this epoch.
    seed: tf.Tensor  # int32 [2]: the epoch's seed, from which all its data is drawn.


class UnrollResult(NamedTuple):
    """What one unroll reports."""
    meta_loss: tf.Tensor  # Sum of the losses at every iterate (on held-out data if so asked).
    losses: tf.Tensor  # [unroll_length + 1]: the training loss at each iterate, first to last.
    lambdas: Dict[str, tf.Tensor]  # Lambda networks: [mean, min, max] of lambda over the unroll.
    applied: tf.Tensor  # bool: the meta-update was applied (False when it was not finite).

    @property
    def final_loss(self):
        return self.losses[-1]


class _Group(NamedTuple):
    """One network and the parameters it optimizes."""
    key: str
    net: networks.Network
    indices: List[int]
    batched: bool  # All coordinates of all its parameters go through one network call.


def saved_file_name(key, net):
    """The file a network is saved to: `cw.l2l`, `cwfixed0.01.l2l`, `cwlearned.l2l`, ..."""
    if isinstance(net, networks.FixedLambdaDeepLSTM):
        return f"{key}fixed{float(net.options['fixed_lambda'])!r}.l2l"
    if isinstance(net, networks.LearnedLambdaDeepLSTM):
        return f"{key}learned.l2l"
    return f"{key}.l2l"


class MetaOptimizer(snt.Module):
    """Learning to learn (meta)optimizer over named networks.

    Args (keyword, one per network): `name={"net": class name, "net_options": {...},
    "net_path": optional saved weights}`; with none, a CoordinateWiseDeepLSTM (20, 20) with
    LogAndSign k=5 and scale 0.01, as the original.
    """

    def __init__(self, **net_config):
        super().__init__(name="meta_optimizer")
        net_config = net_config or DEFAULT_NET_CONFIG
        self._nets = {}
        for key, config in net_config.items():
            unknown = set(config) - {"net", "net_options", "net_path"}
            if "net" not in config or unknown:
                raise ValueError(f"Network {key!r} needs a config with 'net' and optionally "
                                 f"'net_options', 'net_path'; got keys {sorted(config)}.")
            with tf.name_scope(key):
                self._nets[key] = networks.factory(config["net"], config.get("net_options", {}),
                                                   config.get("net_path"))

    @property
    def nets(self):
        return dict(self._nets)

    def save(self, path, metadata=None):
        """Saves every network into directory `path`, one file each; returns the file paths.

        Each file is written atomically; `metadata` goes into every file (see `networks.save`).
        """
        os.makedirs(path, exist_ok=True)
        paths = []
        for key, net in self._nets.items():
            paths.append(os.path.join(path, saved_file_name(key, net)))
            networks.save(net, paths[-1], metadata)
        return paths

    def meta_loss(self, problem, unroll_length, net_assignments=None, second_derivatives=False,
                  **options):
        """An `Unroll` that runs the networks on `problem` without changing their weights.

        See `Unroll` for the arguments.
        """
        return Unroll(self, problem, unroll_length, net_assignments, second_derivatives,
                      learning_rate=None, **options)

    def meta_minimize(self, problem, unroll_length, learning_rate=0.001, net_assignments=None,
                      second_derivatives=False, **options):
        """An `Unroll` whose every call also takes an Adam step on the networks' weights."""
        if learning_rate is None or not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
        return Unroll(self, problem, unroll_length, net_assignments, second_derivatives,
                      learning_rate=learning_rate, **options)


def _plan(nets, names, net_assignments, batch_coordinates):
    """Checks `net_assignments` against the networks and the problem's parameter names."""
    if net_assignments is None:
        if len(nets) != 1:
            raise ValueError(f"net_assignments is needed with several networks ({sorted(nets)}).")
        net_assignments = [(next(iter(nets)), list(names))]
    assigned, groups = {}, []
    for key, var_names in net_assignments:
        if key not in nets:
            raise ValueError(f"Unknown network {key!r} in net_assignments; "
                             f"the networks are {sorted(nets)}.")
        if any(group.key == key for group in groups):
            raise ValueError(f"Network {key!r} appears twice in net_assignments.")
        for name in var_names:
            if name not in names:
                raise ValueError(f"Unknown variable {name!r} in net_assignments; "
                                 f"the problem's variables are {list(names)}.")
            if name in assigned:
                raise ValueError(f"Variable {name!r} is assigned to both networks "
                                 f"{assigned[name]!r} and {key!r}.")
            assigned[name] = key
        net = nets[key]
        groups.append(_Group(key, net, [names.index(n) for n in var_names],
                             batch_coordinates and net.coordinatewise))
    uncovered = [n for n in names if n not in assigned]
    if uncovered:
        raise ValueError(f"Variables {uncovered} are not assigned to any network "
                         f"in net_assignments.")
    return [g for g in groups if g.indices]


def _flat(tensors):
    if len(tensors) == 1:
        return tf.reshape(tensors[0], [-1])
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _unflat(flat, like):
    if len(like) == 1:
        return [tf.reshape(flat, like[0].shape)]
    parts = tf.split(flat, [t.shape.num_elements() for t in like])
    return [tf.reshape(p, t.shape) for p, t in zip(parts, like)]


class Unroll:
    """A compiled truncated unroll of the networks over a problem, carrying state across calls.

    `reset(seed)` starts an epoch: fresh optimizee parameters and data drawn from `seed`, zero
    network states. Each call then runs `unroll_length` optimizee steps from where the last call
    stopped (and, for `meta_minimize`, an Adam step on the weights), returning an `UnrollResult`.
    """

    def __init__(self, meta, problem, unroll_length, net_assignments=None,
                 second_derivatives=False, learning_rate=None, state_reset_period=0,
                 meta_objective="train", mode=None, batch_coordinates=True):
        """Builds the unroll.

        Args:
          meta: the `MetaOptimizer`.
          problem: a `problems.Problem`.
          unroll_length: optimizee steps per call (truncation length).
          net_assignments: `[(net_key, [parameter names])]`; None with a single network.
          second_derivatives: backpropagate through the optimizee's gradients too; by default
            they are constants, as in the paper.
          learning_rate: the meta-optimizer's Adam learning rate; None runs without updates.
          state_reset_period: re-initialize the network states every that many optimizee steps;
            0 only at `reset` (the DeepMind original).
          meta_objective: "train" sums the losses the optimizee steps on; "validation" sums the
            losses on held-out batches at the same iterates.
          mode: "eager", "graph" (tf.function) or "xla" (tf.function with jit_compile); None
            picks `default_mode()` for meta-training or evaluation.
          batch_coordinates: feed all coordinates of a coordinatewise network's parameters
            through one call (same numbers, faster) instead of one call per parameter.
        """
        if int(unroll_length) < 1:
            raise ValueError(f"unroll_length must be >= 1, got {unroll_length}.")
        if int(state_reset_period) < 0:
            raise ValueError(f"state_reset_period must be >= 0, got {state_reset_period}.")
        if meta_objective not in META_OBJECTIVES:
            raise ValueError(f"Unknown meta_objective {meta_objective!r}; "
                             f"expected one of {META_OBJECTIVES}.")
        if meta_objective == "validation" and problem.sample_validation is None:
            raise ValueError("meta_objective 'validation' needs a problem with held-out data; "
                             "this problem has none (use meta_objective 'train').")
        mode = mode or default_mode(training=learning_rate is not None)
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
        self.problem = problem
        self.unroll_length = int(unroll_length)
        self.mode = mode
        self._second_derivatives = bool(second_derivatives)
        self._state_reset_period = int(state_reset_period)
        self._validation = meta_objective == "validation"
        self._groups = _plan(meta.nets, tuple(problem.names), net_assignments, batch_coordinates)
        self._variables = [v for g in self._groups for v in g.net.trainable_variables]
        self.optimizer = None
        if learning_rate is not None:
            if not self._variables:
                raise ValueError("meta_minimize needs a network with trainable weights; "
                                 "these networks have none.")
            self.optimizer = snt.optimizers.Adam(learning_rate)
        body = self._minimize_step if self.optimizer else self._loss_step
        if mode == "eager":
            self._reset_fn, self._step_fn = self._initial_carry, body
        else:
            # No autograph: the unroll has no Python control flow that depends on tensors.
            compile_ = functools.partial(tf.function, jit_compile=mode == "xla", autograph=False)
            self._reset_fn, self._step_fn = compile_(self._initial_carry), compile_(body)
        self.carry = None

    @property
    def variables(self):
        """The weights this unroll meta-trains (or would)."""
        return list(self._variables)

    def reset(self, seed):
        """Starts an epoch from `seed` (two ints): new parameters, data and zero states."""
        self.carry = self._reset_fn(tf.constant(seed, tf.int32, shape=[2]))

    def __call__(self):
        if self.carry is None:
            raise RuntimeError("Call reset(seed) before running an unroll.")
        result, self.carry = self._step_fn(self.carry)
        return result

    # -- Compiled pieces --------------------------------------------------------------------

    def _initial_states(self, params):
        states = []
        for group in self._groups:
            group_params = [params[i] for i in group.indices]
            if group.batched:
                states.append(group.net.initial_state_for_inputs(_flat(group_params)))
            else:
                states.append([group.net.initial_state_for_inputs(p) for p in group_params])
        return states

    def _initial_carry(self, seed):
        params = [tf.convert_to_tensor(p) for p in self.problem.init(seed)]
        if len(params) != len(self.problem.names):
            raise ValueError(f"The problem made {len(params)} parameters for "
                             f"{len(self.problem.names)} names.")
        return Carry(params, self._initial_states(params), tf.constant(0, tf.int32), seed)

    def _loss_and_gradients(self, params, data):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = self.problem.loss(params, data)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if not self._second_derivatives:
            # As the paper: the optimizee's gradients are inputs, not functions of the weights.
            grads = [tf.stop_gradient(g) for g in grads]
        return loss, grads

    def _reset_states(self, states, params, step):
        """Zero states where `step` is a multiple of the reset period (a no-op at step 0)."""
        period = self._state_reset_period
        if not period:
            return states
        zeros = self._initial_states(params)
        due = tf.equal(step % period, 0)
        return tf.nest.map_structure(lambda z, s: tf.where(due, z, s), zeros, states)

    def _apply_networks(self, params, grads, states):
        params, next_states, lambdas = list(params), [], {}
        for group, state in zip(self._groups, states):
            group_params = [params[i] for i in group.indices]
            group_grads = [grads[i] for i in group.indices]
            if group.batched:
                update = group.net.update(_flat(group_grads), state, _flat(group_params))
                steps = _unflat(update.step, group_params)
                next_states.append(update.next_state)
                group_lambdas = [update.lambda_]
            else:
                updates = [group.net.update(g, s, p)
                           for g, s, p in zip(group_grads, state, group_params)]
                steps = [u.step for u in updates]
                next_states.append([u.next_state for u in updates])
                group_lambdas = [u.lambda_ for u in updates]
            for i, step in zip(group.indices, steps):
                params[i] = params[i] + step
            if group_lambdas[0] is not None:
                values = tf.concat([tf.reshape(lam, [-1]) for lam in group_lambdas], axis=0)
                lambdas[group.key] = tf.stack([tf.reduce_mean(values), tf.reduce_min(values),
                                               tf.reduce_max(values)])
        return params, next_states, lambdas

    def _unroll(self, carry):
        """Runs `unroll_length` optimizee steps; returns `(meta_loss, losses, lambdas, carry)`.

        A `tf.while_loop` over one traced step: tracing and compilation cost the same for any
        unroll length, and backpropagation through it keeps each step's values for the backward
        pass as a static unroll would.
        """
        length = self.unroll_length
        lambda_keys = [g.key for g in self._groups if g.net.has_lambda]
        dtype = carry.params[0].dtype if carry.params else tf.float32

        def body(position, params, states, losses, objective, lambda_acc):
            step = carry.step + position
            loss, grads = self._loss_and_gradients(params, self.problem.sample(carry.seed, step))
            losses = losses.write(position, loss)
            objective += (self._held_out_loss(params, carry.seed, step) if self._validation
                          else loss)
            states = self._reset_states(states, params, step)
            params, states, lambdas = self._apply_networks(params, grads, states)
            lambda_acc = {key: tf.stack([acc[0] + lambdas[key][0],
                                         tf.minimum(acc[1], lambdas[key][1]),
                                         tf.maximum(acc[2], lambdas[key][2])])
                          for key, acc in lambda_acc.items()}
            return position + 1, params, states, losses, objective, lambda_acc

        loop_vars = (tf.constant(0), list(carry.params), list(carry.states),
                     tf.TensorArray(dtype, size=length + 1), tf.zeros([], dtype),
                     {key: tf.constant([0.0, np.inf, -np.inf], dtype) for key in lambda_keys})
        _, params, states, losses, objective, lambda_acc = tf.while_loop(
            lambda position, *_: position < length, body, loop_vars, maximum_iterations=length)
        step = carry.step + length
        final = self.problem.loss(params, self.problem.sample(carry.seed, step))
        objective += self._held_out_loss(params, carry.seed, step) if self._validation else final
        lambdas = {key: tf.stack([acc[0] / length, acc[1], acc[2]])
                   for key, acc in lambda_acc.items()}
        return (objective, losses.write(length, final).stack(), lambdas,
                Carry(params, states, step, carry.seed))

    def _held_out_loss(self, params, seed, step):
        return self.problem.loss(params, self.problem.sample_validation(seed, step))

    def _loss_step(self, carry):
        meta_loss, losses, lambdas, carry = self._unroll(carry)
        return UnrollResult(meta_loss, losses, lambdas, tf.constant(True)), carry

    def _minimize_step(self, carry):
        with tf.GradientTape() as tape:
            meta_loss, losses, lambdas, carry = self._unroll(carry)
        grads = tape.gradient(meta_loss, self._variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]
                               + [tf.math.is_finite(meta_loss)])

        def apply():
            self.optimizer.apply(grads, self._variables)
            return tf.constant(True)

        # A non-finite meta-gradient never reaches the weights (nor Adam's moments).
        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        # Truncation: the next unroll continues from here but does not backpropagate into this one.
        carry = tf.nest.map_structure(tf.stop_gradient, carry)
        return UnrollResult(meta_loss, losses, lambdas, applied), carry


BASELINES = ("Adam", "RMSprop", "SGD", "NAG")


def baseline_optimizer(name, learning_rate):
    """TensorFlow's own optimizer `name` (Keras), with the paper-era epsilon for Adam."""
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline optimizer {name!r}; expected one of {BASELINES}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
    optimizers = tf.keras.optimizers
    if name == "Adam":
        return optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    if name == "RMSprop":
        return optimizers.RMSprop(learning_rate, rho=0.9, epsilon=1e-8)
    if name == "NAG":
        return optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    return optimizers.SGD(learning_rate)


class BaselineUnroll:
    """A hand-designed TensorFlow optimizer run like `Unroll`: same problem, seeds and data.

    The optimizee's parameters live in variables that the optimizer updates; `reset(seed)`
    re-draws them and restores the optimizer's slots to their initial values. The learning rate
    is a variable too: `set_learning_rate` changes it without tracing or compiling again, which is
    what makes a learning-rate grid cheap.
    """

    def __init__(self, problem, optimizer_name, learning_rate, unroll_length, mode=None):
        if int(unroll_length) < 1:
            raise ValueError(f"unroll_length must be >= 1, got {unroll_length}.")
        mode = mode or default_mode(training=False)
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
        self.problem = problem
        self.unroll_length = int(unroll_length)
        self.mode = mode
        self.optimizer = baseline_optimizer(optimizer_name, learning_rate)
        self.learning_rate = float(learning_rate)
        self._params, self._initial_slots = None, None
        self._seed, self._step = None, None
        self._step_fn = (self._run if mode == "eager"
                         else tf.function(self._run, jit_compile=mode == "xla", autograph=False))

    def set_learning_rate(self, learning_rate):
        """Takes effect from the next `reset`, like the rest of the optimizer's state."""
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}.")
        self.learning_rate = float(learning_rate)

    def reset(self, seed):
        self._seed = tf.constant(seed, tf.int32, shape=[2])
        self._step = tf.constant(0, tf.int32)
        values = self.problem.init(self._seed)
        if self._params is None:
            self._params = [tf.Variable(v, name=n.replace("/", "_"))
                            for v, n in zip(values, self.problem.names)]
            self.optimizer.build(self._params)
            self._initial_slots = [v.numpy() for v in self.optimizer.variables]
        else:
            for param, value in zip(self._params, values):
                param.assign(value)
            for slot, value in zip(self.optimizer.variables, self._initial_slots):
                slot.assign(value)
        self.optimizer.learning_rate = self.learning_rate  # A variable: assigned, not retraced.

    def __call__(self):
        if self._params is None:
            raise RuntimeError("Call reset(seed) before running an unroll.")
        result = self._step_fn(self._seed, self._step)
        self._step += self.unroll_length
        return result

    def _run(self, seed, first_step):
        """`unroll_length` steps as a `tf.while_loop` over one traced step (see `Unroll`)."""
        def body(position, losses):
            data = self.problem.sample(seed, first_step + position)
            with tf.GradientTape() as tape:
                loss = self.problem.loss(self._params, data)
            grads = tape.gradient(loss, self._params,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            self.optimizer.apply_gradients(zip(grads, self._params))
            return position + 1, losses.write(position, loss)

        dtype = self._params[0].dtype
        _, losses = tf.while_loop(
            lambda position, _: position < self.unroll_length, body,
            (tf.constant(0), tf.TensorArray(dtype, size=self.unroll_length + 1)),
            maximum_iterations=self.unroll_length)
        step = first_step + self.unroll_length
        losses = losses.write(self.unroll_length,
                              self.problem.loss(self._params, self.problem.sample(seed, step)))
        losses = losses.stack()
        return UnrollResult(tf.reduce_sum(losses), losses, {}, tf.constant(True))


def num_unrolls(num_steps, unroll_length):
    """Unrolls per epoch; `unroll_length` must divide `num_steps`."""
    if unroll_length < 1 or num_steps < 1 or num_steps % unroll_length:
        raise ValueError(f"unroll_length ({unroll_length}) must be positive and divide "
                         f"num_steps ({num_steps}).")
    return num_steps // unroll_length

