"""Tests for fgmm_lib.models.encoders: shapes, token grid, masking, size knobs and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fgmm_lib.models.encoders import DualEncoder, ModelConfig, TextEncoder, VideoEncoder, token_to_cell
from fgmm_lib.models.group_norm import kernel_available


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(ModelConfig(vocab_size=30, dim=16, width=0.5, word_dim=12, ngram=3)).eval()


def test_default_grid_is_4x4x4() -> None:
    encoder = VideoEncoder(dim=8, width=0.25)
    assert encoder.grid(8, 32, 32) == (4, 4, 4)
    tokens, global_embedding = encoder(torch.rand(2, 3, 8, 32, 32))
    assert tokens.shape == (2, 64, 8)
    assert global_embedding.shape == (2, 8)


@pytest.mark.parametrize("size", [(8, 32, 32), (4, 32, 32), (8, 64, 64), (5, 17, 23), (1, 8, 8), (3, 9, 40)])
@pytest.mark.parametrize("depth", [1, 2])
def test_grid_matches_forward(size: tuple[int, int, int], depth: int) -> None:
    encoder = VideoEncoder(dim=8, width=0.25, depth=depth)
    frames, height, width = size
    feature_map = encoder.features(torch.rand(1, 3, frames, height, width))
    assert tuple(feature_map.shape[2:]) == encoder.grid(frames, height, width)
    tokens, _ = encoder(torch.rand(1, 3, frames, height, width))
    grid = encoder.grid(frames, height, width)
    assert tokens.shape[1] == grid[0] * grid[1] * grid[2]


def test_token_order_is_t_major_then_row_then_column() -> None:
    """Token n holds the feature-map cell token_to_cell(n): checked against the 1x1x1 projection."""
    torch.manual_seed(1)
    encoder = VideoEncoder(dim=6, width=0.25).eval()
    video = torch.rand(2, 3, 4, 24, 40)
    with torch.no_grad():
        tokens, _ = encoder(video)
        projected = encoder.local_projection(encoder.features(video))  # [B, D, T', H', W']
    grid = encoder.grid(4, 24, 40)
    assert len(set(grid)) == 3, "distinct sizes so that a wrong order cannot pass"
    for index in range(tokens.shape[1]):
        t, y, x = token_to_cell(index, grid)
        torch.testing.assert_close(tokens[:, index], projected[:, :, t, y, x])


def test_token_to_cell_int_and_tensor_agree() -> None:
    grid = (2, 3, 5)
    indices = torch.arange(30)
    t, y, x = token_to_cell(indices, grid)
    for index in range(30):
        assert token_to_cell(index, grid) == (int(t[index]), int(y[index]), int(x[index]))
        assert (int(t[index]) * 3 + int(y[index])) * 5 + int(x[index]) == index
    assert token_to_cell(29, grid) == (1, 2, 4)
    assert token_to_cell(5, grid) == (0, 1, 0)
    with pytest.raises(ValueError, match="index"):
        token_to_cell(30, grid)
    with pytest.raises(ValueError, match="index"):
        token_to_cell(torch.tensor([-1, 0]), grid)


def test_global_is_projection_of_mean_pool() -> None:
    torch.manual_seed(2)
    encoder = VideoEncoder(dim=5, width=0.25).eval()
    video = torch.rand(3, 3, 8, 32, 32)
    with torch.no_grad():
        _, global_embedding = encoder(video)
        pooled = encoder.features(video).mean(dim=(2, 3, 4))
    torch.testing.assert_close(global_embedding, encoder.global_projection(pooled))


def test_batch_items_are_independent(model: DualEncoder) -> None:
    """GroupNorm uses no batch statistics: a clip's output does not depend on its batch mates."""
    torch.manual_seed(3)
    video = torch.rand(4, 3, 8, 32, 32)
    with torch.no_grad():
        batch_tokens, batch_global = model.encode_video(video)
        single_tokens, single_global = model.encode_video(video[1:2])
    torch.testing.assert_close(batch_tokens[1:2], single_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_global[1:2], single_global, atol=1e-5, rtol=1e-5)


def test_text_shapes_and_mask(model: DualEncoder) -> None:
    tokens = torch.randint(2, 30, (3, 7))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    phrases, phrase_mask, global_embedding = model.encode_text(tokens, mask)
    assert phrases.shape == (3, 7, 16)
    assert phrase_mask.dtype == torch.bool and torch.equal(phrase_mask, mask)
    assert global_embedding.shape == (3, 16)
    assert torch.all(phrases[~mask] == 0)


def test_masked_words_change_nothing(model: DualEncoder) -> None:
    """Whatever the ids at padded positions, valid phrases and the global embedding are unchanged."""
    torch.manual_seed(4)
    tokens = torch.randint(2, 30, (4, 9))
    mask = torch.rand(4, 9) < 0.6
    mask[:, 0] = True
    other = torch.where(mask, tokens, torch.randint(0, 30, (4, 9)))
    with torch.no_grad():
        phrases, _, global_embedding = model.encode_text(tokens, mask)
        other_phrases, _, other_global = model.encode_text(other, mask)
        zero_phrases, _, zero_global = model.encode_text(torch.where(mask, tokens, 0), mask)
    assert not torch.equal(tokens, other)
    torch.testing.assert_close(phrases, other_phrases, atol=0, rtol=0)
    torch.testing.assert_close(global_embedding, other_global, atol=0, rtol=0)
    torch.testing.assert_close(phrases, zero_phrases, atol=0, rtol=0)
    torch.testing.assert_close(global_embedding, zero_global, atol=0, rtol=0)


@pytest.mark.parametrize("ngram", [1, 2, 3, 4])
def test_text_matches_reference_loop(ngram: int) -> None:
    """Phrases and global against a plain per-position n-gram window, in float64.

    The window of phrase m covers words m - (ngram - 1) // 2 ... m + ngram // 2 ("same" padding).
    """
    torch.manual_seed(5)
    encoder = TextEncoder(vocab_size=20, dim=4, word_dim=6, ngram=ngram).double()
    left = (ngram - 1) // 2
    tokens = torch.randint(1, 20, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    phrases, _, global_embedding = encoder(tokens, mask)
    weight, bias = encoder.phrase_conv.weight, encoder.phrase_conv.bias  # [out, in, k], [out]
    for b in range(2):
        features = []
        for m in range(6):
            acc = bias.clone()
            for k in range(ngram):
                position = m + k - left
                if 0 <= position < 6 and mask[b, position]:
                    acc = acc + weight[:, :, k] @ encoder.embedding.weight[tokens[b, position]]
            features.append(torch.relu(acc))
        valid = [features[m] for m in range(6) if mask[b, m]]
        for m in range(6):
            expected = encoder.phrase_projection(features[m]) if mask[b, m] else torch.zeros(4, dtype=torch.float64)
            torch.testing.assert_close(phrases[b, m], expected)
        pooled = torch.stack(valid).amax(dim=0)
        torch.testing.assert_close(global_embedding[b], encoder.global_projection(pooled))


def test_gradients_reach_every_parameter(model: DualEncoder) -> None:
    model.zero_grad()
    tokens, global_video = model.encode_video(torch.rand(2, 3, 8, 32, 32))
    phrases, _, global_text = model.encode_text(torch.randint(2, 30, (2, 5)), torch.ones(2, 5, dtype=torch.bool))
    (tokens.sum() + global_video.sum() + phrases.sum() + global_text.sum()).backward()
    for name, parameter in model.named_parameters():
        if name == "text.embedding.weight":
            continue  # only the rows of used ids get gradients
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.zero_grad()


def test_width_and_depth_change_parameter_count() -> None:
    counts = {
        (width, depth): _parameter_count(VideoEncoder(dim=16, width=width, depth=depth))
        for width in (0.5, 1.0, 2.0)
        for depth in (1, 2)
    }
    assert counts[(0.5, 1)] < counts[(1.0, 1)] < counts[(2.0, 1)]
    assert counts[(1.0, 1)] < counts[(1.0, 2)]
    assert counts[(2.0, 1)] < counts[(2.0, 2)]
    # The grid does not depend on depth or width.
    assert VideoEncoder(dim=4, width=2.0, depth=3).grid(8, 32, 32) == (4, 4, 4)


def test_dual_encoder_follows_config() -> None:
    config = ModelConfig(vocab_size=50, dim=24, width=0.5, depth=2, word_dim=10, ngram=2)
    model = DualEncoder(config)
    assert model.config is config
    assert model.text.embedding.num_embeddings == 50
    assert model.text.phrase_conv.kernel_size == (2,)
    phrases, _, global_text = model.encode_text(torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.bool))
    assert phrases.shape == (2, 5, 24) and global_text.shape == (2, 24)
    tokens, global_video = model.encode_video(torch.rand(2, 3, 8, 32, 32))
    assert tokens.shape == (2, 64, 24) and global_video.shape == (2, 24)


def test_text_with_no_valid_word_raises(model: DualEncoder) -> None:
    tokens = torch.randint(2, 30, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"mask.*\[1\].*no valid word"):
        model.encode_text(tokens, mask)


@pytest.mark.parametrize(
    ("tokens", "mask", "match"),
    [
        (torch.zeros(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4, dtype=torch.bool), "tokens"),
        (torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), "tokens"),
        (torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool), "mask"),
        (torch.full((2, 4), 30), torch.ones(2, 4, dtype=torch.bool), "tokens"),
        (torch.full((2, 4), -1), torch.ones(2, 4, dtype=torch.bool), "tokens"),
    ],
)
def test_bad_text_raises_naming_argument(model: DualEncoder, tokens, mask, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model.encode_text(tokens, mask)


@pytest.mark.parametrize(
    "video",
    [
        torch.rand(3, 8, 32, 32),  # no batch dim
        torch.rand(2, 1, 8, 32, 32),  # one channel
        torch.rand(2, 8, 3, 32, 32),  # channels in the wrong place
        torch.rand(2, 8, 32, 32, 3),  # channels last
        torch.zeros(2, 3, 8, 32, 32, dtype=torch.uint8),  # not float
    ],
)
def test_bad_video_raises_naming_argument(model: DualEncoder, video: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="video"):
        model.encode_video(video)


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"dim": 0}, "dim"),
        ({"width": 0.0}, "width"),
        ({"width": float("nan")}, "width"),
        ({"depth": 0}, "depth"),
        ({"ngram": 0}, "ngram"),
        ({"word_dim": 2.5}, "word_dim"),
    ],
)
def test_bad_model_config_raises_naming_field(overrides: dict, field_name: str) -> None:
    arguments = {"vocab_size": 10, **overrides}
    with pytest.raises(ValueError, match=field_name):
        ModelConfig(**arguments)


def test_grid_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="height"):
        VideoEncoder(dim=4, width=0.25).grid(8, 0, 32)


@pytest.mark.parametrize("depth, frames, size", [(1, 8, 32), (2, 7, 20)])
def test_temporal_convs_as_2d_compute_the_same_function(depth, frames, size):
    """The 2D formulation of the temporal convs: same outputs and gradients on the same weights (float64)."""
    torch.manual_seed(0)
    three_d = VideoEncoder(dim=16, width=0.5, depth=depth).double()
    two_d = VideoEncoder(dim=16, width=0.5, depth=depth).double()
    two_d.load_state_dict(three_d.state_dict())  # the same parameters: checkpoints load either way
    two_d.use_temporal_2d()
    assert all(m.temporal_2d for m in two_d.modules() if hasattr(m, "temporal_2d") and m is not two_d)
    video = torch.rand(3, 3, frames, size, size, dtype=torch.float64)
    weights = [torch.randn_like(t) for t in three_d(video)]
    outputs, grads = [], []
    for model in (three_d, two_d):
        out = model(video)
        outputs.append(out)
        grads.append(torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), list(model.parameters())))
    for a, b in zip(*outputs):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.equal(outputs[0][0], torch.zeros_like(outputs[0][0]))


def test_temporal_2d_float32_stays_within_rounding():
    torch.manual_seed(1)
    model = VideoEncoder(dim=32, width=1.0)
    video = torch.rand(8, 3, 8, 32, 32)
    reference = model(video)
    model.use_temporal_2d()
    for a, b in zip(reference, model(video)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    model.use_temporal_2d(False)
    assert all(torch.equal(a, b) for a, b in zip(reference, model(video)))


@pytest.mark.parametrize("depth", [1, 2])
def test_fast_path_float32_matches_float64_reference(depth):
    """The whole fast path (2D temporal convs, GroupNorm + residual + ReLU in the C kernel) against the
    reference formulation in float64 on the same weights: outputs and every parameter's gradient."""
    torch.manual_seed(2)
    reference = VideoEncoder(dim=16, width=0.5, depth=depth).double()
    fast = VideoEncoder(dim=16, width=0.5, depth=depth)
    fast.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    fast.use_fast_path()
    assert kernel_available(), "the C compiler should build the GroupNorm kernel here"
    video = torch.rand(3, 3, 8, 24, 24, dtype=torch.float64)
    weights = [torch.randn_like(t) for t in reference(video)]
    results = []
    for model, clip in ((reference, video), (fast, video.float())):
        out = model(clip)
        grads = torch.autograd.grad(sum((o * w.to(o.dtype)).sum() for o, w in zip(out, weights)),
                                    list(model.parameters()))
        results.append((out, grads))
    (ref_out, ref_grads), (fast_out, fast_grads) = results
    for a, b in zip(ref_out, fast_out):
        assert torch.allclose(a.float(), b, rtol=1e-4, atol=1e-5)
    for (name, _), a, b in zip(reference.named_parameters(), ref_grads, fast_grads):
        scale = a.abs().max().item() + 1e-12
        assert (a.float() - b).abs().max().item() <= 1e-4 * scale, name


def test_fast_path_switches_off_to_the_reference_exactly():
    torch.manual_seed(3)
    model = VideoEncoder(dim=16, width=0.5)
    video = torch.rand(2, 3, 8, 16, 16)
    reference = model(video)
    model.use_fast_path()
    assert all(m.fused_norm for m in model.modules() if hasattr(m, "fused_norm"))
    model.use_fast_path(False)
    assert all(torch.equal(a, b) for a, b in zip(reference, model(video)))
