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
    expected = float(eigs.max())
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


def test_top_eigenvalue_is_the_most_positive_even_when_a_negative_one_dominates():
    # a quadratic loss 0.5 w^T A w with spectrum {-5, 2, 1}: the largest magnitude is -5, the top is 2
    A = torch.diag(torch.tensor([-5.0, 2.0, 1.0], dtype=torch.float64))
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    A = q @ A @ q.T

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, dtype=torch.float64))

        def forward(self, x):
            return x

    model = Quadratic()
    loss = lambda out, y: 0.5 * model.w @ A @ model.w + 0 * out.sum()  # noqa: E731
    got = hessian_top_eigenvalue(model, [(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))], iters=2000,
                                 generator=torch.Generator().manual_seed(1), loss_fn=loss, tol=1e-12)
    assert got == pytest.approx(2.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------- in a run
def _cfg(**kw):
    from bigbatch.config import RunConfig

    # momentum and a large lr: a narrow VGG must learn within 3 epochs for |G|^2 to stand out of the noise
    base = dict(dataset="synthetic", synthetic_size=640, val_size=128, width_mult=0.125, epochs=3, batch_size=64,
                norm="ghost", lr=0.5, momentum=0.9, eval_batch_size=256, gns_images=512, gns_every=1, sharpness_images=128,
                sharpness_iters=4)
    return RunConfig(**{**base, **kw})


TRAINING_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "momentum", "best_val_acc", "best_epoch")


def test_training_with_measurements_equals_training_without_bit_for_bit(tmp_path):
    from bigbatch.train import train

    on = train(_cfg(), checkpoint_dir=tmp_path / "on")
    off = train(_cfg(gns_images=0, sharpness_images=0), checkpoint_dir=tmp_path / "off")
    for h_on, h_off in zip(on["history"], off["history"], strict=True):
        assert {k: h_on[k] for k in TRAINING_KEYS} == {k: h_off[k] for k in TRAINING_KEYS}
    assert (on["test_acc"], on["best_val_acc"], on["test_loss"]) == (off["test_acc"], off["best_val_acc"], off["test_loss"])
    w_on = torch.load(tmp_path / "on" / "last.pt", weights_only=True)
    w_off = torch.load(tmp_path / "off" / "last.pt", weights_only=True)
    for key in w_off["model"]:
        assert torch.equal(w_on["model"][key], w_off["model"][key]), key
    # the measurements are there, and only in the measured run
    assert all(math.isfinite(h["gns"]) and h["gns_seconds"] > 0 for h in on["history"] if "gns" in h)
    assert sum("gns" in h for h in on["history"]) >= 2
    assert math.isfinite(on["sharpness"]) and on["sharpness_seconds"] > 0
    assert "sharpness" not in off and not any("gns" in h for h in off["history"])


def test_gns_every_and_a_resumed_run_continue_the_same_noise_scale(tmp_path):
    from bigbatch.train import train

    cfg = _cfg(epochs=4, gns_every=2, sharpness_images=0)
    straight = train(cfg)
    assert [("gns" in h) for h in straight["history"]] == [False, True, False, True]

    class Stop(Exception):
        pass

    def stop_after_three(metrics):
        if metrics["epoch"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, report=stop_after_three, checkpoint_dir=tmp_path)
    resumed = train(cfg, checkpoint_dir=tmp_path)
    assert [h.get("gns") for h in resumed["history"]] == [h.get("gns") for h in straight["history"]]
    assert resumed["test_acc"] == straight["test_acc"]
