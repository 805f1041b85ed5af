"""The encoders: a separable-3D video encoder (one token per feature-map cell) and an n-gram text
encoder (one token per phrase), joined in :class:`DualEncoder`."""

from fgmm_lib.models.encoders import DualEncoder, ModelConfig, TextEncoder, VideoEncoder, token_to_cell

__all__ = ["DualEncoder", "ModelConfig", "TextEncoder", "VideoEncoder", "token_to_cell"]
