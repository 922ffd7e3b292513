"""What a study's distortions of the training digits look like: a few training digits beside
fresh draws of the distortions its best trials trained with.

A strength in a study file (``rotation = 10``) says little until it is seen. The figure takes
the first ``DIGITS`` training digits of the study's dataset and distorts them ``DRAWS`` times
with ``mlp.distort.distort``, from a generator seeded with ``SEED`` so that the report shows
the same draws each time it is written. It is the one part of a report that reads more than
the database: the dataset, from the study's ``[data] path`` (or the one given) or else this
host's cache, which a report never fills (it downloads nothing; ``sweep data`` does).

The settings drawn are the first ``SETTINGS`` distinct ones among the best trials that distort.
They are read from each trial's stored configuration, anyone's JSON: a strength no study file
could hold is one line in the report, and that trial's setting is not drawn.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlp.config import TrainConfig
from sweep.errors import SpecError
from sweep.report import figures
from sweep.report.shown import Trial, checked
from sweep.report.stored import printable

logger = logging.getLogger(__name__)

DIGITS = 8  # training digits, one per row
DRAWS = 6  # fresh draws of each, one per column
SETTINGS = 3  # distinct distortion settings drawn, one figure each
SEED = 0  # the generator of every figure's draws
#: The fields of a distortion setting, as ``mlp.distort`` reads them from a TrainConfig.
STRENGTHS = ("shift", "rotation", "zoom", "shear", "elastic_alpha", "elastic_sigma")
#: How a figure's title names each strength that is not 0 (σ only where α is).
_SHOWN = {"shift": "shift ±{:g} px", "rotation": "rotation ±{:.3g}°", "zoom": "zoom ±{:.3g}",
          "shear": "shear ±{:.3g}", "elastic_alpha": "elastic α {:.3g}"}  # fmt: skip


def strengths(t: Trial) -> TrainConfig:
    """The trial's distortions, as the fields of a TrainConfig (its others at their defaults):
    each read from its stored configuration and checked by its study-file rule
    (``sweep.report.shown.checked``, SpecError); one it does not hold, as in every trial before
    #25, at its default, which distorts nothing."""
    return TrainConfig(**checked(t, STRENGTHS))


def chosen(best_first: Sequence[Trial]) -> tuple[list[tuple[Trial, TrainConfig]], str | None]:
    """The first ``SETTINGS`` distinct distortion settings of ``best_first`` (trials, the best
    first) that distort, each with the first trial that used it; and a line naming the first
    trial passed over because its distortions cannot be read (None if none was)."""
    from mlp.distort import distorts

    picked: dict[TrainConfig, Trial] = {}
    unreadable: list[str] = []
    for t in best_first:
        try:
            setting = strengths(t)
        except SpecError as e:
            unreadable.append(str(e))
            continue
        if distorts(setting) and setting not in picked:
            picked[setting] = t
            if len(picked) == SETTINGS:
                break
    note = None
    if unreadable:
        more = len(unreadable) - 1
        note = (f"Distortions not drawn: {unreadable[0]}"
                + (f" (and {more} more trial{'s' * (more > 1)})." if more else "."))  # fmt: skip
    return [(t, setting) for setting, t in picked.items()], note


def section(best_first: Sequence[Trial], out: Path, files: list[str], *,
            data_path: str | None, train_size: int | None) -> str | None:  # fmt: skip
    """The report's section on distortions, its figures written into ``out`` (their names
    appended to ``files``); None if no trial of ``best_first`` distorts, nor has distortions
    that cannot be read. ``data_path``: the dataset (None: this host's cache); ``train_size``:
    the study's training examples, of which the first ``DIGITS`` at most are shown."""
    picked, note = chosen(best_first)
    if not picked and note is None:
        return None
    lines = ["## Distortions of the training digits", ""]
    digits = _digits(data_path, min(DIGITS, train_size or DIGITS)) if picked else None
    if isinstance(digits, str):
        note = f"No figure of the distortions: {digits}" + (f" {note}" if note else "")
    elif digits is not None:
        from mlp.distort import distort

        lines.append(
            f"The first {len(digits)} training digits as they are (left) and {DRAWS} fresh "
            f"draws of the distortions of {_which(picked)}: what the strengths do to a digit."
        )
        for t, setting in picked:
            rng = np.random.default_rng(SEED)
            draws = [distort(digits, rng, setting) for _ in range(DRAWS)]
            name = f"distortions_{t.number}.png"
            figures.distortions(digits, draws, out / name, title=f"trial {t.number}: "
                                f"{describe(setting)}")  # fmt: skip
            files.append(name)
            lines += ["", f"![distortions of trial {t.number}]({name})"]
    if note is not None:
        logger.warning("%s", note)
        lines += ["", note]
    return "\n".join(lines) + "\n"


def describe(setting: TrainConfig) -> str:
    """The strengths that are not 0, as a title names them: ``shift ±2 px, elastic α 34 σ 4``."""
    words = [shown.format(getattr(setting, name)) for name, shown in _SHOWN.items()
             if getattr(setting, name) > 0]  # fmt: skip
    if setting.elastic_alpha > 0:
        words[-1] += f" σ {setting.elastic_sigma:.3g}"
    return ", ".join(words)


def _which(picked: list[tuple[Trial, TrainConfig]]) -> str:
    """``trial 12``, or ``trials 12, 7 and 30``: the trials whose settings are drawn."""
    numbers = [str(t.number) for t, _ in picked]
    if len(numbers) == 1:
        return f"trial {numbers[0]}"
    return f"trials {', '.join(numbers[:-1])} and {numbers[-1]}"


def _digits(path: str | None, n: int) -> np.ndarray | str:
    """The first ``n`` training digits, (n, 784) float32 in [0, 1) (read-only), or why they
    cannot be read, in one line. None reads this host's cache, only if it holds MNIST: a
    report fetches nothing."""
    from mlp import data, mapped

    cache = data.cache_dir()
    if path is None and not ((cache / data.CACHE_NAME / mapped.INDEX).exists()
                             or (cache / data.LEGACY_CACHE).exists()):  # fmt: skip
        return f"MNIST is not in this host's cache ({cache}); `sweep data` fetches it."
    try:
        return _read(path, n, cache)
    except data.DataError as e:
        return printable(str(e), 300) + "."


@functools.lru_cache(maxsize=4)  # `sweep report all`: one read per dataset, not per study
def _read(path: str | None, n: int, cache: Path) -> np.ndarray:
    """``_digits`` read (``cache``: the cache folder that None reads, part of the key)."""
    from mlp import data

    x = np.array(data.load_mnist(path).train.x[:n], dtype=np.float32)
    x.flags.writeable = False  # one array for every figure: nothing may draw into it
    return x
