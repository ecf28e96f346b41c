"""The meta-training loop of `train.py`: epochs, evaluations, checkpoints and faults.

`train` builds the optimizer and its unrolls (under a `tf.distribute` strategy when asked),
resumes from the run folder's last usable checkpoint, and runs epochs: a non-finite meta-update
is skipped (it never reaches the weights), a checkpoint is written only of finite weights, and
an evaluation that beats the best so far replaces the saved optimizer set as one unit.

What a run may ask for is bounded before anything is built (`check_flags`, and networks no
larger than an optimizer file holds); what is built is checked against the memory this process
may use (`check_memory`) before the run folder is opened, and running out of memory anyway is
one line naming the flags to lower.
"""

import glob
import hashlib
import logging
import os
import re
import shutil
import signal
import stat
from typing import NamedTuple

import util
util.import_tensorflow()

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position

import cli  # noqa: E402  pylint: disable=wrong-import-position
import cluster  # noqa: E402  pylint: disable=wrong-import-position
import configs  # noqa: E402  pylint: disable=wrong-import-position
import estimators  # noqa: E402  pylint: disable=wrong-import-position
import meta  # noqa: E402  pylint: disable=wrong-import-position
import task_families  # noqa: E402  pylint: disable=wrong-import-position
import networks  # noqa: E402  pylint: disable=wrong-import-position
import run_folder  # noqa: E402  pylint: disable=wrong-import-position
import weights_file  # noqa: E402  pylint: disable=wrong-import-position

OBJECTIVES = {"train": "the optimizee's losses on its training batches",
              "validation": "its losses on held-out batches at the same iterates"}
# The flags that define the computation: a run resumes only with the same values. Flags of an
# optimizer kind count only for that kind.
RUN_FLAGS = ("problem", "num_steps", "unroll_length", "learning_rate", "second_derivatives",
             "seed", "which_aml", "meta_objective", "state_reset_period", "net_options",
             "meta_batch_size", "initial_path")
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}
# The meta-gradient of an unroll keeps every step's state: memory grows with its length
# (`check_memory` refuses what this machine cannot hold). The paper unrolls 20 steps; MNIST's
# whole 400-step epochs keep about 2 GiB. Only --rematerialize=chunks keeps so little per step
# (the gradients) that longer unrolls are reasonable.
MAX_UNROLL_LENGTH = 1000


def check_flags(flags):
    """Flag values within what a run can hold in memory, each a one-line error naming the flag.

    Called (through `run_flags`) before the run folder is opened, so that nothing there changes
    for a run that cannot start.
    """
    if flags.unroll_length > MAX_UNROLL_LENGTH and flags.rematerialize != "chunks":
        raise util.FlagError(f"--unroll_length={flags.unroll_length} is more than the "
                             f"{MAX_UNROLL_LENGTH} steps a meta-gradient can keep in memory (the "
                             f"paper unrolls 20); use a shorter unroll, or --rematerialize=chunks "
                             f"(its memory barely grows with the unroll).")


def run_flags(flags, objective):
    """The values that define the run, as `run.json` records them (checked: `check_flags`)."""
    check_flags(flags)
    values = {name: flags[name].value for name in RUN_FLAGS + configs.KIND_FLAGS[flags.which_aml]}
    values["meta_objective"] = objective
    # Recorded only where they change the run, so that the runs before them resume as they were
    # (an older record has none; a resume that asks for another estimator is refused).
    if flags.estimator != "tbptt":
        values.update(estimator=flags.estimator, perturbations=flags.perturbations,
                      es_std=flags.es_std)
    if flags.net:
        values["net"] = flags.net
    # The evaluations decide which optimizer is kept: a resume that evaluated on other epochs
    # or another horizon would compare its losses with incomparable ones. Recorded as resolved
    # (the defaults' values), so that spelling out a default still resumes.
    values.update(evaluation_num_steps=evaluation_steps(flags),
                  evaluation_epochs=flags.evaluation_epochs,
                  evaluation_seed=evaluation_seed(flags))
    return values


# Flags that each task of a multi-worker run may set its own way: where its files are (the
# run in --save_path is compared instead), how it logs, how long it waits.
_LOCAL_FLAGS = ("save_path", "logdir", "log_period", "data_dir", "cluster_timeout")


def cluster_run(flags, names):
    """What every task of a multi-worker run must have alike (`cluster.rendezvous`): the values
    of the flags `names` but `_LOCAL_FLAGS`, and the run in --save_path."""
    run = {f"--{name}": flags[name].value for name in names if name not in _LOCAL_FLAGS}
    run["--save_path"] = run_folder.current_run(flags.save_path, flags.restart)  # Its run.
    return run


def make_strategy(name, run=None, timeout=None):
    """`(tf.distribute strategy or None, whether this process is the chief)`.

    For `multi_worker`, the tasks of TF_CONFIG meet first (`cluster.rendezvous`: `run` is what
    they must have alike, `timeout` how long each waits for the others, then also for each
    collective of the strategy).
    """
    if name == "none":
        return None, True
    if name == "mirrored":
        # This machine's GPUs, or else its (logical) CPUs: MirroredStrategy's own default
        # would take one CPU only.
        devices = (tf.config.list_logical_devices("GPU")
                   or tf.config.list_logical_devices("CPU"))
        return tf.distribute.MirroredStrategy([d.name for d in devices]), True
    task = cluster.from_environment()
    cluster.rendezvous(task, run or {}, timeout)
    # Every collective (the meta-gradients' all-reduce) gives up after `timeout` too: a peer
    # killed mid-run would leave the others waiting for it.
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options), task.chief


def describe_meta_batch(meta_batch_size, strategy):
    """One line saying how --meta_batch_size and --strategy took effect (None for one instance
    without a strategy): instances per meta-update, replicas, workers and this process's
    devices."""
    if strategy is None:
        return (None if meta_batch_size == 1 else
                f"Meta-batch: {meta_batch_size} problem instances per meta-update, on one "
                f"device.")
    replicas = strategy.num_replicas_in_sync
    devices = ", ".join(name.split("/device:")[-1] for name in strategy.extended.worker_devices)
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type is not None:
        workers = sum(len(tasks) for tasks in resolver.cluster_spec().as_dict().values())
        where = (f"multi_worker: {workers} workers; this one, {resolver.task_type} "
                 f"{resolver.task_id}, on {devices}")
    else:
        where = f"mirrored on {devices}"
    share = ("on 1 replica" if replicas == 1 else
             f"{meta_batch_size // replicas} on each of {replicas} replicas")
    return f"Meta-batch: {meta_batch_size} problem instances per meta-update, {share} ({where})."


class _StopRequest:
    """Turns SIGINT/SIGTERM into a request to stop after the current epoch; a second one aborts."""

    def __init__(self):
        self.signal = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Built(NamedTuple):
    """What `build` makes for a run."""
    optimizer: meta.MetaOptimizer
    minimize: meta.Unroll  # Meta-training.
    evaluation: meta.Unroll  # Held-out epochs, `eval_batch` at once.
    eval_batch: int


def build(flags, config, objective, strategy):
    """The optimizer and its unrolls, checked against this process's memory (`check_memory`).

    Called before the run folder is opened: a run that cannot start (bad options, too large)
    leaves nothing there that its corrected command would have to `--restart` over.

    Raises:
      util.FlagError: invalid options, or more memory than the process may use.
    """
    try:
        tf.random.set_seed(flags.seed)  # The networks' initial weights.
        built = Built(*_build(flags, config, objective, strategy))
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        raise _out_of_memory(e) from None
    check_memory(flags, built.minimize, util.memory_headroom())
    return built


def check_memory(flags, minimize, headroom):
    """A one-line error when the meta-gradient of an unroll would keep more than the `headroom`
    bytes this process can still take (`util.memory_headroom`): refused before anything is
    compiled, rather than out of memory after the compilation."""
    kept = minimize.kept_bytes_per_step() * flags.unroll_length
    if headroom is None or kept <= headroom:
        return
    instead = {"off": ", or --rematerialize=steps",
               "steps": ", or --rematerialize=chunks (for one coordinatewise network: memory that "
                        "barely grows with the unroll)"}.get(minimize.rematerialize, "")
    raise util.FlagError(
        f"--unroll_length={flags.unroll_length} with --meta_batch_size={flags.meta_batch_size} "
        f"keeps at least {kept / 2**30:.1f} GiB for the meta-gradient, more than the "
        f"{headroom / 2**30:.1f} GiB this process can still take; lower {configs.MEMORY_FLAGS}"
        f"{instead}.")


def network_record(optimizer):
    """`{key: {"net": class name, "net_options": {...}}}`: what rebuilds `optimizer`'s networks
    (with other weights), as `run_folder` records it for every run."""
    return {key: {"net": type(net).__name__, "net_options": net.options}
            for key, net in optimizer.nets.items()}


def resumed_networks(flags):
    """The networks of a run that resumes from a checkpoint, as its run.json records them
    (`network_record`): the checkpoint's weights replace any, so a run from --initial_path does
    not read its file (it may be gone), and a network's default changed since the run started
    does not change it. None for a run that starts, and records from before networks were kept.
    """
    if not (flags.save_path and not flags.restart):
        return None
    directory = os.path.join(flags.save_path, run_folder.CHECKPOINTS)
    if not (os.path.isdir(directory)
            and any(_CHECKPOINT_INDEX.fullmatch(name) for name in os.listdir(directory))):
        return None  # The run starts, or starts again, from the file's weights.
    return run_folder.recorded_networks(flags.save_path)


def _build(flags, config, objective, strategy):
    """`(MetaOptimizer, meta-training Unroll, evaluation Unroll, evaluation batch)`."""
    net_config = configs.with_optimizer_kind(config.net_config, flags.which_aml,
                                             flags.fixed_lambda, flags.lambda_mode,
                                             flags.lambda_max)
    if flags.net:
        net_config = configs.with_net(net_config, flags.net)
    if flags.net_options:
        net_config = configs.with_net_options(net_config, flags.net_options)
    recorded = resumed_networks(flags)
    if recorded:
        net_config = recorded  # Random weights, which the checkpoint's replace.
    elif flags.initial_path:
        net_config = configs.with_saved_paths(net_config, flags.initial_path, flags.which_aml,
                                              flags.fixed_lambda, flag="--initial_path",
                                              kind_flag="--which_aml")
    replicas = strategy.num_replicas_in_sync if strategy else 1
    # ES and PES share out their perturbations, truncated backpropagation its instances.
    if flags.estimator == "tbptt" and flags.meta_batch_size % replicas:
        raise util.FlagError(f"--meta_batch_size={flags.meta_batch_size} must be a multiple of "
                             f"the {replicas} replicas of --strategy={flags.strategy}.")
    eval_config = configs.get_config(flags.problem, "validation", flags.data_dir)
    with strategy.scope() if strategy else meta._no_scope():  # pylint: disable=protected-access
        try:
            for key, net in net_config.items():
                if "net_path" not in net:  # A file's network is as large as the file allows.
                    weights_file.check_storable(
                        networks.NETWORKS[net["net"]].weight_shapes(net.get("net_options", {})),
                        f"Network {key!r}")
            optimizer = meta.MetaOptimizer(**net_config)
        except util.OptionError as e:  # The networks' own checks; anything else is a bug.
            raise util.FlagError(f"The optimizer's options are invalid ({e}); check "
                                 f"--net_options, --fixed_lambda and --lambda_max.") from None
        family = isinstance(config.problem, task_families.FamilyProblems)
        eval_batch = evaluation_batch(flags.evaluation_epochs, replicas)
        eval_length = meta.eval_unroll_length(evaluation_steps(flags))
        if family or flags.estimator != "tbptt":
            if strategy is not None and family:
                raise util.FlagError(f"--strategy={flags.strategy} shares out the instances of "
                                     f"one problem; a task family runs with --strategy=none.")
            if strategy is not None and flags.perturbations % replicas:
                raise util.FlagError(f"--perturbations={flags.perturbations} must be a multiple "
                                     f"of the {replicas} replicas of --strategy={flags.strategy}, "
                                     f"which share them out.")
            problems_of = (estimators.family_problems(config.problem) if family else
                           estimators.single_problem(config.problem))
            pool = ([config.problem.problem(i) for i in range(len(config.problem.family.pool))]
                    if family else [config.problem])
            minimize = estimators.MetaTrainer(
                optimizer, problems_of, flags.unroll_length, flags.num_steps, flags.estimator,
                learning_rate=flags.learning_rate, meta_batch_size=flags.meta_batch_size,
                perturbations=flags.perturbations, std=flags.es_std,
                net_assignments=config.net_assignments, mode=flags.mode,
                meta_objective=objective, second_derivatives=flags.second_derivatives,
                state_reset_period=flags.state_reset_period, rematerialize=flags.rematerialize,
                pool=pool, strategy=strategy)
        else:
            minimize = optimizer.meta_minimize(
                config.problem, flags.unroll_length, learning_rate=flags.learning_rate,
                net_assignments=config.net_assignments,
                second_derivatives=flags.second_derivatives,
                state_reset_period=flags.state_reset_period, meta_objective=objective,
                mode=flags.mode, meta_batch_size=flags.meta_batch_size, strategy=strategy,
                rematerialize=flags.rematerialize)
        # Held-out epochs (validation data where the problem has data) choose the optimizer to
        # keep, several at once (each replica its share): the numbers of one at a time.
        if family:
            evaluation = estimators.MetaTrainer(
                optimizer, estimators.family_problems(eval_config.problem), eval_length,
                evaluation_steps(flags), estimator=None, meta_batch_size=eval_batch,
                mode=flags.mode, state_reset_period=flags.state_reset_period)
        else:
            evaluation = optimizer.meta_loss(
                eval_config.problem, eval_length, net_assignments=eval_config.net_assignments,
                state_reset_period=flags.state_reset_period, mode=flags.mode,
                meta_batch_size=eval_batch, strategy=strategy)
    return optimizer, minimize, evaluation, evaluation.meta_batch_size


def evaluation_steps(flags):
    """Optimizee steps per evaluation epoch: --evaluation_num_steps, default --num_steps."""
    return flags.evaluation_num_steps or flags.num_steps


def evaluation_seed(flags):
    """Seed of the evaluations' held-out epochs: --evaluation_seed, default --seed."""
    return flags.seed if flags.evaluation_seed is None else flags.evaluation_seed


def evaluation_batch(epochs, replicas, most=4):
    """Evaluation epochs run at once: the largest multiple of `replicas`, up to `most` per
    replica, that divides `epochs` (no epoch run in vain), else `replicas`. Measured: 4 at once
    take 0.4-0.8x the time of one at a time on the quadratic, 0.95x on MNIST."""
    for per_replica in range(most, 0, -1):
        if epochs % (per_replica * replicas) == 0:
            return per_replica * replicas
    return replicas


def _counters():
    """Everything a resumed run needs beside the weights; the data's random state is the epoch
    counter itself, as every epoch's seed derives from (--seed, epoch)."""
    return {"epoch": tf.Variable(0, dtype=tf.int64), "evaluations": tf.Variable(0, tf.int64),
            "best_evaluation": tf.Variable(float("inf"), dtype=tf.float64),
            "best_epoch": tf.Variable(0, dtype=tf.int64),
            "nonfinite_epochs": tf.Variable(0, tf.int64)}


# The checkpoints CheckpointManager writes (`ckpt-7.index`); other names are not ours.
_CHECKPOINT_INDEX = re.compile(r"ckpt-(\d+)\.index")
_STATE_FILE = "checkpoint"  # CheckpointManager's list of the checkpoints of its folder.
_MAX_STATE_FILE_BYTES = 2**20


def _irregular_file(path):
    """Why TensorFlow must not read `path` (not a regular file: it could hang), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"{os.path.basename(path)}: {e.strerror}"
    return (None if stat.S_ISREG(mode) else
            f"{os.path.basename(path)} is {util.describe_mode(mode)}, not a regular file")


def _unusable_state_file(directory):
    """Why the folder's state file cannot be read (TensorFlow would hang or raise), or None."""
    state = os.path.join(directory, _STATE_FILE)
    if not os.path.lexists(state):
        return None
    try:
        util.read_file(state, _MAX_STATE_FILE_BYTES, what="checkpoint state file")
        # TensorFlow logs a damaged file in two lines of its own; the caller says it in one.
        logger = tf.get_logger()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            parsed = tf.train.get_checkpoint_state(directory)
        finally:
            logger.setLevel(level)
        if parsed is None:
            return f"{state} is not a checkpoint state"
    except (util.FileFormatError, ValueError, tf.errors.OpError) as e:
        return str(e).splitlines()[0][:200]
    return None


def _replace_state_file(directory, candidates, restored):
    """Writes a state file naming the checkpoints found (the chief only, before its manager
    reads it), so that its manager keeps and deletes them as if the file had never broken."""
    state = os.path.join(directory, _STATE_FILE)
    if os.path.isdir(state) and not os.path.islink(state):
        raise util.FileFormatError(f"{state} is a directory, not TensorFlow's checkpoint state "
                                   f"file; remove it.")
    os.remove(state)  # A FIFO or device there is not written through.
    if not restored:
        return
    # CheckpointState's text format, as CheckpointManager writes it: names relative to the
    # folder, oldest first; each one's time makes the manager delete it in its turn.
    present = [p for p in reversed(candidates) if os.path.isfile(p)]  # Not those removed.
    lines = [f'model_checkpoint_path: "{os.path.basename(restored)}"']
    lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)[:-len(".index")]}"'
              for p in present]
    lines += [f"all_model_checkpoint_timestamps: {os.stat(p).st_mtime!r}" for p in present]
    util.atomic_write(state, ("\n".join(lines) + "\n").encode(),
                      what="checkpoint state file")


def _restore(checkpoint, folder):
    """Restores the newest usable checkpoint; returns its path (None: nothing to restore).

    Only regular files are read: a FIFO or device among the checkpoint files makes that
    checkpoint unusable (the chief removes it: the next saves reuse its name), and an unusable
    state file is ignored (the checkpoints are found by name) and, by the chief, rewritten.

    Raises:
      util.FileFormatError: the run resumes but no checkpoint is usable (names --restart).
    """
    directory = folder.checkpoint_dir
    restart = (f"pass --restart to start over (the best optimizer in {folder.path} stays until "
               f"a better one replaces it)")
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise util.FileFormatError(f"{directory} is not a folder of checkpoints; {restart}.")
    numbered = [(int(match.group(1)), os.path.join(directory, name))
                for name in (os.listdir(directory) if os.path.isdir(directory) else ())
                for match in [_CHECKPOINT_INDEX.fullmatch(name)] if match]
    candidates = [path for _, path in sorted(numbered, reverse=True)]
    state_problem = _unusable_state_file(directory)
    if state_problem:
        print(f"Ignoring the checkpoints' state file ({state_problem}); finding the checkpoints "
              f"by name.")
    if not candidates:
        if state_problem and folder.chief:
            _replace_state_file(directory, candidates, None)
        if folder.resuming and folder.best_files():
            raise util.FileFormatError(f"{folder.path} holds a run but no checkpoint to resume "
                                       f"it from; {restart}.")
        return None
    # The counter that numbers the saves, created now so that the read restores it with the
    # rest: created later (by the first save), it stayed pending, and a run that ends without
    # saving (a complete one) had TensorFlow warn of "unrestored values ... save_counter".
    checkpoint.save_counter  # pylint: disable=pointless-statement
    reasons = []
    for index_file in candidates:
        path = index_file[:-len(".index")]
        files = [index_file] + glob.glob(f"{glob.escape(path)}.data-*")
        irregular = [(file, reason) for file in files for reason in [_irregular_file(file)]
                     if reason]
        if irregular:
            reasons.append("; ".join(reason for _, reason in irregular))
            if folder.chief:  # Else TensorFlow would fail (or hang) saving over that name.
                for file, _ in irregular:
                    if os.path.lexists(file) and not os.path.isdir(file):
                        os.remove(file)
            continue
        try:
            checkpoint.read(path).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError, IndexError, OSError) as e:
            reasons.append(f"{os.path.basename(path)}: {str(e).splitlines()[0][:120]}")
            continue
        if reasons:
            print(f"Checkpoint(s) unusable ({'; '.join(reasons)}); resuming from {path}.")
        if state_problem and folder.chief:
            _replace_state_file(directory, candidates, path)
        return path
    raise util.FileFormatError(f"No checkpoint in {directory} is usable ({'; '.join(reasons)}); "
                               f"{restart}.")


class _Checkpoints:
    """Saves checkpoints of finite weights only; a failed save is one line, not a traceback."""

    def __init__(self, checkpoint, folder, variables):
        self._manager = tf.train.CheckpointManager(checkpoint, folder.checkpoint_write_dir,
                                                   max_to_keep=2)
        self._variables = variables
        self.last_good = None

    def save(self):
        if not all(np.all(np.isfinite(v.numpy())) for v in self._variables):
            print(f"Not checkpointing non-finite weights; the last good checkpoint is "
                  f"{self.last_good or 'none'}.")
            return
        directory = self._manager.directory
        try:
            self.last_good = self._manager.save()
        except (tf.errors.OpError, OSError) as e:
            for partial in glob.glob(os.path.join(directory, "ckpt-*_temp*")):
                shutil.rmtree(partial, ignore_errors=True)
            reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
            raise util.FileFormatError(
                f"Cannot write a checkpoint in {directory} ({reason.splitlines()[0][:150]}); "
                f"free space or fix permissions. The last checkpoint "
                f"({self.last_good or 'none'}) is intact.") from None


def train(flags, built, num_unrolls, folder):
    """Meta-trains what `build` made; returns the exit status (0; 1 after too many non-finite
    epochs or when the saved best optimizer is left damaged; or the signal's).

    Raises:
      util.OutOfMemoryError: out of memory (the message names the flags to lower).
      cluster.ClusterError: a task of a multi-worker run stopped, or restored another
        checkpoint.
    """
    try:
        return _train(flags, built, num_unrolls, folder)
    except (tf.errors.ResourceExhaustedError, MemoryError) as e:
        raise _out_of_memory(e, folder) from None
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.AbortedError, tf.errors.CancelledError) as e:
        # A collective of a multi-worker run whose peer died (no heartbeat) or hangs (timeout).
        if not isinstance(built.minimize.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise _peer_gone(e) from None


def _check_tasks_agree(strategy, state, variables):
    """The tasks of a multi-worker run start from the same epoch and weights, or one line: a task
    that restored another checkpoint (a copy of the folder, say) would train beside the others
    on other numbers. The rendezvous checked the flags and the run before TensorFlow started."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    digest = hashlib.sha256()
    for value in [*variables, *state.values()]:
        digest.update(np.ascontiguousarray(value.numpy()).tobytes())
    # Three 32-bit words of the digest, exact in float64, beside the epoch.
    words = np.frombuffer(digest.digest()[:12], np.uint32).astype(np.float64)
    mine = tf.constant(np.concatenate([[float(state["epoch"].numpy())], words])[None])
    values = strategy.experimental_distribute_values_from_function(lambda context: mine)
    every = strategy.gather(values, axis=0).numpy()
    if not (every == every[0]).all():
        epochs = ", ".join(str(int(e)) for e in sorted(set(every[:, 0])))
        raise cluster.ClusterError(f"The tasks of TF_CONFIG restored different checkpoints "
                                   f"(epochs {epochs}, or other weights); give every task the "
                                   f"chief's --save_path, a folder they share, and start them "
                                   f"again.")


def _peer_gone(error):
    """A collective that failed because a task of the cluster stopped, as one line naming it."""
    tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", error.message or "")))
    who = ", ".join(f"{job} {task}" for job, task in tasks) or "a task of TF_CONFIG"
    return cluster.ClusterError(f"{who} stopped answering ({type(error).__name__}); start every "
                                f"task again with the same command: they resume from the "
                                f"chief's last checkpoint.")


def _out_of_memory(error, folder=None):
    """TensorFlow's or the host's out-of-memory error as one line naming the flags to lower and
    what the run folder keeps (a new run that saved nothing leaves no record behind)."""
    kept = ""
    if folder is not None and folder.discard_unstarted():
        kept = f" Nothing was saved: {folder.path} holds no run, start it with lower values."
    elif folder is not None:
        kept = (f" {folder.path} keeps its last checkpoint: resume with the same flags, or "
                f"start over with lower values and --restart.")
    return util.OutOfMemoryError(f"Out of memory ({cli.first_line(error)}); lower "
                                 f"{configs.MEMORY_FLAGS}.{kept}")


def _train(flags, built, num_unrolls, folder):
    optimizer, minimize, evaluation, eval_batch = built
    state = _counters()
    checkpoints = None
    if folder:
        checkpoint = tf.train.Checkpoint(optimizer=optimizer, meta_adam=minimize.optimizer,
                                         **state)
        restored = _restore(checkpoint, folder) if folder.resuming else None
        if folder.resuming:
            saved = folder.best_evaluation()
            if folder.damaged_best:  # It bounds nothing: the next good evaluation replaces it.
                state["best_evaluation"].assign(float("inf"))
                state["best_epoch"].assign(0)
            elif saved is not None and saved[0] < state["best_evaluation"].numpy():
                state["best_evaluation"].assign(saved[0])
                state["best_epoch"].assign(saved[1] or 0)
        _check_tasks_agree(minimize.strategy, state,
                           optimizer.variables + tuple(minimize.optimizer.variables))
        if restored and flags.initial_path and not os.path.exists(flags.initial_path):
            print(f"Resuming without --initial_path {flags.initial_path}, which is gone: a "
                  f"resume restores the checkpoint's weights, with the networks the run "
                  f"recorded.")
        if restored:
            print(f"Resuming from epoch {int(state['epoch'])} of {flags.num_epochs} "
                  f"({restored}).")
            if int(state["epoch"]) >= flags.num_epochs:
                print("The run is complete; raise --num_epochs to train it further.")
                return _summary(state, folder)
        checkpoints = _Checkpoints(checkpoint, folder, minimize.variables)
        checkpoints.last_good = restored
    writer = _summary_writer(flags.logdir)
    stop = _StopRequest()
    progress = cli.Progress(flags.num_epochs, int(state["epoch"]))
    period_epochs, consecutive_nonfinite = [], 0
    # A fresh run only: one resumed or fine-tuned (--initial_path) starts where learning is slow.
    fresh = int(state["epoch"]) == 0 and not flags.initial_path
    plateau = meta.Plateau(flags.plateau_epochs if fresh else 0)
    try:
        for e in range(int(state["epoch"]), flags.num_epochs):
            epoch = meta.run_epoch(minimize, num_unrolls,
                                   meta.instance_seeds(flags.seed, meta.TRAIN, e,
                                                       flags.meta_batch_size))
            state["epoch"].assign(e + 1)
            if epoch.finite:
                consecutive_nonfinite = 0
                period_epochs.append(epoch)
                progress.update(e + 1, epoch.meta_loss)
                message = plateau.update(epoch.meta_loss)
                if message:
                    progress.clear()
                    print(f"Epoch {e + 1}: {message} (--plateau_epochs)")
                _summaries(writer, e + 1, {"train/final_loss": epoch.final_loss,
                                           "train/meta_loss": epoch.meta_loss,
                                           "train/epoch_time": epoch.time})
            else:
                consecutive_nonfinite += 1
                state["nonfinite_epochs"].assign_add(1)
                progress.clear()
                print(f"Non-finite meta-loss or meta-gradient at epoch {e + 1} "
                      f"({consecutive_nonfinite} in a row, {int(state['nonfinite_epochs'])} in "
                      f"all): update skipped, optimizee reset.")
                if consecutive_nonfinite >= flags.max_nonfinite:
                    kept = (f" The last good checkpoint ({checkpoints.last_good}) and the best "
                            f"optimizer in {folder.path} are intact."
                            if checkpoints and checkpoints.last_good else "")
                    print(f"Stopped: {consecutive_nonfinite} consecutive epochs with a "
                          f"non-finite meta-loss.{kept} Try a lower --learning_rate.")
                    return 1
            if (e + 1) % flags.log_period == 0:
                progress.clear()
                _log(e + 1, period_epochs, writer)
                period_epochs = []
            if (e + 1) % flags.evaluation_period == 0:
                progress.clear()
                _evaluate(flags, evaluation, eval_batch, optimizer, state, e + 1, folder,
                          checkpoints, writer)
            if checkpoints and ((e + 1) % flags.checkpoint_period == 0 or stop.signal):
                checkpoints.save()
            if stop.signal:
                progress.clear()
                where = (f"checkpoint written to {checkpoints.last_good}. Run the same command "
                         f"again to resume." if checkpoints else
                         "nothing was saved (no --save_path).")
                print(f"Stopped by {stop.signal} after epoch {e + 1}; {where}")
                _summary(state, folder)
                return EXIT_SIGNAL[stop.signal]
        if checkpoints:
            checkpoints.save()
        progress.clear()
        return _summary(state, folder)
    except KeyboardInterrupt:
        progress.clear()
        print(f"Aborted; the last checkpoint "
              f"({checkpoints.last_good if checkpoints else 'none: no --save_path'}) is intact.")
        return EXIT_SIGNAL["SIGINT"]
    finally:
        stop.restore()
        if writer is not None:
            writer.close()


def _summary_writer(logdir):
    if not logdir:
        return None
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise util.FlagError(f"--logdir {logdir} is a file; choose a folder for the TensorBoard "
                             f"summaries.")
    try:
        return tf.summary.create_file_writer(logdir)
    except (tf.errors.OpError, OSError) as e:  # TensorFlow's message is several lines.
        detail = getattr(e, "strerror", None) or str(e).splitlines()[0][:150]
        reason = ((util.unreachable(logdir) if os.path.islink(logdir) else None)
                  or f"cannot be written ({detail})")
        raise util.FlagError(f"--logdir {logdir} {reason}.") from None


def _summaries(writer, step, scalars):
    if writer is not None:
        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)


def _log(epoch, period_epochs, writer):
    """The original's stats lines over the finite epochs of a log period, and lambda's."""
    if not period_epochs:
        print(f"Epoch {epoch}\nNo finite epoch in this log period.")
        return
    cli.print_stats(f"Epoch {epoch}", sum(e.final_loss for e in period_epochs),
                    sum(e.time for e in period_epochs), len(period_epochs))
    stats = meta.lambda_stats([r for e in period_epochs for r in e.results])
    cli.print_lambda_stats(stats)
    for key, (mean, low, high) in stats.items():
        _summaries(writer, epoch, {f"lambda/{key}/mean": mean, f"lambda/{key}/min": low,
                                   f"lambda/{key}/max": high})


def _evaluate(flags, evaluation, batch, optimizer, state, epoch, folder, checkpoints, writer):
    """Held-out epochs; saves the optimizer (then a checkpoint) when it beats the best so far.

    Every evaluation runs the same held-out epochs (problems and batches), so that evaluations
    compare the optimizer's states on equal terms: with fresh epochs each time, the best of
    many evaluations would be mostly the luckiest set of epochs.
    """
    results = []
    seed = evaluation_seed(flags)
    while len(results) < flags.evaluation_epochs:
        seeds = np.stack([meta.epoch_seed(seed, meta.VALIDATION, len(results) + i)
                          for i in range(batch)])
        state["evaluations"].assign_add(batch)
        results += meta.run_epochs(evaluation, evaluation_steps(flags) // evaluation.unroll_length,
                                   seeds)
    results = results[:flags.evaluation_epochs]
    eval_cost = sum(r.final_loss for r in results)
    cli.print_stats("EVALUATION", eval_cost, sum(r.time for r in results), len(results))
    cli.report_divergence(results, "evaluation epochs")
    mean = eval_cost / len(results)
    _summaries(writer, epoch, {"evaluation/final_loss": mean})
    if np.isfinite(mean) and mean < state["best_evaluation"].numpy():
        state["best_evaluation"].assign(mean)
        state["best_epoch"].assign(epoch)
        if folder:
            paths = folder.save_best(optimizer, int(state["evaluations"]),
                                     {"run_id": folder.run_id, "epoch": epoch,
                                      "evaluation": mean})
            if paths:
                print(f"Saving meta-optimizer to {folder.path}")
            checkpoints.save()  # At once, so that a resumed run knows this best.


def _summary(state, folder):
    """The closing lines: the best evaluation, its loss, and where it is; returns the exit
    status (1: the saved best optimizer is damaged and no evaluation replaced it)."""
    if folder and folder.damaged_best:
        print(f"The best optimizer in {folder.path} is still damaged (see the warning above): no "
              f"evaluation has replaced it yet; train further (--num_epochs, "
              f"--evaluation_period) or pass --restart.")
        return 1
    best = state["best_evaluation"].numpy()
    if not np.isfinite(best):
        print("No evaluation yet (see --evaluation_period); nothing kept as the best.")
        return 0
    if not folder:
        where = "not saved (no --save_path)"
    elif not folder.chief:
        where = f"the chief saves it in {folder.path}"
    else:
        where = f"saved in {folder.path} ({', '.join(folder.best_files())})"
    print(f"Best evaluation: epoch {int(state['best_epoch'])}, mean final loss {best:.4g} "
          f"(log10 {np.log10(best):.2f}); {where}.")
    return 0
