"""The README's many-hosts guide, run as written on one machine, so its text cannot drift.

Every line of the guide's ``sh`` blocks (from **Many hosts.** to the next section) runs, in
order, in one ``bash -eu``, with HOME a new folder, against a throwaway PostgreSQL server on
loopback (``tests/postgres.py``) whose ``pg_hba.conf`` lets role ``sweep`` in only by the line
the guide appends and only with its password. The rule for the tagged lines, as the README
states it:

- ``# [host]`` (packages, services, the clone, a cluster) is skipped, but for the commands in
  ``STAND_INS``, which the script defines as shell functions: ``systemctl restart postgresql``
  reloads the server. (The SLURM section after the guide runs on a real SLURM:
  tests/sweep/test_slurm.py.)
- ``# [yours]`` (a value of the reader's own) is skipped, and the test sets its variable:
  ``YOURS`` holds one value for each, no more and no fewer.

What the skipped lines would have made, the test provides: a clone (``~/mlp-sweep`` with the
study file and ``.venv``, the environment under test) and, for ``sweep data``, this machine's
MNIST cache (``$MLP_SWEEP_CACHE``), so nothing is downloaded. The clone's
``studies/tpe-budget.toml`` is the shipped one cut to 3 trials of 1 epoch on 1,000 digits.
Outside the script the test parses every ``sweep`` command of the guide, run or not, with
sweep's own parser and checks that each one that takes ``--artifacts`` has it; after the
script, that no host store was written (``runs/artifacts``) and the study is done.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import build_parser

README = Path(__file__).parents[2] / "README.md"
START, END = "**Many hosts.**", "\n## "
TAG = re.compile(r"\s#\s\[(host|yours)\](?:\s.*)?$")
#: What a [yours] line sets, in the test: the server's address is filled in per run.
YOURS = {
    "SWEEP_DB_PASSWORD": "p@ss:w/rd?#%41+ 'x\"y",  # every character a URL reserves, and quotes
    "WORKER_NET": "127.0.0.1/32",
    "MLP_SWEEP_GIT": "unused: the clone is the test's",
    "DB_HOST": "127.0.0.1:{port}",
    "ARTIFACTS": "{shared}",
}
#: [host] commands the test stands in for, as bash functions; every other [host] line is skipped.
STAND_INS = {
    "systemctl": """systemctl() {
  [ "$*" = "restart postgresql" ] || { echo "no stand-in for: systemctl $*" >&2; return 1; }
  psql -U postgres -qAtc 'SELECT pg_reload_conf()' >/dev/null
}""",
}
#: The commands the guide must show, at the least.
MUST_RUN = {"data", "run", "worker", "status", "report", "export", "evaluate"}


def guide_lines() -> list[str]:
    """The logical lines (continuations joined) of the guide's ``sh`` blocks, in order."""
    readme = README.read_text()
    guide = readme[readme.index(START) :]
    guide = guide[: guide.index(END)]
    blocks = re.findall(r"^```sh\n(.*?)^```$", guide, flags=re.S | re.M)
    assert blocks, "the many-hosts guide has no sh blocks"
    lines: list[str] = []
    for block in blocks:
        lines.extend(block.replace("\\\n", " ").splitlines())
    return lines


def sweep_commands(lines: list[str]) -> list[list[str]]:
    """Each ``sweep …`` command line as its arguments after ``sweep``."""
    found = []
    for line in lines:
        words = shlex.split(TAG.sub("", line), comments=True)
        if words[:1] == ["sweep"]:
            found.append(words[1:])
    return found


def test_every_sweep_command_parses_and_names_the_shared_store():
    commands = sweep_commands(guide_lines())
    assert MUST_RUN <= {c[0] for c in commands}, "the guide lost a step"
    parser = build_parser()
    for args in commands:
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"the guide's `sweep {shlex.join(args)}` does not parse")
        if hasattr(parsed, "artifacts"):
            assert parsed.artifacts, f"`sweep {shlex.join(args)}` lacks --artifacts"


def test_tags_are_the_stated_ones():
    """A [yours] line sets one variable the test knows; every stand-in stands in for a line."""
    lines = guide_lines()
    yours = [line for line in lines if (m := TAG.search(line)) and m[1] == "yours"]
    assigned = [re.match(r"(?:export )?([A-Z_]+)=", line) for line in yours]
    assert all(assigned), f"a [yours] line that sets no variable: {yours}"
    assert {m[1] for m in assigned} == set(YOURS)
    hosts = [line.split()[0] for line in lines if (m := TAG.search(line)) and m[1] == "host"]
    assert set(STAND_INS) <= set(hosts)


def script(lines: list[str], values: dict[str, str]) -> str:
    """The guide as one bash script: tagged lines skipped or stood in for, as stated above."""
    functions = "\n".join(STAND_INS.values())
    for key, value in values.items():
        functions = functions.replace(f"<{key}>", shlex.quote(value))
    out = ["set -euo pipefail", functions]
    for line in lines:
        tag = TAG.search(line)
        if tag and not (tag[1] == "host" and line.split()[0] in STAND_INS):
            out.append(f": skipped [{tag[1]}]")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _study_file() -> str:
    """The shipped tpe-budget study, cut down: its name, sampler, budget and space as shipped."""
    text = (README.parent / "studies" / "tpe-budget.toml").read_text()
    text, n = re.subn(r"(?m)^trials = \d+$", "trials = 3", text)
    text, m = re.subn(r"(?m)^epochs = \d+$", "epochs = 1", text)
    assert n == m == 1, "studies/tpe-budget.toml changed shape: update this test"
    return text + "\n[data]\ntrain_size = 1_000\n"


def _psql(admin_url: str, sql: str, database: str = "postgres") -> str:
    import psycopg

    with psycopg.connect(admin_url.rsplit("/", 1)[0] + f"/{database}", autocommit=True) as c:
        rows = c.execute(sql).fetchall()
    return "\n".join(str(r[0]) for r in rows)


@pytest.mark.slow
def test_the_guide_runs_as_written(tmp_path):
    from mlp.data import cache_dir
    from tests.postgres import server

    if not shutil.which("psql"):
        pytest.skip("psql not found (apt-get install postgresql-client)")
    home, shared, bin_dir = tmp_path / "home", tmp_path / "shared", tmp_path / "bin"
    clone = home / "mlp-sweep"
    (clone / "studies").mkdir(parents=True)
    (clone / "studies" / "tpe-budget.toml").write_text(_study_file())
    (clone / ".venv").symlink_to(Path(sys.prefix))
    bin_dir.mkdir()
    shims = []
    if os.geteuid() != 0:  # runuser needs root; the server runs as this user then
        (bin_dir / "runuser").write_text('#!/bin/sh\nshift 3\nexec "$@"\n')  # -u postgres --
        shims.append("runuser")
    for name in shims:
        (bin_dir / name).chmod(0o755)
    # Without the environment under test on PATH, so the guide's activation is what finds sweep.
    bare = [str(bin_dir)] + [
        d for d in os.environ["PATH"].split(":") if d and not (Path(d) / "sweep").exists()
    ]
    pythonpath = str(README.parent)

    servers = server()
    admin = next(servers)
    try:
        port = admin.rsplit(":", 1)[1].split("/")[0]
        hba = Path(_psql(admin, "SHOW hba_file"))
        hba.write_text("local all postgres trust\nhost all postgres 127.0.0.1/32 trust\n")
        _psql(admin, "SELECT pg_reload_conf()")
        values = {
            "port": port,
            "shared": str(shared),
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "PG"))}
        env |= {k: v.format(**values) for k, v in YOURS.items()}
        env |= {
            "HOME": str(home),
            "PATH": ":".join(bare),
            "PYTHONPATH": pythonpath,
            "MLP_SWEEP_CACHE": str(cache_dir()),
            "PGHOST": "127.0.0.1",
            "PGPORT": port,
            "PGUSER": "postgres",
        }
        env.pop("VIRTUAL_ENV", None)
        done = subprocess.run(
            ["bash", "-c", script(guide_lines(), values)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        # The password is what lets sweep in: a wrong one is refused, so the URL carried it.
        import psycopg

        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://sweep:wrong@127.0.0.1:{port}/sweep").close()
        counts = _psql(
            admin,
            "SELECT count(*) FROM trials WHERE state = 'COMPLETE' OR state = 'PRUNED'",
            "sweep",
        )
        assert int(counts) == 3
        assert not (clone / "runs" / "artifacts").exists(), "a command kept its files locally"
        for key in ("best_model", "evaluated_model"):  # the models export and evaluate named
            sql = f"SELECT value_json FROM study_system_attributes WHERE key = '{key}'"
            assert (shared / json.loads(_psql(admin, sql, "sweep"))["artifact_id"]).is_file()
        assert (clone / "best.npz").exists() and (clone / "runs" / "tpe-budget").is_dir()
    finally:
        servers.close()
