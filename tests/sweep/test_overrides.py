"""``--set KEY=VALUE``: a study file's value changed from the command line (or Python), checked
by the field's rule alone and then with the whole file, recorded in the stored spec."""

import json
import re
import sqlite3

import pytest

from sweep.cli import build_parser
from sweep.errors import SpecError
from sweep.queue.storage import open_storage
from sweep.study.joining import join, open_study
from sweep.study.overrides import parse_override
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, main_in_process


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("train.epochs=5", 5),
        ("train.learning_rate=1e-3", 0.001),
        ("train.learning_rate=1", 1.0),  # an int where a float belongs, as in a file
        ("train.shuffle=true", True),
        ("train.init=zeros", "zeros"),  # text is text
        ("study.name=quick-5", "quick-5"),
        ("study.name=5", "5"),  # a field of text takes the text as written
        ('study.name="a b"', "a b"),  # or quoted as TOML
        (" budget.max_params = 300_000", 300_000),
        ("space.hidden_1=[64, 128]", [64, 128]),
        ("space.hidden_1={low = 16, high = 64}", {"low": 16, "high": 64}),
        ("data.path=~/mnist.pkl.gz", "~/mnist.pkl.gz"),
    ],
)
def test_a_value_is_read_as_a_toml_value_else_as_text(text, value):
    assert parse_override(text).value == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs=5", r"--set must be KEY=VALUE, KEY a study file's section\.key \(e\.g\. "
                     r"train\.epochs=5\); got 'epochs=5'"),
        ("train.epochs", r"--set must be KEY=VALUE, .*; got 'train\.epochs'"),
        ("trian.epochs=5", r"--set trian\.epochs=5: \[trian\] must be one of the sections "
                           r"study, budget, data, train, space; got 'trian'"),
        ("train.epochz=5", r"--set train\.epochz=5: \[train\.epochz\] must be one of the known "
                           r"keys depth, .*; got 'epochz'"),
        ("train.epochs=0", r"--set train\.epochs=0: \[train\.epochs\] must be an integer in "
                           r"\[1, 10000\]; got 0"),
        ("train.epochs=10000", None),  # the edge passes
        ("train.epochs=10001", r".*got 10001"),
        ("train.epochs=five", r".*must be an integer in \[1, 10000\]; got 'five'"),
        ("train.shuffle=yes", r".*\[train\.shuffle\] must be true or false; got 'yes'"),
        ("study.sampler=bayes", r".*\[study\.sampler\] must be one of 'grid', .*; got 'bayes'"),
        ("study.name=a\tb", r".*\[study\.name\] must be 1 to 128 characters, no control "
                            r"characters; got 'a\\tb'"),
        ("train.epochs=5\nstudy.name=x",  # not one TOML value; still one line
         r"--set train\.epochs=5\\nstudy\.name=x: .*; got '5\\nstudy\.name=x'"),
        ("space.epochz=[1]", r".*\[space\.epochz\] must be a \[train\] setting: .*"),
    ],
)  # fmt: skip
def test_an_override_is_checked_alone_by_its_fields_rule(text, message):
    if message is None:
        parse_override(text)
        return
    with pytest.raises(SpecError) as e:
        parse_override(text)
    assert re.fullmatch(message, str(e.value)), str(e.value)


def test_a_spec_with_overrides_is_the_file_changed_and_checked_whole(tmp_path):
    path = grid_study(tmp_path)
    spec = load_spec(path, overrides=["train.epochs=5", "study.name=g-5"])
    assert (spec.name, spec.train.epochs, spec.train.batch_size) == ("g-5", 5, 64)
    given = load_spec(path, overrides={"train.epochs": 5, "study.name": "g-5"})
    assert given.to_dict() == spec.to_dict()
    assert given.source == f"{path} with train.epochs=5 study.name='g-5'"
    assert spec.to_dict()["train"]["epochs"] == 5  # what the study stores
    with pytest.raises(SpecError, match=r"^train\.epochs=0: \[train\.epochs\] must be"):
        load_spec(path, overrides={"train.epochs": 0})
    # A rule between fields names the file and the overrides that broke it.
    with pytest.raises(SpecError) as e:
        load_spec(path, overrides=["data.train_size=50", "train.batch_size=64"])
    assert str(e.value) == (
        f"{path} with --set data.train_size=50 --set train.batch_size=64: [train.batch_size] "
        "must be an integer in [1, 50] (at most the training set in use); got 64"
    )
    with pytest.raises(SpecError, match=re.escape(f"{path} with --set space.hidden_1=[8]: "
                                                  "[budget] no architecture")):  # fmt: skip
        load_spec(path, overrides=["space.hidden_1=[8]"])


def test_a_train_key_the_study_searches_is_refused_not_ignored(tmp_path):
    # [space] decides a searched setting: the override would change nothing.
    with pytest.raises(SpecError) as e:
        load_spec(grid_study(tmp_path), overrides=["train.learning_rate=0.2"])
    assert str(e.value) == (
        "--set train.learning_rate=0.2: [train.learning_rate] must be a setting [space] does "
        "not search (space.learning_rate=[0.2] fixes it); got 0.2"
    )
    spec = load_spec(grid_study(tmp_path), overrides=["space.learning_rate=[0.2]"])
    assert spec.dimension("learning_rate").choices == (0.2,)


def test_the_stored_spec_records_the_result_and_a_changed_one_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    path = grid_study(tmp_path)
    spec = load_spec(path, overrides=["train.epochs=1", "study.name=g-1"])
    open_study(spec, open_storage(url))
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        (stored,) = conn.execute("SELECT value_json FROM study_user_attributes "
                                 "WHERE key = 'spec'").fetchone()  # fmt: skip
    conn.close()
    assert json.loads(stored)["train"]["epochs"] == 1
    assert json.loads(stored)["study"]["name"] == "g-1"
    again = load_spec(path, overrides=["study.name=g-1"])  # the file says epochs = 2
    with pytest.raises(SpecError) as e:
        open_study(again, open_storage(url))
    assert str(e.value) == (
        f"{path} with --set study.name=g-1: [train.epochs] differs from the stored study "
        "'g-1': stored 1, given 2; use the stored study's file, or rename [study.name] for a "
        "new study"
    )
    # A worker's overrides change the stored spec, and must agree with it as a file must.
    assert join(url, "g-1", overrides=["train.epochs=1"]).train.epochs == 1
    assert join(url, "g-1", overrides=["data.path=/elsewhere/mnist.pkl.gz"]).data_path == (
        "/elsewhere/mnist.pkl.gz"
    )
    with pytest.raises(SpecError, match=r"\[train\.epochs\] differs from the stored study"):
        join(url, "g-1", overrides=["train.epochs=3"])
    with pytest.raises(SpecError, match=r"\[study\.name\] is 'h', not 'g-1'"):
        join(url, "g-1", overrides=["study.name=h"])


def test_sweep_run_with_overrides_trains_what_they_say(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = main_in_process(
        "run", str(grid_study(tmp_path)), "--storage", url, "--jobs", "1", "--set",
        "study.name=quick-1", "--set", "train.epochs=1", "--set", "study.trials=1",
        "--set", "data.train_size=200",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        rows = conn.execute(
            "SELECT s.study_name, a.value_json FROM trial_user_attributes a JOIN trials t "
            "USING (trial_id) JOIN studies s USING (study_id) WHERE a.key = 'valid_accuracy'"
        ).fetchall()
    conn.close()
    assert [(name, len(json.loads(curve))) for name, curve in rows] == [("quick-1", 1)]


def test_sweep_train_set_sets_the_flag_of_its_key():
    parse = build_parser().parse_args
    args = parse(["train", "--set", "train.epochs=3", "--set", "data.train_size=100",
                  "--set", "train.shuffle=true", "--set", "data.path=/m.pkl.gz"])  # fmt: skip
    assert (args.epochs, args.train_size, args.shuffle, args.data) == (3, 100, True, "/m.pkl.gz")
    # Of the flag and --set, the later wins, as of any flag given twice.
    assert parse(["train", "--epochs", "2", "--set", "train.epochs=3"]).epochs == 3
    assert parse(["train", "--set", "train.epochs=3", "--epochs", "2"]).epochs == 2
    with pytest.raises(SpecError, match=r"^--set study\.name=x: \[study\.name\] is not a "
                                        r"setting of sweep train"):  # fmt: skip
        parse(["train", "--set", "study.name=x"])
