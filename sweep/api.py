"""sweep from Python: the functions the ``sweep`` command is made of, each returning data.

    import sweep

    spec = sweep.load_spec("studies/seed-grid.toml", overrides={"train.epochs": 5})
    study = sweep.run(spec, storage="sqlite:///runs/sweep.db", jobs=2)  # an optuna.Study
    study = sweep.load_study(spec.name, storage="sqlite:///runs/sweep.db")  # its sampler, pruner
    study.optimize(sweep.objective(study.spec), n_trials=2)  # one more worker, in this process
    for s in sweep.status("sqlite:///runs/sweep.db"):
        print(s.name, s.counts, s.best_value())
    report = sweep.report_study("seed-grid", storage="sqlite:///runs/sweep.db")
    print(report.out_dir / "report.md", report.best_text)

``storage`` is a database URL (default: ``$SWEEP_STORAGE``, else ``sqlite:///runs/sweep.db``).
Errors are the exceptions of ``sweep.errors``, each with a one-line message.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import SpecError, SweepError

# Each function imports what it uses when it is called: ``sweep status`` comes through here and
# must not wait for the training code, boto3 and alembic (tests/sweep/test_startup.py).
if TYPE_CHECKING:
    from mlp.state import EpochMetrics
    from sweep.notebook import load_study, objective
    from sweep.progress import TrialLines
    from sweep.report.summary import StudyStatus
    from sweep.report.writer import Report
    from sweep.runner import run
    from sweep.study.spec import StudySpec, load_spec
    from sweep.trial.best import Exported
    from sweep.trial.objective import Evaluation

if "ipykernel" in sys.modules:  # a notebook: optuna's import would warn of a missing widget
    from sweep.progress import quiet_tqdm

    quiet_tqdm()

__all__ = [
    "evaluate", "export", "join", "load_spec", "load_study", "objective", "report_all",
    "report_study", "run", "status",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``run``, ``load_spec``, ``load_study`` and ``objective`` are the runner's, the study
    file's and ``sweep.notebook``'s own functions, imported on first use."""
    if name == "run":
        from sweep.runner import run

        return run
    if name == "load_spec":
        from sweep.study.spec import load_spec

        return load_spec
    if name in ("load_study", "objective"):
        from sweep import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'sweep.api' has no attribute {name!r}")


def join(
    name: str, *, storage: str | None = None, spec: StudySpec | None = None, wait: float = 0.0,
    data_path: str | None = None, artifacts: str | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (), on_trial: TrialLines | None = None,
) -> int:  # fmt: skip
    """Work on study ``name`` as one more worker until it has nothing left to claim; return
    how many trials this worker ran. The stored spec decides what runs (``spec``, if given,
    must agree with it, as must ``overrides`` of it or of the stored spec, see
    ``sweep.load_spec``); ``wait`` seconds for the study to be created by its launcher;
    ``artifacts`` where its trials checkpoint (see ``sweep.run``); ``on_trial`` is told of
    each trial it claims, each epoch and how each ended (``sweep.progress.TrialLines``)."""
    from sweep.queue.storage import resolve_url
    from sweep.study.joining import join as stored_spec_of
    from sweep.worker import work

    if spec is not None and spec.name != name:
        raise SpecError(f"{spec.source}: [study.name] is {spec.name!r}, not {name!r}")
    url = resolve_url(storage)
    stored = stored_spec_of(url, name, spec=spec, wait=wait, data_path=data_path,
                            overrides=overrides)  # fmt: skip
    if on_trial is not None and on_trial.epochs is None:
        from sweep.progress import fixed_epochs

        on_trial = dataclasses.replace(on_trial, epochs=fixed_epochs(stored))
    run_id = uuid.uuid4().hex[:12]
    # A sampler seed of its own (the study seed plus a salt): the tasks of a batch array would
    # otherwise all draw the same random and TPE start-up points.
    return work(stored, url, run_id, salt=1 + int(run_id, 16) % 2**20, launch=True,
                artifacts=artifacts, on_trial=on_trial)  # fmt: skip


def status(storage: str | None = None) -> list[StudyStatus]:
    """Every study in the database: trials by state, best trial (read-only)."""
    from sweep.queue.storage import open_reader
    from sweep.report.summary import status as studies

    return studies(open_reader(storage))


def report_study(
    name: str, *, storage: str | None = None, out: Path | None = None, log_loss: bool = False
) -> Report:
    """Write study ``name``'s report (report.md, trials.csv, figures) into ``out``, by default
    ``runs/<slug>/`` (a study's name never becomes a path); return what was written."""
    from sweep.queue.storage import open_storage
    from sweep.report.writer import report_folder, write_report

    rdb = open_storage(storage, heartbeat_interval=None, grace_period=None, read_only=True)
    return write_report(rdb, name, out_dir=out or report_folder(Path("runs"), rdb, name),
                        log_loss=log_loss)  # fmt: skip


def report_all(
    *, storage: str | None = None, root: Path = Path("runs"), log_loss: bool = False,
    on_report: Callable[[Report], None] | None = None,
) -> tuple[list[Report], dict[str, str]]:  # fmt: skip
    """Report every study it can, each in its own folder under ``root``; return the reports
    and, for each study that could not be reported, why."""
    from sweep.queue.storage import open_storage, study_names
    from sweep.report.writer import report_folder, write_report

    rdb = open_storage(storage, heartbeat_interval=None, grace_period=None, read_only=True)
    done, failed = [], {}
    for name in study_names(rdb):
        try:
            written = write_report(rdb, name, out_dir=report_folder(root, rdb, name),
                                   log_loss=log_loss)  # fmt: skip
        except SweepError as e:
            failed[name] = str(e)
            continue
        done.append(written)
        if on_report is not None:
            on_report(written)
    return done, failed


def evaluate(
    spec: StudySpec, *, storage: str | None = None, artifacts: str | None = None,
    trial: int | None = None, on_epoch: Callable[[EpochMetrics, int], None] | None = None,
) -> Evaluation:  # fmt: skip
    """Retrain the study's best configuration (same seed) and measure its test accuracy,
    once; stored on the study as ``test_accuracy`` and ``test_trial``. Of several objectives
    (no one best), the front's most accurate trial; ``trial`` (a COMPLETE trial's number)
    retrains that one instead. The retrained model
    (weights and JSON sidecar, ``mlp.MLP.save``) is uploaded to the study's artifact store
    (``artifacts``, see ``sweep.run``); the result names the two artifacts and the store.
    ``on_epoch`` gets each epoch of the retraining as it ends, and the epochs it trains."""
    from sweep.queue.storage import open_storage, resolve_url
    from sweep.report.writer import load_study
    from sweep.trial import best, kept
    from sweep.trial.artifacts import study_store
    from sweep.trial.objective import evaluate_trial

    url = resolve_url(storage)
    store, location, _ = study_store(artifacts, url)  # a bad one fails before any training
    study = load_study(open_storage(url, heartbeat_interval=None, grace_period=None),
                       spec.name)  # fmt: skip
    if not any(t.values is not None for t in study.get_trials(deepcopy=False)):
        raise SweepError(f"study {spec.name!r} has no completed trial to evaluate")
    chosen, _ = kept.evaluated_trial(study, trial)
    result = evaluate_trial(study, spec, chosen, on_epoch=on_epoch)
    assert result.model is not None and result.config is not None and result.seed is not None
    meta = best.model_meta(study, result.trial, result.config, result.seed,
                           result.valid_accuracy, result.test_accuracy)  # fmt: skip
    uploaded = best.upload(study, store, result.model, meta)
    return dataclasses.replace(result, artifacts=uploaded, store=location)


def export(
    name: str, *, out: str | Path, storage: str | None = None, artifacts: str | None = None,
    force: bool = False, trial: int | None = None,
) -> Exported:  # fmt: skip
    """Write study ``name``'s best model to ``out`` (.npz weights) and its JSON sidecar beside
    it (``mlp.MLP.load(out)`` reads both); return which trial it was, the weights' path
    (``weights``: give it to ``mlp.MLP.load``) and the sidecar's. The
    weights are the best trial's own final weights, kept by the workers in the artifact store
    (``artifacts``, see ``sweep.run``); of several objectives, the front's most accurate
    trial's; ``trial``: that trial's, if they were kept (the best trial's, every trial's on the
    front). Nothing is retrained. SweepError if there are none (a study run before
    checkpoints were kept: ``evaluate`` retrains and uploads one). SpecError if either file
    exists, unless ``force``: export never replaces a file it was not asked to."""
    from sweep.queue.storage import open_storage, resolve_url
    from sweep.report.writer import load_study
    from sweep.trial import best
    from sweep.trial.artifacts import study_store

    out = Path(out)
    best.check_out(out, force=force)
    url = resolve_url(storage)
    store, location, _ = study_store(artifacts, url)
    rdb = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    return best.export(load_study(rdb, name), store, out, where=location, trial=trial)
