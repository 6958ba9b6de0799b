import pytest

from gkd_tune.storage import SweepStorage


def test_local_storage_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = SweepStorage.for_sweep("./runs", "sweep")
    assert storage.location == f"{tmp_path}/runs/sweep" and storage.parent == f"{tmp_path}/runs"


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_put_get_and_experiment_detection(tmp_path, as_uri):
    root = f"file://{tmp_path}/shared" if as_uri else str(tmp_path / "shared")
    storage = SweepStorage.for_sweep(root, "sweep")
    assert storage.location == f"{root}/sweep" and storage.parent == root
    assert not storage.exists("teacher.pt") and not storage.has_experiment()  # nothing there yet, not even the folder

    local = tmp_path / "teacher.pt"
    local.write_bytes(b"weights")
    storage.put(local, "teacher.pt")
    assert storage.exists("teacher.pt")
    assert (tmp_path / "shared" / "sweep" / "teacher.pt").read_bytes() == b"weights"
    copy = storage.get("teacher.pt", tmp_path / "elsewhere" / "t.pt")
    assert copy.read_bytes() == b"weights"

    assert not storage.has_experiment()
    (tmp_path / "shared" / "sweep" / "experiment_state-2026.json").write_text("{}")
    assert storage.has_experiment()


def test_missing_file_is_named(tmp_path):
    storage = SweepStorage.for_sweep(str(tmp_path), "sweep")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/sweep/teacher.pt does not exist"):
        storage.get("teacher.pt", tmp_path / "t.pt")
