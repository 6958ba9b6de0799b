from pathlib import Path

import pytest
import yaml

from gkd_tune.sweep.space import Distribution, SpaceError, TrialPlan, load_space, parse_space, tune_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
MINIMAL = {"name": "s", "params": {"b": {"uniform": [1, 5]}, "tau": {"choice": [2, 4]}}}


@pytest.mark.parametrize("file", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_parse_and_asha_judges_risen_schedules(file):
    from gkd_tune.sweep.strategy import schedule_diagnostics

    spec = load_space(file)
    if file.name == "baselines.yaml":
        # gompertz.yaml's recipe: the same lr, so the baselines differ from the sweep in the method alone
        assert not spec.searched() and spec.trial_count == 9
        assert spec.fixed()["lr"] == load_space(SPACES / "gompertz.yaml").fixed()["lr"] == 0.08
    else:
        assert {"b", "inflection", "r", "tau", "beta_min", "beta_max"} <= set(spec.searched())
    assert schedule_diagnostics(spec)[1] == []  # no warning


def test_inflection_is_searched_instead_of_c():
    spec = parse_space({"name": "s", "params": {"b": {"uniform": [1, 5]}, "inflection": {"uniform": [0.2, 0.8]}}})
    plan = TrialPlan.resolve(spec, {"b": 2.0, "inflection": 0.25})
    assert plan.distill.schedule.c == 8.0 and plan.distill.schedule.b == 2.0 and "c" not in spec.fixed()
    assert plan.params["c"] == 8.0  # MLflow shows b and c


def test_a_grid_becomes_tune_grid_values_and_counts_its_trials():
    spec = parse_space({"name": "s", "params": {"method": {"grid": ["student", "kd"]}, "seed": {"grid": [0, 1, 2]}},
                        "search": {"num_samples": 2}})
    assert not spec.searched() and spec.trial_count == 12
    assert tune_space(spec)["seed"] == {"grid_search": [0, 1, 2]}


def test_quickstart_is_a_cpu_sweep_with_work_for_asha_and_tpe():
    spec = load_space(SPACES / "quickstart.yaml")
    assert spec.data.source == "digits" and spec.resources.gpu == 0
    assert spec.search.num_samples >= 8 and spec.search.grace_period < spec.training.max_epochs


def test_parsed_into_typed_objects_and_tune_space():
    spec = parse_space(MINIMAL, "x.yaml")
    assert spec.searched() == {"b": Distribution("uniform", (1.0, 5.0)), "tau": Distribution("choice", (2.0, 4.0))}
    space = tune_space(spec)
    assert set(space) == {"b", "tau"}
    plan = TrialPlan.resolve(spec, {"b": 2.5, "tau": 4.0})
    distill, train = plan.distill, plan.train
    assert distill.schedule.b == 2.5 and distill.tau == 4.0 and train.epochs == spec.training.max_epochs
    assert distill.gompertz.sinkhorn_solver == "torch" and train.compile == "auto"  # the defaults reach the trial


def test_solver_and_compile_mode_reach_the_trial():
    raw = {**MINIMAL, "training": {**MINIMAL.get("training", {}), "compile": "off"},
           "params": {**MINIMAL["params"], "sinkhorn_solver": "geomloss"}}
    plan = TrialPlan.resolve(parse_space(raw, "x.yaml"), {"b": 2.5, "tau": 4.0})
    assert plan.distill.gompertz.sinkhorn_solver == "geomloss" and plan.train.compile == "off"


def bad(change):
    raw = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for path, value in change.items():
        node = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


@pytest.mark.parametrize("change, message", [
    ({"nmae": "x"}, r"x.yaml: nmae: unknown key \(did you mean 'name'\?\)"),
    ({"params.tua": 4}, r"params.tua: unknown key \(did you mean 'tau'\?\)"),
    ({"training.max_epoch": 3}, r"training.max_epoch: unknown key \(did you mean 'max_epochs'\?\)"),
    ({"student": "resnet9"}, r"student: must be one of resnet34, .*, got 'resnet9'"),
    ({"teacher.arch": 3}, r"teacher.arch: must be a string, got 3"),
    ({"training.max_epochs": 0}, r"training.max_epochs: must be \[1, 1000000\], got 0"),
    ({"data.val_fraction": 1.5}, r"data.val_fraction: must be \(0, 0.9\], got 1.5"),
    ({"data.image_size": 4}, r"data.image_size: must be \[8, 1024\], got 4"),
    ({"params.b": {"normal": [0, 1]}}, r"params.b.normal: unknown key.*; allowed: uniform, loguniform, int, choice"),
    ({"params.b": {"uniform": [5, 1]}}, r"params.b.uniform: low must be below high"),
    ({"params.b": {"uniform": [1]}}, r"params.b.uniform: must be \[low, high\]"),
    ({"params.lr": {"loguniform": [0, 1]}}, r"params.lr: values must be > 0|loguniform needs low > 0"),
    ({"params.feature_mode": {"uniform": [0, 1]}}, r"params.feature_mode.uniform: feature_mode is categorical"),
    ({"params.feature_mode": {"choice": ["points", "pixels"]}},
     r"params.feature_mode.choice\[1\]: must be one of points, spatial"),
    ({"params.r": {"uniform": [0.5, 1.5]}}, r"params.r: values must be \[0, 1\], got range \[0.5, 1.5\]"),
    ({"params.beta_min": {"uniform": [0.1, 0.6]}, "params.beta_max": {"uniform": [0.5, 1.0]}},
     r"params.beta_min: every beta_min must be below every beta_max: the highest beta_min \(0.6\)"),
    ({"params.beta_min": 1.0}, r"params.beta_min: every beta_min must be below every beta_max"),
    ({"params.sinkhorn_solver": "keops"}, r"params.sinkhorn_solver: must be one of torch, geomloss, got 'keops'"),
    ({"training.compile": "fast"}, r"training.compile: must be one of auto, off, on, cudagraphs, got 'fast'"),
    ({"search.metric": "accuracy"}, r"search.metric: must be one of val_acc, val_loss"),
    ({"search.grace_period": 50}, r"search.grace_period: must be <= training.max_epochs"),
    ({"search.reduction_factor": 1}, r"search.reduction_factor: must be \[2, 100\], got 1"),
    ({"resources.gpu": -1}, r"resources.gpu: must be \[0, 64\], got -1"),
    ({"teacher.checkpoint": "/no/such/teacher.pt"}, r"teacher.checkpoint: file /no/such/teacher.pt does not exist"),
    ({"params.seed": {"grid": [0, 1]}}, r"params.seed: a grid cannot be mixed with searched values \(b, tau\)"),
    ({"params.method": {"grid": ["kd", "fitnet"]}}, r"params.method.grid\[1\]: must be one of student, kd, dkd, gompertz"),
    ({"params.inflection": {"uniform": [0.2, 0.5]}, "params.c": 3.0}, r"params.inflection: give c or inflection"),
    ({"params.inflection": {"uniform": [0.2, 1.5]}}, r"params.inflection: values must be \(0, 1\]"),
    ({"params.inflection": 0.5, "params.b": {"uniform": [-1, 1]}}, r"params.b: values must be \(0, 50\], got range \[-1.0, 1.0\]"),
    ({"search.full_budget_trials": 2}, r"search.full_budget_trials: must be 0 or at least 3"),
    ({"search.full_budget_trials": 9}, r"search.full_budget_trials: must be <= search.num_samples \(8\)"),
    ({"search.startup_trials": 0}, r"search.startup_trials: must be \[1, 1000000\], got 0"),
    ({"params.b": float("nan")}, r"params.b: must be a finite number, got nan"),
    ({"params.b": {"uniform": [1, float("inf")]}}, r"params.b.uniform: must be a finite number, got inf"),
    ({"teacher.lr": float("nan")}, r"teacher.lr: must be a finite number"),
    ({"params.weight_decay": -0.1}, r"params.weight_decay: must be \[0, 1\], got -0.1"),
    ({"name": "my sweep"}, r"name: must be 1-64 letters, digits, '.', '_' or '-'.*got 'my sweep'"),
    ({"name": "it's"}, r"name: must be 1-64 letters"),
    ({"name": "../up"}, r"name: must be 1-64 letters"),
    ({"name": "trial-1"}, r"name: must not start with 'trial-' nor be 'teacher-progress': worker nodes may write"),
    ({"name": "teacher-progress"}, r"name: must not start with 'trial-' nor be 'teacher-progress'"),
    # bounds from the schema: huge and negative numbers (the hostile pass's 45 that passed)
    ({"training.max_epochs": 10**20}, r"training.max_epochs: must be \[1, 1000000\], got 100000000000000000000"),
    ({"training.batch_size": 10**20}, r"training.batch_size: must be \[1, 1000000\]"),
    ({"params.seed": -1}, r"params.seed: must be \[0, 4294967295\], got -1"),
    ({"params.seed": 10**20}, r"params.seed: must be \[0, 4294967295\]"),
    ({"teacher.seed": -1}, r"teacher.seed: must be \[0, 4294967295\], got -1"),
    ({"search.seed": 2**32}, r"search.seed: must be \[0, 4294967295\], got 4294967296"),
    ({"params.b": -1}, r"params.b: must be \(0, 50\], got -1"),
    ({"params.b": {"uniform": [-1.0, 5.0]}}, r"params.b: values must be \(0, 50\], got range \[-1.0, 5.0\]"),
    ({"params.lr": 1e300}, r"params.lr: must be \(0, 10\], got 1e\+300"),
    ({"params.tau": 1e300}, r"params.tau: must be \(0, 100\]"),
    ({"params.w_kd": 1e300}, r"params.w_kd: must be \[0, 100\]"),
    ({"params.c": {"uniform": [1.0, 1e300]}}, r"params.c: values must be \(0, 500\]"),
    ({"teacher.lr": 1e300}, r"teacher.lr: must be \(0, 10\]"),
    ({"search.num_samples": 10**20}, r"search.num_samples: must be \[1, 1000000\]"),
    ({"search.startup_trials": 10**20}, r"search.startup_trials: must be \[1, 1000000\]"),
    ({"search.test_top_k": 10**20}, r"search.test_top_k: must be \[0, 1000000\]"),
    ({"search.max_failures": 10**20}, r"search.max_failures: must be \[0, 1000000\]"),
    ({"search.reduction_factor": 10**20}, r"search.reduction_factor: must be \[2, 100\]"),
    ({"resources.cpu": 1e9}, r"resources.cpu: must be \(0, 1024\]"),
])
def test_each_error_names_file_field_and_what_is_allowed(change, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(bad(change), "x.yaml")


def test_name_is_required_and_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="name: is required"):
        parse_space({"params": {}}, "x.yaml")
    with pytest.raises(SpaceError, match="missing.yaml: file: does not exist"):
        load_space(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match="broken.yaml: file: is not valid YAML"):
        load_space(tmp_path / "broken.yaml")


@pytest.mark.parametrize("content, message", [
    ("name: x\nname: y\n", r"file: is not valid YAML: .*key 'name' appears twice"),
    ("name: x\nparams:\n  b: 1.0\n  b: 2.0\n", r"key 'b' appears twice"),
    (b"name: \xff\xfe\n", r"file: is not UTF-8 text"),
    (None, r"file: is a directory"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "space.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpaceError, match=message):
        load_space(path)


def test_command_line_overrides_are_checked_like_the_file():
    with pytest.raises(ValueError, match=r"num_samples must be \[1, 1000000\], got 0"):
        parse_space(MINIMAL, "x.yaml").with_overrides(num_samples=0)


def test_command_line_overrides():
    spec = parse_space(MINIMAL, "x.yaml").with_overrides(num_samples=3, seed=7, tracking_uri="sqlite:///t.db",
                                                          storage_path="/tmp/s")
    assert (spec.search.num_samples, spec.search.seed, spec.tracking.uri, spec.storage_path) == (
        3, 7, "sqlite:///t.db", "/tmp/s")


def test_relative_data_paths_are_resolved_where_the_sweep_is_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_space({"name": "s", "data": {"source": "parquet:data/train.parquet"}})
    assert spec.data.source == f"parquet:{tmp_path}/data/train.parquet"  # trials run in their own folders, elsewhere
    with pytest.raises(SpaceError, match="data.source: data source 'nope': unknown source kind"):
        parse_space({"name": "s", "data": {"source": "nope"}}, "x.yaml")
