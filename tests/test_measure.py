"""bigbatch.measure: the gradient noise scale and the Hessian's top eigenvalue against known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigbatch.measure import NoiseScale, hessian_top_eigenvalue, isolated, noise_scale_terms, probe_gradient_norms


def half_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((pred.squeeze(-1) - y) ** 2).mean()


def least_squares(d: int, sigma: float, seed: int):
    """Linear least squares with x ~ N(0, I_d), y = w*.x + N(0, sigma^2), evaluated at w = w* + delta.

    Per-example gradient g = x (x.delta) - x eps, so G = delta and, for Gaussian x,
    E|g|^2 = (d + 2)|delta|^2 + sigma^2 d, hence tr(Sigma) = (d + 1)|delta|^2 + sigma^2 d.
    """
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    delta = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + delta).unsqueeze(0))
    g2 = float(delta @ delta)
    trace = (d + 1) * g2 + sigma**2 * d
    return model, w_star, gen, g2, trace


def draw(w_star, gen, n, sigma):
    x = torch.randn(n, w_star.shape[0], generator=gen, dtype=torch.float64)
    return x, x @ w_star + sigma * torch.randn(n, generator=gen, dtype=torch.float64)


def test_noise_scale_terms_are_unbiased_on_least_squares():
    d, sigma, b, k, draws = 8, 0.5, 16, 4, 2000
    model, w_star, gen, g2_true, trace_true = least_squares(d, sigma, seed=0)
    g2s, traces = [], []
    for _ in range(draws):
        batches = [draw(w_star, gen, b, sigma) for _ in range(k)]
        sq_small, sq_big, b_small, b_big = probe_gradient_norms(model, batches, half_mse)
        assert (b_small, b_big) == (b, k * b)
        g2, trace = noise_scale_terms(sq_small, sq_big, b_small, b_big)
        g2s.append(g2)
        traces.append(trace)
    g2_mean, trace_mean = sum(g2s) / draws, sum(traces) / draws
    # standard error of the mean over 2000 draws is ~1-2 %: allow 5 %
    assert g2_mean == pytest.approx(g2_true, rel=0.05)
    assert trace_mean == pytest.approx(trace_true, rel=0.05)
    b_simple_true = trace_true / g2_true
    assert trace_mean / g2_mean == pytest.approx(b_simple_true, rel=0.07)


def test_noise_scale_ema_converges_to_b_simple():
    d, sigma = 8, 0.5
    model, w_star, gen, g2_true, trace_true = least_squares(d, sigma, seed=1)
    ns = NoiseScale(decay=0.99)
    assert math.isnan(ns.value)
    for _ in range(1500):
        batches = [draw(w_star, gen, 32, sigma) for _ in range(4)]
        ns.update(*noise_scale_terms(*probe_gradient_norms(model, batches, half_mse)))
    assert ns.value == pytest.approx(trace_true / g2_true, rel=0.1)
    state = ns.state_dict()
    other = NoiseScale()
    other.load_state_dict(state)
    assert other.value == ns.value


def test_noise_scale_first_value_is_the_first_estimate_and_bad_input_refused():
    ns = NoiseScale(decay=0.9)
    assert ns.update(2.0, 10.0) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        noise_scale_terms(1.0, 0.5, 32, 32)
    model = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="at least 2"):
        probe_gradient_norms(model, [(torch.randn(4, 3), torch.randn(4))], half_mse)
    with pytest.raises(ValueError, match="equal sizes"):
        probe_gradient_norms(model, [(torch.randn(4, 3), torch.randn(4)), (torch.randn(5, 3), torch.randn(5))], half_mse)


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def full_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    names = [n for n, _ in model.named_parameters()]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, sizes)
        tensors = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return F.cross_entropy(torch.func.functional_call(model, tensors, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss_of, flat)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_matches_eigvalsh_of_the_full_hessian(seed):
    model = tiny_net(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    eigs = torch.linalg.eigvalsh(full_hessian(model, x, y))
    expected = float(eigs[eigs.abs().argmax()])
    # the loss over two batches of different sizes, weighted by size, is the loss over all 40 images
    got = hessian_top_eigenvalue(model, [(x[:25], y[:25]), (x[25:], y[25:])], iters=500,
                                 generator=torch.Generator().manual_seed(0), tol=1e-10)
    assert got == pytest.approx(expected, rel=1e-4)


def test_isolated_restores_rng_buffers_and_mode_and_leaves_grads_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    before_buffers = [b.clone() for b in model.buffers()]
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    rng = torch.get_rng_state()
    with isolated(model):
        probe_gradient_norms(model, [(x[:8], y[:8]), (x[8:], y[8:])])  # train mode: dropout draws, BN updates
        model.eval()
        hessian_top_eigenvalue(model, [(x, y)], iters=3, generator=torch.Generator().manual_seed(0))
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    for b, saved in zip(model.buffers(), before_buffers):
        assert torch.equal(b, saved)
    assert all(p.grad is None for p in model.parameters())
