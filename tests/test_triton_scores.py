"""The fused Triton pair scores against plain references, on the CPU through the Triton interpreter.

Triton decides between compiling and interpreting when a kernel is decorated, which
fgmm_lib.kernels.triton_scores does on its first call; this module therefore sets TRITON_INTERPRET=1 when
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

pytestmark = pytest.mark.integration

pytest.importorskip("triton", reason="triton is an optional extra (pip install 'fgmm_lib[triton]')")

from fgmm_lib.kernels import triton_scores  # noqa: E402
from fgmm_lib.kernels.triton_scores import AGGREGATION_CODES, MAX_PHRASES, tile_shape  # noqa: E402
from fgmm_lib.losses.scores import pair_scores

AGGREGATIONS = tuple(AGGREGATION_CODES)


def reference_scores(video, text, text_mask=None, video_mask=None, aggregation="attention",
                     attn_temperature=0.1, weight_temperature=0.1):
    """docs/study.md section 2, one (video, text) pair at a time, over the valid cells and phrases only."""
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


def assert_matches(actual, expected, names=("scores", "video grad", "text grad")):
    """float32 kernels against the float64 reference, output by output."""
    for name, got, want in zip(names, actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def assert_fused_matches_reference(shape, seed, masked=True, **kwargs):
    """Scores and token gradients of the fused kernels (float32) against the float64 reference on a
    random case of ``shape`` (Bv, Bt, N, M, D)."""
    assert_case_matches_reference(random_case(*shape, seed=seed, masked=masked), **kwargs)


def assert_case_matches_reference(case, function=None, **kwargs):
    """``function`` (default: ``fused``) in float32 against the float64 reference on ``case`` (of
    ``random_case``); returns the reference's scores and gradients."""
    expected = values_and_grads(reference_scores, *case, torch.float64, **kwargs)
    assert_matches(values_and_grads(function or fused, *case, torch.float32, **kwargs), expected)
    return expected


def fused(video, text, text_mask, video_mask, **kwargs):
    """The triton backend through its caller, which validates and zeroes masked tokens."""
    return pair_scores(video, text, text_mask, video_mask, backend="triton", **kwargs)


# (Bv, Bt, N, M, D): texts per program = 128 // BLOCK_M (8 at M <= 16, 4 at M <= 32)
SHAPES = [
    pytest.param((3, 2, 19, 5, 24), id="odd-sizes-Bv>Bt"),
    pytest.param((2, 3, 1, 1, 8), id="N=M=1"),
    pytest.param((2, 11, 70, 9, 40), id="two-text-groups-cell-tiles-across-videos"),
    pytest.param((1, 5, 33, 17, 72), id="M>16-D-not-a-multiple-of-the-chunk"),
]


@pytest.fixture(params=["tiles", "sweep", "stored"])
def design(request, monkeypatch):
    """Each backward design in turn (``auto`` takes the sweep under the interpreter)."""
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", request.param)
    return request.param


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_reference(shape, aggregation, design):
    assert_fused_matches_reference(shape, sum(shape), masked=shape[2] > 1, aggregation=aggregation,
                                   attn_temperature=0.1, weight_temperature=0.2)


def test_backward_padding_covers_every_tiled_configuration():
    for aggregation in AGGREGATION_CODES:
        cells, dims = triton_scores.backward_padding(aggregation)
        assert all(cells % c["BLOCK_N"] == 0 and dims % c["BLOCK_D"] == 0
                   for c in triton_scores.backward_configs(aggregation))
        assert (cells, dims) == ((64, 64) if aggregation == "attention" else (128, 64))


def test_two_videos_holds_for_attention_tiles_spanning_at_most_two_videos():
    attention = AGGREGATION_CODES["attention"]
    assert triton_scores.two_videos(attention, 63, 64) and triton_scores.two_videos(attention, 196, 128)
    assert not triton_scores.two_videos(attention, 62, 64) and not triton_scores.two_videos(attention, 70, 128)
    assert not any(triton_scores.two_videos(AGGREGATION_CODES[name], 196, 64) for name in ("mean", "max"))
    # the shape below takes the two-video path in attention's tiles, at its limit: 64-cell tiles
    # over 63-cell videos, each tile holding both ends of a video boundary
    assert {c["BLOCK_N"] for c in triton_scores.backward_configs("attention")} == {64}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("shape", [pytest.param((4, 5, 63, 9, 24), id="tiles-span-two-videos"),
                                   pytest.param((3, 5, 19, 9, 24), id="tiles-span-more-videos")])
def test_masked_slots_have_no_influence_and_get_no_gradient(shape, aggregation, design):
    # the kernel entry itself, with random tokens left in the masked slots (the caller zeroes them):
    # scores and gradients equal the reference's, which reads valid slots only, so a masked slot's
    # gradient must be zero
    case = random_case(*shape, seed=11)
    expected = assert_case_matches_reference(case, triton_scores.triton_pair_scores, aggregation=aggregation,
                                             attn_temperature=0.1, weight_temperature=0.2)
    video_mask, text_mask = case[2], case[3]
    assert (expected[1][~video_mask] == 0).all() and (expected[2][~text_mask] == 0).all()


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_two_video_statistics_serve_mean_and_max_too(monkeypatch, aggregation):
    # two_videos keeps mean and max on the gather (their SASS counts favour it); the two-video path
    # of _ds_tile is written for every aggregation, and holds for them as well
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "tiles")
    monkeypatch.setattr(triton_scores, "two_videos", lambda aggregation_code, cells, block_n: block_n <= cells + 1)
    monkeypatch.setattr(triton_scores, "WIDE_BACKWARD_CONFIGS", ())
    assert_case_matches_reference(random_case(4, 5, 63, 9, 24, seed=13), triton_scores.triton_pair_scores,
                                  aggregation=aggregation)


@pytest.mark.parametrize("aggregation", ["mean", "max"])
def test_wide_backward_tiles_match_reference(monkeypatch, aggregation):
    # the 128-cell backward tiles the autotuner may pick for mean and max (the interpreter runs the
    # first configuration of the list): tiles straddle three videos and end past the last cell
    assert triton_scores.backward_configs("attention") == triton_scores.BACKWARD_CONFIGS
    assert all(c["BLOCK_N"] == 128 for c in triton_scores.WIDE_BACKWARD_CONFIGS)
    monkeypatch.setattr(triton_scores, "BACKWARD_CONFIGS", triton_scores.WIDE_BACKWARD_CONFIGS)
    assert_fused_matches_reference((4, 11, 45, 9, 40), 3, aggregation=aggregation)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_sweep_splits_and_slices_match_reference(monkeypatch, aggregation):
    # many programs: every sweep is split (the last split partial); D = 72 in accumulator slices of
    # 32 (the last one partial) and similarity chunks of 16
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "sweep")
    monkeypatch.setattr(triton_scores, "SWEEP_PROGRAMS", 64)
    monkeypatch.setattr(triton_scores, "SWEEP_CONFIGS", ({"BLOCK_D": 16, "D_SLICE": 32, "RESIDENT": 0,
                                                          "num_warps": 4, "num_stages": 2},))
    shape = (3, 9, 50, 13, 72)  # 150 cells = 3 tiles of 64; 9 texts of 16 phrases = 3 groups of 4
    assert triton_scores.sweep_splits(3, 3, 64) == (3, 1) and triton_scores.sweep_splits(3, 3, 6) == (2, 2)
    assert_fused_matches_reference(shape, 5, aggregation=aggregation, attn_temperature=0.1, weight_temperature=0.2)


@pytest.mark.parametrize("aggregation", ["max", "attention"])
def test_sweep_at_d_above_128_holds_cells_resident_and_streams_for_texts(monkeypatch, aggregation):
    # D = 130: max's dV in one resident slice of 256; dT, and attention's dV, in one streamed slice
    # (a resident one spills)
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "sweep")
    assert triton_scores.sweep_configs(130, False, aggregation)[0]["RESIDENT"] == (aggregation == "max")
    assert triton_scores.sweep_configs(130, False, aggregation)[0]["D_SLICE"] == 256
    assert {c["RESIDENT"] for c in triton_scores.sweep_configs(130, True, aggregation)} == {0}
    assert_fused_matches_reference((2, 5, 20, 7, 130), 6, aggregation=aggregation)


def test_sweep_configs_fit_their_dimension():
    def shapes(dim, for_text, aggregation="max"):
        return [(c["D_SLICE"], c["RESIDENT"], c["num_warps"])
                for c in triton_scores.sweep_configs(dim, for_text, aggregation)]

    assert shapes(96, False) == shapes(96, True) == shapes(96, False, "attention") == [(128, 1, 8), (128, 0, 8),
                                                                                      (128, 1, 4)]
    assert shapes(96, True, "attention") == [(128, 1, 8), (128, 0, 8)]  # 4 warps spill
    assert shapes(256, False) == [(256, 1, 8), (256, 0, 8), (128, 0, 8), (256, 1, 4)]
    assert shapes(256, False, "attention") == [(256, 0, 8), (128, 0, 8)]  # resident ones spill
    assert shapes(256, True) == [(256, 0, 8), (128, 0, 8)]
    assert shapes(1024, True) == shapes(1024, False) == [(256, 0, 8), (128, 0, 8)]


def test_autotuner_prunes_by_warps_too():
    triton = pytest.importorskip("triton")
    offered = [c for c in triton_scores.sweep_configs(256, False, "max") if c["num_warps"] == 8]
    assert {(c["D_SLICE"], c["RESIDENT"]) for c in offered} == {(256, 1), (256, 0), (128, 0)}  # not (256, 1) at 4
    configs = [triton.Config(triton_scores._tuned_keys(c), num_warps=c["num_warps"], num_stages=c["num_stages"])
               for c in triton_scores.SWEEP_CONFIGS]
    kept = triton_scores._allowed(configs, offered)
    assert [(c.kwargs["D_SLICE"], c.kwargs["RESIDENT"], c.num_warps) for c in kept] == [
        (c["D_SLICE"], c["RESIDENT"], c["num_warps"]) for c in offered]
    assert len(kept) == len(offered) == len(configs) - 3


def test_sweep_splits_cover_the_swept_tiles_once():
    for fixed, swept, programs in ((1, 1, 528), (3136, 512, 528), (512, 3136, 528), (4, 3136, 528), (7, 10, 30)):
        splits, per_split = triton_scores.sweep_splits(fixed, swept, programs)
        assert 1 <= splits <= swept and (splits - 1) * per_split < swept <= splits * per_split
        assert fixed * splits >= 0.9 * min(programs, fixed * swept)  # about the programs asked for
    assert triton_scores.sweep_splits(3136, 512, 528) == (1, 512)  # enough programs already: no split
    assert triton_scores.sweep_splits(4, 3136, 528) == (131, 24)  # 132 asked, 24 tiles each


def test_stored_videos_fill_the_budget_with_whole_videos(monkeypatch):
    monkeypatch.setattr(triton_scores, "STORED_BYTES", 256 * 2**20)
    assert triton_scores.stored_videos(1024, 196, 1024 * 32, 2) == 20  # 20 x 196 x 32768 x 2 B <= 256 MiB
    assert triton_scores.stored_videos(8, 196, 1024 * 32, 2) == 8  # never more than the batch
    monkeypatch.setattr(triton_scores, "STORED_BYTES", 1)
    assert triton_scores.stored_videos(1024, 196, 1024 * 32, 2) == 1  # at least one video


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_stored_backward_in_chunks_matches_reference(monkeypatch, aggregation):
    # a budget of 2 videos a chunk over 5 videos (the last chunk holds one); 63-cell videos, whose
    # 64-cell tiles span two videos (attention's TWO_VIDEOS) within a chunk, and end past its last cell
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "stored")
    shape = (5, 6, 63, 9, 24)
    monkeypatch.setattr(triton_scores, "STORED_BYTES", 2 * 63 * 6 * 9 * 4)
    chunks = []
    original = triton_scores.stored_videos
    monkeypatch.setattr(triton_scores, "stored_videos", lambda *args: chunks.append(original(*args)) or chunks[-1])
    assert_fused_matches_reference(shape, 21, aggregation=aggregation, attn_temperature=0.1, weight_temperature=0.2)
    assert chunks == [2]


def test_stored_configs_add_their_own_tiles_where_they_compile_without_spills():
    tiles = [{**c, "COLUMNS": triton_scores.TILE_COLUMNS} for c in triton_scores.backward_configs("attention")]
    own = list(triton_scores.STORED_CONFIGS)
    assert all(c["BLOCK_N"] == 128 and c["COLUMNS"] == 64 and c["num_warps"] == 4 for c in own)
    assert list(triton_scores.stored_configs("attention", 32, 196)) == tiles + own
    assert list(triton_scores.stored_configs("attention", 64, 127)) == tiles + own  # 128-cell tiles span two videos
    assert list(triton_scores.stored_configs("attention", 32, 126)) == tiles  # they would span three
    assert list(triton_scores.stored_configs("attention", 65, 196)) == tiles  # a text of 128 columns
    assert list(triton_scores.stored_configs("attention", 16, 196)) == tiles  # 4 texts of 16 phrases
    assert list(triton_scores.stored_configs("attention", 32, 196, unshifted=False)) == tiles  # running maxima
    wide = [{**c, "COLUMNS": triton_scores.TILE_COLUMNS} for c in triton_scores.backward_configs("max")]
    for aggregation in ("mean", "max"):  # no variants; their statistics are gathered (any N)
        assert list(triton_scores.stored_configs(aggregation, 9, 19, unshifted=False)) == wide + own
        assert list(triton_scores.stored_configs(aggregation, 65, 19)) == wide
    attention = AGGREGATION_CODES["attention"]
    # TWO_VIDEOS is set before the autotuner chooses: it must hold for the largest tile offered
    assert triton_scores.launch_two_videos(attention, 127, triton_scores.stored_configs("attention", 32, 127))
    assert triton_scores.launch_two_videos(attention, 63, triton_scores.stored_configs("attention", 32, 63))
    assert not triton_scores.launch_two_videos(attention, 62, triton_scores.stored_configs("attention", 32, 62))
    assert not triton_scores.launch_two_videos(attention, 126, [{"BLOCK_N": 64}, {"BLOCK_N": 128}])


@pytest.mark.parametrize("config", range(2))
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("shape", [pytest.param((3, 5, 130, 20, 40), id="two-texts-a-tile-span-two-videos"),
                                   pytest.param((2, 3, 129, 40, 72), id="one-text-a-tile-D-not-a-multiple")])
def test_stored_kernel_own_tiles_match_reference(monkeypatch, shape, aggregation, config):
    # the interpreter runs the first configuration offered: here each of STORED_CONFIGS (128 cells by
    # 64 columns) in turn; 129- and 130-cell videos, whose 128-cell tiles span two videos and end past
    # the last cell; 2 texts of 20 phrases a tile (three groups, the last partial) or one of 40
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "stored")
    chosen = triton_scores.STORED_CONFIGS[config]
    original = triton_scores.stored_configs
    assert chosen in original(aggregation, shape[3], shape[2])  # offered at this shape
    offered = []

    def own_first(*args, **kwargs):
        offered.append(chosen)
        return (chosen, *original(*args, **kwargs))

    monkeypatch.setattr(triton_scores, "stored_configs", own_first)
    # attention's temperatures run its unshifted variant, the one these tiles are offered to
    assert_fused_matches_reference(shape, 5, masked=True, aggregation=aggregation, attn_temperature=0.1,
                                   weight_temperature=0.2)
    assert offered


@pytest.mark.parametrize("design", ["sweep", "stored"])
@pytest.mark.parametrize("needs", ["video", "text"])
def test_backward_computes_only_the_gradient_asked_for(monkeypatch, needs, design):
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", design)
    launches = []
    name = {"sweep": "_sweep_backward", "stored": "_stored_backward"}[design]
    original = getattr(triton_scores, name)

    def spy(inputs, settings, wanted):
        launches.append(wanted)
        gradients = original(inputs, settings, wanted)
        assert not gradients[int(needs == "video")].any()  # the other one is left at zero
        return gradients

    monkeypatch.setattr(triton_scores, name, spy)
    video, text, video_mask, text_mask, upstream = random_case(2, 3, 11, 5, 16, seed=2)
    tokens = {"video": video.float().requires_grad_(needs == "video"),
              "text": text.float().requires_grad_(needs == "text")}
    (fused(tokens["video"], tokens["text"], text_mask, video_mask) * upstream.float()).sum().backward()
    expected = values_and_grads(reference_scores, video, text, video_mask, text_mask, upstream, torch.float64)
    got = tokens[needs].grad.double()
    torch.testing.assert_close(got, expected[1 if needs == "video" else 2], rtol=1e-4, atol=1e-5)
    assert launches == [(needs == "video", needs == "text")]


def test_auto_design_times_each_once_per_shape_and_keeps_the_fastest(monkeypatch):
    import triton.testing

    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "auto")
    monkeypatch.setattr(triton_scores, "_DESIGNS", {})
    ran = []
    times = {"tiles": 3.0, "sweep": 2.0, "stored": 2.5}
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kwargs: (fn(), times[ran[-1]])[1])
    settings = (2, "tf32", False, 8, 8, 196, 32, 256)
    cuda = torch.device("cuda")
    assert triton_scores._backward_design(settings, (True, True), torch.bfloat16, cuda, ran.append) == "sweep"
    assert ran == ["tiles", "tiles", "sweep", "sweep", "stored", "stored"]  # each autotuned once, then timed
    assert triton_scores._backward_design(settings, (True, True), torch.bfloat16, cuda, ran.append) == "sweep"
    assert len(ran) == 6  # remembered per shape
    assert list(triton_scores.chosen_designs().values()) == ["sweep"]
    assert "8x8 N=196 M=32 D=256 attention bfloat16 grads=vt" in triton_scores.chosen_designs()
    # texts longer than the sweep's 64 columns: the tiles and the stored backward are timed
    long_texts = (2, "tf32", False, 8, 8, 196, 65, 256)
    assert triton_scores._backward_design(long_texts, (True, True), torch.bfloat16, cuda, ran.append) == "stored"
    assert ran[6:] == ["tiles", "tiles", "stored", "stored"]
    # a design named is taken as it is, except the sweep where it does not apply; without a GPU,
    # auto takes the sweep where it applies
    for named, want, want_long in (("tiles", "tiles", "tiles"), ("stored", "stored", "stored"),
                                   ("sweep", "sweep", "tiles"), ("auto", "sweep", "tiles")):
        monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", named)
        cpu = torch.device("cpu")
        assert triton_scores._backward_design(settings, (True, True), torch.float32, cpu, ran.append) == want
        assert triton_scores._backward_design(long_texts, (True, True), torch.float32, cpu, ran.append) == want_long
    assert len(ran) == 10
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "fastest")
    with pytest.raises(ValueError, match="BACKWARD_DESIGN='fastest'"):
        triton_scores._backward_design(settings, (True, True), torch.bfloat16, cuda, ran.append)


def test_texts_beyond_the_sweep_take_the_tiles_and_match_reference(monkeypatch):
    monkeypatch.setattr(triton_scores, "BACKWARD_DESIGN", "sweep")
    assert triton_scores.sweep_shape(64) == (64, 1) and triton_scores.sweep_shape(65) is None
    assert_fused_matches_reference((2, 2, 9, 70, 16), 4)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_resident_forward_matches_reference(monkeypatch, aggregation):
    # the forward with the texts' tile loaded once for 4 videos: 6 videos = a full group and a partial
    # one; D = 40 padded to 128; learnable temperatures (their slopes come from the forward)
    monkeypatch.setattr(triton_scores, "FORWARD_DESIGN", "resident")
    resident = triton_scores.forward_configs(aggregation, 20, 40)
    assert [(c["VIDEOS"], c["D_RESIDENT"]) for c in resident] == [(4, 128)]
    video, text, video_mask, text_mask, upstream = random_case(6, 11, 70, 20, 40, seed=8)
    outputs = []
    for function, dtype in ((reference_scores, torch.float64), (fused, torch.float32)):
        taus = [torch.tensor(tau, dtype=dtype, requires_grad=True) for tau in (0.1, 0.2)]
        v = video.detach().to(dtype).clone().requires_grad_()
        t = text.detach().to(dtype).clone().requires_grad_()
        scores = function(v, t, text_mask, video_mask, aggregation=aggregation, attn_temperature=taus[0],
                          weight_temperature=taus[1])
        (scores.double() * upstream).sum().backward()
        temperature_grads = [tau.grad.double() if tau.grad is not None else torch.zeros((), dtype=torch.float64)
                             for tau in taus]
        outputs.append((scores.double(), v.grad.double(), t.grad.double(), torch.stack(temperature_grads)))
    assert_matches(outputs[1], outputs[0], ("scores", "video grad", "text grad", "temperature grads"))


def test_forward_configs_offer_the_resident_tile_where_it_fits():
    streaming = triton_scores.FORWARD_CONFIGS
    resident = {c["D_RESIDENT"]: c for c in triton_scores.RESIDENT_FORWARD_CONFIGS}
    assert triton_scores.forward_configs("attention", 32, 256) == streaming + (resident[256],)
    assert triton_scores.forward_configs("max", 16, 96) == streaming + (resident[128],)
    assert triton_scores.forward_configs("mean", 128, 512) == streaming  # D beyond the resident tile
    assert triton_scores.forward_configs("attention", 16, 256) == streaming  # spills on sm_90
    assert triton_scores.forward_configs("attention", 128, 128) == streaming


def test_forward_design_narrows_the_candidates(monkeypatch):
    streaming = triton_scores.FORWARD_CONFIGS
    resident = {c["D_RESIDENT"]: c for c in triton_scores.RESIDENT_FORWARD_CONFIGS}
    monkeypatch.setattr(triton_scores, "FORWARD_DESIGN", "resident")
    assert triton_scores.forward_configs("max", 32, 256) == (resident[256],)
    assert triton_scores.forward_configs("max", 32, 512) == streaming  # none fits: streamed
    monkeypatch.setattr(triton_scores, "FORWARD_DESIGN", "streamed")
    assert triton_scores.forward_configs("max", 32, 256) == streaming
    monkeypatch.setattr(triton_scores, "FORWARD_DESIGN", "fast")
    with pytest.raises(ValueError, match="FORWARD_DESIGN='fast'"):
        triton_scores.forward_configs("max", 32, 256)


def test_shapes_cover_several_texts_per_program_and_partial_tiles():
    block_m, texts = tile_shape(9)
    assert texts > 1 and 11 > texts and 11 % texts  # two groups of texts, the second one partial
    assert 70 % 64 and 2 * 70 > 64  # cell blocks run past a video's end, backward tiles straddle videos
    assert tile_shape(17) == (32, 4) and 72 % 64


def test_padded_width_is_the_next_power_of_two_above_a_floor():
    pad = triton_scores.padded_width
    assert [pad(d, 128) for d in (1, 128, 129, 196, 256, 257)] == [128, 128, 256, 256, 256, 512]
    assert [pad(m, 16) for m in (0, 9, 16, 17, 32)] == [16, 16, 16, 32, 32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("aggregation", ["max", "attention"])
def test_half_precision_matches_reference_and_returns_float32(dtype, aggregation, design):
    video, text, video_mask, text_mask, upstream = random_case(3, 2, 21, 6, 32, seed=7)
    # the reference sees the same rounded inputs
    video, text = video.to(dtype).double(), text.to(dtype).double()
    expected = values_and_grads(reference_scores, video, text, video_mask, text_mask, upstream, torch.float64,
                                aggregation=aggregation)
    scores = fused(video.to(dtype), text.to(dtype), text_mask, video_mask, aggregation=aggregation)
    assert scores.dtype == torch.float32
    actual = values_and_grads(fused, video, text, video_mask, text_mask, upstream, dtype, aggregation=aggregation)
    for name, got, want in zip(("scores", "video grad", "text grad"), actual, expected):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=0.0, atol=0.03 * scale + 1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_temperature_gradients_match_reference():
    video, text, video_mask, text_mask, upstream = random_case(2, 5, 9, 4, 16, seed=3)
    grads = []
    for function, dtype in ((reference_scores, torch.float64), (fused, torch.float32)):
        attn_temperature = torch.tensor(0.2, dtype=dtype, requires_grad=True)
        weight_temperature = torch.tensor(0.3, dtype=dtype, requires_grad=True)
        scores = function(video.to(dtype), text.to(dtype), text_mask, video_mask, aggregation="attention",
                          attn_temperature=attn_temperature, weight_temperature=weight_temperature)
        (scores.double() * upstream).sum().backward()
        grads.append(torch.stack([attn_temperature.grad.double(), weight_temperature.grad.double()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATION_CODES)
def test_backward_tuning_zeroes_gradients_only_in_the_variant_that_runs(aggregation):
    """The autotuners' pre_hook zeroes DV and DT between timed trials; attention's variant that
    returns at once must leave the gradients the other variant wrote."""
    for flag, unshifted, runs in ((1.0, True, True), (1.0, False, False), (0.0, False, True), (0.0, True, False)):
        nargs = {"AGG": AGGREGATION_CODES[aggregation], "UNSHIFTED": unshifted,
                 "TEMPS": torch.tensor([10.0, 5.0, flag]), "DV": torch.ones(3, 4), "DT": torch.ones(2, 4)}
        triton_scores._zero_gradients(nargs)
        zeroed = runs or aggregation != "attention"
        for name in ("DV", "DT"):
            expected = torch.full_like(nargs[name], 0.0 if zeroed else 1.0)
            assert torch.equal(nargs[name], expected), (name, flag, unshifted)


def test_unshifted_forward_flag_follows_the_temperatures():
    limit = triton_scores.MAX_UNSHIFTED_INVERSE_TEMPERATURE
    for inv_ta, inv_tw, unshifted in ((limit, limit, 1.0), (limit * 1.01, 1.0, 0.0), (1.0, limit * 1.01, 0.0),
                                      (10.0, 0.1, 1.0)):
        temps = triton_scores._kernel_temperatures(torch.tensor(inv_ta), torch.tensor(inv_tw))
        assert temps.tolist() == pytest.approx([inv_ta, inv_tw, unshifted])


@pytest.mark.parametrize("taus", [(0.01, 0.2), (0.2, 0.01), (1 / 64, 1 / 64)], ids=["small-tau_a", "small-tau_w",
                                                                                   "at-the-limit"])
def test_small_temperatures_match_reference(taus, design):
    """Below 1/64 the forward and both backward designs keep running maxima (unshifted,
    exp2(s / 0.01 * log2 e) overflows float32 at cosines above 0.89); at 1/64 they take their
    exponentials unshifted, and cosines near -1 must not underflow."""
    video, text, video_mask, text_mask, upstream = random_case(3, 4, 9, 5, 16, seed=21)
    video[0] = text[0, torch.arange(9) % 5] + 0.05 * video[0]  # video 0 against text 0: cosines near 1
    video[1] = -text[2, torch.arange(9) % 5] + 0.05 * video[1]  # video 1 against text 2: cosines near -1
    for learnable in (False, True):
        outputs = []
        for function, dtype in ((reference_scores, torch.float64), (fused, torch.float32)):
            temperatures = [torch.tensor(tau, dtype=dtype, requires_grad=learnable) for tau in taus]
            v = video.to(dtype).clone().requires_grad_()
            scores = function(v, text.to(dtype), text_mask, video_mask, aggregation="attention",
                              attn_temperature=temperatures[0], weight_temperature=temperatures[1])
            (scores.double() * upstream).sum().backward()
            outputs.append([scores.double(), v.grad.double()]
                           + ([torch.stack([t.grad.double() for t in temperatures])] if learnable else []))
        assert_matches(outputs[1][:2], outputs[0][:2], ("scores", "video grad"))
        if learnable:
            # a temperature's gradient is -(1/tau^2) times a weighted variance taken as E[x^2] - E[x]^2:
            # float32 cancellation (about 1e-7) grows by 1/tau^2, 10^4 at tau = 0.01
            torch.testing.assert_close(outputs[1][2], outputs[0][2], rtol=2e-3, atol=1e-7 / min(taus) ** 2)


def test_matches_library_naive_and_chunked_backends():
    video, text, video_mask, text_mask, upstream = random_case(4, 3, 11, 7, 16, seed=11)
    for aggregation in AGGREGATIONS:
        actual = values_and_grads(fused, video, text, video_mask, text_mask, upstream, torch.float32,
                                  aggregation=aggregation)
        for backend in ("naive", "chunked"):
            def reference(v, t, tm, vm, backend=backend, **kwargs):
                return pair_scores(v, t, tm, vm, backend=backend, **kwargs)

            expected = values_and_grads(reference, video, text, video_mask, text_mask, upstream, torch.float32,
                                        aggregation=aggregation)
            for got, want in zip(actual, expected):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cells, first, second", [(8, 0, 2), (70, 5, 40), (70, 3, 67)],
                         ids=["cells-0-2", "cells-5-40", "cells-3-67"])
def test_max_ties_give_the_whole_gradient_to_the_first_index(cells, first, second):
    # 64 cells a block: the tied cells sit in different rows of one block (of a short and of a long
    # video), or in the same row of consecutive blocks (the forward keeps a maximum per row of the
    # block until the video ends)
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, cells, 8, dtype=torch.float64, generator=generator)
    text = torch.randn(1, 2, 8, dtype=torch.float64, generator=generator)
    # the two cells tie as phrase 0's best cell (cosine near, not at, 1: there its gradient vanishes)
    video[0, first] = video[0, second] = text[0, 0] + 0.5 * torch.randn(8, dtype=torch.float64, generator=generator)
    # the tie broken towards the first cell: the second nudged to a slightly lower cosine
    nudge = 1e-7 * torch.randn(8, dtype=torch.float64, generator=generator)
    cosine = torch.nn.functional.cosine_similarity
    if cosine(video[0, first] + nudge, text[0, 0], dim=0) > cosine(video[0, first], text[0, 0], dim=0):
        nudge = -nudge
    nudged = video.clone()
    nudged[0, second] += nudge
    grads = {}
    for backend, cells_in in (("triton", video.float()), ("naive", video), ("nudged", nudged)):
        v = cells_in.clone().requires_grad_()
        pair_scores(v, text.to(v.dtype), aggregation="max",
                           backend="naive" if backend == "nudged" else backend).sum().backward()
        grads[backend] = v.grad[0]
    # naive splits the tied gradient evenly; the kernel gives all of it to the first cell, as if the
    # tie were broken towards it
    torch.testing.assert_close(grads["naive"][first], grads["naive"][second])
    torch.testing.assert_close(grads["triton"].double(), grads["nudged"], rtol=1e-4, atol=1e-5)
    assert (grads["triton"][first] - grads["triton"][second]).abs().max() > 1e-3


def test_long_texts_fall_back_to_chunked_with_a_warning():
    video, text, video_mask, text_mask, upstream = random_case(2, 2, 5, MAX_PHRASES + 1, 8, seed=5)
    with pytest.warns(RuntimeWarning, match="chunked"):
        scores = fused(video.float(), text.float(), text_mask, video_mask, aggregation="max")
    expected = pair_scores(video.float(), text.float(), text_mask, video_mask, aggregation="max",
                                  backend="chunked")
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected)


def test_kernel_entry_never_waits_for_the_device():
    import inspect

    for function in (triton_scores.triton_pair_scores, triton_scores._TritonPairScores.forward,
                     triton_scores._TritonPairScores.backward, triton_scores._backward_inputs,
                     triton_scores._inverse_temperature):
        source = inspect.getsource(function)
        for forbidden in (".item(", ".nonzero(", ".tolist(", "float(tensor", "float(value.", "bool(", ".cpu("):
            assert forbidden not in source, (function.__name__, forbidden)


def test_bad_inputs_are_named_by_the_caller():
    video, text = torch.randn(2, 4, 8), torch.randn(3, 5, 8)
    with pytest.raises(ValueError, match="aggregation"):
        pair_scores(video, text, aggregation="median", backend="triton")
    with pytest.raises(ValueError, match="text_mask"):
        pair_scores(video, text, text_mask=torch.zeros(3, 5, dtype=torch.bool), backend="triton")
    with pytest.raises(ValueError, match="attn_temperature"):
        pair_scores(video, text, attn_temperature=0.0, backend="triton")


def test_module_imports_without_triton_and_explains_when_called():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, fgmm_lib.kernels.triton_scores as ts\n"
        "assert not ts.triton_available()\n"
        "mask = torch.ones(1, 2, dtype=torch.bool)\n"
        "try:\n"
        "    ts.triton_pair_scores(torch.randn(1, 2, 4), torch.randn(1, 2, 4), mask, mask)\n"
        "except ImportError as error:\n"
        "    assert 'triton' in str(error), error\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
