"""CIFAR models split into ``features`` (input -> last conv map) and ``head`` (map -> logits).

The distillation losses act on the feature map and on the head (method.md section 1), so every model exposes
them explicitly: ``features(x)`` is B x C x H x W, ``head(f)`` is global average pool + flatten + one linear
layer, and ``forward(x)`` returns ``(features, logits)``.

The paper's nets are CIFAR variants of torchvision's models; the small nets are the KD-benchmark ones of
RepDistiller / mdistiller (resnet8..56, resnet8x4/32x4, wrn_16_2/wrn_40_2, MobileNetV2 at width 0.5).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import error_line
from .files import load_checked, save_atomically


class SplitNet(nn.Module):
    arch = ""  # the MODELS name or model reference it was built from; set by build_model

    def __init__(self, features: nn.Module, feature_channels: int, num_classes: int, head: nn.Module | None = None):
        super().__init__()
        self.features = features
        self.feature_channels = feature_channels
        self.num_classes = num_classes
        # the zoo's head (pool + linear: the gradient term's closed form); a model of the user's brings its own
        self.head = head if head is not None else nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(feature_channels, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.features(x)
        return feature_map, self.head(feature_map)


# ------------------------------------------------------------------------ torchvision's nets, CIFAR variants


# torchvision.models is imported when a net is built: its import (torch._dynamo, through torchvision.ops) costs a
# second and a half that a command ending on bad input before any net does not wait for.
def _torchvision_resnet(name: str) -> Callable[[int], SplitNet]:
    def build(num_classes: int) -> SplitNet:
        from torchvision import models

        net = getattr(models, name)(num_classes=num_classes)
        # 32x32 inputs: a 3x3 stride-1 stem and no max-pool keep the final map at 4x4
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        features = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3, net.layer4)
        return SplitNet(features, net.fc.in_features, num_classes)

    return build


def _mobilenet_v2(width: float) -> Callable[[int], SplitNet]:
    def build(num_classes: int) -> SplitNet:
        from torchvision import models

        net = models.mobilenet_v2(num_classes=num_classes, width_mult=width)
        net.features[0][0].stride = (1, 1)
        # the first stride-2 inverted-residual block runs at stride 1 too: 32 / 8 -> a 4x4 final map
        first_downsampling = next(block for block in net.features[1:] if getattr(block, "stride", 1) == 2)
        first_downsampling.conv[1][0].stride = (1, 1)
        first_downsampling.stride = 1
        return SplitNet(net.features, net.last_channel, num_classes)

    return build


def _vgg16_bn(num_classes: int) -> SplitNet:
    from torchvision import models

    layers = list(models.vgg16_bn().features)
    assert isinstance(layers[-1], nn.MaxPool2d)
    # without the last max-pool the final map is 2x2 x 512; the head is pool + one linear layer
    return SplitNet(nn.Sequential(*layers[:-1]), 512, num_classes)


# -------------------------------------------------------------------------------- KD-benchmark CIFAR nets


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNets (He et al. 2016, option B shortcut)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation block of the wide ResNets (Zagoruyko & Komodakis 2016), dropout 0."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        return self.conv2(torch.relu(self.bn2(out))) + residual


def _stages(block: type[nn.Module], in_channels: int, widths: list[int], blocks_per_stage: int) -> list[nn.Module]:
    """Three stages of `blocks_per_stage` blocks; every stage after the first halves the resolution."""
    layers: list[nn.Module] = []
    for stage, width in enumerate(widths):
        for i in range(blocks_per_stage):
            layers.append(block(in_channels, width, 2 if stage > 0 and i == 0 else 1))
            in_channels = width
    return layers


def _init_conv_bn(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _cifar_resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[[int], SplitNet]:
    """RepDistiller's CIFAR ResNets: depth = 6n + 2, widths = (stem, stage1, stage2, stage3); final map 8x8."""
    assert (depth - 2) % 6 == 0

    def build(num_classes: int) -> SplitNet:
        stem = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        features = nn.Sequential(*stem, *_stages(BasicBlock, widths[0], list(widths[1:]), (depth - 2) // 6))
        _init_conv_bn(features)
        return SplitNet(features, widths[3], num_classes)

    return build


def _wide_resnet(depth: int, widen: int) -> Callable[[int], SplitNet]:
    """WRN-depth-widen: depth = 6n + 4; the final BN + ReLU belong to the features; final map 8x8."""
    assert (depth - 4) % 6 == 0

    def build(num_classes: int) -> SplitNet:
        widths = [16 * widen, 32 * widen, 64 * widen]
        features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False),
            *_stages(WideBlock, 16, widths, (depth - 4) // 6),
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(inplace=True),
        )
        _init_conv_bn(features)
        return SplitNet(features, widths[-1], num_classes)

    return build


MODELS: dict[str, Callable[[int], SplitNet]] = {
    "resnet34": _torchvision_resnet("resnet34"),
    "resnet50": _torchvision_resnet("resnet50"),
    "vgg16_bn": _vgg16_bn,
    "mobilenet_v2": _mobilenet_v2(1.0),
    "mobilenet_v2_half": _mobilenet_v2(0.5),
    "resnet8": _cifar_resnet(8, (16, 16, 32, 64)),
    "resnet14": _cifar_resnet(14, (16, 16, 32, 64)),
    "resnet20": _cifar_resnet(20, (16, 16, 32, 64)),
    "resnet32": _cifar_resnet(32, (16, 16, 32, 64)),
    "resnet56": _cifar_resnet(56, (16, 16, 32, 64)),
    "resnet8x4": _cifar_resnet(8, (32, 64, 128, 256)),
    "resnet32x4": _cifar_resnet(32, (32, 64, 128, 256)),
    "wrn_16_2": _wide_resnet(16, 2),
    "wrn_40_2": _wide_resnet(40, 2),
}


# ------------------------------------------------------------------------ the user's models, by reference

REFERENCE_FORMS = "timm:NAME, torchvision:NAME or package.module:factory"
# torchvision's families whose split (features | head) is known: the attribute names of their parts
TORCHVISION_FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "vgg", "efficientnet",
                        "convnext")


def reference_problem(name: str) -> str | None:
    """Why `name` is not a model reference that can be built here (None: it can), without building it."""
    scheme, _, target = name.partition(":")
    if not target:
        return f"is neither a model of the zoo nor a reference ({REFERENCE_FORMS})"
    if scheme == "timm":
        try:
            import timm
        except ImportError:
            return "needs timm (pip install timm)"
        return None if timm.is_model(target) else f"timm has no model {target!r} (see timm.list_models())"
    if scheme == "torchvision":
        from torchvision import models

        if target not in models.list_models(module=models):
            return f"torchvision has no classification model {target!r} (see torchvision.models.list_models())"
        if not target.startswith(TORCHVISION_FAMILIES):
            return (f"torchvision's {target} has no known split into features and head; supported: "
                    f"{', '.join(f + '*' for f in TORCHVISION_FAMILIES)} (or a package.module:factory of your own)")
        return None
    try:
        factory = getattr(importlib.import_module(scheme), target)
    except (ImportError, AttributeError) as error:
        return f"cannot import {target} from {scheme}: {error_line(error)}"
    return None if callable(factory) else f"{name} is not callable"


def _torchvision_split(name: str, num_classes: int, weights: dict | None, fit: tuple
                       ) -> tuple[nn.Module, nn.Module]:
    from torchvision import models

    net = models.get_model(name, weights=None, num_classes=num_classes)  # no download: weights come from files
    if weights is not None:
        load_weights(net, weights, *fit)
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                 net.layer4)
        return features, nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
    if name.startswith("mobilenet_v2"):
        return net.features, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier)
    if name.startswith("convnext"):
        return net.features, nn.Sequential(net.avgpool, net.classifier)  # its classifier flattens
    return net.features, nn.Sequential(net.avgpool, nn.Flatten(), net.classifier)  # mobilenet_v3, vgg, efficientnet


class _TimmFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.forward_features(x)


class _TimmHead(nn.Module):
    """timm's forward_head over the features' net: the net's parameters are registered once, under features."""

    def __init__(self, net: nn.Module):
        super().__init__()
        object.__setattr__(self, "net", net)

    def forward(self, feature_map):
        return self.net.forward_head(feature_map)


def _from_reference(name: str, num_classes: int, weights: dict | None = None, fit: tuple = ("", "", None)
                    ) -> SplitNet:
    if ":" not in name:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}, or {REFERENCE_FORMS}")
    problem = reference_problem(name)
    if problem:
        raise ValueError(f"model {name!r}: {problem}")
    scheme, _, target = name.partition(":")
    if scheme == "timm":
        import timm

        net = timm.create_model(target, pretrained=False, num_classes=num_classes)
        if weights is not None:
            load_weights(net, weights, *fit)
        features, head = _TimmFeatures(net), _TimmHead(net)
    elif scheme == "torchvision":
        features, head = _torchvision_split(target, num_classes, weights, fit)
    else:
        made = getattr(importlib.import_module(scheme), target)(num_classes=num_classes)
        if weights is not None:  # the factory's own module, or its (features, head) as a SplitNet's keys
            load_weights(made if isinstance(made, nn.Module) else nn.ModuleDict(
                {"features": made[0], "head": made[1]}), weights, *fit)
        if isinstance(made, tuple) and len(made) == 2:
            features, head = made
        elif hasattr(made, "features") and hasattr(made, "head"):
            features, head = made.features, made.head
        else:
            raise ValueError(f"model {name!r}: the factory must return a module with `features` and `head`, or a "
                             f"(features, head) pair; it returned {type(made).__name__}")
    training = features.training
    with torch.no_grad():  # the channels of the feature map, from one small input (BN statistics untouched)
        channels = features.eval()(torch.zeros(1, 3, 32, 32)).shape[1]
    features.train(training)
    return SplitNet(features, channels, num_classes, head=head)


def build_model(name: str, num_classes: int, weights: dict | None = None, source: str = "",
                new_classifier: bool = False) -> SplitNet:
    """A model: one of the CIFAR zoo by name (see MODELS), or a reference to the user's (timm:NAME,
    torchvision:NAME, package.module:factory), never with downloaded weights. `weights`: a state_dict from
    `source` with the model's own keys (timm's or torchvision's for a reference); `new_classifier`: a student
    initialised from weights for another class count keeps its fresh classifier (load_weights)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    fit = (source, name, num_classes if new_classifier else None)
    if name in MODELS:
        net = MODELS[name](num_classes)
        if weights is not None:
            load_weights(net, weights, *fit)
    else:
        net = _from_reference(name, num_classes, weights, fit)
    net.arch = name
    return net


def bare_weights(saved) -> dict | None:
    """The state_dict in a file that is not a gkd-tune model file: the mapping itself, or under "state_dict" or
    "model" (the usual checkpoint layouts); None for a gkd-tune file or anything else."""
    if not isinstance(saved, dict) or "arch" in saved:
        return None
    for candidate in (saved, saved.get("state_dict"), saved.get("model")):
        if isinstance(candidate, dict) and candidate and all(isinstance(v, torch.Tensor) for v in candidate.values()):
            return candidate
    return None


def load_weights(module: nn.Module, weights: dict, source: str, name: str, new_classes: int | None = None) -> None:
    """weights into module, all or nothing: every mismatch named in one line. With `new_classes`, the classifier's
    tensors (those whose first dimension is the class count, and another in the weights) keep their fresh values:
    weights of an ImageNet model start a student of 10 classes."""
    own = module.state_dict()
    if new_classes is not None:
        kept = {k for k in own if k in weights and own[k].ndim and own[k].shape[0] == new_classes
                and weights[k].shape[0] != new_classes and weights[k].shape[1:] == own[k].shape[1:]}
        weights = {**weights, **{k: own[k] for k in kept}}
    problems = []
    for what, keys in (("missing", [k for k in own if k not in weights]),
                       ("unexpected", [k for k in weights if k not in own]),
                       ("of another shape", [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
                                             if k in weights and weights[k].shape != own[k].shape])):
        if keys:
            problems.append(f"{what}: {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
    if problems:
        raise ValueError(f"{source}: its weights do not fit {name}: {'; '.join(problems)}")
    module.load_state_dict(weights)


def initial_student(path: Path, arch: str, num_classes: int) -> SplitNet:
    """A student of `arch` started from the weights in `path` (a gkd-tune model file, or the model's own
    state_dict), its classifier fresh where the weights were for another class count."""
    try:
        saved = load_checked(path, map_location="cpu")
    except FileNotFoundError:
        raise ValueError(f"student weights {path} do not exist") from None
    weights = bare_weights(saved)
    if weights is None and isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        weights = saved["state_dict"]  # a gkd-tune model file: SplitNet's own keys
        if saved.get("arch") != arch:
            raise ValueError(f"{path} holds a {saved.get('arch')}, the student is a {arch}")
        net = build_model(arch, num_classes)
        load_weights(net, weights, str(path), arch, num_classes)
        return net
    if weights is None:
        raise ValueError(f"{path} holds no weights (a state_dict, or a gkd-tune model file)")
    return build_model(arch, num_classes, weights=weights, source=str(path), new_classifier=True)


def file_part(name: str) -> str:
    """A model name as a file or folder name: 'timm:resnet10t' -> 'timm-resnet10t'."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


class ModelNames(tuple):
    """The zoo's names, as a setting's choices that also admit every buildable model reference."""

    also = REFERENCE_FORMS

    def __contains__(self, name) -> bool:
        return tuple.__contains__(self, name) or (isinstance(name, str) and reference_problem(name) is None)

    def problem(self, name) -> str:
        if isinstance(name, str) and ":" in name:
            return f"{name}: {reference_problem(name)}"
        return f"must be one of {', '.join(self)}, or {self.also}, got {name!r}"


MODEL_NAMES = ModelNames(MODELS)


def model_name(text: str) -> str:
    """argparse's type for a model flag: the name, or the reason it is none."""
    import argparse

    if text not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(MODEL_NAMES.problem(text))
    return text


def save_model(path: Path, net: SplitNet, **metadata) -> None:
    """A model file that `load_model` rebuilds: arch, class count, weights and the metadata as plain Python values
    (numpy scalars, such as class names read from a cache, would not load with weights_only=True)."""
    metadata = json.loads(json.dumps(metadata, default=lambda value: value.item() if hasattr(value, "item") else
                                     str(value)))
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_atomically({"arch": net.arch, "num_classes": net.num_classes, "state_dict": state, "metadata": metadata},
                    path)


def load_model(path: Path, arch: str | None = None, num_classes: int | None = None) -> tuple[SplitNet, dict]:
    """(model, metadata) from a `save_model` file, loaded with weights_only=True; checks arch and class count.
    Given `arch` and `num_classes`, a bare state_dict (timm's or torchvision's own keys for a model by reference,
    or `{"state_dict": ...}` / `{"model": ...}` around one) is loaded too; its metadata says where it came from."""
    try:
        saved = load_checked(path, map_location="cpu")
    except FileNotFoundError:
        raise ValueError(f"model file {path} does not exist") from None
    except ValueError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not a gkd-tune model file: {error_line(error)}") from None
    weights = bare_weights(saved)
    if weights is not None:
        if arch is None or num_classes is None:
            raise ValueError(f"{path} holds bare weights, not a gkd-tune model file: name its architecture")
        return build_model(arch, num_classes, weights=weights, source=str(path)), {"weights_from": str(path)}
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a gkd-tune model file: it holds a {type(saved).__name__}")
    try:
        found_arch, found_classes = saved["arch"], saved["num_classes"]
    except Exception as error:
        raise ValueError(f"{path} is not a gkd-tune model file: {error_line(error)}") from None
    if arch is not None and found_arch != arch:
        raise ValueError(f"{path} holds a {found_arch}, expected {arch}")
    if num_classes is not None and found_classes != num_classes:
        raise ValueError(f"{path} has {found_classes} classes, the data set has {num_classes}")
    net = build_model(found_arch, found_classes)
    net.load_state_dict(saved["state_dict"])
    return net, saved["metadata"]


@dataclass
class Student:
    """A trained model ready to classify raw images: the net and what it was trained on (load_student)."""

    net: SplitNet
    metadata: dict  # val_acc, epoch, params, mean, std, image_size, class_names, dataset

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    @torch.no_grad()
    def predict(self, images) -> torch.Tensor:
        """Class indices (on the CPU) of uint8 images: N x 3 x H x W (gkd_tune.core.data's layout) or N x H x W x 3
        (PIL, numpy), or one image without N; resized to the training size and normalised as in training, on the
        device the net is on (`student.net.to("cuda")` classifies there)."""
        device = next(self.net.parameters()).device
        x = torch.as_tensor(images).to(device)
        x = x[None] if x.ndim == 3 else x
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float() / 255.0
        size = self.metadata["image_size"]
        if tuple(x.shape[-2:]) != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.metadata["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.metadata["std"], device=device).view(1, -1, 1, 1)
        return self.net.eval()((x - mean) / std)[1].argmax(1).cpu()


class ImagesToLogits(nn.Module):
    """A student as a model to ship: uint8 images N x 3 x H x W at its training size in, logits out, its training
    normalisation inside (MLflow's PyTorch model, torch.export and ONNX take it as it is)."""

    def __init__(self, student: Student):
        super().__init__()
        self.net = student.net
        self.image_size = student.metadata["image_size"]
        self.register_buffer("mean", torch.tensor(student.metadata["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(student.metadata["std"], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() / 255.0 - self.mean) / self.std)[1]


def load_student(path: Path) -> Student:
    """A student file of a sweep trial or a `train` run, ready to `predict`."""
    net, metadata = load_model(path)
    missing = [k for k in ("mean", "std", "image_size", "class_names") if k not in metadata]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} (saved by an older gkd-tune, or not a student): use "
                         f"load_model and normalise as its training did")
    return Student(net, metadata)
