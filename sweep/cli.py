"""The ``sweep`` command: its parser, built from one table of commands and flags, and ``main``,
the one place where errors become a line and an exit code. What each command does is in
``sweep.commands``.

Exit codes: 0 success, 1 other errors (data, storage), 2 bad usage or study file,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 140 terminated by SIGUSR2 (a batch
scheduler's warning that a job's time is nearly up, as submitit asks SLURM for).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from mlp.config import PARAMETERS, ModelConfig
from mlp.errors import DivergedError, InsufficientMemory
from sweep import commands as c
from sweep import slurm
from sweep.errors import (
    DataError,
    SpecError,
    SweepError,
    Terminated,
    on_stop_signals_raise_terminated,
)  # fmt: skip
from sweep.records import FORMATS
from sweep.study.overrides import FORM, parse_override
from sweep.study.rules import DATA_RULES, STUDY_RULES, TRAIN_RULES, Rule, choice, float_in, int_in
from sweep.study.settings import SetTrainSetting, add_train_arguments, checked, seed_rule
from sweep.study.settings import flag as flag_of
from sweep.submit import cmd_submit

# -- what the flags accept: the study files' rules where a flag means the same value ----------

#: Worker processes on one host; more hosts join with `sweep worker`.
MAX_JOBS = 1024
JOBS = int_in(1, MAX_JOBS)
SECONDS = float_in(0, math.inf, low_open=False, high_open=True)
PORT = int_in(1, 65535)
DATASET = DATA_RULES["path"]  # an empty one would read the current folder
#: A trial's number, as optuna's column holds it.
TRIAL = int_in(0, 2**31 - 1)


@dataclass(frozen=True)
class Flag:
    """One argument of a command: ``add_argument``'s names and keywords, and the rule its value
    obeys (checked as it is parsed, with the same message as a study file's value)."""

    names: tuple[str, ...]
    options: dict[str, Any]
    rule: Rule | None = None


def flag(*names: str, rule: Rule | None = None, **options: Any) -> Flag:
    return Flag(names, options, rule)


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler (whose docstring is the description), a line for ``sweep
    --help``, examples, and its flags after ``first`` (flags derived from elsewhere)."""

    handler: Callable[[argparse.Namespace], int]
    help: str
    example: str
    flags: tuple[Flag, ...] = ()
    first: Callable[[argparse.ArgumentParser], None] | None = None


STORAGE = flag("--storage", help="study database URL (default: $SWEEP_STORAGE, else "
               "sqlite:///runs/sweep.db)")  # fmt: skip
FORMAT = flag("--format", "-f", rule=choice(FORMATS), default="text", metavar="text|json",
              help="text for people (default), or json: stdout holds the JSON alone (fields: "
              "the README's Commands section); notes and progress stay on stderr")  # fmt: skip
OWN_DATA = flag("--data", rule=DATASET, help="your own copy of MNIST instead of the cached one")
#: ``--set KEY=VALUE``: a study file's value changed, checked by its rule (sweep.study.overrides).
SET = flag("--set", action="append", default=[], type=parse_override, metavar="KEY=VALUE",
           help=f"change the study file's value: {FORM}; repeatable")  # fmt: skip


def artifacts(purpose: str = "where trials checkpoint") -> Flag:
    where = "a folder, file:///folder or s3://bucket/prefix"
    default = "$SWEEP_ARTIFACTS, else artifacts/ beside a SQLite database, else runs/artifacts"
    return flag("--artifacts", metavar="URL", help=f"{purpose}: {where} (default: {default})")


COMMANDS: dict[str, Command] = {
    "data": Command(c.cmd_data, "fetch, verify and cache MNIST; print the cache path",
        "sweep data   |   sweep data --path ~/mnist.pkl.gz", (
        flag("--path", rule=DATASET,
             help="check a copy of your own (.pkl.gz, keras .npz, IDX folder)"),
        flag("--force", action="store_true", help="download again even if cached"),
    )),
    "train": Command(c.cmd_train, "train one network (default: the notebook's reference run)",
        "sweep train --init zeros --dtype float64 --epochs 2", (
        flag("--seed", rule=seed_rule(), default=0, metavar="INT",
             help="seeds the weights, shuffling and dropout"),
        flag("--train-size", rule=DATA_RULES["train_size"],
             help="use only the first N training examples"),
        OWN_DATA,
        FORMAT,
        flag("--set", action=SetTrainSetting, metavar="KEY=VALUE",
             help="a study file's train.KEY, data.train_size or data.path, as its flag sets "
             "it (e.g. train.epochs=5; the later of the two wins); repeatable"),
    ), first=add_train_arguments),
    "run": Command(c.cmd_run, "create or resume a study and run it with parallel workers",
        "sweep run studies/seed-grid.toml --jobs 2", (
        flag("study", help="study file (TOML)"),
        STORAGE,
        flag("--jobs", "-j", rule=JOBS, default=os.cpu_count() or 1,
             help="worker processes (default: one per core, each with one BLAS thread: the "
             "fastest split measured, see make bench)"),
        flag("--trials", rule=STUDY_RULES["trials"],
             help="trial cap for the whole study (overrides the file)"),
        flag("--backend", choices=["loky", "dask"], default="loky",
             help="loky: local processes (default); dask: the workers of a dask.distributed "
             "cluster"),
        flag("--scheduler", help="dask scheduler address, e.g. tcp://host:8786"),
        artifacts(),
        flag("--all", action="store_true",
             help=f"end with a table of every trial (default: the best {c.TOP_TRIALS})"),
        FORMAT,
        SET,
    )),
    "worker": Command(c.cmd_worker, "join a study as one worker (other hosts, batch arrays)",
        "sweep worker --study seed-grid --storage postgresql://u:p@db/sweep --wait 600", (
        flag("study", nargs="?", help="study file (TOML); optional with --study"),
        flag("--study", dest="name", help="study name: join with the stored spec"),
        STORAGE,
        flag("--wait", rule=SECONDS, default=0.0, metavar="SECONDS",
             help="wait this long for the study to be created (default: 0, fail at once)"),
        flag("--data", rule=DATASET,
             help="this host's copy of MNIST (default: the stored study's)"),
        artifacts(),
        SET,
    )),
    "submit": Command(cmd_submit, "send a study's workers to SLURM as one job array (sbatch)",
        "sweep submit studies/seed-grid.toml --workers 8 --time 2:00:00 --dry-run", (
        flag("study", nargs="?", help="study file (TOML): created first; optional with --study"),
        flag("--study", dest="name", help="study name: a stored study, joined by its spec"),
        STORAGE,
        artifacts("where the tasks checkpoint (every node must reach it)"),
        flag("--workers", required=True, rule=slurm.WORKERS, metavar="N",
             help="array tasks, each one sweep worker"),
        flag("--wait", rule=SECONDS, default=600.0, metavar="SECONDS",
             help="how long a task waits for the study to exist (default: 600)"),
        flag("--time", rule=slurm.TIME, help="each task's time limit (e.g. 2:00:00)"),
        flag("--partition", rule=slurm.PARTITION),
        flag("--cpus-per-task", rule=slurm.CPUS, metavar="N",
             help="CPUs of each task (give the study's threads)"),
        flag("--mem", rule=slurm.MEM, help="memory of each task's node share (e.g. 4G)"),
        flag("--account", rule=slurm.ACCOUNT),
        flag("--requeue", action="store_true",
             help="let SLURM requeue a preempted task (its trial resumes from its checkpoint)"),
        flag("--sbatch", action="append", default=[], rule=slurm.SBATCH_LINE, metavar="OPTION",
             help="one more #SBATCH option, e.g. --sbatch=--qos=long; repeatable"),
        SET,
        flag("--script", metavar="FILE",
             help="where the script goes (default: runs/slurm/STUDY.sbatch)"),
        flag("--dry-run", action="store_true", help="print the script; submit nothing"),
        FORMAT,
    )),
    "report": Command(c.cmd_report, "tables and figures for a study, from the database",
        "sweep report studies/seed-grid.toml   |   sweep report all", (
        flag("study", help="study file, study name, or 'all'"),
        STORAGE,
        flag("--out", help="output folder (default runs/SLUG, SLUG made safe from the study "
             "name; with 'all', the folder that holds them)"),
        flag("--log-loss", action="store_true", help="log-scale loss axis in init figures"),
        FORMAT,
    )),
    "evaluate": Command(c.cmd_evaluate,
        "retrain the best configuration and measure test accuracy once",
        "sweep evaluate studies/seed-grid.toml   |   sweep evaluate pareto --trial 12", (
        flag("study", help="study file (TOML) or a shipped study's name"),
        STORAGE,
        artifacts("where the retrained model goes"),
        flag("--trial", rule=TRIAL, metavar="N",
             help="retrain this COMPLETE trial (default: the best trial; of several "
             "objectives, the front's most accurate)"),
        FORMAT,
    )),
    "export": Command(c.cmd_export,
        "write a trial's kept weights and a JSON sidecar (for mlp.MLP.load)",
        "sweep export seed-grid --out best.npz   |   sweep export pareto --trial 12 --out t12.npz",
        (
        flag("study", help="study name or study file"),
        flag("--out", required=True, metavar="FILE.npz",
             help="the weights' file; the sidecar goes beside it as FILE.json"),
        flag("--trial", rule=TRIAL, metavar="N",
             help="this trial's weights, if they were kept: the best trial's, or of several "
             "objectives every trial's on the front (default: the best trial; of several "
             "objectives, the front's most accurate)"),
        STORAGE,
        artifacts("where the study's trials checkpointed"),
        flag("--force", action="store_true",
             help="replace FILE.npz and FILE.json if they exist"),
        FORMAT,
    )),
    "gradcheck": Command(c.cmd_gradcheck,
        "finite-difference check of backprop, table and log-log plot",
        "sweep gradcheck --out runs/gradcheck", (
        flag("--out", default="runs/gradcheck", help="output folder"),
        *(flag(flag_of(f), rule=TRAIN_RULES[f], default=getattr(ModelConfig, f),
               help=f"{PARAMETERS[f].help} (default: {getattr(ModelConfig, f)})")
          for f in c.SHAPE),
        flag("--examples", rule=DATA_RULES["train_size"], default=10,
             help="training examples in the loss"),
        flag("--seed", rule=seed_rule(), default=0),
        OWN_DATA,
    )),
    "status": Command(c.cmd_status, "every study: trials by state, best value",
        "sweep status   |   sweep status --format json", (STORAGE, FORMAT)),
    "dashboard": Command(c.cmd_dashboard, "serve optuna-dashboard, read-only, on 127.0.0.1",
        "sweep dashboard --port 8080", (
        STORAGE,
        flag("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"),
        flag("--port", rule=PORT, default=8080),
        flag("--allow-writes", action="store_true",
             help="let the dashboard create, rename and delete studies and write notes (its "
             "API has no authentication: anyone who can reach it can)"),
        flag("--allow-host", action="append", default=[], metavar="NAME",
             help="another name the dashboard answers to (a DNS alias, a reverse proxy); "
             "repeatable"),
        artifacts("the study's artifact store, whose files it shows"),
    )),
}  # fmt: skip


def _typed(name: str, rule: Rule) -> Callable[[str], Any]:
    """The ``type`` of a flag with a rule: its text as the rule's kind, checked by the rule.

    A value that breaks it is a SpecError naming the flag, the one-line message of a study
    file's value (``--jobs must be an integer in [1, 1024]; got 0``); argparse lets it through
    to ``main`` ("Other exception types are not handled", its documentation of ``type``)."""

    def convert(text: str) -> Any:
        try:
            value = rule.kind(text)
        except ValueError:
            value = text  # not even of the kind: the rule refuses it, quoting the text
        return checked(name, rule, value)

    convert.__name__ = rule.kind.__name__
    return convert


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
        self.exit(c.EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _verbosity(parser: argparse.ArgumentParser, default: str) -> None:
    """``-v`` and ``-q``, before the command or after it (``sweep status -v``): one value,
    ``verbosity``, that the last of them given sets. After the command they default to
    SUPPRESS, so that a subcommand's parser does not put back what was given before it
    (argparse copies every value of the subcommand's namespace over its parent's)."""
    parser.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const="verbose",
        default=default,
        help="log debug messages",
    )
    parser.add_argument("-q", "--quiet", dest="verbosity", action="store_const",
                        const="quiet", default=default,
                        help="errors only on stderr: no progress, notes or warnings")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, from COMMANDS."""
    parser = _Parser(
        prog="sweep",
        description="Hyperparameter sweeps of a from-scratch numpy MLP on MNIST.",
        epilog="example: sweep train --epochs 10   |   sweep data",
    )
    _verbosity(parser, "normal")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)  # fmt: skip
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.handler.__doc__,
                           epilog=f"example: {command.example}")  # fmt: skip
        _verbosity(p, argparse.SUPPRESS)
        if command.first:
            command.first(p)
        for f in command.flags:
            typed = {"type": _typed(f.names[0].lstrip("-"), f.rule)} if f.rule else {}
            p.add_argument(*f.names, **f.options, **typed)
        p.set_defaults(func=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one place where errors become a one-line message and an exit code."""
    try:
        args = build_parser().parse_args(argv)  # a flag's value that breaks its rule: SpecError
        levels = {"verbose": logging.DEBUG, "normal": logging.WARNING, "quiet": logging.ERROR}
        logging.basicConfig(level=levels[args.verbosity],
                            format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
        if args.verbosity == "quiet":
            warnings.simplefilter("ignore")  # Python's warnings, optuna's among them
        on_stop_signals_raise_terminated()
        return args.func(args)
    except Terminated as e:
        by = "" if e.signum == signal.SIGTERM else f" by {signal.Signals(e.signum).name}"
        print(f"sweep: terminated{by}; rerun to resume", file=sys.stderr)
        return c.EXIT_TERMINATED - signal.SIGTERM + e.signum  # 128 + the signal's number
    except KeyboardInterrupt:
        print("sweep: interrupted; rerun to resume", file=sys.stderr)
        return c.EXIT_INTERRUPTED
    except SpecError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return c.EXIT_USAGE
    except (SweepError, DataError, DivergedError, InsufficientMemory) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return c.EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
