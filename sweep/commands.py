"""What each ``sweep`` command does: a call of the typed API and its result printed.

The parser (``sweep.cli``) hands each handler its arguments already checked: every flag with a
rule (a number, a dataset path) was refused in one line while parsing if it broke it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mlp.config import WIDTHS
from sweep import records
from sweep.errors import SpecError

if TYPE_CHECKING:  # optuna takes a second to import; `sweep --help` should not wait for it
    from collections.abc import Sequence

    from sweep.report.writer import Report
    from sweep.study.overrides import Override
    from sweep.study.spec import StudySpec

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
#: The fields of ModelConfig that give a network's shape: ``sweep gradcheck``'s flags.
SHAPE = ("depth", *WIDTHS)


def _note(args: argparse.Namespace, text: str) -> None:
    """A line for the person at the terminal, on stderr (stdout is the command's result, the
    JSON alone with --format json); none with --quiet, which leaves stderr to errors."""
    if args.verbosity != "quiet":
        print(text, file=sys.stderr, flush=True)


def _json(record: object) -> None:
    """``record`` on stdout as one line of JSON (``sweep.records``)."""
    print(records.dumps(record), flush=True)


def cmd_data(args: argparse.Namespace) -> int:
    """Fetch, verify and cache MNIST, and print where the cache is."""
    from mlp import data

    if args.path is not None:  # an empty one is an error, not the cache
        ds = data.load_mnist(args.path)
        print(f"{args.path}: read {len(ds.train.y)}/{len(ds.valid.y)}/{len(ds.test.y)} examples")
        return EXIT_OK
    path = data.fetch(force=args.force)
    print(path)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train one network and print a line per epoch and the final validation accuracy."""
    from mlp import MLP, EpochMetrics, fit, load_mnist
    from mlp.memory import require_training
    from mlp.model import described
    from sweep.study.settings import configs_from_args

    # Checked before any data is read: a bad value is one line and exit 2 (a SpecError).
    m, config = configs_from_args(args, seed=args.seed, train_size=args.train_size)
    ds = load_mnist(args.data)
    if args.train_size:
        ds = ds.head(args.train_size)
    # before anything of the model is allocated (InsufficientMemory: one line, exit 1)
    require_training(m, config, train_examples=len(ds.train.y), valid_examples=len(ds.valid.y))
    try:
        model = MLP.from_config(m, seed=config.seed)
    except ValueError as e:  # initial weights past the dtype's range (--init-std 1e308)
        raise SpecError(str(e)) from e
    header = (
        f"{described(*m.hidden)}, {m.init} init, {m.activation}, {m.dtype},"
        f" lr {config.learning_rate}, batch {config.batch_size},"
        f" {len(ds.train.y):,} training examples"
    )
    if args.format == "json":  # JSON Lines: one object per epoch, as it ends
        _note(args, header)
        fit(model, ds, config, on_epoch=lambda e: _json(records.epoch(e)))
        return EXIT_OK
    print(header)

    def show(m: EpochMetrics) -> None:
        print(
            f"epoch {m.epoch:3d}  train loss {m.train_loss:.5f}"
            f"  train acc {100 * m.train_accuracy:6.2f}%"
            f"  valid loss {m.valid_loss:.5f}  valid acc {100 * m.valid_accuracy:6.2f}%"
            f"  ({m.seconds:.1f} s)",
            flush=True,
        )

    history = fit(model, ds, config, on_epoch=show)
    print(f"validation accuracy: {100 * history.epochs[-1].valid_accuracy:.2f}%")
    return EXIT_OK


def quiet_optuna(args: argparse.Namespace) -> None:
    """optuna logs every new study and trial at INFO; our own progress line says it better
    (with --quiet, only its errors)."""
    import optuna

    quiet = args.verbosity == "quiet"
    optuna.logging.set_verbosity(optuna.logging.ERROR if quiet else optuna.logging.WARNING)


#: Rows of the table ``sweep run`` ends with, the best first (``--all``: every trial).
TOP_TRIALS = 20


def cmd_run(args: argparse.Namespace) -> int:
    """Create or resume a study and run it to the end with parallel worker processes."""
    from sweep.api import run
    from sweep.progress import ProgressLine
    from sweep.queue.storage import mask_password, resolve_url
    from sweep.report.stored import printable
    from sweep.report.summary import shown_trials, trial_table

    quiet_optuna(args)
    spec = study_spec(args.study, args.set)
    url = resolve_url(args.storage)
    progress = ProgressLine(
        f"study {spec.name!r} ({spec.sampler}) in {mask_password(url)}, "
        + (
            f"the workers of the dask scheduler {printable(str(args.scheduler), 200)}"
            if args.backend == "dask"
            else f"{args.jobs} local worker(s)"
        )
        + f" × {spec.threads} BLAS thread(s)"
    )
    try:
        study = run(
            spec,
            storage=url,
            jobs=args.jobs,
            trials=args.trials,
            backend=args.backend,
            scheduler=args.scheduler,
            artifacts=args.artifacts,
            on_progress=None if args.verbosity == "quiet" else progress,
        )
    finally:
        progress.close()
    limit = None if args.all else TOP_TRIALS
    if args.format == "json":  # the table's trials, as `optuna trials -f json` lists them
        shown, kind, _, more = shown_trials(study, limit=limit)
        _json([records.trial(t, multi=kind.multi) for t in shown])
        if more:
            _note(args, f"… and {more} more trials (sweep report, or --all)")
        return EXIT_OK
    table, more = trial_table(study, limit=limit)
    print(table)
    if more:
        print(f"… and {more} more trials (sweep report, or --all)")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a study as one worker (other hosts, batch-scheduler arrays): the study's stored
    spec decides what runs; a study file, if given, must agree with it."""
    from sweep.api import join
    from sweep.progress import TrialLines

    quiet_optuna(args)
    if not (args.study or args.name):
        raise SpecError("worker needs a study: --study NAME, or a study file")
    given = study_spec(args.study, args.set) if args.study else None
    name = args.name or given.name
    lines = TrialLines(lambda text: _note(args, text))  # none with --quiet
    ran = join(name, storage=args.storage, spec=given, wait=args.wait, data_path=args.data,
               artifacts=args.artifacts, overrides=() if given else args.set,
               on_trial=lines)  # fmt: skip
    print(f"worker ran {ran} trial(s); study {name!r} has nothing left to claim")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Every study in the database: trials by state, best value and its parameters (a study of
    several objectives: its Pareto front's size and ends)."""
    from sweep.api import status
    from sweep.queue.storage import mask_password, resolve_url
    from sweep.report.stored import printable
    from sweep.report.summary import fmt

    studies = status(args.storage)
    if args.format == "json":
        _json([records.study(s) for s in studies])
        return EXIT_OK
    if not studies:
        print(f"no studies in {mask_password(resolve_url(args.storage))}")
    for s in studies:
        counts = ", ".join(f"{n} {state}" for state, n in s.counts.items())
        print(f"{printable(s.name, 200)}: {counts or 'no trials'}")
        if s.best is not None:
            params = ", ".join(f"{printable(k, 40)}={fmt(v)}" for k, v in s.best.params.items())
            flag = f": {s.best_outside}" if s.best_outside else ""
            print(f"  best: trial {s.best.number}, {s.best_value()} ({params}){flag}")
        if s.front:
            print(f"  {s.front_text()}")
        if s.audit is not None and (outside := s.audit.text()):
            print(f"  {outside}")
        if s.running_by_host:
            hosts = ", ".join(f"{printable(h, 60)} ({n} trial{'s' * (n != 1)})"
                              for h, n in s.running_by_host.items())  # fmt: skip
            more = s.running_elsewhere
            more = f" and {more} trial{'s' * (more != 1)} on other hosts" if more else ""
            print(f"  running on: {hosts}{more}")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard for the study database: read-only unless --allow-writes, and
    only to requests that name this machine (127.0.0.1 unless --host says otherwise). Its trial
    view lists and downloads the checkpoints and models in the study's artifact store."""
    from sweep.dashboard import serve
    from sweep.queue.bounded import BoundedStorage, bounded_text
    from sweep.queue.storage import mask_password, open_storage, resolve_url
    from sweep.text import printable
    from sweep.trial.artifacts import study_store

    storage = open_storage(args.storage, heartbeat_interval=None, grace_period=None,
                           read_only=not args.allow_writes)  # fmt: skip
    store, _, _ = study_store(args.artifacts, resolve_url(args.storage),
                              read_only=not args.allow_writes)  # fmt: skip
    if args.allow_writes:
        policy = ("writes allowed: anyone who can reach it can create, rename and delete "
                  "studies")  # fmt: skip
    else:
        policy = "read-only; --allow-writes lets it change studies"
    shown = mask_password(resolve_url(args.storage))
    # A study of 10⁵ trials took the dashboard minutes and gigabytes a listing: shown bounded,
    # read-only. With writes, whole (renaming a study copies every trial it is shown).
    bounded = BoundedStorage(storage)
    if args.allow_writes:
        large = [f"study '{printable(b.name, 200)}' has {b.n_trials:,} trials: shown whole, "
                 "slowly, as writes are allowed" for b in bounded.bounded()]  # fmt: skip
    else:
        storage, large = bounded, [bounded_text(b) for b in bounded.bounded()]

    def ready(url: str) -> None:
        _note(args, f"dashboard for {shown} at {url} ({policy}; Ctrl-C stops it)")
        for line in large:
            _note(args, line)

    serve(storage, host=args.host, port=args.port, allow_writes=args.allow_writes,
          extra_hosts=args.allow_host, artifact_store=store, on_ready=ready)  # fmt: skip
    return EXIT_OK


def study_spec(study: str, overrides: Sequence[Override] = ()) -> StudySpec:
    """A study file, or the name of a shipped one (``seed-grid`` → studies/seed-grid.toml),
    with ``--set`` overrides."""
    from pathlib import Path

    from sweep.study.spec import load_spec

    path = Path(study)
    if not path.exists() and not path.suffix and Path("studies", f"{study}.toml").exists():
        path = Path("studies", f"{study}.toml")
    return load_spec(path, overrides=overrides)  # a missing one: a guess (``missing``)


def cmd_report(args: argparse.Namespace) -> int:
    """Write tables and figures for a study (report.md, trials.csv, PNGs) from the database."""
    from pathlib import Path

    from sweep.api import report_all, report_study

    quiet_optuna(args)
    as_json = args.format == "json"
    if args.study != "all":
        out = Path(args.out) if args.out else None
        name = _study_name(args.study)
        written = report_study(name, storage=args.storage, out=out, log_loss=args.log_loss)
        if as_json:
            _json(records.reports(args.storage, [written], name=name)[0])
        else:
            _print_report(written)
        return EXIT_OK
    # every study it can is reported; the others are listed at the end
    root = Path(args.out or "runs")
    done, failed = report_all(storage=args.storage, root=root, log_loss=args.log_loss,
                              on_report=None if as_json else _print_report)  # fmt: skip
    if as_json:
        _json(records.reports(args.storage, done, root=root))
    for name, why in failed.items():
        print(f"sweep: study {name!r} not reported: {why}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def _print_report(report: Report) -> None:
    print(f"{report.out_dir / 'report.md'}" + (f"; {report.best_text}" if report.best_text
                                               else ""))  # fmt: skip


def _study_name(study: str) -> str:
    """The study name from a study file, or the argument itself when it is a name."""
    from pathlib import Path

    if study.endswith(".toml") or Path(study).exists():
        return study_spec(study).name
    return study


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Retrain the study's best configuration (same seed) and report its test accuracy, once.
    Of several objectives (a front, no one best): the front's most accurate trial, or --trial
    N."""
    from sweep.api import evaluate
    from sweep.progress import epoch_line
    from sweep.trial.kept import FRONT_PICK

    quiet_optuna(args)
    spec = study_spec(args.study)
    result = evaluate(spec, storage=args.storage, artifacts=args.artifacts, trial=args.trial,
                      on_epoch=lambda m, epochs: _note(args, epoch_line(m, epochs)))  # fmt: skip
    chosen = FRONT_PICK if spec.multi and args.trial is None else None
    if args.format == "json":
        _json(records.evaluation(result, spec.name, chosen=chosen))
        return EXIT_OK
    why = f" ({chosen})" if chosen else ""
    print(
        f"trial {result.trial}{why}: validation {result.valid_accuracy:.2f}%, "
        f"test {result.test_accuracy:.2f}% (stored on the study as test_accuracy)"
    )
    weights, sidecar = result.paths()
    print(f"retrained model uploaded: weights {weights}, sidecar {sidecar}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write the study's best model (the best trial's own final weights, kept by its workers)
    as a .npz and a JSON sidecar beside it, for mlp.MLP.load; nothing is retrained. Of several
    objectives, the weights of every trial on the front are kept: the front's most accurate by
    default, any of them with --trial N."""
    from sweep.api import export

    quiet_optuna(args)
    name = _study_name(args.study)
    done = export(name, out=args.out, storage=args.storage,
                  artifacts=args.artifacts, force=args.force, trial=args.trial)  # fmt: skip
    if args.format == "json":
        _json(records.export(done, name, args.out))
        return EXIT_OK
    which = f"trial {done.trial} ({done.chosen}): " if done.chosen else ""
    print(f"{which}{args.out} (weights) and {done.sidecar} (architecture, config, accuracy)")
    return EXIT_OK


def cmd_gradcheck(args: argparse.Namespace) -> int:
    """Finite differences against backprop in float64, on the reference network or the one the
    flags give (--depth hidden layers of --hidden-1 … --hidden-4 units)."""
    from pathlib import Path

    from mlp.config import ModelConfig
    from sweep.gradcheck import check_gradients

    shape = ModelConfig(**{f: getattr(args, f) for f in SHAPE})
    report = check_gradients(hidden=shape.hidden, examples=args.examples,
                             seed=args.seed, out_dir=Path(args.out),
                             data_path=args.data)  # fmt: skip
    print(f"gradient check of {report.network}")
    print(f"{'N':>8}  {'epsilon':>8}  max |difference|")
    for n, d in zip(report.ns, report.max_abs_diff, strict=True):
        print(f"{n:>8}  {1 / n:>8.0e}  {d:.3e}")
    print(report.reading)
    print(f"written to {report.out_dir}/gradcheck.md")
    return EXIT_OK
