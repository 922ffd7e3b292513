"""The ``sweep`` command: a thin adapter from arguments to the framework's typed functions.

Exit codes: 0 success, 1 other errors (data, storage), 2 bad usage or study file,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

Longer than our usual 400 lines: a handler and a parser for each of the ten commands, each a
few lines of formatting and flags; together they are the command's whole surface, read in one
place.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from mlp.memory import InsufficientMemory
from mlp.train import DivergedError
from sweep.errors import (
    DataError,
    SpecError,
    SweepError,
    Terminated,
    on_sigterm_raise_terminated,
)  # fmt: skip

if TYPE_CHECKING:  # optuna takes a second to import; `sweep --help` should not wait for it
    from sweep.report.writer import Report
    from sweep.runner import Progress
    from sweep.study.spec import StudySpec

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _cmd_data(args: argparse.Namespace) -> int:
    """Fetch, verify and cache MNIST, and print where the cache is."""
    from mlp import data

    if args.path is not None:  # an empty one is an error, not the cache
        ds = data.load_mnist(_data_path(args.path, "path"))
        print(f"{args.path}: read {len(ds.train.y)}/{len(ds.valid.y)}/{len(ds.test.y)} examples")
        return EXIT_OK
    path = data.fetch(force=args.force)
    print(path)
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    """Train one network and print a line per epoch and the final validation accuracy."""
    from mlp import MLP, EpochMetrics, fit, load_mnist, parameter_count
    from mlp.memory import require_training
    from sweep.study.settings import configs_from_args

    # Checked before any data is read: a bad value is one line and exit 2 (a SpecError).
    m, config = configs_from_args(args, seed=args.seed, train_size=args.train_size)
    ds = load_mnist(_data_path(args.data))
    if args.train_size:
        ds = ds.head(args.train_size)
    # before anything of the model is allocated (InsufficientMemory: one line, exit 1)
    require_training(m, config, train_examples=len(ds.train.y), valid_examples=len(ds.valid.y))
    try:
        model = MLP.from_config(m, seed=config.seed)
    except ValueError as e:  # initial weights past the dtype's range (--init-std 1e308)
        raise SpecError(str(e)) from e
    print(
        f"784-{m.hidden_1}-{m.hidden_2}-10 ({parameter_count(m.hidden_1, m.hidden_2):,}"
        f" parameters), {m.init} init, {m.activation}, {m.dtype}, lr {config.learning_rate},"
        f" batch {config.batch_size}, {len(ds.train.y):,} training examples"
    )

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


class _ProgressLine:
    """Draws the run's progress on stderr: one updating line on a terminal, else a line per
    finished trial. The header waits for the first report, so that a run that fails to start
    prints only its error."""

    def __init__(self, header: str) -> None:
        self.header: str | None = header
        self.last: tuple[int, str | None] = (-1, None)
        self.tty = sys.stderr.isatty()

    def __call__(self, p: Progress) -> None:
        if self.header:
            print(self.header, file=sys.stderr)
            self.header = None
        best = f"best {p.best:.2f}%" if p.best is not None else "best —"
        eta = ""
        if 0 < p.done < p.total:
            eta = f"  ETA {_duration(p.elapsed / p.done * (p.total - p.done))}"
        running = f"{p.running} running"
        if p.running != p.here:
            running += f" on {p.workers} worker(s), {p.here} here"
        line = f"{p.done}/{p.total} trials  {running}  {best}  {_duration(p.elapsed)}{eta}"
        if p.waiting_for:
            line += f"  ({p.waiting_for})"
        if self.tty:
            print(f"\r{line:<78}", end="", file=sys.stderr, flush=True)
        elif (p.done, p.waiting_for) != self.last:
            print(line, file=sys.stderr, flush=True)
        self.last = (p.done, p.waiting_for)

    def close(self) -> None:
        if self.tty and self.header is None:
            print(file=sys.stderr)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _quiet_optuna() -> None:
    """optuna logs every new study and trial at INFO; our own progress line says it better."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


#: Rows of the table ``sweep run`` ends with, the best first (``--all``: every trial).
TOP_TRIALS = 20


def _cmd_run(args: argparse.Namespace) -> int:
    """Create or resume a study and run it to the end with parallel worker processes."""
    from sweep.api import run
    from sweep.queue.storage import mask_password, resolve_url
    from sweep.report.summary import trial_table

    _quiet_optuna()
    spec = _study_spec(args.study)
    url = resolve_url(args.storage)
    progress = _ProgressLine(
        f"study {spec.name!r} ({spec.sampler}) in {mask_password(url)}, "
        f"{args.jobs} local worker(s) × {spec.threads} BLAS thread(s)"
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
            on_progress=progress,
        )
    finally:
        progress.close()
    table, more = trial_table(study, limit=None if args.all else TOP_TRIALS)
    print(table)
    if more:
        print(f"… and {more} more trials (sweep report, or --all)")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    """Join a study as one worker (other hosts, batch-scheduler arrays): the study's stored
    spec decides what runs; a study file, if given, must agree with it."""
    from sweep.api import join

    _quiet_optuna()
    if not (args.study or args.name):
        raise SpecError("worker needs a study: --study NAME, or a study file")
    given = _study_spec(args.study) if args.study else None
    name = args.name or given.name
    ran = join(name, storage=args.storage, spec=given, wait=args.wait,
               data_path=_data_path(args.data), artifacts=args.artifacts)  # fmt: skip
    print(f"worker ran {ran} trial(s); study {name!r} has nothing left to claim")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    """Every study in the database: trials by state, best value and its parameters."""
    from sweep.api import status
    from sweep.queue.storage import mask_password, resolve_url
    from sweep.report.stored import printable
    from sweep.report.summary import fmt

    studies = status(args.storage)
    if not studies:
        print(f"no studies in {mask_password(resolve_url(args.storage))}")
    for s in studies:
        counts = ", ".join(f"{n} {state}" for state, n in s.counts.items())
        print(f"{printable(s.name, 200)}: {counts or 'no trials'}")
        if s.best is not None:
            params = ", ".join(f"{printable(k, 40)}={fmt(v)}" for k, v in s.best.params.items())
            print(f"  best: trial {s.best.number}, {s.best_value()} ({params})")
    return EXIT_OK


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard for the study database: read-only unless --allow-writes, and
    only to requests that name this machine (127.0.0.1 unless --host says otherwise). Its trial
    view lists and downloads the checkpoints and models in the study's artifact store."""
    from sweep.dashboard import serve
    from sweep.queue.storage import mask_password, open_storage, resolve_url
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

    def ready(url: str) -> None:
        print(f"dashboard for {shown} at {url} ({policy}; Ctrl-C stops it)", file=sys.stderr)

    serve(storage, host=args.host, port=args.port, allow_writes=args.allow_writes,
          extra_hosts=args.allow_host, artifact_store=store, on_ready=ready)  # fmt: skip
    return EXIT_OK


def _study_spec(study: str) -> StudySpec:
    """A study file, or the name of a shipped one (``seed-grid`` → studies/seed-grid.toml)."""
    from pathlib import Path

    from sweep.study.spec import load_spec

    path = Path(study)
    if not path.exists() and not path.suffix and Path("studies", f"{study}.toml").exists():
        path = Path("studies", f"{study}.toml")
    if not path.exists() and not path.is_symlink():
        import difflib

        shipped = {p.stem: p for p in sorted(Path("studies").glob("*.toml"))}
        close = difflib.get_close_matches(path.stem, shipped, n=1, cutoff=0.6)
        hint = f"; did you mean {shipped[close[0]]}?" if close else ""
        raise SpecError(f"{study}: no such study file{hint}")
    return load_spec(path)


def _cmd_report(args: argparse.Namespace) -> int:
    """Write tables and figures for a study (report.md, trials.csv, PNGs) from the database."""
    from pathlib import Path

    from sweep.api import report_all, report_study

    _quiet_optuna()
    if args.study != "all":
        out = Path(args.out) if args.out else None
        _print_report(report_study(_study_name(args.study), storage=args.storage, out=out,
                             log_loss=args.log_loss))  # fmt: skip
        return EXIT_OK
    # every study it can is reported; the others are listed at the end
    _, failed = report_all(storage=args.storage, root=Path(args.out or "runs"),
                           log_loss=args.log_loss, on_report=_print_report)  # fmt: skip
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
        return _study_spec(study).name
    return study


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Retrain the study's best configuration (same seed) and report its test accuracy, once."""
    from sweep.api import evaluate

    _quiet_optuna()
    result = evaluate(_study_spec(args.study), storage=args.storage, artifacts=args.artifacts)
    print(
        f"trial {result.trial}: validation {result.valid_accuracy:.2f}%, "
        f"test {result.test_accuracy:.2f}% (stored on the study as test_accuracy)"
    )
    weights, sidecar = result.artifacts
    print(f"retrained model uploaded to {result.store}: weights {weights}, sidecar {sidecar}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the study's best model (the best trial's own final weights, kept by its workers)
    as a .npz and a JSON sidecar beside it, for mlp.MLP.load; nothing is retrained."""
    from sweep.api import export

    _quiet_optuna()
    sidecar = export(_study_name(args.study), out=args.out, storage=args.storage,
                     artifacts=args.artifacts, force=args.force)  # fmt: skip
    print(f"{args.out} (weights) and {sidecar} (architecture, config, accuracy)")
    return EXIT_OK


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    """Finite differences against backprop on the reference network, in float64."""
    from pathlib import Path

    from sweep.gradcheck import check_gradients
    from sweep.study.rules import DATA_RULES
    from sweep.study.settings import checked, seed_rule

    seed = checked("seed", seed_rule(), args.seed)
    examples = checked("examples", DATA_RULES["train_size"], args.examples)
    report = check_gradients(hidden_1=args.hidden_1, hidden_2=args.hidden_2,
                             examples=examples, seed=seed, out_dir=Path(args.out),
                             data_path=_data_path(args.data))  # fmt: skip
    print(f"{'N':>8}  {'epsilon':>8}  max |difference|")
    for n, d in zip(report.ns, report.max_abs_diff, strict=True):
        print(f"{n:>8}  {1 / n:>8.0e}  {d:.3e}")
    print(report.reading)
    print(f"written to {report.out_dir}/gradcheck.md")
    return EXIT_OK


def _data_path(text: str | None, flag: str = "data") -> str | None:
    """A ``--data`` (or ``--path``) flag checked as a study file's ``[data] path`` is: an empty
    one would read the current folder (or, to a worker, mean the stored study's copy)."""
    from sweep.study.rules import DATA_RULES
    from sweep.study.settings import checked

    return None if text is None else checked(flag, DATA_RULES["path"], text)


def _int(text: str, allowed: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0; got {text}")
    return value


def _trial_cap(text: str) -> int:
    from sweep.study.rules import MAX_TRIALS

    value = _int(text, f"an integer in [1, {MAX_TRIALS}]")
    if not 1 <= value <= MAX_TRIALS:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_TRIALS}]; got {text}")
    return value


MAX_JOBS = 1024  # worker processes on one host; more hosts join with `sweep worker`


def _jobs(text: str) -> int:
    value = _int(text, f"an integer in [1, {MAX_JOBS}]")
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be an integer in [1, {MAX_JOBS}]; got {text}")
    return value


def _port(text: str) -> int:
    value = _int(text, "a port in [1, 65535]")
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [1, 65535]; got {text}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlp-sweep")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked (the lookup reads the
    installed packages' metadata: 10-20 ms that every other command would pay)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show the version and exit",
                 ) -> None:  # fmt: skip
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> NoReturn:  # fmt: skip
        print(f"{parser.prog} {_version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line, like every other error (argparse prints the whole
    usage first): ``sweep run: error: argument --jobs: must be ...; see sweep run --help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sweep",
        description="Hyperparameter sweeps of a from-scratch numpy MLP on MNIST.",
        epilog="example: sweep train --epochs 10   |   sweep data",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)  # fmt: skip

    p = sub.add_parser(
        "data",
        help="fetch, verify and cache MNIST; print the cache path",
        description=_cmd_data.__doc__,
        epilog="example: sweep data   |   sweep data --path ~/mnist.pkl.gz",
    )
    p.add_argument("--path", help="check a copy of your own (.pkl.gz, keras .npz, IDX folder)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_cmd_data)

    from sweep.study.settings import add_train_arguments

    p = sub.add_parser(
        "train",
        help="train one network (default: the notebook's reference run)",
        description=_cmd_train.__doc__,
        epilog="example: sweep train --init zeros --dtype float64 --epochs 2",
    )
    add_train_arguments(p)
    p.add_argument(
        "--seed", default=0, metavar="INT", help="seeds the weights, shuffling and dropout"
    )
    p.add_argument(
        "--train-size", type=_positive_int, help="use only the first N training examples"
    )
    p.add_argument("--data", help="your own copy of MNIST instead of the cached one")
    p.set_defaults(func=_cmd_train)

    storage_help = "study database URL (default: $SWEEP_STORAGE, else sqlite:///runs/sweep.db)"
    artifacts_help = (
        "where trials checkpoint: a folder, file:///folder or s3://bucket/prefix (default: "
        "$SWEEP_ARTIFACTS, else artifacts/ beside a SQLite database, else runs/artifacts)"
    )
    p = sub.add_parser(
        "run",
        help="create or resume a study and run it with parallel workers",
        description=_cmd_run.__doc__,
        epilog="example: sweep run studies/seed-grid.toml --jobs 2",
    )
    p.add_argument("study", help="study file (TOML)")
    p.add_argument("--storage", help=storage_help)
    p.add_argument(
        "--jobs", "-j", type=_jobs, default=os.cpu_count() or 1,
        help="worker processes (default: one per core, each with one BLAS thread: the "
        "fastest split measured, see make bench)",
    )  # fmt: skip
    p.add_argument(
        "--trials", type=_trial_cap, help="trial cap for the whole study (overrides the file)"
    )
    p.add_argument(
        "--backend", choices=["loky", "dask"], default="loky",
        help="loky: local processes (default); dask: the workers of a dask.distributed cluster",
    )  # fmt: skip
    p.add_argument("--scheduler", help="dask scheduler address, e.g. tcp://host:8786")
    p.add_argument("--artifacts", metavar="URL", help=artifacts_help)
    p.add_argument(
        "--all", action="store_true",
        help=f"end with a table of every trial (default: the best {TOP_TRIALS})",
    )  # fmt: skip
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "worker",
        help="join a study as one worker (other hosts, batch arrays)",
        description=_cmd_worker.__doc__,
        epilog="example: sweep worker --study seed-grid --storage postgresql://u:p@db/sweep "
        "--wait 600",
    )
    p.add_argument("study", nargs="?", help="study file (TOML); optional with --study")
    p.add_argument("--study", dest="name", help="study name: join with the stored spec")
    p.add_argument("--storage", help=storage_help)
    p.add_argument(
        "--wait", type=_seconds, default=0.0, metavar="SECONDS",
        help="wait this long for the study to be created (default: 0, fail at once)",
    )  # fmt: skip
    p.add_argument("--data", help="this host's copy of MNIST (default: the stored study's)")
    p.add_argument("--artifacts", metavar="URL", help=artifacts_help)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "report",
        help="tables and figures for a study, from the database",
        description=_cmd_report.__doc__,
        epilog="example: sweep report studies/seed-grid.toml   |   sweep report all",
    )
    p.add_argument("study", help="study file, study name, or 'all'")
    p.add_argument("--storage", help=storage_help)
    p.add_argument(
        "--out", help="output folder (default runs/SLUG, SLUG made safe from the study name; "
        "with 'all', the folder that holds them)",
    )  # fmt: skip
    p.add_argument("--log-loss", action="store_true", help="log-scale loss axis in init figures")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "evaluate",
        help="retrain the best configuration and measure test accuracy once",
        description=_cmd_evaluate.__doc__,
        epilog="example: sweep evaluate studies/seed-grid.toml",
    )
    p.add_argument("study", help="study file (TOML) or a shipped study's name")
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--artifacts", metavar="URL", help=artifacts_help.replace(
        "where trials checkpoint", "where the retrained model goes"))  # fmt: skip
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="write the best trial's weights and a JSON sidecar (for mlp.MLP.load)",
        description=_cmd_export.__doc__,
        epilog="example: sweep export seed-grid --out best.npz",
    )
    p.add_argument("study", help="study name or study file")
    p.add_argument("--out", required=True, metavar="FILE.npz",
                   help="the weights' file; the sidecar goes beside it as FILE.json")  # fmt: skip
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--artifacts", metavar="URL", help=artifacts_help.replace(
        "where trials checkpoint", "where the study's trials checkpointed"))  # fmt: skip
    p.add_argument(
        "--force", action="store_true", help="replace FILE.npz and FILE.json if they exist"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "gradcheck",
        help="finite-difference check of backprop, table and log-log plot",
        description=_cmd_gradcheck.__doc__,
        epilog="example: sweep gradcheck --out runs/gradcheck",
    )
    p.add_argument("--out", default="runs/gradcheck", help="output folder")
    p.add_argument("--hidden-1", type=_positive_int, default=512)
    p.add_argument("--hidden-2", type=_positive_int, default=768)
    p.add_argument(
        "--examples", type=_positive_int, default=10, help="training examples in the loss"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="your own copy of MNIST instead of the cached one")
    p.set_defaults(func=_cmd_gradcheck)

    p = sub.add_parser(
        "status",
        help="every study: trials by state, best value",
        description=_cmd_status.__doc__,
        epilog="example: sweep status",
    )
    p.add_argument("--storage", help=storage_help)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "dashboard",
        help="serve optuna-dashboard, read-only, on 127.0.0.1",
        description=_cmd_dashboard.__doc__,
        epilog="example: sweep dashboard --port 8080",
    )
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080)
    p.add_argument(
        "--allow-writes", action="store_true",
        help="let the dashboard create, rename and delete studies and write notes (its API has "
        "no authentication: anyone who can reach it can)",
    )  # fmt: skip
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="another name the dashboard answers to (a DNS alias, a reverse proxy); repeatable",
    )  # fmt: skip
    p.add_argument("--artifacts", metavar="URL", help=artifacts_help.replace(
        "where trials checkpoint", "the study's artifact store, whose files it shows"))  # fmt: skip
    p.set_defaults(func=_cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one place where errors become a one-line message and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    on_sigterm_raise_terminated()
    try:
        return args.func(args)
    except Terminated:
        print("sweep: terminated; rerun to resume", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("sweep: interrupted; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SpecError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SweepError, DataError, DivergedError, InsufficientMemory) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
