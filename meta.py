"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al., 2016).

`MetaOptimizer` holds one or more optimizer networks and unrolls them over a problem: at each of
`unroll_length` optimizee steps it takes the gradient of the problem's loss, asks each network for
the step of the parameters assigned to it, and adds the step (`x_next = x + step`). The meta-loss
is the sum of the optimizee's losses at every iterate. `meta_minimize` adds an Adam step on the
networks' weights: truncated backpropagation through time, since each call continues the epoch
where the previous one stopped (parameters and network states carried, gradient stopped).

`unroll` is that computation as one function over explicit state: the problem, the networks'
pure steps, their weights (read once per unroll) and a `Carry`. `Unroll` compiles it (forward,
meta-gradient and update in one function, no Python between optimizee steps) and drives it
through an epoch; `run_epoch` runs whole epochs.
"""

import contextlib
import os
import time
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

from absl import logging

import util
util.import_tensorflow()

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import sonnet as snt  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import configs  # noqa: E402  pylint: disable=wrong-import-position
import networks  # noqa: E402  pylint: disable=wrong-import-position
import problems as problems_lib  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position

DEFAULT_NET_CONFIG = {
    "coordinatewise": {
        "net": "CoordinateWiseDeepLSTM",
        "net_options": {"layers": (20, 20), "preprocess_name": "LogAndSign",
                        "preprocess_options": {"k": 5}, "scale": 0.01},
    }
}
MODES = configs.MODES
META_OBJECTIVES = configs.META_OBJECTIVES
REMATERIALIZE = configs.REMATERIALIZE


def default_mode(training=True, problems=()):
    """The fastest compilation mode measured for the device (see bench/README.md): XLA, or the
    graph when one of `problems` does not suit XLA (`Problem.suits_xla`: convolutions).

    On a CPU, XLA fuses the LSTM's elementwise gates: evaluation takes 0.4x the plain graph's
    time; meta-training with the rematerialised backward pass (the default) ties the graph
    without it in time and needs 40% less memory above the import level.
    """
    del training  # Measured the same way for both; kept so that callers say what they do.
    return "xla" if all(problem.suits_xla for problem in problems) else "graph"


def check_learning_rate(learning_rate, what="learning_rate"):
    """The one check of a learning rate: a finite number above zero."""
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.number))
            or not np.isfinite(learning_rate) or not learning_rate > 0):
        raise ValueError(f"{what} must be positive (and finite), got {learning_rate!r}.")
    return float(learning_rate)


def check_unroll(unroll_length, mode, training, problems=()):
    """Validated `(unroll_length, mode)`; None picks `default_mode(training, problems)`."""
    if isinstance(unroll_length, bool) or int(unroll_length) != unroll_length or unroll_length < 1:
        raise ValueError(f"unroll_length must be a whole number >= 1, got {unroll_length!r}.")
    mode = mode or default_mode(training, problems)
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}.")
    return int(unroll_length), mode


def check_count(value, what, minimum=1):
    """The one check of a whole-number option: an int (not a bool) of at least `minimum`."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or value < minimum):
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value!r}.")
    return int(value)


def unroll_options(problem, meta_objective="train", second_derivatives=False,
                   state_reset_period=0, rematerialize=None, training=True):
    """The checked keyword options of `unroll` for `problem`; None picks the default."""
    if meta_objective not in META_OBJECTIVES:
        raise ValueError(f"Unknown meta_objective {meta_objective!r}; "
                         f"expected one of {META_OBJECTIVES}.")
    if meta_objective == "validation" and problem.sample_validation is None:
        raise ValueError("meta_objective 'validation' needs a problem with held-out data; "
                         "this problem has none (use meta_objective 'train').")
    if rematerialize is None:
        rematerialize = "steps" if training and not second_derivatives else "off"
    rematerialize = {True: "steps", False: "off"}.get(rematerialize, rematerialize)
    if rematerialize not in REMATERIALIZE:
        raise ValueError(f"Unknown rematerialize {rematerialize!r}; expected one of "
                         f"{sorted(REMATERIALIZE)}.")
    return dict(meta_objective=meta_objective, second_derivatives=bool(second_derivatives),
                state_reset_period=check_count(state_reset_period, "state_reset_period", 0),
                rematerialize=rematerialize)


def compile_fn(fn, mode):
    """`fn` as it runs in `mode`: itself (eager) or a `tf.function`, with XLA for "xla"."""
    if mode == "eager":
        return fn
    # No autograph: the unroll has no Python control flow that depends on tensors.
    return tf.function(fn, jit_compile=mode == "xla", autograph=False)


def while_steps(length, body, loop_vars):
    """`loop_vars = body(position, *loop_vars)` for position 0 .. length - 1, in a while loop.

    One traced step: tracing and compilation cost the same for any length, and backpropagation
    through it keeps each step's values for the backward pass as a static unroll would.
    """
    def step(position, *values):
        return (position + 1,) + tuple(body(position, *values))

    result = tf.while_loop(lambda position, *_: position < length, step,
                           (tf.constant(0),) + tuple(loop_vars), maximum_iterations=length)
    return result[1:]


# -- The unroll as a function over explicit state ---------------------------------------------

class Carry(NamedTuple):
    """What one unroll hands to the next within an epoch, for each instance of the meta-batch."""
    params: List[tf.Tensor]  # The optimizee's parameters, instance after instance.
    states: List[Any]  # One state per network group (see `plan`), over all instances.
    step: tf.Tensor  # int32: optimizee steps taken so far in this epoch.
    seed: tf.Tensor  # int32 [instances, 2]: each instance's seed; all its data derives from it.


class UnrollResult(NamedTuple):
    """What one unroll reports."""
    meta_loss: tf.Tensor  # Sum of the losses at every iterate (on held-out data if so asked),
    #                       averaged over the instances of the meta-batch.
    losses: tf.Tensor  # [unroll_length + 1]: the training loss at each iterate, first to last
    #                    (the instances' mean).
    lambdas: Dict[str, tf.Tensor]  # Lambda networks: [mean, min, max] of lambda over the unroll.
    applied: tf.Tensor  # bool: the meta-update was applied (False when it was not finite).
    instance_losses: Any = None  # [instances, unroll_length + 1]: each instance's losses.


class Group(NamedTuple):
    """One network and the parameters it optimizes, in every instance of the meta-batch."""
    key: str
    net: networks.Network
    members: Tuple[Tuple[int, int], ...]  # (instance, index of the parameter in its problem).
    batched: bool  # All coordinates of all its parameters go through one network call.
    # Multiplies every step of the network (LearnedOptimizer's learning_rate): 1.0 runs the
    # network as trained; evaluate.py tunes it like a hand-designed optimizer's learning rate.
    step_scale: float = 1.0


def _flat(tensors):
    if len(tensors) == 1:
        return tf.reshape(tensors[0], [-1])
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def _unflat(flat, like):
    if len(like) == 1:
        return [tf.reshape(flat, like[0].shape)]
    parts = tf.split(flat, [t.shape.num_elements() for t in like])
    return [tf.reshape(p, t.shape) for p, t in zip(parts, like)]


def by_instance(params, counts):
    """A flat list of the instances' parameters, instance after instance, as a list per instance.

    `counts` is the number of parameters of each instance's problem (`parameter_counts`).
    """
    offsets = np.cumsum([0] + list(counts))
    return [list(params[offsets[b]:offsets[b + 1]]) for b in range(len(counts))]


def parameter_counts(problems):
    """The number of parameter tensors of each instance's problem."""
    return [len(problem.names) for problem in problems]


def instance_problems(problem, instances):
    """One problem per instance: `problem` repeated, or a list of as many problems (checked)."""
    if isinstance(problem, problems_lib.Problem):
        return [problem] * instances
    problems = list(problem)
    if len(problems) != instances or not all(isinstance(p, problems_lib.Problem)
                                            for p in problems):
        raise ValueError(f"Expected a Problem or a list of {instances} Problems (one per "
                         f"instance), got {len(problems)} items.")
    return problems


def initial_states(groups, params):
    """The networks' zero states for `params` (a list per instance), one entry per group."""
    states = []
    for group in groups:
        group_params = [params[b][i] for b, i in group.members]
        if group.batched:
            states.append(group.net.initial_state_for_inputs(_flat(group_params)))
        else:
            states.append([group.net.initial_state_for_inputs(p) for p in group_params])
    return states


def loss_and_gradients(problem, params, data, second_derivatives=False):
    """The optimizee's loss and its gradients (constants unless `second_derivatives`)."""
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = problem.loss(params, data)
    grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if not second_derivatives:
        # As the paper: the optimizee's gradients are inputs, not functions of the weights.
        grads = [tf.stop_gradient(g) for g in grads]
    return loss, grads


def loss_with_known_gradients(problem, params, data):
    """`(loss, gradients)` for first-order meta-gradients, with a backward pass that reuses them.

    With the optimizee's gradients held constant, the derivative of the loss term `f(x)` with
    respect to `x` is the gradient `g` the forward pass computed anyway: the meta-gradient's
    backward pass multiplies the upstream gradient by `g` instead of differentiating the
    optimizee again, and keeps `g` instead of the optimizee's activations.
    """
    @tf.custom_gradient
    def known(*params_):
        loss, grads = loss_and_gradients(problem, list(params_), data)

        def backward(upstream_loss, *upstream_grads):
            del upstream_grads  # The gradients are constants (inputs of the networks).
            return [upstream_loss * g for g in grads]

        return [loss] + grads, backward

    loss, *grads = known(*params)
    return loss, [tf.stop_gradient(g) for g in grads]


def apply_networks(groups, weights, params, grads, states):
    """One optimizee step of every network: `(next params, next states, lambda statistics)`.

    `params` and `grads` hold a list per instance of the meta-batch: a coordinatewise network
    steps the coordinates of all instances in one call. Each group's network sees the parameters
    before the step; a parameter of two groups gets both steps, one of none stays as it is (as
    the original).
    """
    next_params, next_states, lambdas = [list(p) for p in params], [], {}
    for group, state in zip(groups, states):
        net, group_weights = group.net, weights[group.key]
        step = net.step
        members = group.members
        group_params = [params[b][i] for b, i in members]
        group_grads = [grads[b][i] for b, i in members]
        if group.batched:
            update = step(group_weights, _flat(group_grads), state, _flat(group_params))
            steps = _unflat(update.step, group_params)
            next_states.append(update.next_state)
            group_lambdas = [update.lambda_]
        else:
            updates = [step(group_weights, g, s, p)
                       for g, s, p in zip(group_grads, state, group_params)]
            steps = [u.step for u in updates]
            next_states.append([u.next_state for u in updates])
            group_lambdas = [u.lambda_ for u in updates]
        if group.step_scale != 1.0:
            steps = [tf.cast(group.step_scale, s.dtype) * s for s in steps]
        for (b, i), step in zip(members, steps):
            next_params[b][i] = next_params[b][i] + step
        if net.has_lambda:
            values = tf.concat([tf.reshape(lam, [-1]) for lam in group_lambdas], axis=0)
            lambdas[group.key] = tf.stack([tf.reduce_mean(values), tf.reduce_min(values),
                                           tf.reduce_max(values)])
    return next_params, next_states, lambdas


def _reset_states(groups, params, states, step, state_reset_period):
    """The networks' states, zeroed when `step` is a multiple of `state_reset_period` (0: never)."""
    if not state_reset_period:
        return states
    due = tf.equal(step % state_reset_period, 0)
    return tf.nest.map_structure(lambda zero, s: tf.where(due, zero, s),
                                 initial_states(groups, params), states)


def _known_terms(problems, params, seeds, step, validation):
    """Each instance's `(loss, gradients, objective, objective's gradients)` at its iterate.

    First-order: every gradient is a constant of the networks. The objective is the loss
    itself, or the loss on a held-out batch (with its own gradient) for the validation
    meta-objective.
    """
    terms = []
    for b, (problem, instance_params) in enumerate(zip(problems, params)):
        loss, grads = loss_and_gradients(problem, instance_params,
                                         problem.sample(seeds[b], step))
        objective, objective_grads = loss, grads
        if validation:
            objective, objective_grads = loss_and_gradients(
                problem, instance_params, problem.sample_validation(seeds[b], step))
        terms.append((loss, grads, objective, objective_grads))
    return terms


def _rematerialized_steps(problems, groups, weights, params, states, seeds, first_step, count,
                          validation, state_reset_period):
    """`count` first-order optimizee steps whose meta-gradient recomputes the networks' steps.

    The forward pass keeps what the segment starts from (the weights, the parameters, the
    networks' states) and, per step, the optimizee's gradients: the networks' inputs, and the
    derivative of each loss term with respect to its iterate. The backward pass replays the
    networks' steps from the segment's start under a tape, with each loss term replaced by its
    linear part `<g, x>` (the same derivative), and differentiates that: the optimizee is never
    differentiated twice, and the activations of a segment live only while it is
    differentiated. Same numbers as the plain backward pass.

    Returns:
      `(params, states, objectives [instances], losses [count, instances], lambda statistics
      {key: [sum of means, min, max]})`.
    """
    structure = (weights, params, states)
    instances, dtype = len(params), params[0][0].dtype
    lambda_keys = [g.key for g in groups if g.net.has_lambda]
    recorded = []  # Per step: (networks' gradients, objectives' gradients) of each instance.

    @tf.custom_gradient
    def segment(*args):
        w, p, s = tf.nest.pack_sequence_as(structure, list(args))
        objectives, losses = [tf.zeros([], dtype)] * instances, []
        stats = {key: [tf.zeros([], dtype), tf.constant(np.inf, dtype),
                       tf.constant(-np.inf, dtype)] for key in lambda_keys}
        for j in range(count):
            terms = _known_terms(problems, p, seeds, first_step + j, validation)
            recorded.append(([t[1] for t in terms], [t[3] for t in terms]))
            objectives = [o + t[2] for o, t in zip(objectives, terms)]
            losses.append(tf.stack([t[0] for t in terms]))
            s = _reset_states(groups, p, s, first_step + j, state_reset_period)
            p, s, lambdas = apply_networks(groups, w, p, recorded[-1][0], s)
            for key, (mean, low, high) in stats.items():
                stats[key] = [mean + lambdas[key][0], tf.minimum(low, lambdas[key][1]),
                              tf.maximum(high, lambdas[key][2])]
        differentiable = tf.nest.flatten((p, s)) + objectives
        reported = [tf.stack(losses)] + [tf.stack(stats[key]) for key in lambda_keys]

        def backward(*upstream):
            upstream = [tf.zeros_like(o) if u is None else u
                        for u, o in zip(upstream[:len(differentiable)], differentiable)]
            upstream_carry, upstream_objectives = upstream[:-instances], upstream[-instances:]
            with tf.GradientTape() as tape:
                tape.watch(args)
                w, p, s = tf.nest.pack_sequence_as(structure, list(args))
                linear = tf.zeros([], dtype)
                for j, (grads, objective_grads) in enumerate(recorded):
                    for b in range(instances):
                        linear += upstream_objectives[b] * tf.add_n(
                            [tf.reduce_sum(g * x) for g, x in zip(objective_grads[b], p[b])])
                    s = _reset_states(groups, p, s, first_step + j, state_reset_period)
                    p, s, _ = apply_networks(groups, w, p, grads, s)
                replayed = tf.nest.flatten((p, s))
            return tape.gradient(replayed + [linear], list(args),
                                 output_gradients=upstream_carry + [tf.ones([], dtype)],
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)

        return differentiable + reported, backward

    outputs = segment(*tf.nest.flatten(structure))
    carry_size = len(outputs) - instances - 1 - len(lambda_keys)
    p, s = tf.nest.pack_sequence_as((params, states), outputs[:carry_size])
    objectives = outputs[carry_size:carry_size + instances]
    losses, stats = outputs[carry_size + instances], outputs[carry_size + instances + 1:]
    return p, s, objectives, losses, dict(zip(lambda_keys, stats))


# Coordinates per chunk times unroll steps in the coordinatewise backward pass: a chunk's
# activations (about 1.2 KB per coordinate and step for a 2x20 LSTM) stay within a CPU's
# last-level cache, whatever the unroll length.
CHUNK_COORDINATE_STEPS = 2**15


def _separable(groups, counts):
    """Whether the meta-gradient separates coordinate by coordinate (`_coordinatewise_unroll`):
    one coordinatewise LSTM steps every parameter of every instance (`counts` parameters each)
    once, all in one call."""
    if len(groups) != 1:
        return False
    group = groups[0]
    every = [(b, i) for b, count in enumerate(counts) for i in range(count)]
    return (group.batched and isinstance(group.net, networks.CoordinateWiseDeepLSTM)
            and sorted(group.members) == every)


def _coordinatewise_unroll(problems, group, weights, carry, length, validation,
                           state_reset_period):
    """`unroll` with first-order meta-gradients of a coordinatewise network, rematerialised.

    With the optimizee's gradients held constant, everything the meta-gradient flows through
    is coordinatewise: each coordinate's LSTM state, its step, its parameter, and the
    derivative of each loss term with respect to it (the gradient `g_t` the forward pass
    computed anyway). The forward pass therefore keeps only `g_t` (4 bytes per coordinate and
    step), and the backward pass replays the network over chunks of coordinates, one after the
    other, each small enough for its activations to stay in cache, summing the chunks'
    gradients of the weights. Same numbers as differentiating the unroll as it is.
    """
    net, key = group.net, group.key
    instances = carry.seed.shape[0]
    dtype = carry.params[0].dtype
    counts = parameter_counts(problems)
    offsets = np.cumsum([0] + counts)
    members = group.members
    order = [offsets[b] + i for b, i in members]  # The carry's index of each member.
    sizes = [carry.params[j].shape.num_elements() for j in order]
    structure = (weights, list(carry.params), carry.states[0])
    has_lambda = net.has_lambda

    def group_flat(per_instance_values):
        return _flat([per_instance_values[b][i] for b, i in members])

    @tf.custom_gradient
    def region(*args):
        w, flat_params, initial_state = tf.nest.pack_sequence_as(structure, list(args))

        def body(t, params, state, losses, objectives, lambda_acc, grads_ta, objective_ta):
            step = carry.step + t
            terms = _known_terms(problems, params, carry.seed, step, validation)
            grads = [term[1] for term in terms]
            objectives = [o + term[2] for o, term in zip(objectives, terms)]
            grads_ta = grads_ta.write(t, group_flat(grads))
            objective_ta = objective_ta.write(t, group_flat([term[3] for term in terms]))
            state = _reset_states([group], params, [state], step, state_reset_period)[0]
            params, (state,), lambdas = apply_networks([group], {key: w}, params, grads, [state])
            if has_lambda:
                lambda_acc = tf.stack([lambda_acc[0] + lambdas[key][0],
                                       tf.minimum(lambda_acc[1], lambdas[key][1]),
                                       tf.maximum(lambda_acc[2], lambdas[key][2])])
            return (params, state, losses.write(t, tf.stack([term[0] for term in terms])),
                    objectives, lambda_acc, grads_ta, objective_ta)

        n = sum(sizes)
        params, state, losses, objectives, lambda_acc, grads_ta, objective_ta = while_steps(
            length, body, (by_instance(flat_params, counts), initial_state,
                           tf.TensorArray(dtype, size=length + 1),
                           [tf.zeros([], dtype)] * instances,
                           tf.constant([0.0, np.inf, -np.inf], dtype),
                           tf.TensorArray(dtype, size=length, element_shape=[n]),
                           tf.TensorArray(dtype, size=length + 1, element_shape=[n])))
        final = _known_terms(problems, params, carry.seed, carry.step + length, validation)
        objectives = [o + term[2] for o, term in zip(objectives, final)]
        losses = losses.write(length, tf.stack([term[0] for term in final])).stack()
        objective_ta = objective_ta.write(length, group_flat([term[3] for term in final]))
        grads_all, objective_grads = grads_ta.stack(), objective_ta.stack()
        final_flat = [p for instance in params for p in instance]
        differentiable = final_flat + tf.nest.flatten(state) + objectives

        def backward(*upstream):
            upstream = [tf.zeros_like(o) if u is None else u
                        for u, o in zip(upstream[:len(differentiable)], differentiable)]
            up_params = upstream[:len(final_flat)]
            up_state = tf.nest.pack_sequence_as(state, upstream[len(final_flat):-instances])
            up_objectives = upstream[-instances:]
            # Each coordinate's share of the meta-loss: its instance's upstream gradient.
            weight = tf.concat([tf.fill([size], up_objectives[b])
                                for (b, _), size in zip(members, sizes)], axis=0)
            d_w, d_params, d_state = _chunked_backward(
                net, w, _flat([flat_params[j] for j in order]), initial_state, grads_all,
                objective_grads * weight, _flat([up_params[j] for j in order]), up_state,
                carry.step, length, state_reset_period)
            d_flat = [None] * len(flat_params)
            for j, part in zip(order, tf.split(d_params, sizes)):
                d_flat[j] = tf.reshape(part, flat_params[j].shape)
            return tf.nest.flatten(d_w) + d_flat + tf.nest.flatten(d_state)

        stats = [lambda_acc] if has_lambda else []
        return differentiable + [losses] + stats, backward

    outputs = region(*tf.nest.flatten(structure))
    count = len(carry.params)
    state_size = len(tf.nest.flatten(carry.states[0]))
    params = outputs[:count]
    state = tf.nest.pack_sequence_as(carry.states[0], outputs[count:count + state_size])
    objectives = outputs[count + state_size:count + state_size + instances]
    losses = outputs[count + state_size + instances]
    lambdas = {}
    if has_lambda:
        acc = outputs[-1]
        lambdas[key] = tf.stack([acc[0] / length, acc[1], acc[2]])
    meta_loss = tf.add_n(objectives) / instances
    return (meta_loss, tf.transpose(losses), lambdas,
            Carry(list(params), [state], carry.step + length, carry.seed))


def _chunked_backward(net, weights, params, state, grads, objective_grads, up_params, up_state,
                      first_step, length, state_reset_period):
    """The meta-gradient of a coordinatewise unroll, replayed chunk of coordinates by chunk.

    Args:
      params, state: where the unroll started, `[n]` and the network's state (coordinates last).
      grads: `[length, n]` the optimizee's gradients at each step (the network's inputs).
      objective_grads: `[length + 1, n]` the derivative of the meta-loss's term at each iterate
        with respect to it, already scaled by the upstream gradient.
      up_params, up_state: upstream gradients of the final parameters and state.

    Returns:
      `(d weights, d params [n], d state)`.
    """
    n = params.shape[0]
    chunk = max(1, min(n, CHUNK_COORDINATE_STEPS // max(length, 1)))
    chunks = -(-n // chunk)
    padding = chunks * chunk - n
    # Padded coordinates get zero upstream gradients, so they add exactly nothing.
    pad = lambda x: tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[0, padding]])
    params, up_params = pad(params), pad(up_params)
    state, up_state = tf.nest.map_structure(pad, state), tf.nest.map_structure(pad, up_state)
    grads, objective_grads = pad(grads), pad(objective_grads)

    def cut(x, start):
        begin = [0] * (x.shape.rank - 1) + [start]
        return tf.slice(x, begin, x.shape[:-1].as_list() + [chunk])

    def chunk_body(c, d_weights, d_params, d_states):
        start = c * chunk
        p0, s0 = cut(params, start), tf.nest.map_structure(lambda x: cut(x, start), state)
        g, og = cut(grads, start), cut(objective_grads, start)
        with tf.GradientTape() as tape:
            tape.watch([weights, p0, s0])

            def step(t, p, s, linear):
                linear += tf.reduce_sum(og[t] * p)
                if state_reset_period:
                    due = tf.equal((first_step + t) % state_reset_period, 0)
                    s = tf.nest.map_structure(lambda x: tf.where(due, tf.zeros_like(x), x), s)
                update = net.step(weights, g[t], s, p)
                return p + update.step, update.next_state, linear

            p, s, linear = while_steps(length, step, (p0, s0, tf.zeros([], p0.dtype)))
            linear += tf.reduce_sum(og[length] * p)
        d_w, d_p, d_s = tape.gradient(
            [p, s, linear], [weights, p0, s0],
            output_gradients=[cut(up_params, start),
                              tf.nest.map_structure(lambda x: cut(x, start), up_state),
                              tf.ones([], p0.dtype)],
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        d_weights = tf.nest.map_structure(tf.add, d_weights, d_w)
        d_states = tf.nest.map_structure(lambda ta, x: ta.write(c, x), d_states, d_s)
        return c + 1, d_weights, d_params.write(c, d_p), d_states

    def to_array(x):
        return tf.TensorArray(x.dtype, size=chunks, element_shape=x.shape[:-1].as_list() + [chunk])

    _, d_weights, d_params, d_states = tf.while_loop(
        lambda c, *_: c < chunks, chunk_body,
        (tf.constant(0), tf.nest.map_structure(tf.zeros_like, weights),
         to_array(params), tf.nest.map_structure(to_array, state)),
        maximum_iterations=chunks)
    join = lambda ta: tf.concat(tf.unstack(ta.stack()), axis=-1)[..., :n]
    return (d_weights, join(d_params), tf.nest.map_structure(join, d_states))


def unroll(problem, groups, weights, carry, length, meta_objective="train",
           second_derivatives=False, state_reset_period=0, rematerialize="off"):
    """Runs `length` optimizee steps from `carry`; pure (reads only its arguments).

    Args:
      problem: a `problems.Problem` for every instance, or a list of one per instance: an
        instance is a problem and its seed (`carry.seed`), whatever its parameters' shapes.
      groups: the networks and their parameters in every instance (`plan`).
      weights: `{group key: net.step_weights()}`.
      carry: where the previous unroll of the epoch stopped (or `Unroll`'s initial carry), for
        each instance of the meta-batch.
      length: optimizee steps.
      meta_objective: "train" sums the losses the optimizee steps on; "validation" the losses
        on held-out batches at the same iterates.
      second_derivatives: backpropagate through the optimizee's gradients too.
      state_reset_period: zero the networks' states every that many steps of the epoch (0:
        never).
      rematerialize: how the meta-gradient's backward pass gets each step's values (first-order
        only; the same numbers): "off" keeps them; "steps" keeps each step's inputs and
        recomputes the step (`_rematerialized_steps`); "chunks" keeps only the optimizee's
        gradients and replays the networks chunk of coordinates by chunk, so that memory
        barely grows with the unroll length (`_coordinatewise_unroll`; a coordinatewise
        network only, else "steps"). See `REMATERIALIZE`.

    Returns:
      `(meta_loss, instance_losses [instances, length + 1], lambdas {key: [mean, min, max]},
      next carry)`; the meta-loss is the mean over the instances of the meta-batch.
    """
    validation = meta_objective == "validation"
    lambda_keys = [g.key for g in groups if g.net.has_lambda]
    instances = carry.seed.shape[0]
    problems = instance_problems(problem, instances)
    counts = parameter_counts(problems)
    dtype = carry.params[0].dtype if carry.params else tf.float32
    if rematerialize != "off" and second_derivatives:
        raise ValueError("rematerialize reuses first-order gradients; it cannot be combined "
                         "with second_derivatives.")
    if rematerialize == "chunks" and _separable(groups, counts):
        return _coordinatewise_unroll(problems, groups[0], weights[groups[0].key], carry, length,
                                      validation, state_reset_period)

    def accumulate(acc, stats):
        return {key: tf.stack([a[0] + stats[key][0], tf.minimum(a[1], stats[key][1]),
                               tf.maximum(a[2], stats[key][2])]) for key, a in acc.items()}

    def plain_step(step, params, states, objectives):
        """One optimizee step, differentiated as it is (second derivatives if asked)."""
        step_losses, grads = [], []
        for b, problem_b in enumerate(problems):  # The instances, one after the other.
            loss, instance_grads = loss_and_gradients(
                problem_b, params[b], problem_b.sample(carry.seed[b], step), second_derivatives)
            objective = (problem_b.loss(params[b],
                                        problem_b.sample_validation(carry.seed[b], step))
                         if validation else loss)
            objectives[b] += objective
            step_losses.append(loss)
            grads.append(instance_grads)
        states = _reset_states(groups, params, states, step, state_reset_period)
        params, states, lambdas = apply_networks(groups, weights, params, grads, states)
        return params, states, objectives, tf.stack(step_losses)[None], lambdas

    def body(position, params, states, losses, objectives, lambda_acc):
        step = carry.step + position
        if rematerialize != "off":
            # One step per region: segments of 5 steps measured 40% slower (bench/README.md).
            params, states, terms, step_losses, stats = _rematerialized_steps(
                problems, groups, weights, params, states, carry.seed, step, 1, validation,
                state_reset_period)
            objectives = [o + t for o, t in zip(objectives, terms)]
        else:
            params, states, objectives, step_losses, stats = plain_step(step, params, states,
                                                                       objectives)
        losses = losses.write(position, step_losses[0])
        return params, states, losses, objectives, accumulate(lambda_acc, stats)

    params, states, losses, objectives, lambda_acc = while_steps(length, body, (
        by_instance(carry.params, counts), list(carry.states),
        tf.TensorArray(dtype, size=length + 1), [tf.zeros([], dtype)] * instances,
        {key: tf.constant([0.0, np.inf, -np.inf], dtype) for key in lambda_keys}))
    step = carry.step + length
    finals = []
    # The last iterate's loss terms; with rematerialisation its gradients are reused, as in the
    # regions.
    def loss_at(problem_b, p, data):
        if rematerialize != "off":
            return loss_with_known_gradients(problem_b, p, data)[0]
        return problem_b.loss(p, data)

    for b, problem_b in enumerate(problems):
        finals.append(loss_at(problem_b, params[b], problem_b.sample(carry.seed[b], step)))
        objectives[b] += (loss_at(problem_b, params[b],
                                  problem_b.sample_validation(carry.seed[b], step))
                          if validation else finals[-1])
    lambdas = {key: tf.stack([acc[0] / length, acc[1], acc[2]])
               for key, acc in lambda_acc.items()}
    instance_losses = tf.transpose(losses.write(length, tf.stack(finals)).stack())
    # The meta-batch's mean; with one instance, exactly that instance's numbers.
    meta_loss = tf.add_n(objectives) / instances
    return (meta_loss, instance_losses, lambdas,
            Carry([p for instance in params for p in instance], states, step, carry.seed))


def plan(nets, problems, net_assignments=None, batch_coordinates=True, step_scale=1.0):
    """The groups of `unroll`: which network steps which parameters of each instance.

    `problems` holds one problem per instance (the same one repeated for a plain meta-batch).
    `net_assignments` is `[(net key, [parameter names])]`, names every instance's problem has,
    or None with a single network (which then steps every parameter). As the original: a
    parameter assigned to no network stays constant (and is logged), one assigned to two gets
    both networks' steps. A group lists its parameters instance after instance. `step_scale`
    multiplies every network's steps (`check_step_scale`).
    """
    step_scale = check_step_scale(step_scale)
    if net_assignments is not None:
        for key, _ in net_assignments:
            if key not in nets:
                raise ValueError(f"Unknown network {key!r} in net_assignments; "
                                 f"the networks are {sorted(nets)}.")
        keys = [key for key, _ in net_assignments]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"Network {key!r} appears twice in net_assignments.")
    elif len(nets) != 1:
        raise ValueError(f"net_assignments is needed with several networks ({sorted(nets)}).")
    members, frozen = {}, []
    for b, problem in enumerate(problems):
        names = list(problem.names)
        assignments = net_assignments or [(next(iter(nets)), names)]
        assigned = set()
        for key, var_names in assignments:
            for name in var_names:
                if name not in names:
                    raise ValueError(f"Unknown variable {name!r} in net_assignments; "
                                     f"the problem's variables are {names}.")
            assigned.update(var_names)
            members.setdefault(key, []).extend((b, names.index(n)) for n in var_names)
        frozen += [n for n in names if n not in assigned and n not in frozen]
    if frozen:
        logging.warning("Variables %s are assigned to no network and stay constant.", frozen)
    return [Group(key, nets[key], tuple(members[key]),
                  batch_coordinates and nets[key].coordinatewise, step_scale)
            for key in members if members[key]]


def check_step_scale(step_scale):
    """`step_scale` as a float: finite and positive (1.0 runs the networks as trained)."""
    if isinstance(step_scale, bool) or not isinstance(step_scale, (int, float, np.number)):
        raise TypeError(f"step_scale must be a number, got {step_scale!r}.")
    if not (np.isfinite(step_scale) and step_scale > 0):
        raise ValueError(f"step_scale must be finite and positive (1.0 runs the networks as "
                         f"trained), got {step_scale}.")
    return float(step_scale)


# -- The meta-optimizer -------------------------------------------------------------------------

def adam_update(g, m, v, t, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8):
    """Adam (Kingma & Ba, 2015), pure: `(step to subtract, next m, next v)` at step `t` (from 1).

    The arithmetic of `snt.optimizers.Adam` (hyperparameters in the gradient's dtype, so that
    `1 - beta1` is computed in it too): weights trained before match bit for bit.
    """
    beta1, beta2, epsilon, learning_rate, t = (
        tf.cast(x, g.dtype) for x in (beta1, beta2, epsilon, learning_rate, t))
    m = beta1 * m + (1. - beta1) * g
    v = beta2 * v + (1. - beta2) * g * g
    m_hat = m / (1. - tf.pow(beta1, t))
    v_hat = v / (1. - tf.pow(beta2, t))
    return learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v


class MetaAdam(snt.Module):
    """The meta-optimizer: Adam's state for `variables` and `apply`, in any tf.distribute context.

    Sonnet's own Adam refuses `MirroredStrategy` and `MultiWorkerMirroredStrategy`; this one
    applies all-reduced meta-gradients in the cross-replica context, where assigning a mirrored
    variable updates every copy.
    """

    def __init__(self, variables, learning_rate, name="meta_adam"):
        super().__init__(name=name)
        self.learning_rate = check_learning_rate(learning_rate)
        with self.name_scope:
            self.step = tf.Variable(0, trainable=False, name="t", dtype=tf.int64)
            self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name="m") for v in variables]
            self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name="v") for v in variables]

    def apply_if_finite(self, meta_loss, grads, variables):
        """`apply` unless the meta-loss or a meta-gradient is not finite; returns whether it did.

        A non-finite meta-gradient never reaches the weights (nor Adam's moments).
        """
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]
                               + [tf.math.is_finite(meta_loss)])

        def apply():
            self.apply(grads, variables)
            return tf.constant(True)

        return tf.cond(finite, apply, lambda: tf.constant(False))

    def apply(self, grads, variables):
        self.step.assign_add(1)
        for g, variable, m_var, v_var in zip(grads, variables, self.m, self.v):
            update, m, v = adam_update(g, m_var, v_var, self.step, self.learning_rate)
            variable.assign_sub(update)
            m_var.assign(m)
            v_var.assign(v)

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
            name = weights_file.network_file_name(key, type(net).__name__, net.options)
            paths.append(os.path.join(path, name))
            networks.save(net, paths[-1], metadata)
        return paths

    def meta_loss(self, problem, unroll_length, net_assignments=None, second_derivatives=False,
                  **options):
        """An `Unroll` that runs the networks on `problem` without changing their weights.

        See `Unroll` for the arguments.
        """
        return Unroll(self, problem, unroll_length, net_assignments, second_derivatives,
                      learning_rate=None, **options)

    def meta_minimize(self, problem, unroll_length, learning_rate=0.01, net_assignments=None,
                      second_derivatives=False, **options):
        """An `Unroll` whose every call also takes an Adam step on the networks' weights.

        The default learning rate is the original's (train.py's flag defaults to 0.001).
        """
        return Unroll(self, problem, unroll_length, net_assignments, second_derivatives,
                      learning_rate=check_learning_rate(learning_rate), **options)


class Unroll:
    """A compiled truncated unroll of the networks over a problem, carrying state across calls.

    `reset(seed)` starts an epoch: fresh optimizee parameters and data drawn from `seed`, zero
    network states. Each call then runs `unroll_length` optimizee steps from where the last call
    stopped (and, for `meta_minimize`, an Adam step on the weights), returning an `UnrollResult`.
    """

    def __init__(self, meta, problem, unroll_length, net_assignments=None,
                 second_derivatives=False, learning_rate=None, state_reset_period=0,
                 meta_objective="train", mode=None, batch_coordinates=True, rematerialize=None,
                 meta_batch_size=1, strategy=None, step_scale=1.0):
        """Builds the unroll.

        Args:
          meta: the `MetaOptimizer`.
          problem: a `problems.Problem`, or a list of them: one per instance of the
            meta-batch (an instance is a problem and its seed; their parameters may have any
            shapes), which then sets `meta_batch_size`.
          unroll_length: optimizee steps per call (truncation length).
          net_assignments: `[(net_key, [parameter names])]`; None with a single network.
          second_derivatives: backpropagate through the optimizee's gradients too; by default
            they are constants, as in the paper.
          learning_rate: the meta-optimizer's Adam learning rate; None runs without updates.
          state_reset_period: re-initialize the network states every that many optimizee steps;
            0 only at `reset` (the DeepMind original).
          meta_objective: "train" or "validation" (see `unroll`).
          mode: "eager", "graph" (tf.function) or "xla" (tf.function with jit_compile); None
            picks `default_mode()` for meta-training or evaluation.
          batch_coordinates: feed all coordinates of a coordinatewise network's parameters
            through one call (same numbers, faster) instead of one call per parameter.
          rematerialize: one of `REMATERIALIZE` (see `unroll`); None: "steps" when
            meta-training with first-order gradients (smaller and faster, see
            bench/README.md), else "off". True and False mean "steps" and "off".
          meta_batch_size: instances of the problem unrolled together, each from its own seed
            (`reset` takes one per instance); the meta-loss is their mean.
          strategy: a `tf.distribute` strategy (`MirroredStrategy`,
            `MultiWorkerMirroredStrategy`) under whose scope `meta`'s networks were built: the
            meta-batch is split across its replicas, their meta-gradients are averaged and every
            replica applies the same update. None: no distribution.
          step_scale: multiplies every step the networks take (as `LearnedOptimizer`'s
            learning_rate); 1.0, the default, runs them as trained.
        """
        self.unroll_length, self.mode = check_unroll(
            unroll_length, mode, training=learning_rate is not None,
            problems=[problem] if isinstance(problem, problems_lib.Problem) else problem)
        # A default XLA gives way to the graph for problems XLA cannot compile (e.g. a loss
        # with a tf.while_loop of unknown length); an explicit mode is kept.
        self._fallback = mode is None and self.mode == "xla" and strategy is None
        self.meta_batch_size = check_count(meta_batch_size, "meta_batch_size")
        if not isinstance(problem, problems_lib.Problem):
            if self.meta_batch_size not in (1, len(problem)):
                raise ValueError(f"meta_batch_size ({self.meta_batch_size}) differs from the "
                                 f"{len(problem)} problems given, one per instance.")
            self.meta_batch_size = len(problem)
        self.problems = instance_problems(problem, self.meta_batch_size)
        self.strategy = strategy
        replicas = strategy.num_replicas_in_sync if strategy else 1
        if self.meta_batch_size % replicas:
            raise ValueError(f"meta_batch_size ({self.meta_batch_size}) must be a multiple of "
                             f"the {replicas} replicas, which share it out.")
        share = self.meta_batch_size // replicas
        # Each replica runs the same compiled function on its own share of the instances.
        self._share = self.problems[:share]
        if any(self.problems[r * share:(r + 1) * share] != self._share
               for r in range(replicas)):
            raise ValueError(f"Under a strategy every replica's share of the instances must "
                             f"hold the same problems; give {replicas} shares alike.")
        options = [unroll_options(p, meta_objective, second_derivatives, state_reset_period,
                                  rematerialize, training=learning_rate is not None)
                   for p in _distinct(self.problems)]
        self._options = options[0]
        self._groups = plan(meta.nets, self._share, net_assignments, batch_coordinates,
                            step_scale)
        _build_networks(self._groups, self._share)
        self._variables = _unique([v for g in self._groups for v in g.net.trainable_variables])
        self.optimizer = None
        if learning_rate is not None:
            if not self._variables:
                raise ValueError("meta_minimize needs a network with trainable weights; "
                                 "these networks have none.")
            with strategy.scope() if strategy else _no_scope():
                self.optimizer = MetaAdam(self._variables, learning_rate)
        # The start of an epoch runs once per epoch: never under XLA, whose float random
        # numbers differ from the graph's (e.g. Keras initializers), so every mode starts alike.
        self._reset_fn = compile_fn(self._initial_carry, "eager" if self.mode == "eager"
                                    else "graph")
        self._gradient_fn = None
        step = self._minimize_step if self.optimizer else self._loss_step
        if strategy is None:
            self._step_fn = compile_fn(step, self.mode)
        else:
            # Neither the collectives nor one function traced for several replicas' variables
            # compile with XLA: under a strategy the unroll runs in the graph.
            if self.mode == "xla":
                self.mode = "graph"
            self._step_fn = compile_fn(step, self.mode)
            self._replica_fns = {True: self._gradient_step, False: self._plain_loss_step}
        self.carry = None

    @property
    def variables(self):
        """The weights this unroll meta-trains (or would)."""
        return list(self._variables)

    @property
    def rematerialize(self):
        """How the meta-gradient gets each step's values: "off", "steps" or "chunks" (`unroll`;
        "chunks" falls back to "steps" where the meta-gradient does not separate)."""
        return self._options["rematerialize"]

    def kept_bytes_per_step(self):
        """At least the bytes the meta-gradient keeps in this process (its replicas' instances)
        for each step of the unroll: what a long unroll or a large meta-batch runs out of memory
        on. 0 for an unroll without meta-updates.

        Lower bounds, from the networks' state and the optimizees' sizes; measured on MNIST
        (bench/README.md, `--sweep_unroll`), per coordinate and step: "off" keeps 1295 bytes (about 4 times the LSTM's 320 bytes of state: the gates too), "steps"
        327 (each step's inputs: the state and the gradient), "chunks" 12 (the gradient).
        """
        if self.optimizer is None:
            return 0
        state_bytes, gradient_bytes = self._share_bytes()
        mode = self.rematerialize
        if mode == "chunks" and _separable(self._groups, parameter_counts(self._share)):
            per_share = gradient_bytes
        elif mode == "off":
            per_share = 3 * state_bytes + gradient_bytes
        else:
            per_share = state_bytes + gradient_bytes
        return per_share * self._shares_here()

    def live_bytes(self):
        """At least the bytes this process's instances hold at every step, with or without a
        meta-gradient: the networks' states and the optimizee's parameters and gradients. What
        a large meta-batch of evaluation epochs runs out of memory on."""
        state_bytes, gradient_bytes = self._share_bytes()
        return (state_bytes + 2 * gradient_bytes) * self._shares_here()

    def _share_bytes(self):
        """`(bytes of the networks' state, bytes of the optimizees' gradients)` of one replica's
        share of the instances (all of them without a strategy)."""
        def shapes():
            params = _shapes_only(self._share)
            return initial_states(self._groups, params), params

        # Traced, not run: a large meta-batch's zero states would take the memory this measures.
        state, params = tf.function(shapes).get_concrete_function().structured_outputs
        return tuple(sum(t.shape.num_elements() * t.dtype.size for t in tf.nest.flatten(part))
                     for part in (state, params))

    def _shares_here(self):
        """The replicas' shares of the meta-batch that this process unrolls."""
        if self.strategy is None:
            return 1
        return len(self.strategy.extended.worker_devices)

    def reset(self, seed):
        """Starts an epoch: new parameters, data and zero states.

        `seed` is two ints, or `[meta_batch_size, 2]`: one seed per instance of the meta-batch
        (with a strategy, replica r takes the r-th share of them).
        """
        seed = np.asarray(seed)
        if seed.shape == (2,) and self.meta_batch_size == 1:
            seed = seed[np.newaxis]
        if seed.shape != (self.meta_batch_size, 2):
            raise ValueError(f"reset needs {self.meta_batch_size} seeds of two ints, got an "
                             f"array of shape {seed.shape}.")
        seed = tf.constant(seed, tf.int32)
        if self.strategy is None:
            self.carry = self._reset_fn(seed)
            return
        share = self.meta_batch_size // self.strategy.num_replicas_in_sync
        shares = self.strategy.experimental_distribute_values_from_function(
            lambda context: seed[context.replica_id_in_sync_group * share:
                                 (context.replica_id_in_sync_group + 1) * share])
        self.carry = self.strategy.run(self._reset_fn, args=(shares,))

    def __call__(self):
        if self.carry is None:
            raise RuntimeError("Call reset(seed) before running an unroll.")
        try:
            with self.strategy.scope() if self.strategy else _no_scope():
                result, self.carry = self._step_fn(self.carry)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            # XLA refuses before it runs anything, so nothing has changed yet.
            if not self._fallback or "XLA" not in str(e):
                raise
            logging.warning("XLA cannot compile this problem's unroll (%s); using the graph.",
                            str(e).splitlines()[0][:200])
            self.mode, self._fallback = "graph", False
            self._step_fn = compile_fn(self._minimize_step if self.optimizer else
                                       self._loss_step, self.mode)
            result, self.carry = self._step_fn(self.carry)
        return result

    # -- Compiled pieces --------------------------------------------------------------------

    def _initial_carry(self, seeds):
        params = []
        for b, problem in enumerate(self._share):  # This replica's share of the meta-batch.
            params.append([tf.convert_to_tensor(p) for p in problem.init(seeds[b])])
            if len(params[-1]) != len(problem.names):
                raise ValueError(f"The problem made {len(params[-1])} parameters for "
                                 f"{len(problem.names)} names.")
        return Carry([p for instance in params for p in instance],
                     initial_states(self._groups, params), tf.constant(0, tf.int32), seeds)

    def _unroll(self, carry):
        # The weights are read once: every step of the unroll uses these tensors (a variable
        # passed into the loop would be read again at every step).
        weights = tf.nest.map_structure(tf.convert_to_tensor,
                                        {g.key: g.net.step_weights() for g in self._groups})
        return unroll(self._share, self._groups, weights, carry, self.unroll_length,
                      **self._options)

    def _loss_step(self, carry):
        if self.strategy is not None:
            return self._distributed_step(carry, minimize=False)
        return self._plain_loss_step(carry)

    def _plain_loss_step(self, carry):
        meta_loss, losses, lambdas, carry = self._unroll(carry)
        return _result(meta_loss, losses, lambdas, tf.constant(True)), carry

    def meta_gradient(self):
        """One unroll (the carry moves on) and its meta-gradient, without any update.

        Returns:
          `(UnrollResult, [gradient of the meta-loss for each of `variables`])`.
        """
        if self.carry is None:
            raise RuntimeError("Call reset(seed) before running an unroll.")
        if self.strategy is not None:
            raise ValueError("meta_gradient runs on one device; with a strategy, call the "
                             "unroll.")
        if self._gradient_fn is None:
            self._gradient_fn = compile_fn(self._gradient_step, self.mode)
        result, grads, self.carry = self._gradient_fn(self.carry)
        return result, grads

    def _gradient_step(self, carry):
        with tf.GradientTape() as tape:
            meta_loss, losses, lambdas, carry = self._unroll(carry)
        grads = tape.gradient(meta_loss, self._variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Truncation: the next unroll continues from here but does not backpropagate into this one.
        carry = tf.nest.map_structure(tf.stop_gradient, carry)
        return _result(meta_loss, losses, lambdas, tf.constant(True)), grads, carry

    def _minimize_step(self, carry):
        if self.strategy is not None:
            return self._distributed_step(carry, minimize=True)
        result, grads, carry = self._gradient_step(carry)
        applied = self.optimizer.apply_if_finite(result.meta_loss, grads, self._variables)
        return result._replace(applied=applied), carry

    def _distributed_step(self, carry, minimize):
        """Each replica unrolls its share of the meta-batch; the mean meta-gradient is applied.

        Runs in the cross-replica context of `tf.function`: `strategy.run` then reductions
        (all-reduces across devices and workers).
        """
        strategy = self.strategy
        if minimize:
            result, grads, carry = strategy.run(self._replica_fns[True], args=(carry,))
            grads = [strategy.reduce(tf.distribute.ReduceOp.MEAN, g, axis=None) for g in grads]
        else:
            result, carry = strategy.run(self._replica_fns[False], args=(carry,))
        mean = lambda x: strategy.reduce(tf.distribute.ReduceOp.MEAN, x, axis=None)
        meta_loss = mean(result.meta_loss)
        instance_losses = strategy.gather(result.instance_losses, axis=0)
        lambdas = {key: tf.stack([mean(stats[0]),
                                  strategy.reduce(tf.distribute.ReduceOp.MIN, stats[1], None),
                                  strategy.reduce(tf.distribute.ReduceOp.MAX, stats[2], None)])
                   for key, stats in result.lambdas.items()}
        applied = (self.optimizer.apply_if_finite(meta_loss, grads, self._variables) if minimize
                   else tf.constant(True))
        return _result(meta_loss, instance_losses, lambdas, applied), carry


def _no_scope():
    return contextlib.nullcontext()


def _result(meta_loss, instance_losses, lambdas, applied):
    return UnrollResult(meta_loss, tf.reduce_mean(instance_losses, axis=0), lambdas, applied,
                        instance_losses)


def _unique(variables):
    """Variables in order, each once (a network may step several groups' parameters)."""
    seen, result = set(), []
    for v in variables:
        if v.ref() not in seen:
            seen.add(v.ref())
            result.append(v)
    return result


def _distinct(problems):
    """The problems, each once, in order."""
    result = []
    for problem in problems:
        if not any(problem is seen for seen in result):
            result.append(problem)
    return result


def _shapes_only(problems):
    """Parameters of each instance's problem, drawn from a fixed seed: only the shapes matter."""
    made = {}
    for problem in _distinct(problems):
        made[id(problem)] = problem.init(tf.zeros([2], tf.int32))
    return [made[id(problem)] for problem in problems]


def _build_networks(groups, problems):
    """Creates the variables of networks that wait for their input size (StandardDeepLSTM)."""
    unbuilt = [g for g in groups if not getattr(g.net, "built", True)]
    if unbuilt:
        initial_states(unbuilt, _shapes_only(problems))


# -- Hand-designed optimizers run like the learned ones -----------------------------------------

BASELINES = configs.BASELINES


def baseline_optimizer(name, learning_rate):
    """TensorFlow's own optimizer `name` (Keras), with the paper-era epsilon for Adam."""
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline optimizer {name!r}; expected one of {BASELINES}.")
    learning_rate = check_learning_rate(learning_rate)
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
        self.unroll_length, self.mode = check_unroll(unroll_length, mode, training=False,
                                                     problems=[problem])
        self.problem = problem
        self.optimizer = baseline_optimizer(optimizer_name, learning_rate)
        self.learning_rate = float(learning_rate)
        self._params, self._initial_slots = None, None
        self._seed, self._step = None, None
        self._step_fn = compile_fn(self._run, mode=self.mode)

    def set_learning_rate(self, learning_rate):
        """Takes effect from the next `reset`, like the rest of the optimizer's state."""
        self.learning_rate = check_learning_rate(learning_rate)

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
        """`unroll_length` steps of the optimizer on the problem's batches."""
        def body(position, losses):
            data = self.problem.sample(seed, first_step + position)
            with tf.GradientTape() as tape:
                loss = self.problem.loss(self._params, data)
            grads = tape.gradient(loss, self._params,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            self.optimizer.apply_gradients(zip(grads, self._params))
            return (losses.write(position, loss),)

        dtype = self._params[0].dtype
        losses, = while_steps(self.unroll_length, body,
                              (tf.TensorArray(dtype, size=self.unroll_length + 1),))
        step = first_step + self.unroll_length
        losses = losses.write(self.unroll_length,
                              self.problem.loss(self._params, self.problem.sample(seed, step)))
        losses = losses.stack()
        return UnrollResult(tf.reduce_sum(losses), losses, {}, tf.constant(True), losses[None])


# -- Epochs -------------------------------------------------------------------------------------

num_unrolls = configs.num_unrolls
eval_unroll_length = configs.eval_unroll_length


# Seed streams: epochs of meta-training, of evaluation during training, and of evaluate.py never
# share data.
TRAIN, VALIDATION, TEST = 0, 1, 2


def epoch_seed(seed, stream, index, instance=0):
    """The stateless seed (two int32) of epoch `index` of a stream, for one instance of it.

    Instance 0 is the epoch itself (so that a meta-batch of one is the plain epoch); the other
    instances of a meta-batch draw their own parameters and data from `(seed, epoch, instance)`.
    """
    entropy = [int(seed), int(stream), int(index)] + ([int(instance)] if instance else [])
    state = np.random.SeedSequence(entropy).generate_state(2)
    return state.view(np.int32)  # The same 64 bits, as the int32 pair stateless ops take.


def instance_seeds(seed, stream, index, instances):
    """`[instances, 2]`: the seeds of a meta-batch of `instances` for epoch `index`."""
    return np.stack([epoch_seed(seed, stream, index, b) for b in range(instances)])


class EpochResult(NamedTuple):
    time: float  # Wall seconds.
    final_loss: float  # The optimizee's loss at the last iterate (the meta-batch's mean).
    history: np.ndarray  # [steps run]: the loss after each optimizee step (the mean).
    results: List  # The `UnrollResult` of every unroll run.
    finite: bool  # Every meta-update was finite (so applied); else the epoch stopped there.

    @property
    def meta_loss(self):
        """Mean meta-loss of the epoch's unrolls."""
        return float(np.mean([r.meta_loss.numpy() for r in self.results]))


def run_epoch(unroll, num_unrolls, seed):
    """One epoch: `reset(seed)` then `num_unrolls` unrolls; synchronised before the clock stops.

    `seed` is one per instance of the unroll's meta-batch (see `instance_seeds`). An unroll
    whose meta-update was skipped as non-finite ends the epoch early (`finite` False): its
    optimizee has left the region where the networks make sense, so the next epoch resets it.
    """
    return _epochs(unroll, num_unrolls, seed)[0]


def run_epochs(unroll, num_unrolls, seeds):
    """Several epochs at once, one per instance of the unroll's meta-batch (`seeds`).

    Each `EpochResult` is the epoch its seed gives alone (to float rounding: the networks see
    all epochs' coordinates in one call); the time is shared equally. For evaluations: without
    meta-updates, the instances are independent epochs.
    """
    return _epochs(unroll, num_unrolls, seeds)[1]


def _epochs(unroll, num_unrolls, seeds):
    """`(the meta-batch's EpochResult, [each instance's EpochResult])`."""
    start = time.perf_counter()
    unroll.reset(seeds)
    results, losses = [], []
    for _ in range(num_unrolls):
        results.append(unroll())
        losses.append(results[-1].instance_losses.numpy())
        if not results[-1].applied.numpy():
            break
    elapsed = time.perf_counter() - start
    # losses[k][:, 0] is the loss at the iterate the previous unroll ended on: count it once.
    histories = np.concatenate([l[:, 1:] for l in losses], axis=1)
    applied = bool(results[-1].applied.numpy())
    mean_history = np.concatenate([r.losses.numpy()[1:] for r in results])
    whole = EpochResult(elapsed, float(results[-1].losses.numpy()[-1]), mean_history, results,
                        applied and bool(np.all(np.isfinite(histories))))
    each = [EpochResult(elapsed / len(histories), float(h[-1]), h, results,
                        applied and bool(np.all(np.isfinite(h)))) for h in histories]
    return whole, each


def lambda_stats(results):
    """`{net: (mean, min, max)}` of lambda over unroll results, for the lambda networks."""
    per_net = {}
    for result in results:
        for key, stats in result.lambdas.items():
            per_net.setdefault(key, []).append(np.asarray(stats))
    return {key: (float(np.mean([s[0] for s in values])), float(min(s[1] for s in values)),
                  float(max(s[2] for s in values)))
            for key, values in per_net.items()}


class Plateau:
    """Says, once, when meta-training learns nothing: over its first `epochs` finite epochs, the
    meta-loss of the second half is not below the first half's, neither by `tolerance` of it
    nor by two standard errors of the difference (a run stuck at the untrained loss, e.g. an
    output scale that saturates the optimizee, sits there for good)."""

    def __init__(self, epochs=50, tolerance=0.01):
        self.epochs = check_count(epochs, "plateau epochs", 0)
        self.tolerance = tolerance
        self._losses, self._said = [], False

    def update(self, meta_loss):
        """Records one finite epoch's meta-loss; returns the message when a plateau shows."""
        if self._said or not self.epochs or len(self._losses) >= self.epochs:
            return None
        self._losses.append(float(meta_loss))
        if len(self._losses) < self.epochs:
            return None
        half = self.epochs // 2
        first, second = np.array(self._losses[:half]), np.array(self._losses[half:])
        gain = first.mean() - second.mean()
        error = np.sqrt(first.var() / len(first) + second.var() / len(second))
        if gain > self.tolerance * abs(first.mean()) or gain > 2 * error:
            return None
        self._said = True
        return (f"The meta-loss has not moved in {self.epochs} epochs (mean {first.mean():.4g}, "
                f"then {second.mean():.4g}): the meta-training is learning nothing. Likely fixes: "
                f"a smaller output scale of the network (net_options \"scale\", e.g. 0.01, for "
                f"the LSTM), another meta-learning rate, or the NormalizedMLP network (its steps "
                f"start as Adam's and stay bounded).")


def fit(unroll, num_unrolls, epochs, seed=0, evaluation=None, evaluation_epochs=20,
        evaluation_period=10, save=None, plateau_epochs=50, log_period=10, log=print):
    """Meta-trains for `epochs` epochs, as train.py does, for a script of one's own.

    Every epoch runs `num_unrolls` unrolls of `unroll` (`meta_minimize`'s, or an
    `estimators.MetaTrainer`) on the training seeds of `seed`; every `log_period` epochs it logs
    the mean meta-loss and final loss; every `evaluation_period` epochs it runs
    `evaluation_epochs` held-out epochs of `evaluation` (`meta_loss` of a validation problem:
    the same epochs every time) and, when their mean final loss is the best so far, calls
    `save(epoch, loss)` (e.g. `lambda *_: optimizer.save("my_optimizer")`). It warns once when
    the meta-loss does not move (`Plateau`) and skips non-finite epochs, as train.py does.

    Returns:
      `(best evaluation's mean final loss, its epoch)`, or `(inf, 0)` without evaluations.
    """
    plateau = Plateau(plateau_epochs)
    best, best_epoch, period = float("inf"), 0, []
    batch = getattr(evaluation, "meta_batch_size", 1)
    steps = num_unrolls * unroll.unroll_length
    if evaluation is not None and steps % evaluation.unroll_length:
        raise ValueError(f"The evaluation's unroll_length ({evaluation.unroll_length}) must "
                         f"divide an epoch's {steps} steps.")
    for e in range(epochs):
        result = run_epoch(unroll, num_unrolls, instance_seeds(seed, TRAIN, e,
                                                               unroll.meta_batch_size))
        if result.finite:
            period.append(result)
            message = plateau.update(result.meta_loss)
            if message:
                log(message)
        if (e + 1) % log_period == 0:
            if period:
                log(f"Epoch {e + 1}: meta-loss {np.mean([r.meta_loss for r in period]):.4g}, "
                    f"final loss {np.mean([r.final_loss for r in period]):.4g} "
                    f"({len(period)} finite epochs)")
            else:
                log(f"Epoch {e + 1}: no finite epoch in this period.")
            period = []
        if evaluation is not None and (e + 1) % evaluation_period == 0:
            losses = []
            while len(losses) < evaluation_epochs:
                seeds = np.stack([epoch_seed(seed, VALIDATION, len(losses) + i)
                                  for i in range(batch)])
                losses += [r.final_loss for r in run_epochs(
                    evaluation, steps // evaluation.unroll_length, seeds)]
            mean = float(np.mean(losses[:evaluation_epochs]))
            improved = np.isfinite(mean) and mean < best
            log(f"Evaluation at epoch {e + 1}: mean final loss {mean:.4g}"
                f"{' (best so far)' if improved else f' (best {best:.4g} at epoch {best_epoch})'}")
            if improved:
                best, best_epoch = mean, e + 1
                if save is not None:
                    save(e + 1, mean)
    return best, best_epoch
