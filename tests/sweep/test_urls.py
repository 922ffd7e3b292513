"""Storage URLs are shown with every secret hidden, whatever the password holds (issue 22).

The mask is SQLAlchemy's parse, so the examples pin what it reads; the property builds URLs
from hostile parts (users and passwords with ``@ : ? # % /``, random text, broken ports and
IPv6 hosts, secret query keys) and checks that no part of a password reaches anything a user
sees: the shown URL, the one-line error of opening it, a driver's text about it, and the
output of every command given it on ``--storage`` or in ``$SWEEP_STORAGE``.
"""

import re
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sweep.errors import SpecError, StorageError, SweepError
from sweep.queue.storage import open_reader, open_storage
from sweep.queue.urls import mask_password, parse_url, redact
from tests.sweep.helpers import grid_study, run_cli

EXAMPLES = [
    ("postgresql://me:s3cret@db:5432/sweep", "postgresql://me:***@db:5432/sweep"),
    ("sqlite:///runs/sweep.db", "sqlite:///runs/sweep.db"),
    ("sqlite:///runs/a@b ä.db", "sqlite:///runs/a@b ä.db"),  # nothing secret: as given
    ("postgresql://:pw@db/s", "postgresql://:***@db/s"),
    ("postgresql://u:p/w@db/s", "postgresql://u:***@db/s"),
    ("postgresql+psycopg://u:a:b@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql://u:pw%40x@h/db", "postgresql://u:***@h/db"),
    # the three: the old pattern stopped at ? and # and allowed no @ in the user
    ("postgresql://u:SEC?RETPW@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:SEC#RETPW@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u@server:SECRETPW@h/db", "postgresql://u%40server:***@h/db"),
    # secrets in the query string, in their order, any case, percent-encoded or not
    ("postgresql://u@db/s?sslmode=require&PASSWORD=pw&x=1",
     "postgresql://u@db/s?sslmode=require&PASSWORD=***&x=1"),
    ("postgresql://u@db/s?pass%77ord=pw", "postgresql://u@db/s?password=***"),
    ("postgresql://u@db/s?sslpassword=a&passfile=b&api_token=c&AccessKey=d&pwd=e",
     "postgresql://u@db/s?sslpassword=***&passfile=***&api_token=***&AccessKey=***&pwd=***"),
    ("postgresql://u:pw@h/db?password=x&password=y",
     "postgresql://u:***@h/db?password=***&password=***"),
    ("postgresql://u@db/s?application_name=x", "postgresql://u@db/s?application_name=x"),
    # what SQLAlchemy cannot read, or reads with a host after a password's @: all to the last @
    ("postgresql://u:pw@127.0.0.1:xx/db", "postgresql://***@127.0.0.1:xx/db"),
    ("postgresql://u:pw@[::1/db", "postgresql://***@[::1/db"),
    ("postgresql://u:pw@h:99999/db", "postgresql://***@h:99999/db"),
    ("postgresql://u:p@w@h/db", "postgresql://***@h/db"),
    ("postgresql://u:p@w?x@h/db", "postgresql://***@h/db"),
    ("postgresql://u/x:pw@h/db", "postgresql://***@h/db"),
    ("postgresql://u:pw@h:xx/db?password=q", "postgresql://***@h:xx/db?password=***"),
    ("u:pw@h/db", "***@h/db"),
    # one line, whatever it holds
    ("postgresql://u:pw@h/db\x1b[2J", "postgresql://u:***@h/db%1B%5B2J"),
    ("sqlite:///a\nb.db", "sqlite:///a?b.db"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "shown"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_a_url_is_shown_with_its_secrets_hidden(url, shown):
    assert mask_password(url) == shown


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://u:SECRETPW@127.0.0.1:xx/db", "the port must be a number from 1 to 65535"),
        ("postgresql://u:SECRETPW@h:0/db", "the port must be a number from 1 to 65535"),
        ("postgresql://u:SECRETPW@[::1/db", r"an IPv6 host must be closed with \]"),
        ("postgresql://u:SEC@RETPW@h/db", "an @ leaves its host unclear"),
        ("postgresql://h/db?application_name=SEC@RETPW", "an @ leaves its host unclear"),
        ("postgresql//u:SECRETPW@h/db", "it must begin with a scheme"),
    ],
)
def test_what_does_not_parse_is_named_without_quoting_the_url(url, why):
    with pytest.raises(ValueError, match=why) as info:
        parse_url(url)
    assert "SEC" not in str(info.value) and "RETPW" not in str(info.value)


def test_driver_text_is_redacted_and_printable():
    url = "postgresql://u@s:SECRETPW@h/db?sslpassword=QSECRET&sslmode=x"
    text = 'FATAL:  "SECRETPW" or "QSECRET" or "SECRETPW%40" \x1b[31mred'
    assert redact(text, url) == 'FATAL:  "***" or "***" or "***%40" ?[31mred'


# -- the property --------------------------------------------------------------------------

_WORD = st.text(string.ascii_letters + string.digits, min_size=4, max_size=12)
_SPECIAL = st.sampled_from("@:?#%/&=+ ;[]\\'\"\t~!")


@st.composite
def _password(draw) -> str:
    """Words of 4+ letters and digits joined by characters a URL gives meaning to, or any text
    at all: the words are what must never be shown."""
    parts = draw(st.lists(st.tuples(_WORD, st.text(_SPECIAL, max_size=3)), min_size=1,
                          max_size=3))  # fmt: skip
    text = "".join(w + s for w, s in parts)
    if draw(st.booleans()):
        text += draw(st.text(min_size=1, max_size=6))  # random text, control characters too
    if draw(st.booleans()):
        text = draw(st.sampled_from(["%40", "%", "%zz", "%3A", "@"])) + text
    return text


@st.composite
def hostile_urls(draw) -> tuple[str, list[str]]:
    """A storage URL built from parts, and the words of its secrets."""
    scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg", "sqlite", "mysql"]))
    user = draw(st.sampled_from(["u", "", "u@server", "a:b", "u?x", "u#x", "u%40s", "us%er"]))
    password = draw(_password())
    in_user = draw(st.booleans())
    host = draw(st.sampled_from(["127.0.0.1", "[::1]", "[::1", "127.0.0.1:", "[::1]:", "a" * 70]))
    port = draw(st.sampled_from(["1", "xx", "0", "99999", "", ":1", "-1"]))
    keys = ["password", "PassWord", "pass%77ord", "sslpassword", "pwd", "token", "api_key"]
    query = draw(st.lists(st.tuples(st.sampled_from([*keys, "sslmode", "application_name"]),
                                    st.sampled_from(["", "require", "x@y", "a#b"])),
                          max_size=3))  # fmt: skip
    secret_key = draw(st.sampled_from(keys))
    query_secret = draw(_password())
    pairs = [f"{k}={v}" for k, v in query]
    pairs.insert(draw(st.integers(0, len(pairs))),
                 f"{secret_key}={urllib.parse.quote(query_secret)}")  # fmt: skip
    userinfo = f"{user}:{password}@" if in_user else f"{user}@"
    host_port = host + (f":{port}" if not host.endswith(":") else port)
    url = f"{scheme}://{userinfo}{host_port}/db?{'&'.join(pairs)}"
    secrets = [w for w in re.findall(r"[A-Za-z0-9]{4,}", password) if in_user]
    secrets += re.findall(r"[A-Za-z0-9]{4,}", query_secret)
    # a word that the rest of the URL holds anyway cannot tell a leak from the rest
    rest = url.replace(password, "").replace(urllib.parse.quote(query_secret), "")
    secrets = [w for w in secrets if w not in rest and w not in "postgresql+psycopg"]
    assume(secrets)
    return url, secrets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_urls())
def test_no_part_of_a_password_is_shown(case):
    url, secrets = case
    shown = mask_password(url)
    # Opening it: a one-line error naming the URL (nothing listens on port 1; the rest do
    # not parse or are not supported), before or after the driver had its say.
    with pytest.raises(SweepError) as info:
        open_reader(url)
    message = str(info.value)
    assert "\n" not in message and "\n" not in shown
    assert isinstance(info.value, SpecError | StorageError)
    for word in secrets:
        assert word not in shown, (url, shown)
        assert word not in message, (url, message)
    try:
        parsed = parse_url(url)
    except ValueError:
        return
    # What a driver could quote back: the password and query values it was given.
    given_ = [parsed.password or ""] + [
        v for vs in parsed.query.values() for v in ([vs] if isinstance(vs, str) else vs)
    ]
    said = redact(f"FATAL: {' '.join(given_)} \x1b[2J", url)
    assert "\x1b" not in said
    for word in secrets:
        assert word not in said, (url, said)


# -- every command, given a hostile URL either way ---------------------------------------

HOSTILE = [
    ("postgresql://u:SEC?RETPW1@127.0.0.1:1/db", 1),
    ("postgresql://u:SEC#RETPW1@127.0.0.1:1/db", 1),
    ("postgresql://u@server:SECRETPW1@127.0.0.1:1/db", 1),
    ("postgresql://u:SECRETPW1@127.0.0.1:xx/db", 2),
    ("postgresql://u:SECRETPW1@[::1/db", 2),
    ("postgresql://u:SEC@RETPW1@127.0.0.1:1/db", 2),
    ("postgresql://u@127.0.0.1:1/db?sslpassword=SECRETPW1&sslmode=prefer", 1),
    ("postgresql://u:SECRETPW1@127.0.0.1:1/db?PassWord=SECRETPW2", 1),
]
COMMANDS = [
    ["status"],
    ["report", "all"],
    ["run", "{study}"],
    ["worker", "--study", "g"],
    ["export", "g", "--out", "{tmp}/best.npz"],
]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--storage", "SWEEP_STORAGE"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_no_command_prints_a_password(command, how, tmp_path):
    study = grid_study(tmp_path)
    which = COMMANDS.index(command) * 2 + (how == "--storage")  # each URL once or twice
    url, code = HOSTILE[which % len(HOSTILE)]
    args = [a.format(study=study, tmp=tmp_path) for a in command]
    if how == "--storage":
        out = run_cli(*args, "--storage", url, timeout=120)
    else:
        out = run_cli(*args, env={"SWEEP_STORAGE": url}, timeout=120)
    printed = out.stdout + out.stderr
    assert "SECRET" not in printed and "RETPW" not in printed, printed
    assert out.returncode == code, printed
    assert out.stdout == "" and out.stderr.count("\n") == 1, printed
    assert out.stderr.startswith("sweep: error: storage ")


def test_a_servers_text_is_printable_and_redacted(postgres_server):
    # The server quotes the database name back: here an ANSI escape code and the password.
    base = postgres_server.rsplit("/", 1)[0].replace("postgres@", "postgres:SECRETPW1@")
    out = run_cli("status", "--storage", f"{base}/%1B%5B31mSECRETPW1x", timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "\x1b" not in out.stderr
    assert re.search(r': cannot open: .*database "\?\[31m\*\*\*x" does not exist', out.stderr), (
        out.stderr
    )


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("postgresql://u:SECRETPW@127.0.0.1:xx/db", SpecError),  # was a ValueError traceback
        ("postgresql://u:SECRETPW@[::1/db", SpecError),  # and so was this
        (f"postgresql://u:SECRETPW@{'a' * 70}/db", StorageError),  # the driver's UnicodeError
        ("postgresql://u:SECRETPW@127.0.0.1:1/db", StorageError),
    ],
)
@pytest.mark.parametrize("opener", [open_reader, open_storage], ids=["reader", "storage"])
def test_a_url_that_cannot_be_opened_is_one_line(url, error, opener):
    with pytest.raises(error) as info:
        opener(url)
    assert "\n" not in str(info.value) and "SECRET" not in str(info.value)
