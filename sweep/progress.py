"""Progress as a command runs, always on stderr (stdout is the command's result, JSON alone with
``--format json``), and none with ``--quiet``.

- ``sweep run``: ``ProgressLine``. On a terminal, one line of the study's progress and under it
  one line per running trial (its epoch and accuracy), redrawn in place; elsewhere (a log, a
  pipe), a plain line per event: a trial's new epoch, a trial finished, what the run waits for.
  The running trials' epochs are read from the study database by the launcher
  (``sweep.queue.progress.latest_epochs``): its trials run in other processes and on other hosts.
- ``sweep.run`` in a notebook or at a terminal: ``ProgressBar``, a ``tqdm.auto`` bar (a widget
  where ipywidgets is installed).
- ``sweep worker``: ``TrialLines``, a line for each trial it claims, each epoch and how each ends.
- ``sweep evaluate``: ``epoch_line``, a line per epoch of the retraining.

Light on purpose: the CLI imports it before optuna.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from sweep.text import printable

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from mlp.state import EpochMetrics
    from sweep.queue.progress import Epoch
    from sweep.study.spec import StudySpec

#: The running trials a launcher reads and shows epochs of (the oldest first): a dask cluster
#: of hundreds of workers would otherwise be hundreds of lines a second.
SHOWN = 8


@dataclasses.dataclass(frozen=True)
class Progress:
    """A snapshot of a run for its display (``sweep.runner`` reads it every second or so)."""

    done: int  # trials finished (complete, pruned or failed for a reason)
    total: int
    running: int  # trials sweep workers are running, on every host (heartbeat fresh)
    workers: int  # distinct workers running them
    here: int  # of those trials, the ones this run's workers hold
    best: float | None  # the best value; None for several objectives (``front`` instead)
    elapsed: float  # seconds since the run started
    waiting_for: str | None = None  # what the run waits for when nothing is left to claim
    front: int | None = None  # of several objectives: the trials on the front, else None
    epochs: tuple[Epoch, ...] = ()  # the running trials' last epochs, the oldest SHOWN trials'
    epochs_per_trial: int | None = None  # what each trial trains, when the study fixes it


def interactive() -> bool:
    """Whether someone watches as it runs: stderr is a terminal, or this is a Jupyter kernel
    (whose stderr is no terminal, but shows a bar)."""
    stderr = sys.stderr  # None under pythonw
    return "ipykernel" in sys.modules or (stderr is not None and stderr.isatty())


def quiet_tqdm() -> None:
    """Import ``tqdm.auto`` without its warning in a Jupyter kernel without ipywidgets ("IProgress
    not found", a ``TqdmWarning`` on ``import optuna``, which imports it): the text bar it falls
    back to works there, and a module is imported, and warns, once."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401


def fixed_epochs(spec: StudySpec) -> int | None:
    """The epochs every trial of the study trains; None when it searches them."""
    return None if spec.dimension("epochs") else spec.train.epochs


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def _epoch(e: Epoch, of: int | None) -> str:
    """``trial 12 epoch 3/20 96.20%``: a running trial and its last reported epoch (``of`` the
    epochs each trial trains, when the study fixes them)."""
    if e.epoch is None:
        return f"trial {e.number} starting"
    total = f"/{of}" if of else ""
    return f"trial {e.number} epoch {e.epoch}{total} {percent(e.accuracy)}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def summary(p: Progress) -> str:
    """The study's progress in one line: trials done, running, best, time and ETA."""
    if p.front is not None:  # several objectives: no one best
        best = f"front {p.front}"
    else:
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
    return line


class ProgressLine:
    """``sweep run``'s progress on ``stream`` (stderr): on a terminal the progress line and a
    line per running trial, redrawn in place; elsewhere a line per event. The header waits for
    the first report, so that a run that fails to start prints only its error."""

    def __init__(self, header: str, *, stream: TextIO | None = None, tty: bool | None = None):
        self.header: str | None = header
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.last: tuple[int, str | None] = (-1, None)
        self.seen: dict[int, int | None] = {}  # the epoch last printed of each running trial
        self.drawn = 0  # lines of the block on screen, below its first

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.stream, flush=True)

    def __call__(self, p: Progress) -> None:
        if self.header:
            self._print(self.header)
            self.header = None
        if self.tty:
            self._draw(p)
            return
        # A line per event: each epoch seen (a poll may see a trial a few epochs on), then the
        # line of the study once a trial finished or what the run waits for changed.
        for e in p.epochs:
            if e.epoch is not None and self.seen.get(e.number) != e.epoch:
                self._print(_epoch(e, p.epochs_per_trial))
            self.seen[e.number] = e.epoch
        self.seen = {n: v for n, v in self.seen.items() if n in {e.number for e in p.epochs}}
        if (p.done, p.waiting_for) != self.last:
            self._print(summary(p))
        self.last = (p.done, p.waiting_for)

    def _draw(self, p: Progress) -> None:
        """The block redrawn over the last one: up to its first line, cleared to the end of the
        screen. Each line is cut to the terminal's width: a wrapped one would move the block."""
        width = shutil.get_terminal_size().columns - 1
        lines = [summary(p)] + [f"  {_epoch(e, p.epochs_per_trial)}" for e in p.epochs]
        if p.running > len(p.epochs):
            lines.append(f"  … and {p.running - len(p.epochs)} more running")
        up = f"\x1b[{self.drawn}A" if self.drawn else ""
        text = "\n".join(line[:width] for line in lines)
        self._print(f"\r{up}\x1b[J{text}", end="")
        self.drawn = len(lines) - 1

    def close(self) -> None:
        if self.tty and self.header is None:
            self._print("")


class ProgressBar:
    """``sweep.run``'s progress in a notebook or at a terminal: a ``tqdm.auto`` bar of the trials
    done, the best value and the running trials' epochs after it."""

    def __init__(self) -> None:
        self.bar: Any = None  # made at the first report, which knows the total

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            quiet_tqdm()
            from tqdm.auto import tqdm

            self.bar = tqdm(total=p.total, unit="trial", dynamic_ncols=True)
        best = f"front {p.front}" if p.front is not None else f"best {percent(p.best)}"
        shown = [_epoch(e, p.epochs_per_trial) for e in p.epochs[:3]]
        self.bar.total, self.bar.n = p.total, p.done
        self.bar.set_postfix_str(", ".join([best, *shown]), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclasses.dataclass(frozen=True)
class TrialLines:
    """``sweep worker``'s lines: each trial it claims, each epoch it reports and how it ended
    (``sweep.worker.serve`` calls them)."""

    write: Callable[[str], None]  # prints one line
    epochs: int | None = None  # the epochs each trial trains, when the study fixes them

    def claimed(self, number: int) -> None:
        self.write(f"trial {number} claimed")

    def epoch(self, number: int, epoch: int, accuracy: float) -> None:
        from sweep.queue.progress import Epoch

        self.write(_epoch(Epoch(number, epoch, accuracy), self.epochs))

    def ended(self, trial: FrozenTrial) -> None:
        from sweep.queue.attrs import FAIL_REASON

        state = trial.state.name.lower()
        if trial.values:  # the first value is the validation accuracy (sweep.study.objectives)
            how = percent(trial.values[0])
        elif "pruned_at" in trial.user_attrs:
            how = f"at epoch {printable(trial.user_attrs['pruned_at'], 20)}"
        else:
            how = printable(trial.user_attrs.get(FAIL_REASON, ""), 200)
        self.write(f"trial {trial.number} {state}" + (f": {how}" if how else ""))


def epoch_line(m: EpochMetrics, epochs: int) -> str:
    """``sweep evaluate``'s line for an epoch of the retraining."""
    return (f"epoch {m.epoch}/{epochs}  train loss {m.train_loss:.5f}  valid acc "
            f"{100 * m.valid_accuracy:6.2f}%  ({m.seconds:.1f} s)")  # fmt: skip
