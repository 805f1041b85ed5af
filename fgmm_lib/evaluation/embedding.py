"""Embedding a split with frozen encoders, and the two retrieval tasks built on it (docs/study.md section 5).

- :func:`embed_dataset`: the cell tokens and global embeddings of every clip of a
  :class:`fgmm_lib.data.dataset.NarratedDigits` split, the phrases of its clean captions, its
  still clips (one frame, picked by :func:`still_frame_indices`, repeated over the clip's length)
  and the labels the tasks need.
- :func:`pair_score_matrix`: the ``[videos, texts]`` pair scores as the run's loss module scores
  them (docs/study.md section 2), computed in blocks.
- :func:`caption_retrieval`: text to video retrieval, where the distinct clean captions query the
  clips, also judged one attribute of :data:`PROBE_ATTRIBUTES` at a time; :func:`text_to_image`:
  "the <colour> <digit>" queries the still clips.

The metrics come from :mod:`fgmm_lib.evaluation.metrics`. :func:`fgmm_lib.evaluation.protocol.evaluate`
runs the whole evaluation, and the validation of :func:`fgmm_lib.training.loop.pretrain` calls
:func:`caption_retrieval` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fgmm_lib.data.dataset import COLOURS, DIGIT_WORDS
from fgmm_lib.evaluation.metrics import attribute_retrieval, retrieval_with_intervals
from fgmm_lib.losses.modules import PairLoss

#: The attributes of a Narrated Digits clip that the linear probes read, each with its class count.
PROBE_ATTRIBUTES = ("action", "colour", "digit")

# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------


def still_frame_indices(visible: Tensor) -> Tensor:
    """Index of the frame used as each clip's still image: the middle one of its visible frames.

    ``visible`` is ``[C, T]`` bool. A clip with no visible frame uses its middle frame.
    """
    if visible.dim() != 2:
        raise ValueError(f"visible must have shape [C, T], got {tuple(visible.shape)}")
    frames = visible.shape[1]
    visible = visible.bool()
    counts = visible.sum(dim=1)
    # Position (0-based) of the wanted visible frame among the visible ones.
    wanted = torch.div(counts - 1, 2, rounding_mode="floor").clamp(min=0)
    order = torch.cumsum(visible.long(), dim=1) - 1  # rank of each visible frame among visible ones
    is_wanted = visible & (order == wanted.unsqueeze(1))
    index = torch.where(
        counts > 0, is_wanted.long().argmax(dim=1), torch.full_like(counts, frames // 2)
    )
    return index


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def embed_dataset(
    model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 256,
    progress: bool = True,
    stills: bool = True,
) -> dict[str, Tensor]:
    """Embed every clip of a :class:`fgmm_lib.data.dataset.NarratedDigits` split with frozen encoders.

    The model runs in eval mode under ``torch.no_grad`` (its previous mode is restored after);
    batches go to the model's device and the results come back as float32 CPU tensors.

    Returns a dict (C = clips of the split):

    - ``"video_tokens"`` ``[C, N, D]``, ``"video_global"`` ``[C, D]``: the clips;
    - ``"caption_phrases"`` ``[C, M, D]``, ``"caption_mask"`` ``[C, M]`` (bool),
      ``"caption_global"`` ``[C, D]``: the clean captions;
    - ``"still_tokens"`` ``[C, N, D]``, ``"still_global"`` ``[C, D]``, ``"still_frame"`` ``[C]``:
      still clips (the frame :func:`still_frame_indices` picks, repeated T times), only if
      ``stills``;
    - ``"caption_tokens"`` ``[C, L]``, ``"action"``, ``"digit"``, ``"colour"``, ``"index"`` ``[C]``,
      ``"boxes"`` ``[C, T, 4]``, ``"visible"`` ``[C, T]``: the clips' labels, for the tasks.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    count = len(dataset)
    if count == 0:
        raise ValueError(f"the dataset split {getattr(dataset, 'split', '?')!r} has no clips to embed")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {}

    def keep(name: str, value: Tensor) -> None:
        parts.setdefault(name, []).append(value.detach().to("cpu"))

    starts = range(0, count, batch_size)
    try:
        with torch.no_grad():
            for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
                positions = np.arange(start, min(start + batch_size, count))
                batch = dataset.get_batch(positions)
                video = batch["video"].to(device=device, dtype=torch.float32)
                tokens, global_embedding = model.encode_video(video)
                keep("video_tokens", tokens.float())
                keep("video_global", global_embedding.float())
                caption_tokens = batch["caption_tokens"].to(device)
                caption_mask = batch["caption_mask"].to(device).bool()
                phrases, phrase_mask, caption_global = model.encode_text(caption_tokens, caption_mask)
                keep("caption_phrases", phrases.float())
                keep("caption_mask", phrase_mask.bool())
                keep("caption_global", caption_global.float())
                visible = torch.as_tensor(batch["visible"]).bool()
                if stills:
                    frame = still_frame_indices(visible).to(device)
                    frames = video.shape[2]
                    gather = frame.view(-1, 1, 1, 1, 1).expand(-1, video.shape[1], 1, *video.shape[3:])
                    still = torch.gather(video, 2, gather).expand(-1, -1, frames, -1, -1).contiguous()
                    still_tokens, still_global = model.encode_video(still)
                    keep("still_tokens", still_tokens.float())
                    keep("still_global", still_global.float())
                    keep("still_frame", frame)
                keep("caption_tokens", torch.as_tensor(batch["caption_tokens"]))
                for name in ("action", "digit", "colour", "index"):
                    keep(name, torch.as_tensor(batch[name]).long().reshape(-1))
                keep("boxes", torch.as_tensor(batch["boxes"]).float())
                keep("visible", visible)
    finally:
        model.train(was_training)
    return {name: torch.cat(values, dim=0) for name, values in parts.items()}


# --------------------------------------------------------------------------------------------
# Pair scores
# --------------------------------------------------------------------------------------------


def pair_score_matrix(
    loss_module: PairLoss,
    video_tokens: Tensor,
    video_global: Tensor,
    text_phrases: Tensor,
    text_mask: Tensor,
    text_global: Tensor,
    block_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Pair scores ``S [Cv, Ct]`` between videos and texts, as the run's loss scores them.

    ``loss_module.scores`` (:class:`fgmm_lib.losses.modules.PairLoss`): the cosine of the global embeddings
    for ``coarse`` / ``milnce``, the fine-grained aggregation with the run's (possibly learned)
    temperatures for the others; computed in blocks of ``block_size`` videos (bounded memory) on
    ``device`` (default: the device of ``video_tokens``). Returned as a float32 CPU tensor.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    device = torch.device(device) if device is not None else video_tokens.device
    loss_module = loss_module.to(device)
    text = text_phrases.to(device).float()
    mask = text_mask.to(device).bool()
    text_global = text_global.to(device).float()
    rows = []
    with torch.no_grad():
        for start in range(0, video_tokens.shape[0], block_size):
            rows.append(loss_module.scores(
                video_tokens[start:start + block_size].to(device).float(),
                video_global[start:start + block_size].to(device).float(),
                text, text_global, text_mask=mask,
            ).float().cpu())
    return torch.cat(rows, dim=0)


def _encode_texts(model: Any, vocab: Any, texts: Sequence[str], max_words: int, device: str,
                  batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Phrases ``[Q, M, D]``, phrase mask ``[Q, M]`` and global embeddings ``[Q, D]`` of ``texts`` (CPU)."""
    ids, mask = vocab.encode_batch(list(texts), max_words)
    was_training = model.training
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                phrases, phrase_mask, embedding = model.encode_text(
                    ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device))
                parts.append((phrases.float().cpu(), phrase_mask.bool().cpu(), embedding.float().cpu()))
    finally:
        model.train(was_training)
    phrases, phrase_mask, embedding = (torch.cat(values, dim=0) for values in zip(*parts))
    return phrases, phrase_mask, embedding


def caption_retrieval(model: Any, loss_module: PairLoss, vocab: Any, test: dict[str, Tensor],
                       caption_lists: list[list[str]], several: bool, max_words: int,
                       device: str, fields: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The distinct clean captions query the split's clips; a clip answers every caption it has.

    With one caption per clip (``several`` False) the queries are the embeddings of the clips'
    own captions; with several, the distinct captions are encoded as queries. The same ranking
    is also judged per attribute of ``fields`` (:func:`attribute_retrieval`).
    """
    if several:
        queries, _ = _unique_first([c for texts in caption_lists for c in texts])
        embedded = _encode_texts(model, vocab, queries, max_words, device)
    else:
        queries, first_rows = _unique_first([texts[0] for texts in caption_lists])
        rows = torch.tensor(first_rows, dtype=torch.long)
        embedded = (test["caption_phrases"][rows], test["caption_mask"][rows], test["caption_global"][rows])
    scores = pair_score_matrix(
        loss_module, test["video_tokens"], test["video_global"], *embedded, device=device,
    )  # [clips, queries]
    relevant = torch.tensor([[q in texts for texts in caption_lists] for q in queries], dtype=torch.bool)
    result = retrieval_with_intervals(scores.T.contiguous(), relevant)
    present = [a for a in PROBE_ATTRIBUTES if a in fields]
    result["attributes"] = attribute_retrieval(scores.T.contiguous(), relevant, {a: test[a] for a in present})
    return result


def text_to_image(model: Any, loss_module: PairLoss, vocab: Any, test: dict[str, Tensor], max_words: int,
                   device: str) -> dict[str, Any]:
    """"the <colour> <digit>" queries the still clips."""

    colours, digits = test["colour"].tolist(), test["digit"].tolist()
    pairs, _ = _unique_first(list(zip(colours, digits)))
    pairs.sort()
    queries = [f"the {COLOURS[c]} {DIGIT_WORDS[d]}" for c, d in pairs]
    scores = pair_score_matrix(
        loss_module, test["still_tokens"], test["still_global"],
        *_encode_texts(model, vocab, queries, max_words, device), device=device,
    )  # [clips, queries]
    relevant = torch.stack([(test["colour"] == c) & (test["digit"] == d) for c, d in pairs])
    return retrieval_with_intervals(scores.T.contiguous(), relevant)


def _unique_first(values: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Distinct values in order of first appearance and the row of each first appearance."""
    seen: dict[Any, int] = {}
    for row, value in enumerate(values):
        seen.setdefault(value, row)
    return list(seen), list(seen.values())
