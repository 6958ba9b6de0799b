import pytest
import torch

from gkd_tune.core import teacher as teacher_module
from gkd_tune.core.models import build_model, load_model, save_model
from gkd_tune.core.teacher import TeacherRecipe, obtain_teacher


def test_teacher_is_trained_once_then_cached(tiny_splits, tmp_path, monkeypatch):
    recipe = TeacherRecipe(epochs=1, batch_size=16)
    net, path, metadata = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, log=lambda m: None)
    assert path.exists() and path.parent == tmp_path and 0 <= metadata["val_acc"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again despite a cached teacher")

    monkeypatch.setattr(teacher_module, "Trainer", no_training)
    again, path_again, _ = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, log=lambda m: None)
    assert path_again == path
    for name, value in net.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])
    # another recipe is another teacher
    with pytest.raises(AssertionError, match="trained again"):
        obtain_teacher(tiny_splits, "resnet8", TeacherRecipe(epochs=2), 0.1, directory=tmp_path, log=lambda m: None)


def test_teacher_checkpoint_is_checked_against_arch_and_classes(tiny_splits, tmp_path):
    save_model(tmp_path / "t.pt", build_model("resnet8", 3), val_acc=0.5)
    net, _, metadata = obtain_teacher(tiny_splits, "resnet8", TeacherRecipe(), 0.1, checkpoint=tmp_path / "t.pt")
    assert net.arch == "resnet8" and metadata["val_acc"] == 0.5
    with pytest.raises(ValueError, match="holds a resnet8, expected resnet20"):
        obtain_teacher(tiny_splits, "resnet20", TeacherRecipe(), 0.1, checkpoint=tmp_path / "t.pt")
    save_model(tmp_path / "t10.pt", build_model("resnet8", 10))
    with pytest.raises(ValueError, match="has 10 classes, the data set has 3"):
        obtain_teacher(tiny_splits, "resnet8", TeacherRecipe(), 0.1, checkpoint=tmp_path / "t10.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_a_damaged_cached_teacher_is_trained_again_once(tiny_splits, tmp_path):
    recipe = TeacherRecipe(epochs=1, batch_size=16)
    _, path, _ = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, log=lambda m: None)
    path.write_bytes(path.read_bytes()[:1000])  # a copy cut short
    printed = []
    _, again, metadata = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, log=printed.append)
    assert again == path and "cannot be read" in printed[0] and "training" in printed[1]
    assert load_model(path, "resnet8", 3)[1]["class_names"] == list(tiny_splits.class_names)


@pytest.mark.slow
def test_a_teacher_training_killed_midway_continues_from_its_last_epoch(tmp_path):
    """As a retried teacher task does on another node: the state kept after each epoch (in the sweep's storage;
    here a dict) is where the next try starts, and the teacher ends as if never interrupted."""
    from gkd_tune.core.data import load_splits
    from gkd_tune.core.teacher import TeacherProgress, TeacherRecipe, obtain_teacher

    splits = load_splits("digits", 0.1)
    recipe = TeacherRecipe(epochs=2, batch_size=128)
    kept = {}

    def restore(key, local):
        if key in kept:
            local.write_bytes(kept[key])
        return key in kept

    progress = TeacherProgress(restore, lambda key, local: kept.__setitem__(key, local.read_bytes()))

    class Killed(Exception):
        pass

    def killed_at_epoch_2(line):
        if "teacher epoch   2/2" in line:  # after epoch 1 was kept, during epoch 2's bookkeeping
            raise Killed

    with pytest.raises(Killed):
        obtain_teacher(splits, "resnet8", recipe, 0.1, directory=tmp_path / "node-a", progress=progress,
                       log=killed_at_epoch_2)
    lines = []
    _, _, resumed = obtain_teacher(splits, "resnet8", recipe, 0.1, directory=tmp_path / "node-b", progress=progress,
                                   log=lines.append)
    assert any("continuing after epoch 1" in line for line in lines), lines
    assert [line.split()[2] for line in lines if "teacher epoch" in line] == ["2/2"]
    _, _, uninterrupted = obtain_teacher(splits, "resnet8", recipe, 0.1, directory=tmp_path / "node-c",
                                         log=lambda line: None)
    assert resumed["val_acc"] == pytest.approx(uninterrupted["val_acc"], abs=1e-9)


def test_the_teacher_trains_with_the_compile_mode_it_is_given_and_the_same_cache_key(tiny_splits, tmp_path,
                                                                                      monkeypatch):
    seen = []

    class Recording(teacher_module.Trainer):
        def __init__(self, distiller, splits, config, *args, **kwargs):
            seen.append(config.compile)
            super().__init__(distiller, splits, config, *args, **kwargs)

    monkeypatch.setattr(teacher_module, "Trainer", Recording)
    recipe = TeacherRecipe(epochs=1, batch_size=16)
    _, path, _ = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, compile="off",
                                log=lambda m: None)
    assert seen == ["off"]
    # how it ran is not what it is: the same recipe under another compile mode finds the cached teacher
    _, again, _ = obtain_teacher(tiny_splits, "resnet8", recipe, 0.1, directory=tmp_path, compile="on",
                                 log=lambda m: None)
    assert again == path and seen == ["off"]
