"""The ``## checkpoints`` section of ``make bench``: what a checkpoint after every epoch costs.

A sweep trial writes its training state while it trains (``sweep.trial.checkpoint``) so that a
killed trial loses at most about one epoch; the writes must stay a small share of the training time
(``CHECKPOINT_OVERHEAD``, 5%). This measures that share on the training rows' model
(784-512-768-10, float32, batch 128, lr 0.1) through the product's own path: a sweep worker
(``sweep.worker.serve``: claims, a heartbeat, held writes) on a temporary SQLite study runs
trials that train with ``fit``, and every other one writes a checkpoint after each epoch with
``sweep.trial.checkpoint.Checkpoints.write``: ``save_state`` to a temporary file,
``sweep.trial.artifacts.upload`` to a FileSystemArtifactStore in a temporary folder, the
``checkpoint`` pointer on the trial (flushed to the database, and the replaced artifact deleted,
from the second checkpoint on). ``Checkpoints.on_state`` is bypassed: it skips writes that would
exceed the share, and the point here is to time every one.

Run alone with ``python -m tests.bench.training --only checkpoints``.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time

from tests.bench.training import BATCH, LR, SHAPES, _queued_study, _stats, _study_o

#: The issue's target, and ``sweep.trial.checkpoint.CHECKPOINT_OVERHEAD``'s default (the module's
#: value follows $SWEEP_CHECKPOINT_OVERHEAD, which tests set to inf).
TARGET = 0.05


@dataclasses.dataclass
class Run:
    """One training trial: its epochs' seconds, and its checkpoints' when it wrote them."""

    checkpointed: bool
    epochs: list[float] = dataclasses.field(default_factory=list)  # EpochMetrics.seconds
    wall: float = 0.0  # the whole ``fit``, checkpoints included
    build: list[float] = dataclasses.field(default_factory=list)  # the TrainState's copies
    write: list[float] = dataclasses.field(default_factory=list)  # Checkpoints.write


def runs(data, *, epochs: int, repeats: int) -> list[Run]:
    """``repeats`` trials of ``epochs`` epochs without checkpoints and as many with one after
    every epoch, interleaved in the order ABBA ABBA ... so that a machine that speeds up or
    slows down during the run (warm-up, a neighbour's job) weighs on both alike.

    The copies ``fit`` makes for ``on_state`` (weights, momentum, history) are timed by making
    them once more: the checkpointed trials' wall time counts them twice."""
    import optuna

    from mlp import MLP, TrainConfig, TrainState, fit
    from sweep.trial.artifacts import open_store
    from sweep.trial.checkpoint import Checkpoints
    from sweep.worker import serve

    done: list[Run] = []

    def objective(trial: optuna.Trial) -> float:
        run = Run(checkpointed=trial.number % 4 in (1, 2))
        saved = Checkpoints(store, trial, fits="bench") if run.checkpointed else None

        def on_state(state: TrainState) -> None:
            start = time.perf_counter()
            state = dataclasses.replace(
                state,
                params=[p.copy() for p in state.params],
                velocity=None if state.velocity is None else [v.copy() for v in state.velocity],
                rng=dict(state.rng),
                history=list(state.history),
            )
            run.build.append(time.perf_counter() - start)
            start = time.perf_counter()
            saved.write(state)
            run.write.append(time.perf_counter() - start)
            if saved.epoch != state.epoch:  # write() only warns; a benchmark must not go on
                raise RuntimeError(f"the checkpoint of epoch {state.epoch} was not written")

        model = MLP(*SHAPES[1:3], dtype="float32", seed=0)
        config = TrainConfig(epochs=epochs, batch_size=BATCH, learning_rate=LR)
        start = time.perf_counter()
        try:
            history = fit(model, data, config, on_state=on_state if saved else None)
        finally:
            if saved is not None:
                saved.close()
        run.wall = time.perf_counter() - start
        run.epochs = [m.seconds for m in history.epochs]
        done.append(run)
        return history.epochs[-1].valid_accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"{tmp}/artifacts")
        url = f"sqlite:///{tmp}/c.db"
        _queued_study(url, 2 * repeats)
        serve(_study_o(url), objective, run_id="bench")
    if len(done) != 2 * repeats:  # serve records a trial that raised as FAIL and goes on
        raise RuntimeError(f"{2 * repeats - len(done)} checkpoint run(s) failed; see the log")
    return done


def lines(done: list[Run], target: float) -> list[str]:
    """The rows: epoch time without checkpoints, one checkpoint's cost (copies + write), their
    ratio against ``target`` (ok or MISSED), and the wall time per epoch of both kinds."""
    off = [r for r in done if not r.checkpointed]
    on = [r for r in done if r.checkpointed]
    epoch = [s for r in off for s in r.epochs]
    cost = [b + w for r in on for b, w in zip(r.build, r.write, strict=True)]
    build_ms = statistics.median(b for r in on for b in r.build) * 1e3
    ratio = statistics.median(cost) / statistics.median(epoch)
    wall_off, wall_on = (statistics.median(r.wall / len(r.epochs) for r in rs) for rs in (off, on))
    return [
        f"epoch, no checkpoints:  {_stats(epoch)}",
        f"checkpoint:             {_stats(cost)}   (state copies {build_ms:.1f} ms, the rest "
        "save_state + upload + pointer)",
        f"overhead:               {ratio:.1%} of an epoch   target ≤ {target:.0%}   "
        + ("ok" if ratio <= target else "MISSED"),
        f"wall per epoch:         median {wall_off:.3f} without, {wall_on:.3f} with "
        f"({wall_on / wall_off - 1:+.1%}, the machine's noise included)",
    ]


def section(data, *, epochs: int, repeats: int) -> list[str]:
    """The section as ``make bench`` prints it: its heading, then ``lines``."""
    heading = (
        f"\n## checkpoints, one after each of {epochs} epoch(s) of 784-512-768-10 in a sweep "
        f"worker, seconds ({repeats} trial(s) with and {repeats} without, interleaved)"
    )
    return [heading, *lines(runs(data, epochs=epochs, repeats=repeats), TARGET)]
