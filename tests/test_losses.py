import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gkd_tune.losses import FeatureWasserstein, GradientMatching, kd_loss


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


def linear_head(weight):
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        head[2].weight.copy_(weight)
    return head


def test_gradient_matching_equals_a_hand_computation():
    torch.manual_seed(0)
    labels = torch.tensor([0, 2])
    teacher_weight, student_weight = torch.randn(3, 2), torch.randn(3, 3)
    teacher_map = torch.randn(2, 2, 1, 1)  # 1x1 maps: pooling is the identity
    student_map = torch.randn(2, 3, 1, 1, requires_grad=True)
    student_logits = linear_head(student_weight)(student_map)
    matching = GradientMatching(teacher_channels=2, student_channels=3, r=0.3)
    remap = torch.randn(3, 2)
    with torch.no_grad():
        matching.remap.weight.copy_(remap.view(3, 2, 1, 1))
    value = matching(student_map, student_logits, teacher_map, linear_head(teacher_weight), labels)

    # d CE_i / d f_i = W^T (softmax(W f_i) - onehot(y_i)), per sample
    onehot = F.one_hot(labels, 3).float()
    f_t, f_s = teacher_map.view(2, 2), student_map.detach().view(2, 3)
    grad_t = (F.softmax(f_t @ teacher_weight.T, 1) - onehot) @ teacher_weight
    grad_s = (F.softmax(f_s @ student_weight.T, 1) - onehot) @ student_weight
    remapped = grad_t @ remap.T
    distance = (remapped - grad_s).norm(dim=1).mean()
    cosine = ((remapped * grad_s).sum(1) / (remapped.norm(dim=1) * grad_s.norm(dim=1))).mean()
    torch.testing.assert_close(value, 0.3 * distance + 0.7 * (1 - cosine))


def test_gradient_matching_is_zero_for_identical_gradients_and_trains_the_student_head():
    torch.manual_seed(0)
    weight, labels = torch.randn(4, 5), torch.tensor([1, 3, 0])
    feature_map = torch.randn(3, 5, 2, 2)
    student_map = feature_map.clone().requires_grad_()
    student_head = linear_head(weight)
    matching = GradientMatching(5, 5, r=0.5)
    with torch.no_grad():
        matching.remap.weight.copy_(torch.eye(5).view(5, 5, 1, 1))
    value = matching(student_map, student_head(student_map), feature_map, linear_head(weight), labels)
    assert value.abs() < 1e-5

    shifted = (feature_map + torch.randn_like(feature_map)).requires_grad_()
    value = matching(shifted, student_head(shifted), feature_map, linear_head(weight), labels)
    value.backward()
    assert value > 1e-3
    assert student_head[2].weight.grad.abs().sum() > 0  # the double backward reaches the student's head
    assert matching.remap.weight.grad.abs().sum() > 0


def test_gradient_matching_rejects_r_outside_unit_interval():
    with pytest.raises(ValueError, match=r"r must be in \[0, 1\]"):
        GradientMatching(2, 2, r=1.5)
