"""gkd_tune.core.sinkhorn against geomloss, the reference: the same values and gradients, and a solver dynamo traces whole.

Tolerance: float32 on CPU, rtol 1e-5 / atol 1e-6 on the values and on every gradient (in practice they agree to
the last bit on CPU: the same operations in the same order, only stacked).
"""

import pytest
import torch
import torch.nn.functional as F
from geomloss import SamplesLoss

from gkd_tune.core.losses import FeatureWasserstein
from gkd_tune.core.models import build_model
from gkd_tune.core.sinkhorn import epsilon_schedule, sinkhorn_divergence

TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def geomloss(diameter, blur=0.05, scaling=0.8):
    return SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, diameter=diameter, debias=True,
                       backend="tensorized")


def assert_same_value_and_gradients(reference, ours, inputs):
    expected = reference()
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    got = ours()
    got_grads = torch.autograd.grad(got.sum(), inputs)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, **TOLERANCE)
    return got


@pytest.mark.parametrize("scaling", [0.5, 0.8, 0.9])
def test_epsilon_schedule_is_geomlosses(scaling):
    import numpy as np

    p, diameter, blur = 2, 2.0, 0.05
    expected = [diameter**p] + [float(np.exp(e)) for e in np.arange(p * np.log(diameter), p * np.log(blur),
                                                                    p * np.log(scaling))] + [blur**p]
    assert epsilon_schedule(diameter, blur, scaling) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 16, 8), (5, 64, 64), (2, 4, 2048)])
@pytest.mark.parametrize("scaling", [0.5, 0.8])
def test_random_clouds_on_the_sphere(shape, scaling):
    torch.manual_seed(0)
    x = F.normalize(torch.randn(shape), dim=2).requires_grad_()
    y = F.normalize(torch.randn(shape) + 0.3, dim=2).requires_grad_()
    value = assert_same_value_and_gradients(
        lambda: geomloss(2.0, scaling=scaling)(x, y),
        lambda: sinkhorn_divergence(x, y, blur=0.05, scaling=scaling, diameter=2.0), [x, y])
    assert (value > 0).all()


def test_weighted_distributions_on_a_shared_grid():
    """The `spatial` mode's problem: softmax weights over one pixel grid, passed once (1 x N x 2) to ours."""
    torch.manual_seed(0)
    batch, side = 12, 4
    a = torch.randn(batch, side * side).softmax(1).requires_grad_()
    b = (2 * torch.randn(batch, side * side)).softmax(1).requires_grad_()
    rows, cols = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    grid = torch.stack([rows.flatten(), cols.flatten()], dim=1)[None]
    assert_same_value_and_gradients(
        lambda: geomloss(2**0.5)(a, grid.expand(batch, -1, -1), b, grid.expand(batch, -1, -1)),
        lambda: sinkhorn_divergence(grid, grid, a, b, blur=0.05, scaling=0.8, diameter=2**0.5), [a, b])


def test_zero_weights_stay_finite():
    torch.manual_seed(0)
    x, y = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    a = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.2] * 5 + [0.0]])
    b = torch.full((2, 6), 1 / 6)
    ours = sinkhorn_divergence(x, y, a, b, blur=0.05, scaling=0.8, diameter=8.0)
    torch.testing.assert_close(ours, geomloss(8.0)(a, x, b, y), **TOLERANCE)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("mode", ["points", "spatial"])
def test_real_feature_maps_through_both_solvers(shared_cifar10, mode):
    """FeatureWasserstein on the feature maps of real CIFAR-10 images (resnet8 student, resnet20 teacher, 8x8
    maps) with either solver: the same loss and the same gradients for the student's map and the adapter."""
    import pyarrow.parquet as pq
    from PIL import Image
    import io
    import numpy as np

    table = pq.read_table(shared_cifar10).slice(0, 32)
    images = np.stack([np.asarray(Image.open(io.BytesIO(row["bytes"])).convert("RGB"))
                       for row in table.column("img").to_pylist()])
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    with torch.no_grad():
        teacher_map = build_model("resnet20", 10).eval().features(images)
    student_map = build_model("resnet8", 10).features(images).detach().requires_grad_()
    results = {}
    for solver in ("geomloss", "torch"):
        torch.manual_seed(1)
        loss = FeatureWasserstein(64, 64, mode, solver=solver)
        value = loss(student_map, teacher_map)
        (map_grad, adapter_grad) = torch.autograd.grad(value, [student_map, loss.adapter.weight])
        results[solver] = (value, map_grad, adapter_grad)
    for ours, reference in zip(results["torch"], results["geomloss"]):
        torch.testing.assert_close(ours, reference, **TOLERANCE)
    assert results["torch"][0] > 0


def test_dynamo_traces_the_solver_in_one_graph():
    """What lets torch.compile fuse it and CUDA graphs replay it: no graph break, so no host sync either."""
    x, y = F.normalize(torch.randn(4, 16, 8), dim=2), F.normalize(torch.randn(4, 16, 8), dim=2)
    x.requires_grad_()
    explanation = torch._dynamo.explain(sinkhorn_divergence)(x, y, blur=0.05, scaling=0.8, diameter=2.0)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_bad_schedules_and_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"scaling must be in \(0, 1\)"):
        epsilon_schedule(2.0, 0.05, 1.0)
    with pytest.raises(ValueError, match="blur must be in"):
        epsilon_schedule(2.0, 3.0, 0.8)
    with pytest.raises(ValueError, match="Sinkhorn solver must be one of torch, geomloss"):
        FeatureWasserstein(2, 2, solver="keops")
    with pytest.raises(ValueError, match="B x N x D clouds of one shape"):
        sinkhorn_divergence(torch.randn(2, 3, 4), torch.randn(2, 5, 4), blur=0.05, scaling=0.8, diameter=2.0)
