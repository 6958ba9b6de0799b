from pathlib import Path

import numpy as np
import pytest
import torch

from gkd_tune.core.models import MODELS, build_model

FINAL_MAP_SIZE = {"resnet34": 4, "resnet50": 4, "mobilenet_v2": 4, "mobilenet_v2_half": 4, "vgg16_bn": 2}
FEATURE_CHANNELS = {"resnet34": 512, "resnet50": 2048, "mobilenet_v2": 1280, "vgg16_bn": 512, "resnet8x4": 256,
                    "resnet32x4": 256, "wrn_16_2": 128, "wrn_40_2": 128, "resnet20": 64}


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_and_split_equals_forward(name):
    torch.manual_seed(0)
    net = build_model(name, num_classes=7).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map, logits = net(images)
        recomposed = net.head(net.features(images))
    size = FINAL_MAP_SIZE.get(name, 8)
    assert feature_map.shape == (2, net.feature_channels, size, size)
    if name in FEATURE_CHANNELS:
        assert net.feature_channels == FEATURE_CHANNELS[name]
    assert logits.shape == (2, 7)
    torch.testing.assert_close(recomposed, logits)


def test_depths_differ_in_size():
    sizes = {n: sum(p.numel() for p in build_model(n, 10).parameters()) for n in ("resnet8", "resnet20", "resnet56")}
    assert sizes["resnet8"] < sizes["resnet20"] < sizes["resnet56"]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet7'.*resnet8.*wrn_40_2"):
        build_model("resnet7", 10)


def test_a_saved_student_classifies_raw_images_alone(tiny_splits, tmp_path):
    from gkd_tune.core.distillers import DistillConfig, build_distiller
    from gkd_tune.core.loop import Trainer, TrainConfig
    from gkd_tune.core.models import load_student, save_model

    trainer = Trainer(build_distiller(DistillConfig(method="student"), build_model("resnet8", 3), None), tiny_splits,
                      TrainConfig(epochs=1, batch_size=16))
    trainer.run()
    # class names as a data cache gives them back: numpy strings, which weights_only loading refuses unless converted
    card = {**trainer.input_card, "class_names": list(np.array(["a", "b", "c"]))}
    save_model(tmp_path / "student.pt", trainer.distiller.student.cpu(), val_acc=np.float64(0.5), **card)
    expected = torch.cat([trainer.distiller(images).argmax(1) for images, _ in trainer.val_loader])

    student = load_student(tmp_path / "student.pt")
    raw = tiny_splits.val.images  # uint8, N x 3 x 32 x 32, as a user would have them
    assert torch.equal(student.predict(raw), expected)
    assert torch.equal(student.predict(raw.transpose(0, 2, 3, 1)), expected)  # N x H x W x 3 too
    assert student.class_names == ["a", "b", "c"] and type(student.metadata["val_acc"]) is float
    save_model(tmp_path / "bare.pt", build_model("resnet8", 3))
    with pytest.raises(ValueError, match="has no mean, std, image_size, class_names"):
        load_student(tmp_path / "bare.pt")


class Planted:
    """An object a gkd-tune file never holds: its pickle names this class, which weights_only refuses."""


def test_a_file_with_other_python_objects_is_refused_as_not_a_gkd_tune_file(tmp_path, tiny_splits):
    """A planted pickle (in a sweep's storage, say) is never loaded with weights_only=False, and the message does not
    advise it."""
    import torch

    from gkd_tune.core.distillers import DistillConfig, build_distiller
    from gkd_tune.core.loop import Trainer, TrainConfig
    from gkd_tune.core.models import build_model, load_model

    torch.save({"arch": "resnet8", "num_classes": 3, "payload": Planted()}, tmp_path / "planted.pt")
    for load in (lambda: load_model(tmp_path / "planted.pt"),
                 lambda: Trainer(build_distiller(DistillConfig(method="student"), build_model("resnet8", 3), None),
                                 tiny_splits, TrainConfig(epochs=1, batch_size=16)).load(tmp_path / "planted.pt")):
        with pytest.raises(ValueError, match="planted.pt is not a gkd-tune checkpoint or model file") as refused:
            load()
        assert "weights_only=False" not in str(refused.value) and "\n" not in str(refused.value)


def small_factory(num_classes):
    """A package.module:factory model of a user's: (features, head)."""
    from torch import nn

    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1))
    return features, nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))


def not_split(num_classes):
    import torch

    return torch.nn.Linear(3, num_classes)


@pytest.mark.parametrize("name, channels", [("timm:resnet10t", 512), ("torchvision:mobilenet_v3_small", 576),
                                            ("torchvision:resnet18", 512), ("test_models:small_factory", 12)])
def test_a_model_by_reference_is_split_into_features_and_head(name, channels, monkeypatch):
    import sys

    import torch

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sys.modules.pop("test_models", None)
    net = build_model(name, 7).eval()  # (dropout in some heads)
    feature_map, logits = net(torch.randn(2, 3, 32, 32))
    assert net.arch == name and net.feature_channels == channels == feature_map.shape[1]
    assert logits.shape == (2, 7) and torch.allclose(net.head(feature_map), logits)
    names = [n for n, _ in net.named_parameters()]
    assert len(names) == len(set(names)) and all(p.requires_grad for p in net.parameters())  # each once
    if name.startswith("timm:"):  # timm's head is over the features' net: its parameters are there, once
        assert not list(net.head.parameters()) and any("fc" in n for n in names)


@pytest.mark.parametrize("name, message", [
    ("timm:resnet10x", r"student: timm:resnet10x: timm has no model 'resnet10x'"),
    ("torchvision:swin_t", r"torchvision's swin_t has no known split into features and head; supported: resnet\*"),
    ("torchvision:resnet9", r"torchvision has no classification model 'resnet9'"),
    ("no_such_package:make", r"cannot import make from no_such_package"),
    ("resnet7", r"student: must be one of resnet34, .*, or timm:NAME, torchvision:NAME or package.module:factory, "
                r"got 'resnet7'"),
])
def test_a_model_reference_that_cannot_be_built_is_named_in_the_space(name, message):
    from gkd_tune.sweep.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=message):
        parse_space({"name": "s", "student": name})


def test_a_factory_that_returns_no_split_is_one_line(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    with pytest.raises(ValueError, match=r"the factory must return a module with `features` and `head`, or a "
                                         r"\(features, head\) pair; it returned Linear"):
        build_model("test_models:not_split", 3)


def test_weights_of_timm_or_torchvision_load_into_a_model_by_reference(tmp_path):
    """A teacher trained elsewhere: its framework's own state_dict (bare, or under "state_dict") is accepted."""
    import timm
    from torchvision import models

    from gkd_tune.core.models import load_model

    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    original = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    torch.save(original.state_dict(), tmp_path / "timm.pth")
    net, metadata = load_model(tmp_path / "timm.pth", "timm:resnet10t", 10)
    assert torch.allclose(net.eval()(x)[1], original(x), atol=1e-6) and metadata == {"weights_from": str(
        tmp_path / "timm.pth")}

    resnet = models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": resnet.state_dict(), "epoch": 90}, tmp_path / "tv.pth")
    net, _ = load_model(tmp_path / "tv.pth", "torchvision:resnet18", 10)
    assert torch.allclose(net.eval()(x)[1], resnet(x), atol=1e-6)


def test_weights_that_do_not_fit_are_one_line_naming_the_keys(tmp_path):
    from torchvision import models

    from gkd_tune.core.models import load_model

    torch.save(models.resnet18(num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(ValueError, match=r"imagenet.pth: its weights do not fit torchvision:resnet18: of another "
                                         r"shape: fc.weight \(1000, 512\) vs \(10, 512\), "
                                         r"fc.bias \(1000,\) vs \(10,\)$"):
        load_model(tmp_path / "imagenet.pth", "torchvision:resnet18", 10)
    with pytest.raises(ValueError, match=r"its weights do not fit resnet8: missing: .*\(\+\d+ more\); unexpected: "):
        load_model(tmp_path / "imagenet.pth", "resnet8", 10)
    with pytest.raises(ValueError, match=r"holds bare weights, not a gkd-tune model file: name its architecture"):
        load_model(tmp_path / "imagenet.pth")


def test_a_student_starts_from_weights_for_another_class_count_with_a_fresh_classifier(tmp_path):
    from torchvision import models

    from gkd_tune.core.models import initial_student

    imagenet = models.resnet18(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pth")
    torch.manual_seed(0)
    student = initial_student(tmp_path / "imagenet.pth", "torchvision:resnet18", 10)
    assert torch.equal(student.features[0].weight, imagenet.conv1.weight)  # the backbone, loaded
    assert student.head[2].weight.shape == (10, 512)  # the classifier, fresh for 10 classes
    # a gkd-tune model file starts a student too, and a file for another arch is refused in one line
    from gkd_tune.core.models import save_model

    save_model(tmp_path / "zoo.pt", build_model("resnet8", 4))
    assert initial_student(tmp_path / "zoo.pt", "resnet8", 10).head[2].weight.shape == (10, 64)
    with pytest.raises(ValueError, match=r"zoo.pt holds a resnet8, the student is a resnet14"):
        initial_student(tmp_path / "zoo.pt", "resnet14", 10)
    with pytest.raises(ValueError, match=r"imagenet.pth: its weights do not fit timm:resnet10t: missing: "):
        initial_student(tmp_path / "imagenet.pth", "timm:resnet10t", 10)


def test_student_weights_in_a_space_must_exist(tmp_path):
    from gkd_tune.sweep.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=r"student_weights: file .*nothing.pt does not exist"):
        parse_space({"name": "s", "student_weights": str(tmp_path / "nothing.pt")})
    (tmp_path / "w.pt").write_bytes(b"")
    assert parse_space({"name": "s", "student_weights": str(tmp_path / "w.pt")}).student_weights == str(
        tmp_path / "w.pt")
