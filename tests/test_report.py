from types import SimpleNamespace

from gkd_tune.report import checkpoint_location, mlflow_ui_hint


def test_a_sqlite_store_needs_mlflow_ui_with_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = mlflow_ui_hint("sqlite:///mlflow.db", "3")
    assert hint.startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db ")
    assert hint.endswith("http://127.0.0.1:5000/#/experiments/3")


def test_a_tracking_server_is_already_the_ui():
    hint = mlflow_ui_hint("http://127.0.0.1:5000/", "7")
    assert hint.startswith("open http://127.0.0.1:5000/#/experiments/7") and "cluster/README.md" in hint
    assert "mlflow ui" not in hint


def checkpoint(type_name, path):
    return SimpleNamespace(filesystem=SimpleNamespace(type_name=type_name), path=path)


def test_checkpoint_locations_can_be_typed_elsewhere():
    assert checkpoint_location(checkpoint("local", "/runs/s/t/checkpoint_000003")) == "/runs/s/t/checkpoint_000003"
    assert checkpoint_location(checkpoint("s3", "bucket/runs/s/t/c")) == "s3://bucket/runs/s/t/c"
    assert checkpoint_location(checkpoint("gcs", "bucket/runs/s/t/c")) == "gs://bucket/runs/s/t/c"
