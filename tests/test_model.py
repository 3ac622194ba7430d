"""bigbatch.model: ghost batch norm against BatchNorm2d and a per-group reference; the VGG13."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigbatch.config import CHOICES, ConfigError, RunConfig
from bigbatch.model import LINEAR_INITS, NORM_LAYERS, GhostBatchNorm2d, build_model, make_norm, vgg13


def _pair(c: int, groups: int, momentum: float = 0.1, dtype=torch.float64):
    """A GhostBatchNorm2d and a BatchNorm2d with the same (non-trivial) affine parameters."""
    g = GhostBatchNorm2d(c, groups, momentum=momentum).to(dtype)
    b = nn.BatchNorm2d(c, momentum=momentum).to(dtype)
    with torch.no_grad():
        g.weight.copy_(torch.linspace(0.5, 1.5, c))
        g.bias.copy_(torch.linspace(-0.3, 0.3, c))
        b.weight.copy_(g.weight)
        b.bias.copy_(g.bias)
    return g, b


def _reference_ghost(x, groups, weight, bias, eps=1e-5):
    """Per-group loop: ``groups`` contiguous groups as torch.tensor_split cuts them (sizes differing by at
    most one, the larger first), each normalised by F.batch_norm with its own batch statistics.
    Returns the output and the (sample-weighted) mean of the group means / unbiased variances."""
    outs, means, uvars, sizes = [], [], [], []
    for xg in x.tensor_split(min(groups, x.shape[0]), 0):
        outs.append(F.batch_norm(xg, None, None, weight, bias, True, 0.0, eps))
        means.append(xg.mean(dim=(0, 2, 3)))
        uvars.append(xg.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, unbiased=True))
        sizes.append(xg.shape[0])
    n = x.shape[0]
    mean = sum(m * (s / n) for m, s in zip(means, sizes))
    uvar = sum(v * (s / n) for v, s in zip(uvars, sizes))
    return torch.cat(outs), mean.detach(), uvar.detach()


@pytest.mark.parametrize("n", [16, 10, 33])
def test_ghost_equals_batchnorm_when_one_group(n):
    torch.manual_seed(0)
    g, b = _pair(6, 1)
    for step in range(3):  # several steps: the running statistics accumulate the same way
        x = (torch.randn(n, 6, 5, 4, dtype=torch.float64) * 3 + 1).requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        yg, yb = g(x), b(x2)
        torch.testing.assert_close(yg, yb, rtol=1e-10, atol=1e-10)
        w = torch.randn_like(yg)
        (yg * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g.weight.grad, b.weight.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g.bias.grad, b.bias.grad, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(g.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g.running_var, b.running_var, rtol=1e-12, atol=1e-12)
        assert int(g.num_batches_tracked) == int(b.num_batches_tracked) == step + 1
    g.eval(), b.eval()
    x = torch.randn(7, 6, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(g(x), b(x), rtol=1e-12, atol=1e-12)
    # the state_dict is BatchNorm2d's: keys, shapes, and it loads both ways
    assert {k: v.shape for k, v in g.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    GhostBatchNorm2d(6, 1).to(torch.float64).load_state_dict(b.state_dict())


def test_ghost_equals_batchnorm_float32():
    torch.manual_seed(1)
    g, b = _pair(8, 1, dtype=torch.float32)
    x = torch.randn(64, 8, 6, 6).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    yg, yb = g(x), b(x2)
    torch.testing.assert_close(yg, yb, rtol=1e-5, atol=1e-5)
    yg.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.running_var, b.running_var)


def test_groups_are_independent():
    torch.manual_seed(0)
    g, _ = _pair(4, 3)
    x = torch.randn(24, 4, 3, 3, dtype=torch.float64)
    y = g(x)
    x2 = x.clone()
    x2[8:16] = x2[8:16] * 5 + 2 + torch.randn_like(x2[8:16])  # change only the middle group
    y2 = g(x2)
    assert torch.equal(y[:8], y2[:8]) and torch.equal(y[16:], y2[16:])
    assert not torch.allclose(y[8:16], y2[8:16])
    # each group is normalised on its own: per group and channel, mean = bias, biased std = weight
    yg = y.view(3, 8, 4, 3, 3)
    torch.testing.assert_close(yg.mean(dim=(1, 3, 4)), g.bias.detach().expand(3, 4), atol=1e-9, rtol=0)
    std = yg.var(dim=(1, 3, 4), unbiased=False).sqrt()
    torch.testing.assert_close(std, g.weight.detach().expand(3, 4), atol=1e-4, rtol=1e-4)  # up to eps


@pytest.mark.parametrize("n,groups", [(96, 3), (64, 32), (70, 2), (70, 32), (65, 8), (5, 8)])
def test_matches_per_group_reference_loop(n, groups):
    """Equal groups (96 = 3 x 32; the short last batch 64 = 32 x 2), and batches the number of groups
    does not divide, split as torch.tensor_split (70 in 32 groups: 6 of 3, then 26 of 2; 5 in 8: one
    group per sample): outputs, gradients, running stats (group statistics weighted by group size)."""
    torch.manual_seed(n)
    g, _ = _pair(5, groups, momentum=0.3)
    x = (torch.randn(n, 5, 4, 4, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    w, bias = g.weight.detach().clone().requires_grad_(True), g.bias.detach().clone().requires_grad_(True)
    y = g(x)
    yr, mean, uvar = _reference_ghost(xr, groups, w, bias)
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    up = torch.randn_like(y)
    (y * up).sum().backward()
    (yr * up).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g.weight.grad, w.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g.bias.grad, bias.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g.running_mean, 0.3 * mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.running_var, 0.7 + 0.3 * uvar, rtol=1e-12, atol=1e-12)


def test_a_group_of_one_value_per_channel_gives_its_bias_and_variance_zero():
    """1x1 maps and groups of one sample (9 in 8 groups: one pair, then 7 singles): a single value is
    its own mean, so it normalises to 0 and the output is the bias; its unbiased variance is undefined
    and counts as 0 (the docstring's rule). The pair is normalised as usual."""
    g, _ = _pair(3, 8, momentum=0.5)
    x = torch.randn(9, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    y = g(x)
    torch.testing.assert_close(y[2:], g.bias.detach().view(1, 3, 1, 1).expand(7, 3, 1, 1))
    pair = x.detach()[:2]
    xhat = (pair - pair.mean(0)) / (pair.var(0, unbiased=False) + g.eps).sqrt()
    torch.testing.assert_close(y[:2], xhat * g.weight.detach().view(1, 3, 1, 1) + g.bias.detach().view(1, 3, 1, 1))
    y[2:].sum().backward()
    assert torch.equal(x.grad[2:], torch.zeros(7, 3, 1, 1, dtype=torch.float64))
    torch.testing.assert_close(g.bias.grad, torch.full((3,), 7.0, dtype=torch.float64))
    mean = x.detach().view(9, 3).mean(0)  # groups weighted by size: the plain mean over samples
    uvar = pair.view(2, 3).var(0, unbiased=True) * (2 / 9)  # the singles add 0
    torch.testing.assert_close(g.running_mean, 0.5 * mean)
    torch.testing.assert_close(g.running_var, 0.5 + 0.5 * uvar)


def test_running_stats_with_equal_groups_are_the_plain_mean_over_groups():
    torch.manual_seed(3)
    g, _ = _pair(3, 3, momentum=1.0)  # momentum 1: running stats = this batch's statistic
    x = torch.randn(12, 3, 2, 2, dtype=torch.float64) + torch.arange(12.0, dtype=torch.float64).view(12, 1, 1, 1)
    g(x)
    groups = x.view(3, 4, 3, 2, 2)
    torch.testing.assert_close(g.running_mean, groups.mean(dim=(1, 3, 4)).mean(0))
    torch.testing.assert_close(g.running_var, groups.var(dim=(1, 3, 4), unbiased=True).mean(0))
    # ... which is not the whole batch's variance (the groups have different means)
    assert not torch.allclose(g.running_var, x.var(dim=(0, 2, 3)))


def test_short_last_batch_keeps_the_number_of_groups():
    """bs 1024 (32 groups of 32): CIFAR-10's last batch of 64 images (40000 mod 1024) is cut into 32
    groups of 2, each pair normalised with its own statistics, as the authors' code did."""
    torch.manual_seed(5)
    g, _ = _pair(3, 1024 // 32)
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64) * 3 + torch.arange(64.0, dtype=torch.float64).view(64, 1, 1, 1)
    y = g(x)
    for k in range(32):
        pair = x[2 * k : 2 * k + 2]
        expect = F.batch_norm(pair, None, None, g.weight, g.bias, True, 0.0, g.eps)
        torch.testing.assert_close(y[2 * k : 2 * k + 2], expect, rtol=1e-10, atol=1e-10)
    pairs = y.view(32, 2, 3, 4, 4)  # per pair and channel: mean = bias, biased std = weight
    torch.testing.assert_close(pairs.mean(dim=(1, 3, 4)), g.bias.detach().expand(32, 3), atol=1e-9, rtol=0)
    torch.testing.assert_close(pairs.var(dim=(1, 3, 4), unbiased=False).sqrt(), g.weight.detach().expand(32, 3),
                               atol=1e-4, rtol=1e-4)
    # a full batch of 1024 is cut into groups of 32
    big = torch.randn(1024, 3, 2, 2, dtype=torch.float64) + torch.arange(1024.0, dtype=torch.float64).view(-1, 1, 1, 1)
    torch.testing.assert_close(g(big)[32:64], F.batch_norm(big[32:64], None, None, g.weight, g.bias, True, 0.0, g.eps))


def test_running_stats_update_rule_on_a_short_batch():
    """running = (1 - momentum) * running + momentum * (mean over the groups of each group's mean /
    unbiased variance); momentum 0.99 (the authors' code): the last batch dominates."""
    torch.manual_seed(6)
    g, _ = _pair(3, 32, momentum=0.99)
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64) * 2 + torch.arange(64.0, dtype=torch.float64).view(64, 1, 1, 1)
    g(x)
    pairs = x.view(32, 2, 3, 4, 4)
    means = pairs.mean(dim=(1, 3, 4))  # (32, 3)
    uvars = pairs.transpose(1, 2).reshape(32, 3, -1).var(dim=2, unbiased=True)  # m = 2 * 4 * 4 values per group
    torch.testing.assert_close(g.running_mean, 0.01 * 0.0 + 0.99 * means.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.running_var, 0.01 * 1.0 + 0.99 * uvars.mean(0), rtol=1e-12, atol=1e-12)
    before_mean, before_var = g.running_mean.clone(), g.running_var.clone()
    x2 = torch.randn(1024, 3, 4, 4, dtype=torch.float64)
    g(x2)  # a full batch: 32 groups of 32
    groups = x2.view(32, 32, 3, 4, 4)
    torch.testing.assert_close(g.running_mean, 0.01 * before_mean + 0.99 * groups.mean(dim=(1, 3, 4)).mean(0))
    torch.testing.assert_close(
        g.running_var, 0.01 * before_var + 0.99 * groups.transpose(1, 2).reshape(32, 3, -1).var(dim=2).mean(0))
    assert int(g.num_batches_tracked) == 2


def test_eval_uses_running_statistics():
    torch.manual_seed(0)
    g, _ = _pair(4, 4)
    for _ in range(5):
        g(torch.randn(32, 4, 3, 3, dtype=torch.float64) * 2 + 3)
    g.eval()
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    expect = (x - g.running_mean.view(1, -1, 1, 1)) / (g.running_var.view(1, -1, 1, 1) + g.eps).sqrt()
    expect = expect * g.weight.view(1, -1, 1, 1) + g.bias.view(1, -1, 1, 1)
    before = g.running_mean.clone(), g.running_var.clone(), int(g.num_batches_tracked)
    torch.testing.assert_close(g(x), expect)
    assert torch.equal(g.running_mean, before[0]) and torch.equal(g.running_var, before[1])
    assert int(g.num_batches_tracked) == before[2] == 5
    g.train()
    assert not torch.allclose(g(x), expect)


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    g1, _ = _pair(8, 3, dtype=torch.float32)
    g2, _ = _pair(8, 3, dtype=torch.float32)
    x = torch.randn(40, 8, 6, 6)  # 14 + 13 + 13
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().to(memory_format=torch.channels_last).requires_grad_(True)
    y1, y2 = g1(x1), g2(x2)
    assert y2.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y1, y2)
    up = torch.randn_like(y1)
    (y1 * up).sum().backward()
    (y2 * up).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(g1.running_var, g2.running_var)
    g1.eval(), g2.eval()
    torch.testing.assert_close(g1(x), g2(x.to(memory_format=torch.channels_last)))


def _autograd_nodes(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_forward_is_vectorised_over_groups():
    """The autograd graph does not grow with the number of groups (a Python loop would add
    several nodes per group). Groups of two sizes (a batch the groups do not divide): one extra,
    constant-size branch."""
    counts = {}
    for groups in (4, 64):
        for n in (128, 130):  # equal groups; then two larger groups first (4: 2 x 33 + 2 x 32; 64: 2 x 3 + 62 x 2)
            x = torch.randn(n, 4, 2, 2, requires_grad=True)
            counts[groups, n] = _autograd_nodes(GhostBatchNorm2d(4, groups)(x).sum())
    assert counts[4, 128] == counts[64, 128]
    assert counts[4, 130] == counts[64, 130]
    assert counts[4, 130] < 2 * counts[4, 128] + 4


def test_bf16_autocast_keeps_statistics_in_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    g = GhostBatchNorm2d(8, 3)
    ref = GhostBatchNorm2d(8, 3)
    x = torch.randn(12, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16
        y = g(h)
    assert y.dtype == torch.bfloat16
    assert g.running_mean.dtype == g.running_var.dtype == torch.float32
    y_ref = ref(h.detach().float())  # the same bf16 values, normalised in fp32
    torch.testing.assert_close(g.running_mean, ref.running_mean)
    torch.testing.assert_close(g.running_var, ref.running_var)
    torch.testing.assert_close(y.float(), y_ref, atol=2e-2, rtol=1e-2)  # bf16 rounding of the output only
    y.float().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    g.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(g(conv(x)).float()).all()


# ---------------------------------------------------------------------------- VGG13
def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("norm", ["none", "batch", "ghost"])
def test_vgg13_shapes_and_layers(norm):
    torch.manual_seed(0)
    model = vgg13(norm=norm, width_mult=0.125, ghost_groups=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, GhostBatchNorm2d))]
    assert len(convs) == 10
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64, 64, 64]
    assert len(norms) == (0 if norm == "none" else 10)
    assert all((c.bias is not None) == (norm == "none") for c in convs)
    if norm == "ghost":
        assert all(isinstance(m, GhostBatchNorm2d) and m.num_groups == 3 for m in norms)
    if norm == "batch":
        assert all(type(m) is nn.BatchNorm2d for m in norms)
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool2d)]) == 5
    model.train()
    assert model(torch.randn(10, 3, 32, 32)).shape == (10, 10)  # ghost: groups 4, 3, 3
    model.eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(64, 64), (64, 10)]


def test_vgg13_grayscale_and_classes_and_channels_last():
    model = vgg13(num_classes=100, in_channels=1, width_mult=0.25, norm="ghost", ghost_groups=2)
    x = torch.randn(4, 1, 32, 32).to(memory_format=torch.channels_last)
    assert model(x).shape == (4, 100)
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d)][0].in_channels == 1


def test_vgg13_width1_forward():
    model = vgg13(norm="batch")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg13_exact_parameter_count():
    # conv3x3 weights + biases: 3*64*9+64 = 1792; 64*64*9+64 = 36928; 64*128*9+128 = 73856;
    # 128*128*9+128 = 147584; 128*256*9+256 = 295168; 256*256*9+256 = 590080;
    # 256*512*9+512 = 1180160; 3 x (512*512*9+512 = 2359808)  -> 9,404,992 (the recipe's ~9.4M)
    # classifier: 512*512+512 = 262656; 512*10+10 = 5130        -> 9,672,778 in all
    plain = vgg13()
    assert _count(plain.features) == 9_404_992
    assert _count(plain) == 9_672_778
    # with norm: conv biases go (2944 = sum of widths), BN weight+bias come (2 x 2944)
    for norm in ("batch", "ghost"):
        assert _count(vgg13(norm=norm)) == 9_672_778 - 2944 + 2 * 2944 == 9_675_722


def test_initialisation_as_the_authors_code():
    """Linear layers normal(0, 0.01) with zero bias; convolutions Kaiming normal (fan_out, ReLU)."""
    torch.manual_seed(0)
    model = vgg13(norm="none")
    hidden, last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert hidden.weight.shape == (512, 512)  # 262,144 draws: the sample std is within 1% of 0.01
    assert abs(hidden.weight.std().item() - 0.01) < 1e-4 and abs(hidden.weight.mean().item()) < 1e-4
    assert abs(last.weight.std().item() - 0.01) < 5e-4  # 5,120 draws
    assert torch.equal(hidden.bias, torch.zeros(512)) and torch.equal(last.bias, torch.zeros(10))
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][4]  # 128 -> 256
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.01 * (2 / fan_out) ** 0.5
    assert torch.equal(conv.bias, torch.zeros(256))


def test_torch_init_changes_the_linear_layers_only():
    """init=torch: PyTorch's default Linear init, U(+-1/sqrt(fan_in)) for weights and biases; the
    convolutions draw the same numbers as under the authors' init (same seed, same module order)."""
    torch.manual_seed(0)
    authors = vgg13(norm="batch", init="authors")
    torch.manual_seed(0)
    default = vgg13(norm="batch", init="torch")
    convs = [(a, b) for a, b in zip(authors.modules(), default.modules()) if isinstance(a, nn.Conv2d)]
    assert len(convs) == 10 and all(torch.equal(a.weight, b.weight) for a, b in convs)
    hidden, last = [m for m in default.modules() if isinstance(m, nn.Linear)]
    for layer in (hidden, last):
        bound = 1 / layer.in_features ** 0.5  # 1/sqrt(512)
        uniform_std = bound / 3 ** 0.5
        assert layer.weight.abs().max().item() <= bound
        assert abs(layer.weight.std().item() - uniform_std) < 0.05 * uniform_std
        assert layer.bias.abs().max().item() <= bound and layer.bias.abs().sum().item() > 0  # not zero
    # the authors' Linear weights are 4x narrower (0.01 against 1/sqrt(3 * 512) = 0.0255) with zero bias
    a_hidden = [m for m in authors.modules() if isinstance(m, nn.Linear)][0]
    assert abs(a_hidden.weight.std().item() - 0.01) < 1e-4 and not a_hidden.bias.any()


def test_init_from_run_config_and_refused_when_unknown():
    torch.manual_seed(0)
    model = build_model(RunConfig(init="torch", width_mult=0.125), num_classes=10, in_channels=1)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.bias.any()  # torch's uniform bias, the authors' would be zeros
    torch.manual_seed(0)
    assert not [m for m in build_model(RunConfig(width_mult=0.125), 10, 1).modules() if isinstance(m, nn.Linear)][-1].bias.any()
    with pytest.raises(ConfigError, match="init='xavier' is not one of: authors, torch"):
        RunConfig(init="xavier")
    with pytest.raises(ValueError, match="unknown init 'xavier'; valid: authors, torch"):
        vgg13(init="xavier")
    assert CHOICES["init"] == LINEAR_INITS


def test_unknown_norm_raises_naming_the_valid_ones():
    with pytest.raises(ValueError, match="layer.*valid: none, batch, ghost"):
        vgg13(norm="layer")
    with pytest.raises(ValueError, match="valid: none, batch, ghost"):
        make_norm("group", 8)
    assert set(NORM_LAYERS) == {"none", "batch", "ghost"}


def test_build_model_from_run_config():
    cfg = RunConfig(norm="ghost", virtual_batch_size=16, batch_size=64, bn_momentum=0.99, width_mult=0.25, dropout=0.3)
    model = build_model(cfg, num_classes=7, in_channels=1)
    ghosts = [m for m in model.modules() if isinstance(m, GhostBatchNorm2d)]
    assert len(ghosts) == 10 and all(m.num_groups == 64 // 16 and m.momentum == 0.99 for m in ghosts)
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, nn.Dropout))
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d)][0].out_channels == 16
    assert model(torch.randn(20, 1, 32, 32)).shape == (20, 7)
    # the number of groups is fixed by the batch size: 32 at bs 1024 with virtual batches of 32
    big = build_model(RunConfig(norm="ghost", batch_size=1024), 10, 3)
    assert {m.num_groups for m in big.modules() if isinstance(m, GhostBatchNorm2d)} == {32}
    bn = build_model(RunConfig(norm="batch", bn_momentum=0.5), 10, 3)
    assert all(m.momentum == 0.5 for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
