"""What ``--format json`` writes: each command's result as JSON, for scripts and ``jq``.

Shaped as the optuna CLI's ``-f json`` shapes the same things, so that what reads one reads
the other: a study as ``optuna studies`` lists it (``name``, ``direction``, ``n_trials``), a
trial as ``optuna trials`` does (``number``, ``value`` or ``values``, ``datetime_start``,
``datetime_complete``, ``duration``, ``params``, ``user_attrs``, ``state``), the best trial and
the Pareto front under optuna's names (``best_trial``, ``best_trials``). Two differences, both
so that any JSON parser reads every field the same way: ``value`` is always the number
(optuna's CLI nests it under the metric's name when the study names its metric), and a number
that is not finite (an infinite value another client stored) is ``null`` (``json.dumps``
would write ``Infinity``, which strict parsers such as ``jq`` and ``JSON.parse`` refuse). The
README's *Commands* section lists every field.

The records are plain dicts built from what the API returns; only ``sweep.commands`` prints
them (stdout then holds the JSON alone: notes, progress and warnings go to stderr).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from mlp.state import EpochMetrics
    from sweep.report.summary import StudyStatus
    from sweep.report.writer import Report
    from sweep.trial.best import Exported
    from sweep.trial.objective import Evaluation

#: The values ``--format`` takes: text for people (the default), json for programs.
FORMATS = ("text", "json")
#: How optuna's CLI writes a time (``optuna.cli._DATETIME_FORMAT``).
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def dumps(record: Any) -> str:
    """``record`` as one line of strict JSON (non-finite numbers as null, ``plain``), ASCII
    only: a study name's control characters or escape codes are escaped, never shown."""
    return json.dumps(plain(record), allow_nan=False)


#: The deepest a value is written: anything nested deeper (only another client stores such an
#: attribute) is null, where following it would exhaust Python's stack.
MAX_DEPTH = 100


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` made of JSON's types alone: numbers (a non-finite one None; numpy's scalars
    as Python's), text, lists and objects with text keys; a time as optuna's CLI writes it,
    a duration as ``str(timedelta)`` (as optuna's CLI: ``0:00:01.234567``), a path as text;
    None past ``MAX_DEPTH`` levels of lists and objects."""
    if depth > MAX_DEPTH:
        return None
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, datetime.datetime):
        return value.strftime(DATETIME_FORMAT)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, Path)):
        return [plain(v, depth + 1) for v in value]
    return str(value)  # a timedelta, a path, an enum: as text


def study(s: StudyStatus) -> dict[str, Any]:
    """A study as ``sweep status`` sees it: optuna's ``name``, ``direction`` (one per
    objective) and ``n_trials``, then ``metric_names`` (one per objective), ``counts`` (trials
    by state, lower case, with the failures sweep skipped apart as ``skipped``), ``best_trial``
    (of one objective: ``number``, ``value``, ``params`` and ``outside_budget``: why its
    network is outside the study's budget, else null; else null) and ``best_trials`` (the
    Pareto front: ``number`` and ``values`` of each, the first objective's best first; of one
    objective, the best trial alone), ``running_by_host`` (the hosts whose workers hold most of
    its RUNNING trials, 20 at most, each with how many) and ``running_elsewhere`` (how many
    the workers of other hosts hold)."""
    best = None
    front = [{"number": v.number, "values": list(v.values)} for v in s.front]
    if s.best is not None:
        best = {"number": s.best.number, "value": s.best.value, "params": s.best.params,
                "outside_budget": s.best_outside}  # fmt: skip
        front = [{"number": s.best.number, "values": [s.best.value]}]
    return {
        "name": s.name,
        "direction": ["MAXIMIZE" if o.maximize else "MINIMIZE" for o in s.kind.objectives],
        "n_trials": sum(s.counts.values()),
        "metric_names": list(s.kind.metrics),
        "counts": s.counts,
        "best_trial": best,
        "best_trials": front,
        "running_by_host": s.running_by_host,
        "running_elsewhere": s.running_elsewhere,
    }


def trial(t: FrozenTrial, *, multi: bool) -> dict[str, Any]:
    """A trial as ``optuna trials -f json`` writes it: ``values`` (a list) for a study of
    several objectives, else ``value``; ``state`` as optuna names it (``COMPLETE``,
    ``PRUNED``, ``FAIL``, ...; a trial sweep skipped is a FAIL whose ``user_attrs`` say why).
    sweep's ``user_attrs`` hold the trial's ``config``, ``n_params``, ``seed``, ``seconds``
    and its learning curves (``train_loss``, ``train_accuracy``, ``valid_loss``,
    ``valid_accuracy``: one number per epoch, accuracies in percent)."""
    return {
        "number": t.number,
        **({"values": t.values} if multi else {"value": t.value}),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
        "duration": t.duration,
        "params": t.params,
        "user_attrs": t.user_attrs,
        "state": t.state.name,
    }


def report(r: Report, name: str | None, status: StudyStatus | None) -> dict[str, Any]:
    """What ``sweep report`` wrote for study ``name``: the ``report`` (report.md's path), the
    folder (``out_dir``) and the ``files`` in it; ``best_trial``, the best trial the report
    names (``number``, ``value``, ``config``: its whole configuration as sweep stored it,
    else its parameters), or null; ``best_trials``, the study's Pareto front as ``study``
    has it (``status``: the study's, read with the report)."""
    best = None
    if r.best_number is not None:
        best = {"number": r.best_number, "value": r.best_value, "config": r.best_config}
    return {
        "name": name,
        "report": r.out_dir / "report.md",
        "out_dir": r.out_dir,
        "files": list(r.files),
        "best_trial": best,
        "best_trials": study(status)["best_trials"] if status is not None else [],
    }


def reports(storage: str | None, done: list[Report], *, name: str | None = None,
            root: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """``report`` of each report written, all of study ``name``, or (``root``: those of
    ``sweep report all``) each of the study whose folder under ``root`` it is: a Report does
    not carry its study's name, and ``report_folder`` gives each study a folder of its own. A
    study renamed or deleted since is null. The fronts are ``sweep status``'s read."""
    from sweep.api import status
    from sweep.errors import SweepError
    from sweep.queue.storage import open_storage, study_names
    from sweep.report.writer import report_folder

    studies = {s.name: s for s in status(storage)}
    names = {r.out_dir: name for r in done}
    if root is not None:
        rdb = open_storage(storage, heartbeat_interval=None, grace_period=None, read_only=True)
        for n in study_names(rdb):
            try:
                names[report_folder(root, rdb, n)] = n
            except (KeyError, SweepError):  # deleted since, or not reported (report_all says)
                continue
    return [report(r, names.get(r.out_dir), studies.get(names.get(r.out_dir) or ""))
            for r in done]  # fmt: skip


def evaluation(e: Evaluation, name: str, *, chosen: str | None) -> dict[str, Any]:
    """What ``sweep evaluate`` measured: the ``trial`` retrained (``chosen``: why that one,
    when none was asked for and the study has no one best; else null), its
    ``valid_accuracy`` and ``test_accuracy`` (percent), and where the model went: the
    ``artifact_store`` and the weights' and sidecar's ids in it (``artifact_id``,
    ``sidecar_id``, as the study's ``evaluated_model`` names them) and where they are
    (``weights_path``, ``sidecar_path``: a file, or an S3 object's URL)."""
    weights, sidecar = e.artifacts
    weights_path, sidecar_path = e.paths()
    return {
        "study": name,
        "trial": e.trial,
        "chosen": chosen,
        "valid_accuracy": e.valid_accuracy,
        "test_accuracy": e.test_accuracy,
        "artifact_store": e.store,
        "artifact_id": weights,
        "sidecar_id": sidecar,
        "weights_path": weights_path,
        "sidecar_path": sidecar_path,
    }


def export(done: Exported, name: str, weights: str | Path) -> dict[str, Any]:
    """What ``sweep export`` wrote: the ``trial`` whose weights they are (``chosen``: why that
    one, when none was asked for and the study has no one best; else null), the ``weights``
    file and its ``sidecar``."""
    return {"study": name, "trial": done.trial, "chosen": done.chosen,
            "weights": weights, "sidecar": done.sidecar}  # fmt: skip


def epoch(m: EpochMetrics) -> dict[str, Any]:
    """One epoch of ``sweep train``: ``mlp.EpochMetrics``'s fields, its accuracies in percent
    as a trial's learning curves store them (``sweep.trial.objective``)."""
    from mlp.state import percent

    record = dataclasses.asdict(m)
    for key in ("train_accuracy", "valid_accuracy"):
        record[key] = percent(record[key])
    return record
