"""A batched, debiased, log-domain Sinkhorn divergence in plain torch, with a fixed iteration schedule.

It computes what geomloss's ``SamplesLoss("sinkhorn", p=2, debias=True, backend="tensorized")`` computes, with the
same epsilon-scaling schedule, symmetric updates, final extrapolation and gradients (the envelope-theorem trick:
no backward through the loop), held to it by tests/test_sinkhorn.py. What differs is the shape of the work:

- the four transport problems (a->b, b->a, a->a, b->b) are stacked into one tensor, so every iteration is one
  log-sum-exp over a 4 x B x N x N block instead of four (4x fewer kernel launches in eager mode);
- the number of iterations depends only on (diameter, blur, scaling), never on the data, and nothing reads a
  value back to the host (geomloss clamps log-weights with a boolean-mask assignment, a device sync per call),
  so torch.compile traces the whole solver into a handful of fused kernels and CUDA graphs can replay it.

geomloss stays the reference (``sinkhorn_solver: geomloss``).
"""

from __future__ import annotations

import math

import torch

# log-weight of an empty bin (geomloss uses the same floor), so zero weights never produce -inf - inf = nan
LOG_WEIGHT_FLOOR = -100000.0
# exp(-80) ~ 2e-35 is still a normal float32
EXP_FLOOR = -80.0


def epsilon_schedule(diameter: float, blur: float, scaling: float, p: int = 2) -> list[float]:
    """geomloss's temperatures: diameter^p, then down by scaling^p per step to blur^p (both ends included)."""
    if not 0.0 < scaling < 1.0:
        raise ValueError(f"Sinkhorn scaling must be in (0, 1), got {scaling}")
    if not 0.0 < blur < diameter:
        raise ValueError(f"Sinkhorn blur must be in (0, diameter={diameter}), got {blur}")
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    # geomloss's float64 arange, written out: the same list to float64 rounding
    steps = math.ceil((stop - start) / step)
    return [diameter**p] + [math.exp(start + i * step) for i in range(steps)] + [blur**p]


def _half_squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|x_i - y_j|^2 / 2 for ... x N x D and ... x M x D clouds -> ... x N x M (geomloss's p = 2 cost)."""
    return ((x * x).sum(-1)[..., :, None] - 2 * x @ y.transpose(-1, -2) + (y * y).sum(-1)[..., None, :]) / 2


def _softmin(eps: float, cost: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """-eps * log sum_j exp(h_j - C_ij / eps): ... x N x M cost, ... x M log-weights + potentials -> ... x N.

    Terms more than EXP_FLOOR below a row's largest change nothing in float32 (the sum is at least 1) but come out
    as subnormal numbers, which are many times slower on CPUs: they are clamped to the floor.
    Where nothing is differentiated (the Sinkhorn loop) it works in place: one temporary per call, not five.
    """
    z = torch.sub(h[..., None, :], cost, alpha=1.0 / eps)
    peak = z.amax(-1, keepdim=True).detach()
    if z.requires_grad:
        return -eps * ((z - peak).clamp(min=EXP_FLOOR).exp().sum(-1).log() + peak.squeeze(-1))
    return z.sub_(peak).clamp_(min=EXP_FLOOR).exp_().sum(-1).log_().add_(peak.squeeze(-1)).mul_(-eps)


def _log_weights(weights: torch.Tensor) -> torch.Tensor:
    return torch.where(weights > 0, weights.log(), LOG_WEIGHT_FLOOR)


def sinkhorn_divergence(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None = None,
                        b: torch.Tensor | None = None, *, blur: float, scaling: float, diameter: float) -> torch.Tensor:
    """Debiased Sinkhorn divergence S_eps(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2 per batch entry.

    x, y: B x N x D point clouds (the same N), or 1 x N x D clouds shared by the whole batch (a pixel grid: the
    cost matrix is then built once, not B times); a, b: B x N weights summing to 1 (default uniform).
    Ground cost |x - y|^2 / 2, eps = blur^2, epsilon-scaling from diameter^2. Returns B values.
    """
    if x.dim() != 3 or x.shape != y.shape:
        raise ValueError(f"x and y must be B x N x D clouds of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    points = x.shape[1]
    batch = x.shape[0] if a is None else a.shape[0]
    uniform = torch.full((batch, points), 1.0 / points, dtype=x.dtype, device=x.device)
    a = uniform if a is None else a
    b = uniform if b is None else b
    eps_list = epsilon_schedule(diameter, blur, scaling)

    # Stacked problems, in this order: f_ba (a's potential against b), f_aa, g_ab, g_bb. Problem k's softmin runs
    # over the cost `costs[k]` with the log-weights `sources[k]` plus the potential `partner[k]` of the last step.
    log_a, log_b = _log_weights(a), _log_weights(b)
    sources = torch.stack([log_b, log_a, log_a, log_b])  # 4 x B x N
    partner = [2, 1, 0, 3]
    # As in geomloss, the right-hand cloud of each cost is detached: each cloud's gradient comes from its own
    # potentials only (the envelope theorem). So the x half (f_ba, f_aa) and the y half (g_ab, g_bb) of the final
    # step differentiate separately, and a half whose cloud needs no gradient (the teacher's) records nothing.
    x_costs = _half_squared_distances(torch.stack([x, x]), torch.stack([y, x]).detach())  # 2 x B x N x N
    y_costs = _half_squared_distances(torch.stack([y, y]), torch.stack([x, y]).detach())

    with torch.no_grad():
        costs = torch.cat([x_costs, y_costs])
        potentials = _softmin(eps_list[0], costs, sources)
        for eps in eps_list:
            update = _softmin(eps, costs, sources + potentials[partner] / eps)
            potentials = (potentials + update) / 2  # symmetric updates (Feydy's thesis, Fig. 3.24b)
        eps = eps_list[-1]
        extrapolate_from = sources + potentials[partner] / eps
    # the final extrapolation is the only differentiable step
    f_ba, f_aa = _softmin(eps, x_costs, extrapolate_from[:2])
    g_ab, g_bb = _softmin(eps, y_costs, extrapolate_from[2:])
    return (a * (f_ba - f_aa)).sum(1) + (b * (g_ab - g_bb)).sum(1)
