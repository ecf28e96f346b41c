"""Meta-gradient estimators beside the unroll: truncated backpropagation, ES and PES.

An instance is a problem and its seed. A `Kernel` is the compiled unroll of instances of one
problem over *explicit* weight values (the networks' variables' values as tensors, not the
variables): `forward` runs a truncation, `gradient` also differentiates it. An estimator is a
function of the same shape for every method,

    estimator(kernel, values, carries, context) -> (estimate, carries, report)

over one kernel's instances and their estimator state (`carries`):

- `truncated_backprop`: the meta-gradient of one truncation (the paper's; biased at long
  horizons, since each truncation is blind to the steps after it).
- `es`: antithetic evolution strategies over a whole epoch: every pair of perturbations
  `+-sigma eps` of the weights unrolls the same instance and data over every step, and the
  estimate is the mean of `(L+ - L-) eps / (2 sigma)` (unbiased for the Gaussian-smoothed
  meta-loss; forward only).
- `pes`: persistent evolution strategies (Vicol, Metz and Sohl-Dickstein, ICML 2021): each pair
  keeps its `+` and `-` optimizee states across the truncations of an epoch and the sum `xi` of
  the perturbations drawn since the epoch began; every truncation draws a fresh `eps`, adds it
  to `xi`, unrolls both states with `+-sigma eps` and estimates `(L+ - L-) xi / (2 sigma)`:
  unbiased over truncated unrolls, forward only, memory flat in the horizon.

Perturbations are drawn from seeds (the instance's seed, the truncation, the pair) with
stateless random ops, so that a run is reproducible and only seeds would need to cross devices.
`MetaTrainer` drives an estimator through epochs with `meta.Unroll`'s interface (`reset`, call,
`variables`, `optimizer`), for `meta.run_epoch` and train.py; it also runs meta-batches whose
instances are problems of different shapes (task families), one compiled kernel per shape.
"""

from typing import Callable, List, NamedTuple

import util
util.import_tensorflow()

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import meta  # noqa: E402  pylint: disable=wrong-import-position
import problems as problems_lib  # noqa: E402  pylint: disable=wrong-import-position

ESTIMATORS = ("tbptt", "es", "pes")
# Salts of the perturbations' seeds.
_PERTURBATION = 0x5E5


class Kernel:
    """The compiled unroll of `len(problems)` instances (one call), over explicit weights.

    `values` are the trainer's variables' values, in `variables`' order: each network reads
    its weights from them (`Network.step_weights`), so that perturbed or averaged weights run
    without touching the variables.
    """

    def __init__(self, meta_optimizer, problems, unroll_length, variables, net_assignments=None,
                 options=None, mode="xla", step_scale=1.0):
        self.problems = list(problems)
        self.unroll_length = unroll_length
        self.groups = meta.plan(meta_optimizer.nets, self.problems, net_assignments,
                                step_scale=step_scale)
        meta._build_networks(self.groups, self.problems)  # pylint: disable=protected-access
        index = {v.ref(): i for i, v in enumerate(variables)}
        self._layout = {g.key: tf.nest.map_structure(lambda v: index[v.ref()], g.net.weights())
                        for g in self.groups}
        options = dict(options or {})
        self._gradient_rematerialize = options.pop("rematerialize_gradient", "steps")
        self._options = options
        self.mode = mode
        self.initial = meta.compile_fn(self._initial, "eager" if mode == "eager" else "graph")
        self.forward = meta.compile_fn(self._forward, mode)
        self.gradient = meta.compile_fn(self._gradient, mode)
        self.antithetic = meta.compile_fn(self._antithetic, mode)

    def weights(self, values):
        """`{group key: step weights}` from the variables' values."""
        return {g.key: g.net.step_weights(tf.nest.map_structure(lambda i: values[i],
                                                                self._layout[g.key]))
                for g in self.groups}

    def _initial(self, seeds):
        params = []
        for b, problem in enumerate(self.problems):
            params.append([tf.convert_to_tensor(p) for p in problem.init(seeds[b])])
        return meta.Carry([p for instance in params for p in instance],
                          meta.initial_states(self.groups, params), tf.constant(0, tf.int32),
                          seeds)

    def _unroll(self, values, carry, rematerialize):
        options = dict(self._options, rematerialize=rematerialize)
        return meta.unroll(self.problems, self.groups, self.weights(values), carry,
                           self.unroll_length, **options)

    def _forward(self, values, carry):
        """`(meta_loss, instance_losses, carry)` of one truncation; nothing kept for a gradient."""
        meta_loss, losses, _, carry = self._unroll(values, carry, "off")
        return meta_loss, losses, carry

    def _antithetic(self, values, seed, std, plus, minus):
        """One truncation of a pair: `plus` with the weights `values + std eps`, `minus` with
        `values - std eps`, `eps` drawn from `seed`; returns `(meta-loss +, meta-loss -,
        instance losses +, instance losses -, plus, minus, eps)`."""
        eps = perturbation(values, seed)
        loss_plus, losses_plus, plus = self._forward(_shifted(values, eps, std), plus)
        loss_minus, losses_minus, minus = self._forward(_shifted(values, eps, -std), minus)
        return loss_plus, loss_minus, losses_plus, losses_minus, plus, minus, eps

    def _gradient(self, values, carry):
        """`(meta_loss, instance_losses, gradients of the meta-loss for values, carry)`."""
        with tf.GradientTape() as tape:
            tape.watch(values)
            meta_loss, losses, _, carry = self._unroll(values, carry,
                                                       self._gradient_rematerialize)
        grads = tape.gradient(meta_loss, values,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Truncation: the next unroll continues from here but does not backpropagate into it.
        return meta_loss, losses, grads, tf.nest.map_structure(tf.stop_gradient, carry)


class Context(NamedTuple):
    """What an estimator needs beside the kernel, values and carries."""
    perturbations: int  # Antithetic pairs per instance (ES, PES).
    std: float  # sigma of the perturbations.
    seeds: np.ndarray  # [instances, 2]: the kernel's instances' seeds (the epoch's).
    truncation: int  # The truncation of the epoch this call runs (0-based).
    last: bool  # It is the epoch's last truncation.


def perturbation(values, seed):
    """`eps ~ N(0, I)` shaped like `values`, a function of `seed` (two int32) only: the same
    numbers (to the last bit of a log and a cosine) compiled with XLA or not, so that a replica
    unrolling a pair and the host weighing its result draw the same perturbation."""
    return [problems_lib.random_normal(v.shape, problems_lib.derive_seed(seed, i),
                                       dtype=v.dtype)
            for i, v in enumerate(values)]


def _pair_seed(context, pair):
    """The seed of pair `pair`'s perturbation in this truncation: the same for every instance
    of the kernel (they share one perturbed network), a function of the first one's seed."""
    return problems_lib.derive_seed(context.seeds[0], _PERTURBATION, context.truncation, pair)


def _shifted(values, eps, scale):
    return [v + scale * e for v, e in zip(values, eps)]


def truncated_backprop(kernel, values, carries, context):
    """The meta-gradient of one truncation by backpropagation (first-order, as the paper)."""
    del context
    meta_loss, losses, grads, carry = kernel.gradient(values, carries)
    return grads, carry, (meta_loss, losses)


def es(kernel, values, carries, context):
    """Antithetic ES over the whole epoch (call it once per truncation; it estimates at the
    epoch's last one and returns None before).

    `carries` holds, per pair, the `+` and `-` optimizee states and the meta-losses summed so
    far; every truncation of the epoch uses the pair's one perturbation.
    """
    new, losses, meta_losses = [], [], []
    total = [tf.zeros_like(v) for v in values]
    std = tf.constant(context.std, values[0].dtype)
    for pair, (plus, minus, sums) in enumerate(carries):
        seed = _pair_seed(context._replace(truncation=0), pair)
        loss_plus, loss_minus, losses_plus, losses_minus, plus, minus, eps = (
            kernel.antithetic(values, seed, std, plus, minus))
        sums = (sums[0] + loss_plus, sums[1] + loss_minus)
        new.append((plus, minus, sums))
        losses += [losses_plus, losses_minus]
        meta_losses += [loss_plus, loss_minus]
        if context.last:
            total = _shifted(total, eps, (sums[0] - sums[1]) / (2.0 * context.std))
    report = tf.reduce_mean(meta_losses), tf.reduce_mean(tf.stack(losses), axis=0)
    if not context.last:
        return None, new, report
    return [t / len(carries) for t in total], new, report


def pes(kernel, values, carries, context):
    """PES: one truncation's estimate from the pairs' `+` and `-` states and their sums `xi`."""
    new, losses, meta_losses = [], [], []
    total = [tf.zeros_like(v) for v in values]
    std = tf.constant(context.std, values[0].dtype)
    for pair, (plus, minus, xi) in enumerate(carries):
        loss_plus, loss_minus, losses_plus, losses_minus, plus, minus, eps = (
            kernel.antithetic(values, _pair_seed(context, pair), std, plus, minus))
        xi = [x + e for x, e in zip(xi, eps)]
        total = _shifted(total, xi, (loss_plus - loss_minus) / (2.0 * context.std))
        new.append((plus, minus, xi))
        losses += [losses_plus, losses_minus]
        meta_losses += [loss_plus, loss_minus]
    report = tf.reduce_mean(meta_losses), tf.reduce_mean(tf.stack(losses), axis=0)
    return [t / len(carries) for t in total], new, report


def truncated_es(kernel, values, carries, context):
    """ES on one truncation, without PES's accumulation (biased: each truncation's perturbation
    is credited with its own losses only). For the unbiasedness test's contrast."""
    reset = [(plus, minus, [tf.zeros_like(v) for v in values]) for plus, minus, _ in carries]
    return pes(kernel, values, reset, context)


FUNCTIONS = {"tbptt": truncated_backprop, "es": es, "pes": pes}


class Replicated:
    """A kernel's antithetic pairs shared out over a `tf.distribute` strategy's replicas.

    Each replica unrolls its own pairs (`share` of them, pair `replica * share + j`) with its own
    copy of the weights and the perturbations it draws from the pairs' seeds; the pairs'
    `+`/`-` optimizee states stay on their replica. Only each pair's two meta-losses cross
    between replicas (8 bytes a pair, `bytes_per_call`), and the losses' mean for the logs: the
    host weighs the loss differences by the perturbations (or, for PES, their sums), which it
    draws again from the same seeds. Perturbation tensors never travel.
    """

    def __init__(self, kernel, strategy, variables, perturbations):
        replicas = strategy.num_replicas_in_sync
        if perturbations % replicas:
            raise ValueError(f"perturbations ({perturbations}) must be a multiple of the "
                             f"{replicas} replicas, which share them out.")
        self.kernel, self.strategy, self.share = kernel, strategy, perturbations // replicas
        self._variables = variables
        self.initial = tf.function(self._initial, autograph=False)
        self.step = tf.function(self._step, autograph=False)

    def bytes_per_call(self):
        """Bytes gathered from the replicas per truncation: two meta-losses a pair, and each
        replica's mean losses (for the logs)."""
        losses = len(self.kernel.problems) * (self.kernel.unroll_length + 1)
        return 4 * (2 * self.share + losses) * self.strategy.num_replicas_in_sync

    def _initial(self, seeds):
        def replica(seeds):
            carry = self.kernel._initial(seeds)  # pylint: disable=protected-access
            return [(carry, carry) for _ in range(self.share)]
        return self.strategy.run(replica, args=(seeds,))

    def _step(self, base_seed, truncation, std, carries):
        """`(meta-losses + [pairs], meta-losses - [pairs], mean instance losses, carries)`."""
        def replica(carries):
            first = tf.distribute.get_replica_context().replica_id_in_sync_group * self.share
            values = [tf.convert_to_tensor(v) for v in self._variables]  # This replica's copy.
            plus_losses, minus_losses, losses, new = [], [], [], []
            for j, (plus, minus) in enumerate(carries):
                seed = problems_lib.derive_seed(base_seed, _PERTURBATION, truncation, first + j)
                loss_plus, loss_minus, losses_plus, losses_minus, plus, minus, _ = (
                    self.kernel._antithetic(values, seed, std, plus, minus))  # pylint: disable=protected-access
                plus_losses.append(loss_plus)
                minus_losses.append(loss_minus)
                losses += [losses_plus, losses_minus]
                new.append((plus, minus))
            return (tf.stack(plus_losses), tf.stack(minus_losses),
                    tf.reduce_mean(tf.stack(losses), axis=0), new)

        plus, minus, losses, carries = self.strategy.run(replica, args=(carries,))
        return (self.strategy.gather(plus, axis=0), self.strategy.gather(minus, axis=0),
                self.strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None), carries)


def replicated_estimate(name, replicated, values, state, context):
    """ES's or PES's estimate from a `Replicated` kernel: `(estimate, state, report)`.

    `state` is `(carries on the replicas, host state)`: for PES the sum `xi` of each pair's
    perturbations this epoch, for ES each pair's summed meta-losses. The numbers of `es` and
    `pes` on one device, the perturbations drawn from the same seeds.
    """
    carries, host = state
    truncation = 0 if name == "es" else context.truncation
    plus, minus, losses, carries = replicated.step(
        tf.constant(context.seeds[0], tf.int32), tf.constant(truncation, tf.int32),
        tf.constant(context.std, values[0].dtype), carries)
    pairs = range(context.perturbations)
    seeds = [_pair_seed(context._replace(truncation=truncation), pair) for pair in pairs]
    if name == "pes":
        host = [[x + e for x, e in zip(xi, perturbation(values, seed))]
                for xi, seed in zip(host, seeds)]
        weights = [(plus[p] - minus[p]) / (2.0 * context.std) for p in pairs]
        directions = host
    else:
        host = [(sums[0] + plus[p], sums[1] + minus[p]) for p, sums in zip(pairs, host)]
        if not context.last:
            return None, (carries, host), (tf.reduce_mean([plus, minus]), losses)
        weights = [(sums[0] - sums[1]) / (2.0 * context.std) for sums in host]
        directions = [perturbation(values, seed) for seed in seeds]
    total = [tf.zeros_like(v) for v in values]
    for weight, direction in zip(weights, directions):
        total = _shifted(total, direction, weight)
    report = tf.reduce_mean([plus, minus]), losses
    return [t / context.perturbations for t in total], (carries, host), report


def initial_carries(name, kernel, seeds, values, perturbations):
    """The estimator state of a kernel's instances at the start of an epoch."""
    carry = kernel.initial(tf.constant(seeds, tf.int32))
    if name == "tbptt":
        return carry
    if name == "es":
        zero = tf.zeros([], values[0].dtype)
        return [(carry, carry, (zero, zero)) for _ in range(perturbations)]
    return [(carry, carry, [tf.zeros_like(v) for v in values]) for _ in range(perturbations)]


class Batch(NamedTuple):
    """Instances of one kernel within a meta-batch: their positions and seeds."""
    kernel: Kernel
    positions: List[int]  # In the meta-batch.
    seeds: np.ndarray  # [instances, 2]


class MetaTrainer:
    """Meta-trains (or evaluates) networks on instances with an estimator, epoch by epoch.

    The interface of `meta.Unroll` for `meta.run_epoch` and train.py: `reset(seeds)` starts an
    epoch (one seed per instance of the meta-batch), each call runs one truncation of
    `unroll_length` steps of every instance and, meta-training, applies the estimate (the mean
    over the instances) with Adam, unless it is not finite.

    Args:
      meta_optimizer: the `meta.MetaOptimizer`.
      problems_of: `seeds [instances, 2] -> [(key, problem)]`: each instance's problem and a key
        naming its shapes (a task family's pool index); one kernel is compiled per key.
      unroll_length: optimizee steps per call.
      num_steps: optimizee steps per epoch (ES estimates once per epoch).
      estimator: one of `ESTIMATORS`, or None to evaluate (forward only).
      learning_rate: the meta-optimizer's (Adam); None evaluates.
      meta_batch_size: instances per epoch.
      perturbations: antithetic pairs per instance (ES, PES).
      std: sigma of the perturbations (ES, PES).
      net_assignments, mode, and `options` (`meta_objective`, `state_reset_period`,
        `rematerialize`): as `meta.Unroll`'s.
      pool: every problem an instance may be (for `kept_bytes_per_step`).
      strategy: a `tf.distribute` strategy under whose scope the networks were built: ES and
        PES share each meta-update's pairs out over its replicas (`Replicated`). One problem
        for every instance; runs in the graph (no XLA), as `meta.Unroll` under a strategy.
      step_scale: multiplies every step the networks take (`meta.Unroll`'s).
    """

    def __init__(self, meta_optimizer, problems_of: Callable, unroll_length, num_steps,
                 estimator="tbptt", learning_rate=None, meta_batch_size=1, perturbations=1,
                 std=0.001, net_assignments=None, mode=None, pool=(), strategy=None,
                 step_scale=1.0, **options):
        training = learning_rate is not None
        self._step_scale = meta.check_step_scale(step_scale)
        # The mode asked for, else each kernel's default for its problems (`kernel`).
        self.unroll_length, self.mode = meta.check_unroll(unroll_length, mode, training,
                                                          pool)
        self._mode_given = mode
        self.num_steps = meta.check_count(num_steps, "num_steps")
        self.segments = meta.num_unrolls(self.num_steps, self.unroll_length)
        if estimator is not None and estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator {estimator!r}; expected one of {ESTIMATORS}.")
        if training and estimator is None:
            raise ValueError("Meta-training needs an estimator.")
        self.estimator = estimator if training else None
        self.meta_batch_size = meta.check_count(meta_batch_size, "meta_batch_size")
        self.perturbations = meta.check_count(perturbations, "perturbations")
        if not (np.isfinite(std) and std > 0):
            raise ValueError(f"std must be positive (and finite), got {std!r}.")
        self.std = float(std)
        self._meta, self._problems_of = meta_optimizer, problems_of
        self._assignments = net_assignments
        self._pool = list(pool)
        self._rematerialize = options.pop("rematerialize", None)
        self._options = options
        self._kernels, self._replicated = {}, {}
        self.strategy = strategy
        if strategy is not None:
            if self.estimator not in ("es", "pes"):
                raise ValueError("Under a strategy, MetaTrainer shares ES's and PES's "
                                 "perturbations out; for truncated backpropagation use "
                                 "meta_minimize's Unroll.")
            if self.mode == "xla":
                self.mode = "graph"  # Collectives do not compile with XLA.
            self._mode_given = self.mode
            if self.perturbations % strategy.num_replicas_in_sync:
                raise ValueError(f"perturbations ({self.perturbations}) must be a multiple of "
                                 f"the {strategy.num_replicas_in_sync} replicas, which share "
                                 f"them out.")
        self._variables = meta._unique(  # pylint: disable=protected-access
            [v for net in meta_optimizer.nets.values() for v in net.trainable_variables])
        self.optimizer = None
        if training:
            if not self._variables:
                raise ValueError("meta_minimize needs a network with trainable weights; "
                                 "these networks have none.")
            self.optimizer = meta.MetaAdam(self._variables, learning_rate)
            self._apply = tf.function(self.optimizer.apply_if_finite, autograph=False)
        self._batches, self._carries, self._truncation = None, None, 0

    @property
    def variables(self):
        return list(self._variables)

    @property
    def rematerialize(self):
        """How truncated backpropagation keeps each step's values (ES and PES keep none)."""
        if self.estimator != "tbptt":
            return "off"
        return self._rematerialize or "steps"

    def kernel(self, key, problems):
        """The compiled kernel of `problems` (instances of the shapes `key`), made once."""
        full_key = (key, len(problems))
        if full_key not in self._kernels:
            first = problems[0]
            options = meta.unroll_options(first, training=self.estimator == "tbptt",
                                          **self._options)
            options["rematerialize_gradient"] = options.pop("rematerialize")
            if self._rematerialize is not None:
                options["rematerialize_gradient"] = self._rematerialize
            mode = self._mode_given or meta.default_mode(self.estimator is not None, problems)
            self._kernels[full_key] = Kernel(self._meta, problems, self.unroll_length,
                                             self._variables, self._assignments,
                                             _unroll_options(options), mode,
                                             self._step_scale)
        return self._kernels[full_key]

    @property
    def modes_used(self):
        """The compilation modes of the kernels built so far, e.g. `graph,xla` on a family whose
        convnets run in graph mode (`problems.Problem.suits_xla`)."""
        return ",".join(sorted({kernel.mode for kernel in self._kernels.values()}))

    def kept_bytes_per_step(self):
        """As `meta.Unroll.kept_bytes_per_step`: at least what truncated backpropagation keeps
        per step, for a meta-batch of the largest problem of `pool`; 0 for ES, PES and
        evaluation, which keep nothing for a gradient."""
        if self.estimator != "tbptt":
            return 0
        largest = 0
        for problem in self._pool:
            params = meta._shapes_only([problem])  # pylint: disable=protected-access
            groups = meta.plan(self._meta.nets, [problem], self._assignments)
            state = tf.nest.flatten(meta.initial_states(groups, params))
            largest = max(largest, sum(t.shape.num_elements() * t.dtype.size for t in state)
                          + sum(p.shape.num_elements() * p.dtype.size for p in params[0]))
        return largest * self.meta_batch_size

    def reset(self, seeds):
        """Starts an epoch: each instance's problem, fresh parameters and data, zero states."""
        seeds = np.asarray(seeds, np.int32).reshape(-1, 2)
        if len(seeds) != self.meta_batch_size:
            raise ValueError(f"reset needs {self.meta_batch_size} seeds of two ints, got "
                             f"{len(seeds)}.")
        drawn = self._problems_of(seeds)
        keys = [key for key, _ in drawn]
        if len(set(keys)) == 1:  # One problem for all: one call steps every instance.
            groups = [list(range(len(drawn)))]
        else:  # Shapes differ: each instance is run by the kernel of its shapes.
            groups = [[b] for b in range(len(drawn))]
        self._batches = [Batch(self.kernel(keys[g[0]], [drawn[b][1] for b in g]), g, seeds[g])
                         for g in groups]
        values = [tf.convert_to_tensor(v) for v in self._variables]
        name = self.estimator or "tbptt"
        if self.strategy is not None:
            if len(self._batches) > 1:
                raise ValueError("Under a strategy every instance must be the same problem "
                                 "(task families run on one device).")
            self._carries = [(self._replicas(batch.kernel).initial(tf.constant(batch.seeds)),
                              [[tf.zeros_like(v) for v in values] if name == "pes" else
                               (0.0, 0.0) for _ in range(self.perturbations)])
                             for batch in self._batches]
        else:
            self._carries = [initial_carries(name, batch.kernel, batch.seeds, values,
                                             self.perturbations) for batch in self._batches]
        self._truncation = 0

    def _replicas(self, kernel):
        if kernel not in self._replicated:
            self._replicated[kernel] = Replicated(kernel, self.strategy, self._variables,
                                                  self.perturbations)
        return self._replicated[kernel]

    def __call__(self):
        if self._batches is None:
            raise RuntimeError("Call reset(seed) before running an unroll.")
        with self.strategy.scope() if self.strategy else meta._no_scope():  # pylint: disable=protected-access
            return self._call()

    def _call(self):
        values = [tf.convert_to_tensor(v) for v in self._variables]
        last = self._truncation == self.segments - 1
        estimates, meta_losses, instance_losses = [], [], [None] * self.meta_batch_size
        for i, batch in enumerate(self._batches):
            if self.estimator is None:
                meta_loss, losses, carry = batch.kernel.forward(values, self._carries[i])
                estimate = None
            else:
                context = Context(self.perturbations, self.std, batch.seeds, self._truncation,
                                  last)
                if self.strategy is not None:
                    estimate, carry, (meta_loss, losses) = replicated_estimate(
                        self.estimator, self._replicas(batch.kernel), values, self._carries[i],
                        context)
                else:
                    estimate, carry, (meta_loss, losses) = FUNCTIONS[self.estimator](
                        batch.kernel, values, self._carries[i], context)
            self._carries[i] = carry
            weight = len(batch.positions) / self.meta_batch_size
            meta_losses.append(weight * meta_loss)
            if estimate is not None:
                estimates.append([weight * e for e in estimate])
            for row, position in zip(tf.unstack(losses), batch.positions):
                instance_losses[position] = row
        self._truncation += 1
        meta_loss = tf.add_n(meta_losses)
        applied = tf.constant(True)
        if self.optimizer is not None and estimates:
            grads = [tf.add_n(parts) for parts in zip(*estimates)]
            applied = self._apply(meta_loss, grads, self._variables)
        instance_losses = tf.stack(instance_losses)
        return meta.UnrollResult(meta_loss, tf.reduce_mean(instance_losses, axis=0), {},
                                 applied, instance_losses)


def _unroll_options(options):
    """`meta.unroll`'s options from the checked ones (and the gradient's rematerialisation)."""
    return {k: v for k, v in options.items()
            if k in ("meta_objective", "second_derivatives", "state_reset_period",
                     "rematerialize_gradient")}


def single_problem(problem, key=0):
    """`problems_of` for a meta-batch of one problem: every instance is `problem`."""
    return lambda seeds: [(key, problem)] * len(seeds)


def family_problems(family_problems_):
    """`problems_of` for a task family (`task_families.FamilyProblems`)."""
    return family_problems_.instances

