"""The fused GroupNorm + residual + ReLU kernel against PyTorch's operators in float64."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from fgmm_lib.models import group_norm
from fgmm_lib.models.group_norm import kernel_applies, kernel_available, norm_act


def _reference(x, norm, residual, relu):
    """relu(group_norm(x) + residual), written out in float64 from the definition."""
    batch, channels = x.shape[:2]
    groups = norm.num_groups
    grouped = x.double().reshape(batch, groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    var = grouped.var(-1, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + norm.eps)).reshape(x.shape)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    out = normed * norm.weight.double().reshape(shape) + norm.bias.double().reshape(shape)
    if residual is not None:
        out = out + residual.double()
    return torch.relu(out) if relu else out


def _channels_last(t):
    return t.contiguous(memory_format=torch.channels_last_3d if t.dim() == 5 else torch.channels_last)


@pytest.mark.parametrize("shape", [(3, 6, 2, 5, 7), (2, 17, 3, 4, 4), (4, 57, 2, 3, 3), (2, 8, 5, 6)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [True, False])
def test_fused_matches_reference_with_gradients(shape, residual, relu):
    torch.manual_seed(sum(shape) + 2 * residual + relu)
    channels = shape[1]
    norm = nn.GroupNorm(math.gcd(channels, 8), channels)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = _channels_last(torch.randn(shape) * 3 + 1).requires_grad_()
    res = _channels_last(torch.randn(shape)).requires_grad_() if residual else None
    assert kernel_applies(x, norm, res)
    out = norm_act(x, norm, res, relu, fused=True)
    grad_out = torch.randn(shape)
    grads = torch.autograd.grad(out, [x, norm.weight, norm.bias] + ([res] if residual else []), grad_out)

    x64 = x.detach().double().requires_grad_()
    res64 = res.detach().double().requires_grad_() if residual else None
    norm64 = nn.GroupNorm(norm.num_groups, channels).double()
    norm64.load_state_dict(norm.state_dict())
    expected = _reference(x64, norm64, res64, relu)
    expected_grads = torch.autograd.grad(expected, [x64, norm64.weight, norm64.bias] + ([res64] if residual else []),
                                         grad_out.double())
    assert out.shape == x.shape and torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    if relu:
        assert (out >= 0).all() and (out == 0).any()


def test_threads_split_the_batch_without_changing_a_bit():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, 16)
    x = _channels_last(torch.randn(5, 16, 3, 4, 4))
    grad_out = torch.randn_like(x)
    results = []
    previous = torch.get_num_threads()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        try:
            leaf = x.clone().requires_grad_()
            out = norm_act(leaf, norm, relu=True, fused=True)
            results.append((out, *torch.autograd.grad(out, [leaf, norm.weight], grad_out)))
        finally:
            torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("case", ["float64", "contiguous", "residual_layout", "no_affine"])
def test_inputs_the_kernel_does_not_take_use_pytorch(case):
    torch.manual_seed(1)
    norm = nn.GroupNorm(2, 6, affine=case != "no_affine")
    x = _channels_last(torch.randn(2, 6, 3, 4, 4))
    residual = None
    if case == "float64":
        x, norm = x.double(), norm.double()
    elif case == "contiguous":
        x = x.contiguous()
    elif case == "residual_layout":
        residual = torch.randn(2, 6, 3, 4, 4)
    assert not kernel_applies(x, norm, residual)
    assert torch.equal(norm_act(x, norm, residual, fused=True), norm_act(x, norm, residual, fused=False))


def test_a_compiler_that_fails_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(group_norm, "_LIBRARY", None)
    monkeypatch.setattr(group_norm, "_LIBRARY_ERROR", None)
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("FGMM_CACHE", str(tmp_path))
    norm = nn.GroupNorm(2, 4)
    x = _channels_last(torch.randn(2, 4, 2, 3, 3))
    with pytest.warns(RuntimeWarning, match="fused GroupNorm unavailable.*false failed on .*group_norm.c"):
        assert not kernel_available()
    assert not kernel_applies(x, norm)
    assert torch.equal(norm_act(x, norm, fused=True), torch.relu(norm(x)))
    assert list(tmp_path.iterdir()) == [] or all(p.is_dir() and not any(p.iterdir()) for p in tmp_path.iterdir())


def test_the_kernel_is_built_once_into_the_cache(tmp_path):
    code = ("import torch; from fgmm_lib.models.group_norm import kernel_available, cache_dir; "
            "assert kernel_available(); print(sorted(p.name for p in cache_dir().iterdir()))")
    env = {"FGMM_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    built = sorted(tmp_path.glob("group_norm-*.so"))
    assert len(built) == 1 and built[0].name in first.stdout
    stamp = built[0].stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert built[0].stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
