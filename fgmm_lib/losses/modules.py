"""The loss modules: one interface (:class:`PairLoss`) for every loss of :data:`fgmm_lib.losses.scores.LOSSES`.

The losses follow docs/study.md section 3:

- :class:`ContrastiveLoss`: symmetric InfoNCE over the pair scores of an aggregation (``"coarse"``,
  the cosine of the global embeddings, or one of :data:`fgmm_lib.losses.scores.AGGREGATIONS`), with
  a learnable log-temperature and, for the attention aggregations, fixed or learnable tau_a and tau_w.
- :class:`MilNceLoss` and :func:`mil_nce_loss`: MIL-NCE with K candidate narrations per clip, on
  global cosines.
- :func:`build_loss`: the module of a loss name, built from plain values. Bad values raise
  ValueError naming the argument.

Training and evaluation use only the :class:`PairLoss` interface (``scores``, ``attention``,
``needs_candidates``, ...). The pair-score math and its backends are in :mod:`fgmm_lib.losses.scores`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgmm_lib.losses.scores import (
    AGGREGATIONS,
    ATTENTION_AGGREGATIONS,
    BACKENDS,
    CONTRASTIVE_AGGREGATIONS,
    LOSSES,
    MIN_TEMPERATURE,
    Temperature,
    attention_maps,
    check_choice,
    check_mask,
    check_pair,
    check_temperature,
    check_tokens,
    scores_unchecked,
    unit_tokens,
)


def _cosine_matrix(video_global: Tensor, text_global: Tensor) -> Tensor:
    return F.normalize(video_global, dim=-1) @ F.normalize(text_global, dim=-1).T


# --------------------------------------------------------------------------------------
# loss modules: one interface for every loss
# --------------------------------------------------------------------------------------

class PairLoss(nn.Module):
    """What every loss of :data:`LOSSES` offers.

    - ``name``: the loss's name in :data:`LOSSES`;
    - ``uses_tokens``: True when pair scores come from cell and phrase tokens, False when they come
      from the global embeddings ("coarse", "milnce");
    - ``needs_candidates``: True when ``forward`` takes K candidate narrations per clip ("milnce");
    - ``has_attention``: True when one (video, text) pair has a cell-phrase map (:meth:`attention`);
    - :meth:`scores`: the pair scores ``[Bv, Bt]`` that retrieval ranks by, from the encoders' outputs;
    - :meth:`attention`: the maps of one pair (:func:`attention_maps` with this loss's temperatures);
    - ``log_temperature``: the learnable InfoNCE temperature, stored as a log; the forward pass
      uses it as it is, and :meth:`clamp_temperatures_` (called after every optimiser step) keeps it
      at or above ``MIN_TEMPERATURE``, so that it keeps its gradient and can come back up.
    """

    name: str = ""
    uses_tokens: bool = False
    needs_candidates: bool = False
    has_attention: bool = False

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        check_temperature(temperature, "temperature")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> float:
        """The InfoNCE temperature (a float: waits for the device; for logs and reports)."""
        return float(self.log_temperature.detach().exp())

    @torch.no_grad()
    def clamp_temperatures_(self) -> None:
        """Clamp the learnable temperature to >= ``MIN_TEMPERATURE`` in place (after an optimiser step)."""
        self.log_temperature.clamp_(min=math.log(MIN_TEMPERATURE))

    def logged_temperatures(self) -> dict[str, float | None]:
        """The temperatures in use, for the training log."""
        return {"temperature": self.temperature, "attn_temperature": None, "weight_temperature": None}

    def scores(self, video_tokens: Tensor | None, video_global: Tensor, text_tokens: Tensor | None,
               text_global: Tensor, text_mask: Tensor | None = None, video_mask: Tensor | None = None) -> Tensor:
        """Pair scores ``S [Bv, Bt]``: here the cosine of the global embeddings."""
        return _cosine_matrix(video_global, text_global)

    def attention(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor | None = None,
                  video_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The maps of one pair (``[N, D]`` cells, ``[M, D]`` phrases) as :func:`attention_maps` returns
        them, plus ``"focus"`` [M, N]: what each phrase looks at under this loss (its argmax over
        cells is the cell the phrase points at)."""
        raise ValueError(f"loss {self.name!r} has no attention: it scores the global embeddings")


class ContrastiveLoss(PairLoss):
    """Symmetric InfoNCE over pair scores (docs/study.md section 3): L = (CE(S/tau) + CE(S^T/tau)) / 2.

    ``aggregation`` is "coarse" (cosine of the global embeddings) or one of :data:`AGGREGATIONS`.
    For the attention aggregations (:data:`ATTENTION_AGGREGATIONS`), tau_a and tau_w are stored as
    logs too: parameters when ``learn_attention_temperatures`` is True, fixed buffers otherwise.
    """

    def __init__(self, aggregation: str = "attention", temperature: float = 0.07, attn_temperature: float = 0.1,
                 weight_temperature: float = 0.1, learn_attention_temperatures: bool = False,
                 backend: str = "auto") -> None:
        if aggregation == "milnce":
            raise ValueError("aggregation 'milnce' is not a pair score; use MilNceLoss for MIL-NCE "
                             f"(valid choices here: {', '.join(CONTRASTIVE_AGGREGATIONS)})")
        check_choice(aggregation, "aggregation", CONTRASTIVE_AGGREGATIONS)
        check_choice(backend, "backend", BACKENDS)
        check_temperature(attn_temperature, "attn_temperature")
        check_temperature(weight_temperature, "weight_temperature")
        super().__init__(temperature)
        self.name = self.aggregation = aggregation
        self.uses_tokens = self.has_attention = aggregation in AGGREGATIONS
        self.backend = backend
        #: Texts per block of the "chunked" backend; None = from its memory budget.
        self.block_size: int | None = None
        #: When one block of the budget holds every text, keep it for backward instead of recomputing
        #: it (the same function; float32 rounding may differ). Set by TrainConfig.fast_path.
        self.keep_single_block = False
        log_attn = torch.tensor(math.log(attn_temperature))
        log_weight = torch.tensor(math.log(weight_temperature))
        self.learn_attention_temperatures = (bool(learn_attention_temperatures)
                                             and aggregation in ATTENTION_AGGREGATIONS)
        if self.learn_attention_temperatures:
            self.log_attn_temperature = nn.Parameter(log_attn)
            self.log_weight_temperature = nn.Parameter(log_weight)
        else:
            self.register_buffer("log_attn_temperature", log_attn)
            self.register_buffer("log_weight_temperature", log_weight)

    @property
    def attn_temperature(self) -> float:
        """tau_a of the attention aggregations."""
        return float(self.log_attn_temperature.detach().exp())

    @property
    def weight_temperature(self) -> float:
        """tau_w of the attention aggregations."""
        return float(self.log_weight_temperature.detach().exp())

    def logged_temperatures(self) -> dict[str, float | None]:
        return {"temperature": self.temperature, "attn_temperature": self.attn_temperature,
                "weight_temperature": self.weight_temperature}

    def scores(self, video_tokens: Tensor | None, video_global: Tensor, text_tokens: Tensor | None,
               text_global: Tensor, text_mask: Tensor | None = None, video_mask: Tensor | None = None) -> Tensor:
        """Pair scores S [Bv, Bt]: cosine of the globals for "coarse", else the aggregation of the tokens.

        The inputs are trusted (shapes and masks as the encoders produce them): nothing here waits
        on the device. :func:`pair_scores` is the checked entry point for other inputs.
        """
        if not self.uses_tokens:
            return _cosine_matrix(video_global, text_global)
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:-1], dtype=torch.bool, device=text_tokens.device)
        if video_mask is None:
            video_mask = torch.ones(video_tokens.shape[:-1], dtype=torch.bool, device=video_tokens.device)
        return scores_unchecked(video_tokens, text_tokens, video_mask, text_mask, self.aggregation,
                                 self.log_attn_temperature.exp(), self.log_weight_temperature.exp(), self.backend,
                                 self.block_size, self.keep_single_block)

    def attention(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor | None = None,
                  video_mask: Tensor | None = None) -> dict[str, Tensor]:
        if not self.has_attention:
            return super().attention(video_tokens, text_tokens, text_mask, video_mask)
        attentive = self.aggregation in ATTENTION_AGGREGATIONS
        maps = attention_maps(video_tokens, text_tokens, text_mask, video_mask,
                              self.log_attn_temperature.detach().exp(), self.log_weight_temperature.detach().exp(),
                              self.aggregation if attentive else "attention")
        # the attention aggregations pool each phrase over its softmax over cells; "mean" and "max" over
        # the cosines (whose argmax is the cell that "max" takes)
        maps["focus"] = maps["phrase_attention"] if attentive else maps["similarity"].T
        return maps

    def forward(self, video_tokens: Tensor | None, video_global: Tensor, text_tokens: Tensor | None,
                text_global: Tensor, text_mask: Tensor | None = None, video_mask: Tensor | None = None) -> Tensor:
        """The symmetric InfoNCE loss of a batch whose i-th video and i-th text are the positive pair."""
        scores = self.scores(video_tokens, video_global, text_tokens, text_global, text_mask, video_mask)
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"InfoNCE needs as many videos as texts (paired batch), got scores {tuple(scores.shape)}")
        logits = scores / self.log_temperature.exp()
        targets = torch.arange(scores.shape[0], device=scores.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))

    def local_forward(self, video_tokens: Tensor | None, video_global: Tensor, text_tokens: Tensor | None,
                      text_global: Tensor, text_mask: Tensor | None = None, *, start: int, count: int) -> Tensor:
        """The InfoNCE terms of pairs ``start:start + count`` of a batch: rows of S for those videos
        and rows of S^T for those texts, each against the whole batch ([count, B] score blocks).

        The mean of this over equal shards that cover the batch is :meth:`forward` of the batch.
        """
        own = slice(start, start + count)
        rows = self.scores(None if video_tokens is None else video_tokens[own], video_global[own], text_tokens,
                           text_global, text_mask)
        columns = self.scores(video_tokens, video_global, None if text_tokens is None else text_tokens[own],
                              text_global[own], None if text_mask is None else text_mask[own])
        temperature = self.log_temperature.exp()
        targets = torch.arange(start, start + count, device=rows.device)
        return 0.5 * (F.cross_entropy(rows / temperature, targets) + F.cross_entropy(columns.T / temperature, targets))


class MilNceLoss(PairLoss):
    """MIL-NCE (:func:`mil_nce_loss`) with a learnable temperature; pair scores are global cosines."""

    name = "milnce"
    needs_candidates = True

    def forward(self, video_global: Tensor, text_global: Tensor, candidate_mask: Tensor | None = None) -> Tensor:
        """Loss of clips ``[B, D]`` against their K candidate narrations ``[B, K, D]``."""
        return _mil_nce(video_global, text_global, self.log_temperature.exp(), candidate_mask)

    def local_forward(self, video_global: Tensor, text_global: Tensor, start: int, count: int) -> Tensor:
        """The loss of clips ``start:start + count`` against every clip and candidate of the batch;
        the mean of this over equal shards that cover the batch is :meth:`forward` of the batch."""
        batch, candidates, dim = text_global.shape
        valid = torch.ones((batch, candidates), dtype=torch.bool, device=text_global.device)
        own = slice(start, start + count)
        videos = F.normalize(video_global, dim=-1)
        texts = unit_tokens(text_global, valid)
        temperature = self.log_temperature.exp()
        rows = (videos[own] @ texts.reshape(batch * candidates, dim).T).reshape(count, batch, candidates)
        columns = (videos @ texts[own].reshape(count * candidates, dim).T).reshape(batch, count, candidates)
        return _mil_nce_terms(rows / temperature, columns.transpose(0, 1) / temperature, start)


def build_loss(name: str, temperature: float = 0.07, attn_temperature: float = 0.1, weight_temperature: float = 0.1,
               learn_attention_temperatures: bool = False, backend: str = "auto") -> PairLoss:
    """The loss module called ``name`` (one of :data:`LOSSES`), from plain values; bad values raise
    ValueError naming the argument."""
    check_choice(name, "loss", LOSSES)
    if name == "milnce":
        return MilNceLoss(temperature)
    return ContrastiveLoss(aggregation=name, temperature=temperature, attn_temperature=attn_temperature,
                           weight_temperature=weight_temperature,
                           learn_attention_temperatures=learn_attention_temperatures, backend=backend)


def mil_nce_loss(video_global: Tensor, text_global: Tensor, temperature: Temperature = 0.07,
                 candidate_mask: Tensor | None = None) -> Tensor:
    """MIL-NCE (Miech et al. 2020) with K candidate narrations per clip, on cosine similarities.

    With x[i, j, k] = cos(video_i, text_j candidate k) / temperature, clip i's loss is
    ``logsumexp(x[i, :, :], x[:, i, :]) - logsumexp_k x[i, i, k]``: the positives are clip i's
    own K candidates, the denominator counts clip i against every candidate in the batch and
    every clip against clip i's candidates. Returns the mean over clips.

    Args:
        video_global: ``[B, D]``; text_global: ``[B, K, D]``; temperature > 0;
        candidate_mask: ``[B, K]`` bool, True = valid candidate; None = all valid.
    """
    if not isinstance(video_global, Tensor) or video_global.ndim != 2:
        shape = tuple(video_global.shape) if isinstance(video_global, Tensor) else type(video_global).__name__
        raise ValueError(f"video_global must be a [B, D] tensor, got {shape}")
    check_tokens(text_global, "text_global")
    check_pair(video_global, text_global, "video_global", "text_global")
    if text_global.shape[0] != video_global.shape[0]:
        raise ValueError(f"video_global has {video_global.shape[0]} clips but text_global has "
                         f"{text_global.shape[0]} candidate sets")
    check_mask(candidate_mask, text_global, "candidate_mask", "text_global", "clip", item="candidate")
    check_temperature(temperature, "temperature")
    return _mil_nce(video_global, text_global, temperature, candidate_mask)


def _mil_nce(video_global: Tensor, text_global: Tensor, temperature: Temperature,
             candidate_mask: Tensor | None) -> Tensor:
    batch, candidates, dim = text_global.shape
    valid = (candidate_mask if candidate_mask is not None
             else torch.ones((batch, candidates), dtype=torch.bool, device=text_global.device))
    videos = F.normalize(video_global, dim=-1)
    texts = unit_tokens(text_global, valid).reshape(batch * candidates, dim)
    logits = (videos @ texts.T).reshape(batch, batch, candidates) / temperature
    logits = logits.masked_fill(~valid[None, :, :], float("-inf"))
    return _mil_nce_terms(logits, logits.transpose(0, 1), 0)


def _mil_nce_terms(rows: Tensor, columns: Tensor, start: int) -> Tensor:
    """Mean MIL-NCE loss of clips ``start:start + b`` from ``rows[i, j, k]`` (clip i vs candidate k of
    clip j) and ``columns[i, j, k]`` (clip j vs candidate k of clip i), both ``[b, B, K]``."""
    count = rows.shape[0]
    own = torch.arange(count, device=rows.device)
    positives = torch.logsumexp(rows[own, own + start], dim=-1)
    everything = torch.cat((rows, columns), dim=1).reshape(count, -1)
    return (torch.logsumexp(everything, dim=-1) - positives).mean()
