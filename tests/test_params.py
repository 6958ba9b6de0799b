"""The run-parameter schema: declared once on the config dataclasses, and the CLI, validation and MLflow params
generated from it."""

import argparse
from dataclasses import dataclass, field

import pytest

from gkd_tune import train
from gkd_tune.core.data import DataSpec
from gkd_tune.core.distillers import DistillConfig
from gkd_tune.core.loop import TrainConfig
from gkd_tune.core.params import add_flags, build, check, declared_values, flatten, from_flags, setting, settings
from gkd_tune.core.teacher import TeacherSpec
from gkd_tune.sweep.space import TRIAL_PARAMS, TrialPlan, parse_space
from gkd_tune.core.teacher import TeacherRecipe


@dataclass(frozen=True)
class Inner:
    kind: str = setting("a", "which", choices=("a", "b"), name="inner_kind", searchable=True)
    size: int = setting(3, "how many", low=1)

    def __post_init__(self):
        check(self)


@dataclass(frozen=True)
class Outer:
    rate: float = setting(0.5, "a rate", low=0, high=1, searchable=True)
    internal: float = 7.0
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        check(self)


def test_settings_are_walked_flat_with_public_names():
    assert [(s.name, s.path) for s in settings(Outer)] == [
        ("rate", ("rate",)), ("inner_kind", ("inner", "kind")), ("size", ("inner", "size"))]
    assert [s.name for s in settings(Outer, searchable=True)] == ["rate", "inner_kind"]
    config = build(Outer, {"rate": 0.25, "size": 5})
    assert config == Outer(rate=0.25, inner=Inner(size=5))
    assert declared_values(config) == {"rate": 0.25, "inner_kind": "a", "size": 5}
    assert flatten(config) == {"rate": 0.25, "internal": 7.0, "inner_kind": "a", "size": 5}  # internal ones too


def test_each_config_checks_its_declared_ranges():
    with pytest.raises(ValueError, match=r"rate must be \[0, 1\], got 1.5"):
        Outer(rate=1.5)
    with pytest.raises(ValueError, match=r"rate must be \[0, 1\], got -0.1"):
        Outer(rate=-0.1)
    with pytest.raises(ValueError, match="inner_kind must be one of a, b, got 'c'"):
        Inner(kind="c")
    # an integer without a declared upper bound stays below MAX_INT
    with pytest.raises(ValueError, match=r"size must be \[1, 1000000\], got 0"):
        Outer(inner=Inner(size=0))
    with pytest.raises(ValueError, match=r"size must be \[1, 1000000\], got 100000000000000000000"):
        Outer(inner=Inner(size=10**20))


def test_flags_carry_type_default_choices_and_help():
    parser = argparse.ArgumentParser()
    add_flags(parser, Outer, prefix="x-")
    assert from_flags(parser.parse_args([]), Outer, prefix="x-") == Outer()
    assert from_flags(parser.parse_args(["--x-rate", "0.2", "--x-inner-kind", "b"]), Outer, prefix="x-") == Outer(
        rate=0.2, inner=Inner(kind="b"))
    assert "a rate; [0, 1]" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--x-inner-kind", "c"])


def test_train_command_has_a_flag_with_the_default_of_every_setting():
    parser = train.build_parser()
    args = parser.parse_args(["--student", "resnet8", "--out", "x"])
    assert from_flags(args, DistillConfig) == DistillConfig()
    assert from_flags(args, TrainConfig) == TrainConfig()
    assert from_flags(args, DataSpec) == DataSpec()
    assert from_flags(parser.parse_args(["--student", "resnet8", "--out", "x", "--teacher", "resnet8"]), TeacherSpec,
                      prefix="teacher-") == TeacherSpec(arch="resnet8")
    helps = {a.dest: a.help for a in parser._actions}
    assert all(helps.get(s.name) for s in settings(DistillConfig) + settings(TrainConfig))


def test_mlflow_params_hold_every_value_that_shaped_a_trial():
    spec = parse_space({"name": "s", "training": {"batch_size": 32, "lr_schedule": "multistep"},
                        "teacher": {"arch": "resnet8", "epochs": 2, "seed": 5}, "data": {"val_fraction": 0.2},
                        "params": {"b": {"uniform": [1, 2]}, "lr": 0.2, "seed": 3}})
    plan = TrialPlan.resolve(spec, {"b": 1.5})
    params = plan.params
    assert {k: params[k] for k in ("b", "lr", "batch_size", "seed", "lr_schedule", "max_epochs", "momentum")} == {
        "b": 1.5, "lr": 0.2, "batch_size": 32, "seed": 3, "lr_schedule": "multistep", "max_epochs": 10,
        "momentum": 0.9}
    assert (params["teacher.arch"], params["teacher.epochs"], params["teacher.seed"]) == ("resnet8", 2, 5)
    assert params["data.val_fraction"] == 0.2 and params["data.source"] == "digits"
    assert set(TRIAL_PARAMS) - {"inflection"} <= set(params) and {s.name for s in settings(TeacherRecipe)} <= {
        k.removeprefix("teacher.") for k in params}
    # the plan as a trial announces it (its first result, JSON) reads back as the same plan
    assert TrialPlan.from_json(plan.to_json()) == plan
