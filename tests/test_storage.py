import pytest

from gkd_tune.sweep.storage import SweepStorage


def test_local_storage_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = SweepStorage.for_sweep("./runs", "sweep")
    assert storage.location == f"{tmp_path}/runs/sweep" and storage.name == "sweep"
    assert storage.tune_path == storage.location and storage.tune_filesystem is None  # Ray Tune opens it itself


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_put_get_and_experiment_detection(tmp_path, as_uri):
    root = f"file://{tmp_path}/shared" if as_uri else str(tmp_path / "shared")
    storage = SweepStorage.for_sweep(root, "sweep")
    assert storage.location == f"{root}/sweep"
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


def test_a_uri_keeps_its_query_string_at_the_end_of_every_location_derived_from_it():
    storage = SweepStorage.for_sweep("s3://bucket/runs/?endpoint_override=127.0.0.1:9000&scheme=http", "sweep")
    query = "?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.location == f"s3://bucket/runs/sweep{query}"
    assert storage.name == "sweep"
    assert storage.child("teachers").child("resnet8").location == f"s3://bucket/runs/sweep/teachers/resnet8{query}"
    assert storage.describe("teacher.pt") == f"s3://bucket/runs/sweep/teacher.pt{query}"
    filesystem, path = storage._resolve("teacher.pt")  # pyarrow reads the query: the endpoint, no AWS lookup
    assert path == "bucket/runs/sweep/teacher.pt" and filesystem.type_name == "s3"
    # Ray Tune gets the path and this filesystem, which creates no folder marker above a folder that exists
    assert storage.tune_path == "bucket/runs/sweep"
    options = storage.tune_filesystem.__reduce__()[1][0]
    assert options["check_directory_existence_before_creation"] and options["endpoint_override"] == "127.0.0.1:9000"


def test_a_copy_inside_the_storage_and_a_folder_removed_with_its_files(tmp_path):
    storage = SweepStorage.for_sweep(f"file://{tmp_path}", "sweep")
    local = tmp_path / "t.pt"
    local.write_bytes(b"weights")
    storage.put(local, "teacher-progress/teacher.pt")
    storage.copy("teacher-progress/teacher.pt", "teacher.pt")
    storage.remove("teacher-progress")
    assert (tmp_path / "sweep" / "teacher.pt").read_bytes() == b"weights"
    assert not (tmp_path / "sweep" / "teacher-progress").exists()


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

    from gkd_tune.core import files

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
