"""A study file's depth and widths: each mistake is one line naming the field, what is
allowed and what came; what a depth-2 study file says stays as it was."""

import copy

import pytest

from sweep.errors import SpecError
from sweep.study.spec import parse_spec

TPE = {"study": {"name": "d", "sampler": "tpe", "trials": 3}}


def parse(space, train=None, budget=None, study=TPE["study"]):
    raw = copy.deepcopy({"study": study, "space": space})
    raw |= {"train": train} if train else {}
    raw |= {"budget": budget} if budget else {}
    return parse_spec(raw, source="x.toml")


def test_the_depth_is_searched_as_a_list():
    assert parse({"depth": [1, 2, 3]}).dimension("depth").choices == (1, 2, 3)
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\.depth\] must be a list of depths \(the widths a trial uses "
        r"depend on its depth\); got \{'low': 1, 'high': 3\}$",
    ):
        parse({"depth": {"low": 1, "high": 3}})
    with pytest.raises(SpecError, match=r"^x\.toml: \[space\.depth\] must be an integer in "):
        parse({"depth": [1, 5]})


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_a_width_searched_past_every_depth_of_the_study_names_both(sampler):
    study = {"name": "d", "sampler": sampler, "trials": 3}
    parse({"hidden_3": [64, 128]}, train={"depth": 3}, study=study)  # the legal edge
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\.hidden_3\] must be a width of a depth the study has "
        r"\(hidden_3 needs depth >= 3; \[train\] depth = 2\); got \[64, 128\]$",
    ):
        parse({"hidden_3": [64, 128]}, study=study)
    parse({"depth": [1, 4], "hidden_4": [64]}, study=study, budget={"max_params": 10**7})
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\.hidden_4\] must be a width of a depth the study has "
        r"\(hidden_4 needs depth >= 4; \[space\] depth = \[1, 3\]\); got \[64\]$",
    ):
        parse({"depth": [1, 3], "hidden_4": [64]}, study=study)


def test_several_lists_of_widths_beside_a_range_are_refused_under_tpe():
    lists = {"hidden_1": [512, 800], "hidden_3": [64, 128]}
    parse(lists | {"hidden_2": [16, 32]}, train={"depth": 3})  # all lists: one joint parameter
    parse({"hidden_1": [512, 800], "hidden_2": {"low": 8, "high": 64}}, train={"depth": 3})
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\] must be the widths of depth 3 as lists, or as ranges with "
        r"one list at most; got lists hidden_1, hidden_3 and ranges hidden_2$",
    ):
        parse(lists | {"hidden_2": {"low": 8, "high": 64}}, train={"depth": 3})


def test_ranges_need_a_budget_wider_than_one_unit_of_a_width():
    # One unit of hidden_1 adds 784 + 1 + hidden_2 ≤ 849 parameters: a window of 849 or less
    # could leave a drawn hidden_1 without any hidden_2 inside the budget.
    space = {"hidden_1": {"low": 8, "high": 64}, "hidden_2": {"low": 8, "high": 64}}
    parse(space, budget={"min_params": 20_000, "max_params": 20_850})
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[budget\.max_params\] must be more than min_params \+ 849 when widths "
        r"are searched as ranges \(a unit of hidden_1 adds up to 849 parameters\); got 20849$",
    ):
        parse(space, budget={"min_params": 20_000, "max_params": 20_849})
    # one range is drawn from its exact interval: any window will do
    one = parse(
        {"hidden_1": {"low": 8, "high": 64}},
        train={"hidden_2": 10},
        budget={"min_params": 19_994, "max_params": 19_996},
    )  # 795·25 + 120
    assert one.budget.max_params == 19_996


def test_an_impossible_budget_names_the_widths_of_its_depth():
    budget = {"min_params": 1_900_000, "max_params": 2_000_000}
    # depth 2 says exactly what it said before depths
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[budget\] no architecture with hidden_1 in \[64, 128\] and hidden_2 "
        r"in \[768, 768\] has 1,900,000 < parameters < 2,000,000 \(these sizes give 107,850 to "
        r"207,242\)$",
    ):
        parse({"hidden_1": [64, 128]}, budget=budget)
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[budget\] no architecture with hidden_1 in \[64, 128\] has "
        r"1,900,000 < parameters < 2,000,000 \(these sizes give 50,890 to 101,770\)$",
    ):
        parse({"hidden_1": [64, 128]}, train={"depth": 1}, budget=budget)
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[budget\] no architecture of depth 1 or 3 has 1,900,000 < "
        r"parameters < 2,000,000 \(depth 1: hidden_1 in \[64, 128\] give 50,890 to 101,770; "
        r"depth 3: hidden_1 in \[64, 128\], hidden_2 in \[768, 768\] and hidden_3 in \[8, 64\] "
        r"give 106,402 to 249,418\)$",
    ):
        parse({"depth": [1, 3], "hidden_1": [64, 128], "hidden_3": {"low": 8, "high": 64}},
              budget=budget)  # fmt: skip


def test_a_depth_without_an_in_budget_network_is_no_error_beside_one_with():
    # depth 1 cannot reach 500,000 with hidden_1 ≤ 600; depth 2 can
    spec = parse({"depth": [1, 2], "hidden_1": {"low": 64, "high": 600}})
    assert spec.dimension("depth").choices == (1, 2)


def test_lists_of_widths_of_one_depth_give_at_most_100000_combinations():
    space = {"hidden_1": list(range(512, 522)), "hidden_2": list(range(1, 101)),
             "hidden_3": list(range(1, 101))}  # fmt: skip
    parse(space, train={"depth": 3}, budget={"min_params": 0, "max_params": 10**7})
    space["hidden_1"] = list(range(512, 523))  # 110,000 combinations
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\] must be at most 100,000 combinations of widths \(the "
        r"product of the list lengths\); got 110,000$",
    ):
        parse(space, train={"depth": 3})
    # counted per depth: with depths 2 and 3, depth 3's combinations are the most
    with pytest.raises(SpecError, match=r"100,000 combinations of widths .* got 110,000$"):
        parse(space | {"depth": [2, 3]})
