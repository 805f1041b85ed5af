"""Tests of fgmm_lib.evaluation.protocol: retrieval metrics, linear probe, pointing and the whole evaluation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRecall

from fgmm_lib.evaluation.embedding import embed_dataset, pair_score_matrix, still_frame_indices
from fgmm_lib.evaluation.metrics import (
    _query_hits,
    attribute_retrieval,
    best_relevant_ranks,
    bootstrap_interval,
    cell_hit_mask,
    linear_probe,
    pointing_accuracy,
    random_ranking_hit_rate,
    retrieval_metrics,
)
from fgmm_lib.evaluation.protocol import evaluate
from fgmm_lib.losses.modules import build_loss
from fgmm_lib.losses.scores import AGGREGATIONS

# --------------------------------------------------------------------------------------------
# Plain reference implementations (loops, written from docs/study.md section 5)
# --------------------------------------------------------------------------------------------


def reference_best_ranks(scores: np.ndarray, relevant: np.ndarray) -> list[int]:
    """1-based position of the first relevant item after sorting each row by descending score."""
    ranks = []
    for row_scores, row_relevant in zip(scores, relevant):
        order = sorted(range(len(row_scores)), key=lambda c: -row_scores[c])
        ranks.append(next(position + 1 for position, c in enumerate(order) if row_relevant[c]))
    return ranks


def reference_hit_rate(ranks: list[int], k: int) -> float:
    return sum(rank <= k for rank in ranks) / len(ranks)


# A hand-made retrieval: corpus captions A B A C B A, queries A B C; scores include negatives.
HAND_CAPTIONS = ["A", "B", "A", "C", "B", "A"]
HAND_QUERIES = ["A", "B", "C"]
HAND_SCORES = torch.tensor(
    [
        [-0.5, 0.9, -0.2, 0.3, 0.1, -0.9],  # best relevant (-0.2) below 0.9, 0.3, 0.1: rank 4
        [0.2, -0.1, 0.4, -0.3, 0.8, 0.0],  # best relevant 0.8: rank 1
        [0.7, 0.6, -0.4, -0.6, 0.5, 0.65],  # only relevant -0.6 is last: rank 6
    ],
    dtype=torch.float64,
)
HAND_RELEVANT = torch.tensor([[q == c for c in HAND_CAPTIONS] for q in HAND_QUERIES])


def test_retrieval_metrics_hand_made_matrix_with_repeated_captions() -> None:
    metrics = retrieval_metrics(HAND_SCORES, HAND_RELEVANT, ks=(1, 4, 5, 6, 10))
    assert reference_best_ranks(HAND_SCORES.numpy(), HAND_RELEVANT.numpy()) == [4, 1, 6]
    assert metrics["R@1"] == pytest.approx(1 / 3)
    assert metrics["R@4"] == pytest.approx(2 / 3)
    assert metrics["R@5"] == pytest.approx(2 / 3)
    assert metrics["R@6"] == pytest.approx(1.0)
    assert metrics["R@10"] == pytest.approx(1.0)
    assert metrics["median_rank"] == pytest.approx(4.0)
    assert metrics["mean_rank"] == pytest.approx(11 / 3)
    assert best_relevant_ranks(HAND_SCORES, HAND_RELEVANT).tolist() == [4.0, 1.0, 6.0]


def test_retrieval_metrics_ignore_a_constant_shift_of_negative_scores() -> None:
    reference = retrieval_metrics(HAND_SCORES, HAND_RELEVANT)
    for offset in (-5.0, -1.0, 3.0):
        assert retrieval_metrics(HAND_SCORES + offset, HAND_RELEVANT) == pytest.approx(reference)
    all_negative = HAND_SCORES - 2.0
    assert bool((all_negative < 0).all())
    assert retrieval_metrics(all_negative, HAND_RELEVANT)["R@1"] == pytest.approx(1 / 3)


def test_hit_rate_is_not_recall_when_queries_have_several_correct_answers() -> None:
    """RetrievalRecall divides by the number of correct answers: on this matrix it differs."""
    queries, corpus = HAND_SCORES.shape
    indexes = torch.arange(queries).unsqueeze(1).expand(queries, corpus).reshape(-1)
    shifted = (HAND_SCORES - HAND_SCORES.min() + 1).float().reshape(-1)
    target = HAND_RELEVANT.reshape(-1)
    recall = float(RetrievalRecall(top_k=5)(shifted, target, indexes=indexes))
    hit_rate = float(RetrievalHitRate(top_k=5)(shifted, target, indexes=indexes))
    # Query A has 2 of its 3 answers in the top 5: recall 2/3, hit 1. B: 1 and 1. C: 0 and 0.
    assert recall == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert hit_rate == pytest.approx(2 / 3)
    assert retrieval_metrics(HAND_SCORES, HAND_RELEVANT)["R@5"] == pytest.approx(hit_rate)
    assert recall != pytest.approx(hit_rate)


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_match_direct_ranks_on_random_matrices(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    queries, corpus = 17, 40
    scores = torch.randn(queries, corpus, generator=generator, dtype=torch.float64) * 0.5
    relevant = torch.rand(queries, corpus, generator=generator) < 0.1
    relevant[torch.arange(queries), torch.randint(corpus, (queries,), generator=generator)] = True
    ks = (1, 3, 5, 10)
    metrics = retrieval_metrics(scores, relevant, ks=ks)
    ranks = reference_best_ranks(scores.numpy(), relevant.numpy())
    for k in ks:
        assert metrics[f"R@{k}"] == pytest.approx(reference_hit_rate(ranks, k))
    assert metrics["median_rank"] == pytest.approx(float(np.median(ranks)))
    assert metrics["mean_rank"] == pytest.approx(float(np.mean(ranks)))


def test_tied_scores_rank_at_their_random_order_expectation() -> None:
    # All scores equal: the first of r answers among C in a random order sits at (C + 1) / (r + 1).
    relevant = torch.tensor([[True, False, False, False, False], [True, True, False, True, False]])
    ranks = best_relevant_ranks(torch.zeros(2, 5), relevant)
    assert ranks.tolist() == pytest.approx([6 / 2, 6 / 4])
    # Ties among relevant items only do not move the rank.
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    assert best_relevant_ranks(scores, torch.tensor([[False, True, True, False]])).tolist() == [2.0]


def test_random_ranking_hit_rate_is_exact() -> None:
    relevant = torch.tensor(
        [[True, False, False, False, False], [True, True, False, False, False], [True, False, True, False, True]]
    )
    expected = {}
    for k in (1, 2, 3, 10):
        hits = []
        for row in relevant.tolist():
            orders = list(itertools.permutations(range(len(row))))
            hits.append(sum(any(row[c] for c in order[:k]) for order in orders) / len(orders))
        expected[f"R@{k}"] = float(np.mean(hits))
    assert random_ranking_hit_rate(relevant, ks=(1, 2, 3, 10)) == pytest.approx(expected)


def test_random_scores_give_the_random_ranking_hit_rate() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, corpus = 3000, 30
    relevant = torch.rand(queries, corpus, generator=generator) < 0.05
    relevant[:, 0] |= ~relevant.any(dim=1)
    metrics = retrieval_metrics(torch.randn(queries, corpus, generator=generator), relevant)
    chance = random_ranking_hit_rate(relevant)
    for k in (1, 5, 10):
        p = chance[f"R@{k}"]
        assert abs(metrics[f"R@{k}"] - p) < 4 * math.sqrt(p * (1 - p) / queries)


def test_retrieval_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no relevant item"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        retrieval_metrics(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((1, 2), float("nan")), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), ks=(0,))


def test_query_hits_are_the_hits_behind_r_at_k() -> None:
    hits = _query_hits(HAND_SCORES, HAND_RELEVANT, ks=(1, 4, 6))  # best relevant ranks 4, 1, 6
    assert hits["R@1"].tolist() == [0.0, 1.0, 0.0]
    assert hits["R@4"].tolist() == [1.0, 1.0, 0.0]
    assert hits["R@6"].tolist() == [1.0, 1.0, 1.0]
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(23, 31, generator=generator)
    relevant = torch.rand(23, 31, generator=generator) < 0.1
    relevant[:, 3] = True
    metrics = retrieval_metrics(scores, relevant)
    for key, values in _query_hits(scores, relevant).items():
        assert float(values.mean()) == pytest.approx(metrics[key])
    # A tie at the best relevant score: the hit probability of a random order of the tied items.
    tied = _query_hits(torch.tensor([[0.9, 0.5, 0.5, 0.5]]), torch.tensor([[False, True, False, False]]), ks=(1, 2, 3))
    assert [float(tied[f"R@{k}"]) for k in (1, 2, 3)] == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_bootstrap_interval_is_a_seeded_percentile_interval() -> None:
    values = [0.0, 1.0] * 50 + [1.0] * 20  # mean 0.5833
    low, high = bootstrap_interval(values, resamples=1000, seed=0)
    rng = np.random.default_rng(0)
    data = np.asarray(values)
    means = [data[rng.integers(0, len(data), size=len(data))].mean() for _ in range(1000)]
    assert [low, high] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
    assert low < np.mean(values) < high
    half_width = 1.96 * math.sqrt(np.mean(values) * (1 - np.mean(values)) / len(values))  # normal approximation
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert bootstrap_interval(values) == [low, high]  # reproducible
    assert bootstrap_interval([0.25]) == [0.25, 0.25]
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1.0], resamples=0)


def test_attribute_retrieval_judges_the_ranking_on_one_attribute() -> None:
    # Clips:   0 red-7, 1 red-3, 2 blue-7, 3 blue-3; queries "red 7" (clip 0) and "blue 3" (clip 3).
    colour = torch.tensor([0, 0, 1, 1])
    digit = torch.tensor([7, 3, 7, 3])
    relevant = torch.tensor([[True, False, False, False], [False, False, False, True]])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0],   # "red 7": red-3 first, blue-7 second, red-7 third
                           [0.8, 0.1, 0.7, 0.6]])  # "blue 3": red-7, blue-7, blue-3, red-3
    result = attribute_retrieval(scores, relevant, {"colour": colour, "digit": digit})
    assert result["colour"]["R@1"] == 0.5  # query 1's best clip is red (right), query 2's red (wrong)
    assert result["digit"]["R@1"] == 0.0  # 3 for "red 7", 7 for "blue 3"
    colour_ranks = [1, 2]  # first red clip for query 1, first blue clip (blue-7) for query 2
    digit_ranks = [2, 3]  # first 7 (blue-7) for query 1, first 3 (blue-3) for query 2
    assert result["colour"]["median_rank"] == pytest.approx(np.median(colour_ranks))
    assert result["digit"]["mean_rank"] == pytest.approx(np.mean(digit_ranks))
    assert result["colour"]["chance"]["R@1"] == pytest.approx(0.5)  # 2 of 4 clips share each colour
    assert result["digit"]["ci95"]["R@1"] == [0.0, 0.0]
    assert result["colour"]["queries"] == 2 and result["colour"]["corpus"] == 4
    # A query answered by clips of two colours names no single colour: the attribute is left out.
    both = torch.tensor([[True, False, True, False], [False, False, False, True]])
    assert set(attribute_retrieval(scores, both, {"colour": colour, "digit": digit})) == {"digit"}
    with pytest.raises(ValueError, match="3 values for 4 clips"):
        attribute_retrieval(scores, relevant, {"colour": colour[:3]})


# --------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------


def test_linear_probe_separates_separable_features() -> None:
    generator = torch.Generator().manual_seed(0)
    classes, dim = 8, 12
    centres = torch.randn(classes, dim, generator=generator) * 3

    def sample(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(classes, (count,), generator=generator)
        features = centres[labels] + 0.3 * torch.randn(count, dim, generator=generator)
        return features * 50 + 7, labels  # far from standardised: the probe standardises

    train_x, train_y = sample(240)
    test_x, test_y = sample(160)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=classes)
    assert result["top1"] >= 0.98
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (classes, classes)
    assert int(confusion.sum()) == 160
    assert result["top1"] == pytest.approx(float(confusion.diag().sum()) / 160)
    assert result["train_size"] == 240 and result["test_size"] == 160


def test_linear_probe_is_at_chance_on_random_labels() -> None:
    generator = torch.Generator().manual_seed(1)
    classes, dim, count = 8, 16, 500
    result = linear_probe(
        torch.randn(count, dim, generator=generator), torch.randint(classes, (count,), generator=generator),
        torch.randn(count, dim, generator=generator), torch.randint(classes, (count,), generator=generator),
        num_classes=classes,
    )
    assert abs(result["top1"] - 1 / classes) < 4 * math.sqrt((1 / classes) * (1 - 1 / classes) / count)


def test_linear_probe_accuracy_is_micro_not_macro() -> None:
    # 9 test clips of class 0 all right, 1 of class 1 wrong: micro 0.9, macro 0.5.
    train_x = torch.tensor([[-1.0], [-2.0], [-1.5], [1.0], [2.0], [1.5]])
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    test_x = torch.tensor([[-1.0]] * 9 + [[-1.0]])
    test_y = torch.tensor([0] * 9 + [1])
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=2, weight_decays=(1e-3,))
    assert result["top1"] == pytest.approx(0.9)
    assert result["confusion"] == [[9, 0], [1, 0]]


def test_linear_probe_rejects_bad_input() -> None:
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe(x, torch.tensor([0, 1, 5, 0, 1, 2]), x, y, num_classes=3)
    with pytest.raises(ValueError, match="test_labels"):
        linear_probe(x, y, x, y[:4], num_classes=3)
    with pytest.raises(ValueError, match="feature size"):
        linear_probe(x, y, torch.randn(6, 4), y, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(x, y, x, y, num_classes=1)


# --------------------------------------------------------------------------------------------
# Pointing
# --------------------------------------------------------------------------------------------


def reference_cell_hits(boxes: torch.Tensor, visible: torch.Tensor, grid, frame_size) -> torch.Tensor:
    grid_t, grid_h, grid_w = grid
    frames, height, width = frame_size
    clips = boxes.shape[0]
    hits = torch.zeros(clips, grid_t * grid_h * grid_w, dtype=torch.bool)
    for c in range(clips):
        for n in range(grid_t * grid_h * grid_w):
            t, y, x = n // (grid_h * grid_w), (n // grid_w) % grid_h, n % grid_w
            cx, cy = (x + 0.5) * width / grid_w, (y + 0.5) * height / grid_h
            for f in range(frames):
                covered = f < (t + 1) * frames / grid_t and f + 1 > t * frames / grid_t
                x0, y0, x1, y1 = boxes[c, f].tolist()
                if covered and visible[c, f] and x0 <= cx < x1 and y0 <= cy < y1:
                    hits[c, n] = True
    return hits


@pytest.mark.parametrize("grid,frame_size", [((2, 2, 2), (4, 8, 8)), ((3, 4, 3), (5, 13, 11))])
def test_cell_hit_mask_matches_loop_reference(grid, frame_size) -> None:
    generator = torch.Generator().manual_seed(0)
    clips, (frames, height, width) = 6, frame_size
    corner = torch.rand(clips, frames, 2, generator=generator) * torch.tensor([width, height])
    size = 1 + torch.rand(clips, frames, 2, generator=generator) * torch.tensor([width, height]) / 2
    boxes = torch.cat([corner, corner + size], dim=-1).floor()
    visible = torch.rand(clips, frames, generator=generator) < 0.7
    expected = reference_cell_hits(boxes, visible, grid, frame_size)
    assert torch.equal(cell_hit_mask(boxes, visible, grid, frame_size), expected)


def _hand_pointing_case():
    """Grid (2, 2, 2) over 4 x 8 x 8 clips: cell centres at x, y in {2, 6}.

    The actor is at the top right (box 4..8 x 0..4) in frames 0-1 and at the bottom left
    (0..4 x 4..8) in frames 2-3: hit cells are (0, 0, 1) = token 1 and (1, 1, 0) = token 6.
    Video tokens are the one-hot vectors e_n; the digit phrase (index 2) of clip 0 points
    at token 1 (hit), of clip 1 at token 5 = (1, 0, 1) (miss), of clip 2 at token 1 but the
    actor is not visible in frames 0-1 there (miss).
    """
    grid, frame_size = (2, 2, 2), (4, 8, 8)
    top_right, bottom_left = [4.0, 0.0, 8.0, 4.0], [0.0, 4.0, 4.0, 8.0]
    boxes = torch.tensor([[top_right, top_right, bottom_left, bottom_left]] * 3)
    visible = torch.ones(3, 4, dtype=torch.bool)
    visible[2, :2] = False
    dim, cells, phrases = 8, 8, 4
    video_tokens = torch.eye(cells, dim).expand(3, cells, dim).clone()
    caption_phrases = torch.randn(3, phrases, dim, generator=torch.Generator().manual_seed(0))
    caption_phrases[0, 2] = torch.eye(dim)[1] + 0.2 * torch.eye(dim)[3]
    caption_phrases[1, 2] = torch.eye(dim)[5] + 0.1 * torch.eye(dim)[6]
    caption_phrases[2, 2] = torch.eye(dim)[1] + 0.2 * torch.eye(dim)[6]
    caption_mask = torch.tensor([[True, True, True, False]] * 3)
    phrase_index = torch.tensor([2, 2, 2])
    return video_tokens, caption_phrases, caption_mask, phrase_index, boxes, visible, grid, frame_size


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_pointing_hand_made_case(aggregation: str) -> None:
    case = _hand_pointing_case()
    boxes, visible, grid, frame_size = case[4:]
    possible = cell_hit_mask(boxes, visible, grid, frame_size)
    assert torch.nonzero(possible[0]).flatten().tolist() == [1, 6]
    assert torch.nonzero(possible[2]).flatten().tolist() == [6]
    loss_module = build_loss(aggregation, attn_temperature=0.05, weight_temperature=0.5)
    result = pointing_accuracy(loss_module, *case)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["chance"] == pytest.approx((2 / 8 + 2 / 8 + 1 / 8) / 3)
    assert result["clips"] == 3


def test_pointing_rejects_a_padded_digit_phrase() -> None:
    case = list(_hand_pointing_case())
    case[3] = torch.tensor([2, 3, 2])
    loss_module = build_loss("attention")
    with pytest.raises(ValueError, match="padded"):
        pointing_accuracy(loss_module, *case)
    case[3] = torch.tensor([2, 4, 2])
    with pytest.raises(ValueError, match="phrase_index"):
        pointing_accuracy(loss_module, *case)
    with pytest.raises(ValueError, match="no attention"):
        pointing_accuracy(build_loss("coarse"), *_hand_pointing_case())


def test_still_frame_is_the_middle_visible_frame() -> None:
    visible = torch.tensor(
        [[True] * 6, [False, False, True, True, True, False], [False] * 6, [False, False, False, False, False, True]]
    )
    assert still_frame_indices(visible).tolist() == [2, 3, 3, 5]


# --------------------------------------------------------------------------------------------
# Embedding and pair scores with a small real model and a fake dataset
# --------------------------------------------------------------------------------------------


class FakeClips:
    """The subset of NarratedDigits that embed_dataset uses: ``len`` and ``get_batch``."""

    split = "test"

    def __init__(self, clips: int = 5, frames: int = 4, size: int = 16, words: int = 6, vocab_size: int = 12):
        generator = torch.Generator().manual_seed(0)
        self.video = torch.rand(clips, 3, frames, size, size, generator=generator)
        self.tokens = torch.randint(2, vocab_size, (clips, words), generator=generator)
        self.mask = torch.ones(clips, words, dtype=torch.bool)
        self.mask[:, -2:] = False
        self.visible = torch.ones(clips, frames, dtype=torch.bool)
        self.visible[1, :2] = False
        self.clips = clips

    def __len__(self) -> int:
        return self.clips

    def get_batch(self, positions) -> dict:
        p = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        return {
            "video": self.video[p], "caption_tokens": self.tokens[p], "caption_mask": self.mask[p],
            "visible": self.visible[p], "boxes": torch.zeros(len(p), self.video.shape[2], 4),
            "action": p % 8, "digit": p % 10, "colour": p % 8, "index": p,
        }


def _small_model(vocab_size: int = 12):
    from fgmm_lib.models.encoders import DualEncoder, ModelConfig

    torch.manual_seed(0)
    return DualEncoder(ModelConfig(vocab_size=vocab_size, dim=8, width=0.25, word_dim=8))


def test_embed_dataset_shapes_stills_and_mode() -> None:
    model = _small_model()
    model.train()
    clips = FakeClips()
    out = embed_dataset(model, clips, batch_size=2, progress=False)
    assert model.training  # restored
    grid = model.video.grid(4, 16, 16)
    cells = grid[0] * grid[1] * grid[2]
    assert out["video_tokens"].shape == (5, cells, 8)
    assert out["video_global"].shape == (5, 8)
    assert out["caption_phrases"].shape == (5, 6, 8)
    assert out["caption_mask"].dtype == torch.bool and out["caption_mask"].shape == (5, 6)
    assert out["still_tokens"].shape == (5, cells, 8)
    assert out["still_frame"].tolist() == [1, 2, 1, 1, 1]
    model.eval()
    with torch.no_grad():
        tokens, global_embedding = model.encode_video(clips.video)
        frame = clips.video[1, :, 2:3].expand(-1, 4, -1, -1).unsqueeze(0)
        still_tokens, _ = model.encode_video(frame)
    assert torch.allclose(out["video_tokens"], tokens, atol=1e-5)
    assert torch.allclose(out["video_global"], global_embedding, atol=1e-5)
    assert torch.allclose(out["still_tokens"][1], still_tokens[0], atol=1e-5)
    assert out["action"].tolist() == [0, 1, 2, 3, 4]


def test_pair_score_matrix_is_the_runs_score() -> None:
    from fgmm_lib.losses.scores import pair_scores

    generator = torch.Generator().manual_seed(0)
    video_tokens, video_global = torch.randn(7, 5, 4, generator=generator), torch.randn(7, 4, generator=generator)
    phrases, text_global = torch.randn(3, 6, 4, generator=generator), torch.randn(3, 4, generator=generator)
    mask = torch.rand(3, 6, generator=generator) < 0.7
    mask[:, 0] = True
    for loss in ("coarse", "milnce"):
        expected = torch.nn.functional.cosine_similarity(video_global[:, None], text_global[None], dim=-1)
        scores = pair_score_matrix(build_loss(loss), video_tokens, video_global, phrases, mask, text_global)
        assert torch.allclose(scores, expected, atol=1e-6)
    for loss in AGGREGATIONS:
        expected = pair_scores(
            video_tokens, phrases, mask, aggregation=loss, attn_temperature=0.2, weight_temperature=0.3
        )
        blocked = pair_score_matrix(
            build_loss(loss, attn_temperature=0.2, weight_temperature=0.3),
            video_tokens, video_global, phrases, mask, text_global, block_size=3,
        )
        assert torch.allclose(blocked, expected, atol=1e-5)
    with pytest.raises(ValueError, match="loss"):
        build_loss("cosine")


def test_digit_phrase_indices_and_clean_probe_rows() -> None:
    import pandas as pd

    from fgmm_lib.evaluation.metrics import digit_phrase_indices
    from fgmm_lib.evaluation.protocol import _clean_probe_rows

    captions = ["the red seven moves left", "the blue zero grows", "The Cyan Nine Blinks"]
    assert digit_phrase_indices(captions, torch.tensor([7, 0, 9]), max_words=16).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="'one' is not in the caption"):
        digit_phrase_indices(captions, [1, 0, 9], max_words=16)
    meta = pd.DataFrame(
        {"distractor_glyphs": [[], [3], [], []], "visible": [[True, True], [True, True], [True, False], [True, True]]}
    )
    assert _clean_probe_rows(meta).tolist() == [True, False, False, True]


# --------------------------------------------------------------------------------------------
# The whole evaluation, on tiny generated data and tiny runs saved by fgmm_lib.training.loop
# --------------------------------------------------------------------------------------------

CLEAN = dict(distractors=0, filler_words=0.0, misaligned_frames=0.0, mismatched_narration=0.0)
EXPECTED_KEYS = {
    "run", "data", "loss", "split", "probe_split", "clips", "temperatures", "probe", "probe_attributes", "t2v",
    "t2i", "pointing", "finished", "skipped",
}
RETRIEVAL_KEYS = {"R@1", "R@5", "R@10", "median_rank", "mean_rank", "queries", "corpus", "chance", "ci95"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Noisy pretraining data, a clean evaluation set with its vocabulary, one with another
    vocabulary, and two runs ("attention" and "coarse") stopped after one step at a tiny
    learning rate: encoders that are, for every purpose here, untrained."""
    from fgmm_lib.data.generate import GenerationConfig, generate_dataset
    from fgmm_lib.data.vocab import Vocabulary
    from fgmm_lib.runs.config import TrainConfig
    from fgmm_lib.training.loop import pretrain

    root = tmp_path_factory.mktemp("evaluate")
    # 200 clips at seed 0: the train narrations use every word of the clean captions.
    pretraining = generate_dataset(GenerationConfig(clips=200, seed=0), root / "pretrain", progress=False)
    evaluation = generate_dataset(
        GenerationConfig(clips=400, seed=1, test_fraction=0.5, **CLEAN), root / "eval",
        vocab=pretraining / "vocab.json", progress=False,
    )
    other_vocab = generate_dataset(GenerationConfig(clips=40, seed=2, **CLEAN), root / "other_vocab", progress=False)
    assert Vocabulary.load(other_vocab / "vocab.json") != Vocabulary.load(pretraining / "vocab.json")
    runs = {}
    for loss in ("attention", "coarse"):
        config = TrainConfig(
            data=str(pretraining), out=str(root / f"run_{loss}"), loss=loss, batch_size=8, epochs=1,
            lr=1e-7, dim=16, width=0.25, device="cpu", seed=0,
        )
        runs[loss] = pretrain(config, progress=False)
    return {"root": root, "pretrain": pretraining, "eval": evaluation, "other_vocab": other_vocab, "runs": runs}


def _assert_at_chance(task: dict) -> None:
    """R@K of an untrained encoder within noise of the exact hit rate of a random ranking."""
    queries = task["queries"]
    for k in (1, 5, 10):
        p = task["chance"][f"R@{k}"]
        sigma = math.sqrt(p * (1 - p) / queries)
        assert abs(task[f"R@{k}"] - p) <= 4 * sigma + 1e-9, (k, task[f"R@{k}"], p, sigma)


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("loss", ["attention", "coarse"])
def test_evaluate_end_to_end_untrained_is_at_chance(workspace, loss: str) -> None:
    import json

    from fgmm_lib.data.dataset import NarratedDigits

    out = workspace["root"] / f"metrics_{loss}" / "metrics.json"
    compute_out = out.parent / "compute.json"
    metrics = evaluate(workspace["runs"][loss], workspace["eval"], out=out, compute_out=compute_out, progress=False)
    assert set(metrics) == EXPECTED_KEYS
    assert json.loads(out.read_text()) == json.loads(json.dumps(metrics))
    assert sorted(p.name for p in out.parent.iterdir()) == ["compute.json", "metrics.json"]  # no temporary left
    assert metrics["loss"] == loss and metrics["split"] == "test" and metrics["finished"]
    compute = json.loads(compute_out.read_text())
    assert compute["loss"] == loss and compute["batch_size"] == 8 and compute["seed"] == 0 and compute["steps"] >= 1

    test_split = NarratedDigits(workspace["eval"], split="test")
    captions = test_split.meta["caption"]
    assert metrics["clips"] == len(test_split)
    assert metrics["t2v"]["queries"] == captions.nunique() and metrics["t2v"]["corpus"] == len(test_split)
    colour_digit = set(zip(test_split.meta["colour"], test_split.meta["digit"]))
    assert metrics["t2i"]["queries"] == len(colour_digit) and metrics["t2i"]["corpus"] == len(test_split)
    assert set(metrics["t2i"]) == RETRIEVAL_KEYS and set(metrics["t2v"]) == RETRIEVAL_KEYS | {"attributes"}
    for task in ("t2v", "t2i"):
        _assert_at_chance(metrics[task])
        for k in ("R@1", "R@10"):
            low, high = metrics[task]["ci95"][k]
            assert low <= metrics[task][k] <= high
    attributes = metrics["t2v"]["attributes"]
    assert set(attributes) == {"action", "colour", "digit"}
    for values in attributes.values():
        assert set(values) == RETRIEVAL_KEYS
        assert values["queries"] == metrics["t2v"]["queries"]
        # Not tested against chance: an untrained encoder ranks the clips almost alike for every
        # query, so the queries' attribute hits are far from independent.
        assert values["ci95"]["R@10"][0] <= values["R@10"] <= values["ci95"]["R@10"][1]
    assert attributes["colour"]["chance"]["R@1"] > metrics["t2v"]["chance"]["R@1"]  # more clips count as hits

    probe = metrics["probe"]
    assert probe["chance"] == pytest.approx(1 / 8)
    assert probe["test_clips"] == len(test_split) and probe["dropped_test_clips"] == 0
    confusion = torch.tensor(probe["confusion"])
    assert confusion.shape == (8, 8) and int(confusion.sum()) == len(test_split)
    assert probe["action_top1"] == pytest.approx(float(confusion.diag().sum()) / len(test_split))
    assert probe["ci95"]["action_top1"][0] <= probe["action_top1"] <= probe["ci95"]["action_top1"][1]
    per_attribute = metrics["probe_attributes"]
    assert set(per_attribute) == {"action", "colour", "digit"}
    assert per_attribute["action"]["top1"] == probe["action_top1"]
    for attribute, classes in (("action", 8), ("colour", 8), ("digit", 10)):
        assert per_attribute[attribute]["chance"] == pytest.approx(1 / classes)
        low, high = per_attribute[attribute]["ci95"]
        assert 0.0 <= low <= per_attribute[attribute]["top1"] <= high <= 1.0
    if loss == "coarse":
        assert metrics["pointing"] is None
    else:
        pointing = metrics["pointing"]
        assert set(pointing) == {"accuracy", "chance", "clips"}
        assert 0.0 < pointing["chance"] < 1.0 and 0.0 <= pointing["accuracy"] <= 1.0


def test_evaluate_rejects_data_with_another_vocabulary(workspace, tmp_path) -> None:
    out = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="another vocabulary") as error:
        evaluate(workspace["runs"]["attention"], workspace["other_vocab"], out=out, progress=False)
    assert str(workspace["other_vocab"]) in str(error.value)
    assert str(workspace["runs"]["attention"]) in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_evaluate_rejects_a_run_without_checkpoint(workspace, tmp_path) -> None:
    import shutil

    from fgmm_lib.runs.folder import CHECKPOINT

    run = tmp_path / "run"
    shutil.copytree(workspace["runs"]["attention"], run)
    (run / CHECKPOINT).unlink()
    with pytest.raises(FileNotFoundError, match=CHECKPOINT):
        evaluate(run, workspace["eval"], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "missing_run", workspace["eval"], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(workspace["runs"]["attention"], tmp_path / "missing_data", progress=False)


def test_evaluate_checks_the_output_path_before_any_work(workspace, tmp_path, monkeypatch) -> None:
    import fgmm_lib.evaluation.protocol

    def no_work(run):
        raise AssertionError("the run was loaded before the output path was checked")

    monkeypatch.setattr(fgmm_lib.evaluation.protocol, "load_run", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write the metrics file"):
        evaluate(workspace["runs"]["attention"], workspace["eval"], out=blocker / "metrics.json", progress=False)
    with pytest.raises(ValueError, match="is a folder"):
        evaluate(workspace["runs"]["attention"], workspace["eval"], out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="split"):
        evaluate(workspace["runs"]["attention"], workspace["eval"], split="dev", progress=False)


def test_evaluate_refuses_a_probe_without_clean_clips(workspace) -> None:
    # The pretraining data has distractors and misaligned frames in every clip.
    with pytest.raises(ValueError, match="no clean single-actor clips"), pytest.warns(UserWarning, match="dropped"):
        evaluate(workspace["runs"]["attention"], workspace["pretrain"], progress=False)


def test_evaluate_warns_about_an_unfinished_run(tmp_path, workspace) -> None:
    from fgmm_lib.runs.config import TrainConfig
    from fgmm_lib.training.loop import pretrain

    config = TrainConfig(data=str(workspace["pretrain"]), out=str(tmp_path / "partial"), loss="coarse", batch_size=8,
                         epochs=2, max_steps=1, dim=16, width=0.25, device="cpu", seed=0)
    run = pretrain(config, progress=False)
    with pytest.warns(UserWarning, match="did not finish"):
        metrics = evaluate(run, workspace["eval"], progress=False)
    assert metrics["finished"] is False
