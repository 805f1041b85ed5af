"""The fused Triton pair scores against plain references, on the CPU through the Triton interpreter.

Triton decides between compiling and interpreting when a kernel is decorated, which
fgmm_lib.triton_scores does on its first call; this module therefore sets TRITON_INTERPRET=1 when
pytest imports it, before any triton kernel of the package is built. (A process that already built
the kernels in compiled mode cannot switch; on a CPU-only machine nothing builds them before this.)
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is an optional extra (pip install 'fgmm_lib[triton]')")

from fgmm_lib.triton_scores import MAX_PHRASES, triton_pair_scores  # noqa: E402

AGGREGATIONS = ("mean", "max", "attention")


def reference_scores(video, text, text_mask=None, video_mask=None, aggregation="attention",
                     attn_temperature=0.1, weight_temperature=0.1):
    """STUDY.md section 2, one (video, text) pair at a time, over the valid cells and phrases only."""
    video = torch.nn.functional.normalize(video, dim=-1)
    text = torch.nn.functional.normalize(text, dim=-1)
    Bv, N, _ = video.shape
    Bt, M, _ = text.shape
    video_mask = torch.ones(Bv, N, dtype=torch.bool) if video_mask is None else video_mask
    text_mask = torch.ones(Bt, M, dtype=torch.bool) if text_mask is None else text_mask
    rows = []
    for i in range(Bv):
        row = []
        for j in range(Bt):
            s = torch.einsum("nd,md->nm", video[i][video_mask[i]], text[j][text_mask[j]])
            if aggregation == "mean":
                score = s.mean()
            elif aggregation == "max":
                score = 0.5 * (s.max(dim=0).values.mean() + s.max(dim=1).values.mean())
            else:
                c = (torch.softmax(s / attn_temperature, dim=0) * s).sum(dim=0)  # per phrase
                w = torch.softmax(c / weight_temperature, dim=0)
                e = (torch.softmax(s / attn_temperature, dim=1) * s).sum(dim=1)  # per cell
                u = torch.softmax(e / weight_temperature, dim=0)
                score = 0.5 * ((w * c).sum() + (u * e).sum())
            row.append(score)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def random_case(Bv, Bt, N, M, D, seed, masked=True):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(Bv, N, D, generator=generator, dtype=torch.float64)
    text = torch.randn(Bt, M, D, generator=generator, dtype=torch.float64)
    video_mask = text_mask = None
    if masked:
        video_mask = torch.rand(Bv, N, generator=generator) > 0.3
        video_mask[torch.arange(Bv), torch.randint(N, (Bv,), generator=generator)] = True
        text_mask = torch.rand(Bt, M, generator=generator) > 0.3
        text_mask[torch.arange(Bt), torch.randint(M, (Bt,), generator=generator)] = True
    upstream = torch.randn(Bv, Bt, generator=generator, dtype=torch.float64)
    return video, text, video_mask, text_mask, upstream


def values_and_grads(function, video, text, video_mask, text_mask, upstream, dtype, **kwargs):
    video = video.detach().to(dtype).clone().requires_grad_()
    text = text.detach().to(dtype).clone().requires_grad_()
    scores = function(video, text, text_mask, video_mask, **kwargs)
    (scores.double() * upstream).sum().backward()
    return scores.double().detach(), video.grad.double(), text.grad.double()


SHAPES = [
    pytest.param((3, 2, 19, 5, 24), id="odd-sizes-Bv>Bt"),
    pytest.param((2, 3, 1, 1, 8), id="N=M=1"),
    pytest.param((1, 3, 70, 17, 40), id="two-cell-blocks-M>16"),
]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_reference(shape, aggregation):
    video, text, video_mask, text_mask, upstream = random_case(*shape, seed=sum(shape), masked=shape[2] > 1)
    kwargs = {"aggregation": aggregation, "attn_temperature": 0.1, "weight_temperature": 0.2}
    expected = values_and_grads(reference_scores, video, text, video_mask, text_mask, upstream, torch.float64,
                                **kwargs)
    actual = values_and_grads(triton_pair_scores, video, text, video_mask, text_mask, upstream, torch.float32,
                              **kwargs)
    for name, got, want in zip(("scores", "video grad", "text grad"), actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("aggregation", ["max", "attention"])
def test_half_precision_matches_reference(dtype, aggregation):
    video, text, video_mask, text_mask, upstream = random_case(3, 2, 21, 6, 32, seed=7)
    # the reference sees the same rounded inputs
    video, text = video.to(dtype).double(), text.to(dtype).double()
    expected = values_and_grads(reference_scores, video, text, video_mask, text_mask, upstream, torch.float64,
                                aggregation=aggregation)
    actual = values_and_grads(triton_pair_scores, video, text, video_mask, text_mask, upstream, dtype,
                              aggregation=aggregation)
    for name, got, want in zip(("scores", "video grad", "text grad"), actual, expected):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.03 * scale + 1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_temperature_gradients_match_reference():
    video, text, video_mask, text_mask, upstream = random_case(2, 3, 9, 4, 16, seed=3)
    grads = []
    for function, dtype in ((reference_scores, torch.float64), (triton_pair_scores, torch.float32)):
        attn_temperature = torch.tensor(0.2, dtype=dtype, requires_grad=True)
        weight_temperature = torch.tensor(0.3, dtype=dtype, requires_grad=True)
        scores = function(video.to(dtype), text.to(dtype), text_mask, video_mask, "attention",
                          attn_temperature, weight_temperature)
        (scores.double() * upstream).sum().backward()
        grads.append(torch.stack([attn_temperature.grad.double(), weight_temperature.grad.double()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_matches_library_naive_backend():
    losses = pytest.importorskip("fgmm_lib.losses")
    video, text, video_mask, text_mask, upstream = random_case(4, 3, 11, 7, 16, seed=11)
    for aggregation in AGGREGATIONS:
        def naive(v, t, tm, vm, **kwargs):
            return losses.pair_scores(v, t, tm, vm, backend="naive", **kwargs)

        def fused(v, t, tm, vm, **kwargs):
            return losses.pair_scores(v, t, tm, vm, backend="triton", **kwargs)

        expected = values_and_grads(naive, video, text, video_mask, text_mask, upstream, torch.float32,
                                    aggregation=aggregation)
        actual = values_and_grads(fused, video, text, video_mask, text_mask, upstream, torch.float32,
                                  aggregation=aggregation)
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named():
    video, text = torch.randn(2, 4, 8), torch.randn(3, 5, 8)
    with pytest.raises(ValueError, match="aggregation"):
        triton_pair_scores(video, text, aggregation="median")
    with pytest.raises(ValueError, match="share D"):
        triton_pair_scores(video, torch.randn(3, 5, 9))
    with pytest.raises(ValueError, match="text_mask"):
        triton_pair_scores(video, text, text_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="video_mask must have shape"):
        triton_pair_scores(video, text, video_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at most"):
        triton_pair_scores(video, torch.randn(1, MAX_PHRASES + 1, 8))
    with pytest.raises(ValueError, match="attn_temperature"):
        triton_pair_scores(video, text, attn_temperature=0.0)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        triton_pair_scores(video.double(), text.double())


def test_module_imports_without_triton_and_explains_when_called():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, fgmm_lib.triton_scores as ts\n"
        "assert not ts.triton_available()\n"
        "try:\n"
        "    ts.triton_pair_scores(torch.randn(1, 2, 4), torch.randn(1, 2, 4))\n"
        "except ImportError as error:\n"
        "    assert 'triton' in str(error), error\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
