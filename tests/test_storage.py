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


def test_a_save_on_a_full_disk_says_so_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    import pytest
    import torch

    from gkd_tune import files

    def torch_on_a_full_disk(obj, path):
        open(path, "wb").write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 57216 vs 57112")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 10, 0))
    with pytest.raises(OSError, match=r"no space left on the device of .* \(writing trainer.pt\)") as raised:
        files.save_atomically({}, tmp_path / "trainer.pt")
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10, 0, 10 << 30))  # space left: the error itself
    with pytest.raises(RuntimeError, match="unexpected pos"):
        files.save_atomically({}, tmp_path / "trainer.pt")
