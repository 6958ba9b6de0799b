"""The distillation loss terms (method.md sections 3-5). Each formula is written here once.

Feature maps are B x C x H x W; teacher tensors arrive detached (the teacher is frozen).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from geomloss import SamplesLoss
from torch import nn

from .sinkhorn import epsilon_schedule, sinkhorn_divergence

FEATURE_MODES = ("points", "spatial")
SINKHORN_SOLVERS = ("torch", "geomloss")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau)), batch mean (Hinton; tau^2 keeps gradient scale)."""
    return F.kl_div(
        F.log_softmax(student_logits / tau, dim=1),
        F.log_softmax(teacher_logits / tau, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * tau**2


def _common_size(*maps: torch.Tensor) -> list[torch.Tensor]:
    """Adaptive average pooling of every map to the smallest H and W among them."""
    height = min(m.shape[-2] for m in maps)
    width = min(m.shape[-1] for m in maps)
    return [m if m.shape[-2:] == (height, width) else F.adaptive_avg_pool2d(m, (height, width)) for m in maps]


def _no_autocast(tensor: torch.Tensor):
    return torch.autocast(tensor.device.type, enabled=False)


class FeatureWasserstein(nn.Module):
    """Debiased Sinkhorn divergence between student and teacher feature maps (eq. 1).

    A learnable 1x1 conv maps the student's channels to the teacher's (trained with the student, like a FitNets
    regressor); adaptive pooling matches H x W. Modes:
      points   per sample, the H*W positions are points in R^C (L2-normalised, so the cost scale does not depend
               on the architecture) with uniform weights;
      spatial  per sample and channel, softmax over positions makes the map a distribution over the pixel grid,
               with the pixel distance (grid scaled to [0, 1]) as ground cost.
    Solvers: `torch` (gkd_tune.sinkhorn: the same divergence, compilable, no host syncs) or `geomloss` (the
    reference). Both have no half-precision path here, so this always runs in float32 outside autocast.
    """

    def __init__(self, student_channels: int, teacher_channels: int, mode: str = "points",
                 blur: float = 0.05, scaling: float = 0.8, solver: str = "torch"):
        super().__init__()
        if mode not in FEATURE_MODES:
            raise ValueError(f"feature mode must be one of {', '.join(FEATURE_MODES)}, got {mode!r}")
        if solver not in SINKHORN_SOLVERS:
            raise ValueError(f"Sinkhorn solver must be one of {', '.join(SINKHORN_SOLVERS)}, got {solver!r}")
        self.mode = mode
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        # the diameter of the support is known (unit sphere / unit square), which spares measuring it every step
        diameter = 2.0 if mode == "points" else 2.0**0.5
        epsilon_schedule(diameter, blur, scaling)  # rejects a blur or scaling neither solver can use
        if solver == "torch":
            self.divergence = partial(sinkhorn_divergence, blur=blur, scaling=scaling, diameter=diameter)
        else:
            self.divergence = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, diameter=diameter,
                                          debias=True, backend="tensorized")

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
        with _no_autocast(student_map):
            student_map = self.adapter(student_map.float())
            student_map, teacher_map = _common_size(student_map, teacher_map.detach().float())
            if self.mode == "points":
                # B x HW x C clouds on the unit sphere
                x = F.normalize(student_map.flatten(2).transpose(1, 2), dim=2).contiguous()
                y = F.normalize(teacher_map.flatten(2).transpose(1, 2), dim=2).contiguous()
                return self.divergence(x, y).mean()
            batch, channels, height, width = student_map.shape
            a = student_map.flatten(2).reshape(batch * channels, -1).softmax(dim=1)
            b = teacher_map.flatten(2).reshape(batch * channels, -1).softmax(dim=1)
            rows, cols = torch.meshgrid(
                torch.linspace(0, 1, height, device=a.device), torch.linspace(0, 1, width, device=a.device),
                indexing="ij",
            )
            grid = torch.stack([rows.flatten(), cols.flatten()], dim=1)[None]  # 1 x HW x 2
            if isinstance(self.divergence, SamplesLoss):
                grid = grid.expand(batch * channels, -1, -1)
                return self.divergence(a, grid, b, grid).mean()
            return self.divergence(grid, grid, a, b).mean()


def linear_head(head: nn.Module) -> nn.Linear | None:
    """The classifier of a global-average-pool + flatten + linear head (every model here), else None."""
    if (isinstance(head, nn.Sequential) and len(head) == 3 and isinstance(head[0], nn.AdaptiveAvgPool2d)
            and head[0].output_size in (1, (1, 1)) and isinstance(head[1], nn.Flatten)
            and isinstance(head[2], nn.Linear)):
        return head[2]
    return None


def _ce_gradient_per_position(logits: torch.Tensor, labels: torch.Tensor, classifier: nn.Linear,
                              positions: int) -> torch.Tensor:
    """dCE_sum/df at every position of a pooled-linear head: (softmax(z) - onehot(y)) W / (H*W); B x C.

    scatter_ builds the one-hot without F.one_hot's device-to-host check of the label range.
    """
    probabilities = logits.float().softmax(dim=1)
    onehot = torch.zeros_like(probabilities).scatter_(1, labels[:, None], 1.0)
    return (probabilities - onehot) @ classifier.weight.float() / positions


class GradientMatching(nn.Module):
    """Match the CE gradient w.r.t. the last feature map of teacher and student (eqs. 2-4).

    grad_T = dCE_sum(head_T(f_T), y) / df_T with the teacher frozen; grad_S = dCE_sum(z_S, y) / df_S, itself
    differentiated when the student learns. Sum-reduced CE keeps each sample's gradient its own. A learnable 1x1
    conv remaps grad_T to the student's channels; adaptive pooling matches H x W.
    Loss = r * mean_i ||grad_T' - grad_S||_2 + (1 - r) * (1 - mean_i cos).

    Every head here is global average pool + linear, so both gradients have a closed form, the same vector at
    every position (see _ce_gradient_per_position): no double backward, and the 1x1 remap is one small matmul.
    Any other head takes the autograd path (a backward through the teacher's head, and one with create_graph
    through the student's); tests hold the two to each other. Float32 outside autocast: the gradients are small
    and their difference is what is learnt.
    """

    def __init__(self, teacher_channels: int, student_channels: int, r: float = 0.5):
        super().__init__()
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"r must be in [0, 1], got {r}")
        self.r = r
        self.remap = nn.Conv2d(teacher_channels, student_channels, kernel_size=1, bias=False)

    def forward(self, student_map: torch.Tensor, student_logits: torch.Tensor, student_head: nn.Module,
                teacher_map: torch.Tensor, teacher_head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        student_classifier, teacher_classifier = linear_head(student_head), linear_head(teacher_head)
        with _no_autocast(student_map), torch.enable_grad():
            if student_classifier is None or teacher_classifier is None:
                return self.match(*self.autograd_gradients(student_map, student_logits, teacher_map, teacher_head,
                                                           labels))
            teacher_map = teacher_map.detach().float()
            teacher_logits = teacher_classifier(teacher_map.mean(dim=(2, 3)))
            teacher_grad = _ce_gradient_per_position(teacher_logits, labels, teacher_classifier,
                                                     teacher_map.shape[-2] * teacher_map.shape[-1])
            student_grad = _ce_gradient_per_position(student_logits, labels, student_classifier,
                                                     student_map.shape[-2] * student_map.shape[-1])
            remapped = teacher_grad @ self.remap.weight.flatten(1).T  # the 1x1 conv of a constant map
            size = [*student_grad.shape, min(student_map.shape[-2], teacher_map.shape[-2]),
                    min(student_map.shape[-1], teacher_map.shape[-1])]
            return self.match(remapped[:, :, None, None].expand(size), student_grad[:, :, None, None].expand(size))

    def autograd_gradients(self, student_map, student_logits, teacher_map, teacher_head, labels):
        """(remapped grad_T, grad_S) as maps, by autograd: for any head."""
        teacher_leaf = teacher_map.detach().float().requires_grad_()
        teacher_ce = F.cross_entropy(teacher_head(teacher_leaf), labels, reduction="sum")
        (teacher_grad,) = torch.autograd.grad(teacher_ce, teacher_leaf)
        student_ce = F.cross_entropy(student_logits.float(), labels, reduction="sum")
        (student_grad,) = torch.autograd.grad(student_ce, student_map, create_graph=True)
        return self.remap(teacher_grad), student_grad.float()

    def match(self, teacher_grad: torch.Tensor, student_grad: torch.Tensor) -> torch.Tensor:
        """r * Euclidean distance + (1 - r) * (1 - cosine), each averaged over the batch."""
        teacher_grad, student_grad = (g.flatten(1) for g in _common_size(teacher_grad, student_grad))
        distance = (teacher_grad - student_grad).norm(dim=1).mean()
        cosine = F.cosine_similarity(teacher_grad, student_grad, dim=1).mean()
        return self.r * distance + (1 - self.r) * (1 - cosine)
