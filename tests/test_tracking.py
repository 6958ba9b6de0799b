"""The trial runs' bookkeeping in MLflow, with stand-in trials (no Ray): what a --resume finds and completes."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from gkd_tune import tracking
from gkd_tune.space import load_space

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_whose_driver_died_during_its_set_up_gets_its_params_and_beta_curve_on_resume(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml").with_overrides(tracking_uri=uri)
    location = str(tmp_path / "runs" / "quickstart")
    config = {"b": 2.0, "inflection": 0.3, "r": 0.5, "tau": 4.0, "beta_min": 0.1, "beta_max": 0.8}
    trial = SimpleNamespace(trial_id="trial001", config=config, experiment_tag="1_b=2.0", checkpoint=None,
                            last_result={}, error_file=None)

    def killed(*args):  # the driver dies while the figure is drawn (matplotlib's first import takes seconds)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "beta_curve", killed)
        with pytest.raises(KeyboardInterrupt):
            tracking.MlflowTrialLogger(spec, location).on_trial_start(0, [], trial)
    resumed = tracking.MlflowTrialLogger(spec, location)  # the next driver, on --resume
    resumed.on_trial_start(0, [], trial)

    client = resumed.client
    runs = client.search_runs([resumed.tracker.experiment_id], "tags.`gkd_tune.trial_id` = 'trial001'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags[tracking.SET_UP_TAG] == "true" and run.data.params["b"] == "2.0"
    assert "beta_curve.png" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
