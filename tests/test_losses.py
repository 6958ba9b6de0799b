import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gkd_tune.core.losses import FeatureWasserstein, GradientMatching, kd_loss, linear_head
from gkd_tune.core.models import build_model


def test_kd_equals_the_formula():
    torch.manual_seed(0)
    student, teacher, tau = torch.randn(5, 7), torch.randn(5, 7), 3.0
    p_t, p_s = F.softmax(teacher / tau, 1), F.softmax(student / tau, 1)
    expected = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(kd_loss(student, teacher, tau), expected)
    assert kd_loss(teacher, teacher, tau).abs() < 1e-6


def identity_adapter(loss: FeatureWasserstein):
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.eye(loss.adapter.weight.shape[0]).view_as(loss.adapter.weight))


@pytest.mark.parametrize("mode", ["points", "spatial"])
def test_sinkhorn_is_zero_for_identical_maps_and_positive_otherwise(mode):
    torch.manual_seed(0)
    loss = FeatureWasserstein(6, 6, mode)
    identity_adapter(loss)
    teacher_map = torch.randn(3, 6, 4, 4)
    assert loss(teacher_map.clone(), teacher_map).abs() < 1e-4
    assert loss(torch.randn(3, 6, 4, 4) * 3, teacher_map) > 1e-3


@pytest.mark.parametrize("mode", ["points", "spatial"])
def test_sinkhorn_gradients_reach_student_and_adapter_only(mode):
    torch.manual_seed(0)
    loss = FeatureWasserstein(4, 8, mode)  # student 4 channels at 8x8, teacher 8 channels at 4x4
    student_map = torch.randn(2, 4, 8, 8, requires_grad=True)
    teacher_map = torch.randn(2, 8, 4, 4, requires_grad=True)
    loss(student_map, teacher_map).backward()
    assert student_map.grad is not None and student_map.grad.abs().sum() > 0
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert teacher_map.grad is None


def pooled_linear_head(weight, bias=None):
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None))
    with torch.no_grad():
        head[2].weight.copy_(weight)
        if bias is not None:
            head[2].bias.copy_(bias)
    return head


class OpaqueHead(nn.Module):
    """The same function as `head`, in a shape `linear_head` does not recognise: forces the autograd path."""

    def __init__(self, head):
        super().__init__()
        self.inner = head

    def forward(self, feature_map):
        return self.inner(feature_map)


PATHS = {"closed_form": lambda head: head, "autograd": OpaqueHead}


@pytest.mark.parametrize("path", PATHS)
def test_gradient_matching_equals_a_hand_computation(path):
    torch.manual_seed(0)
    labels = torch.tensor([0, 2])
    teacher_weight, student_weight = torch.randn(3, 2), torch.randn(3, 3)
    teacher_map = torch.randn(2, 2, 1, 1)  # 1x1 maps: pooling is the identity
    student_map = torch.randn(2, 3, 1, 1, requires_grad=True)
    student_head = PATHS[path](pooled_linear_head(student_weight))
    matching = GradientMatching(teacher_channels=2, student_channels=3, r=0.3)
    remap = torch.randn(3, 2)
    with torch.no_grad():
        matching.remap.weight.copy_(remap.view(3, 2, 1, 1))
    value = matching(student_map, student_head(student_map), student_head, teacher_map,
                     PATHS[path](pooled_linear_head(teacher_weight)), labels)

    # d CE_i / d f_i = W^T (softmax(W f_i) - onehot(y_i)), per sample
    onehot = F.one_hot(labels, 3).float()
    f_t, f_s = teacher_map.view(2, 2), student_map.detach().view(2, 3)
    grad_t = (F.softmax(f_t @ teacher_weight.T, 1) - onehot) @ teacher_weight
    grad_s = (F.softmax(f_s @ student_weight.T, 1) - onehot) @ student_weight
    remapped = grad_t @ remap.T
    distance = (remapped - grad_s).norm(dim=1).mean()
    cosine = ((remapped * grad_s).sum(1) / (remapped.norm(dim=1) * grad_s.norm(dim=1))).mean()
    torch.testing.assert_close(value, 0.3 * distance + 0.7 * (1 - cosine))


@pytest.mark.parametrize("path", PATHS)
def test_gradient_matching_is_zero_for_identical_gradients_and_trains_the_student_head(path):
    torch.manual_seed(0)
    weight, labels = torch.randn(4, 5), torch.tensor([1, 3, 0])
    feature_map = torch.randn(3, 5, 2, 2)
    student_map = feature_map.clone().requires_grad_()
    student_head = pooled_linear_head(weight)
    matching = GradientMatching(5, 5, r=0.5)
    with torch.no_grad():
        matching.remap.weight.copy_(torch.eye(5).view(5, 5, 1, 1))
    wrap = PATHS[path]
    value = matching(student_map, student_head(student_map), wrap(student_head), feature_map,
                     wrap(pooled_linear_head(weight)), labels)
    assert value.abs() < 1e-5

    shifted = (feature_map + torch.randn_like(feature_map)).requires_grad_()
    value = matching(shifted, student_head(shifted), wrap(student_head), feature_map,
                     wrap(pooled_linear_head(weight)), labels)
    value.backward()
    assert value > 1e-3
    assert student_head[2].weight.grad.abs().sum() > 0  # the gradient's own gradient reaches the student's head
    assert matching.remap.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("sizes", [((8, 8), (8, 8)), ((4, 4), (2, 2)), ((2, 2), (4, 4)), ((4, 2), (2, 4))])
def test_closed_form_gradients_equal_autograd_in_value_and_in_every_gradient(sizes):
    """Student and teacher heads with bias, maps of other sizes: both paths give the same loss and the same
    gradients for the student's features, its head, and the remap."""
    torch.manual_seed(0)
    (student_size, teacher_size), batch, classes = sizes, 6, 5
    labels = torch.randint(0, classes, (batch,))
    teacher_head = pooled_linear_head(torch.randn(classes, 7), torch.randn(classes))
    teacher_map = torch.randn(batch, 7, *teacher_size)
    results = {}
    for path, wrap in PATHS.items():
        torch.manual_seed(1)
        student_head = pooled_linear_head(torch.randn(classes, 3), torch.randn(classes))
        student_map = torch.randn(batch, 3, *student_size, requires_grad=True)
        matching = GradientMatching(7, 3, r=0.4)
        value = matching(student_map, student_head(student_map), wrap(student_head), teacher_map,
                         wrap(teacher_head), labels)
        value.backward()
        results[path] = (value, student_map.grad, student_head[2].weight.grad, student_head[2].bias.grad,
                         matching.remap.weight.grad)
    for closed, autograd in zip(results["closed_form"], results["autograd"]):
        torch.testing.assert_close(closed, autograd, rtol=1e-5, atol=1e-6)


def test_the_real_heads_take_the_closed_form():
    for arch in ("resnet8", "mobilenet_v2_half", "vgg16_bn", "wrn_16_2"):
        assert linear_head(build_model(arch, 10).head) is not None, arch
    assert linear_head(OpaqueHead(nn.Linear(2, 2))) is None


def test_gradient_matching_rejects_r_outside_unit_interval():
    with pytest.raises(ValueError, match=r"r must be in \[0, 1\]"):
        GradientMatching(2, 2, r=1.5)


def reference_dkd(student, teacher, labels, alpha, beta, tau):
    """DKD as Zhao et al. 2022 (eqs. 1-5) and mdistiller's CIFAR code define it, in probability space: the target
    and the summed rest as a binary distribution (TCKD), the non-target classes renormalised by masking the target
    with -1000 before the softmax (NCKD), each KL summed over the batch, divided by its size, times tau^2."""
    gt = F.one_hot(labels, student.shape[1]).float()
    p_s, p_t = F.softmax(student / tau, 1), F.softmax(teacher / tau, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(b_s.log(), b_t, reduction="sum") * tau**2 / labels.shape[0]
    nckd = F.kl_div(F.log_softmax(student / tau - 1000.0 * gt, 1), F.softmax(teacher / tau - 1000.0 * gt, 1),
                    reduction="sum") * tau**2 / labels.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_equals_the_reference_formula(tau):
    from gkd_tune.core.distillers.dkd import dkd_terms

    torch.manual_seed(0)
    student, teacher = (torch.randn(16, 10, dtype=torch.float64) * 3 for _ in range(2))
    labels = torch.randint(0, 10, (16,))
    tckd, nckd = dkd_terms(student, teacher, labels, tau)
    torch.testing.assert_close(1.0 * tckd + 8.0 * nckd, reference_dkd(student, teacher, labels, 1.0, 8.0, tau))
    torch.testing.assert_close(tckd, reference_dkd(student, teacher, labels, 1.0, 0.0, tau))
    # the paper's decomposition, one sample at a time: KD = TCKD + (1 - p_target^T) NCKD
    for i in range(4):
        s, t, y = student[i:i + 1], teacher[i:i + 1], labels[i:i + 1]
        one_tckd, one_nckd = dkd_terms(s, t, y, tau)
        p_target = F.softmax(t / tau, 1)[0, y[0]]
        torch.testing.assert_close(kd_loss(s, t, tau), one_tckd + (1 - p_target) * one_nckd)
    zero = dkd_terms(teacher, teacher, labels, tau)
    assert all(term.abs() < 1e-9 for term in zero)
