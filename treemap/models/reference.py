"""The plain, eager GeoTreeCLIP location forward, step by step as the official code computes it.

Every month of every sample goes through the vision tower (missing months included, as zeros), the 5 x 5 patches are
resized to 16 x 16 with ``F.interpolate`` and fed to the patch convolution, the month features are multiplied by the
month mask, the temporal self-attention is ``nn.MultiheadAttention``'s computation
(``F.multi_head_attention_forward``) followed by the mean over months. It uses the model's own parameters and
normaliser, so it needs no weights of its own.

It exists to check the fast path (``GeoTreeCLIP.encode_location``) and to measure it against
(``benchmarks/encoder.py``); it is not used for mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from treemap.models.normalise import month_mask


def temporal_features(model, pixels: Tensor, present: Tensor) -> Tensor:
    """``(B, hidden)`` pooled month features of normalised ``pixels`` ``(B, T, C, H, W)``; ``present`` ``(B, T)``."""
    b, t = present.shape
    month_encoder = model.temporal_extractor.clip_vit
    features = month_encoder.reference(pixels.flatten(0, 1)).view(b, t, -1)
    features = features * present.unsqueeze(-1).to(features.dtype)
    attn = model.temporal_extractor.temporal_attention.attn
    seq_first = features.transpose(0, 1)  # nn.MultiheadAttention(batch_first=True) transposes like this
    out, _ = F.multi_head_attention_forward(
        seq_first, seq_first, seq_first, features.shape[-1], attn.heads, attn.in_proj_weight, attn.in_proj_bias,
        None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )
    return out.transpose(0, 1).mean(dim=1)


def encode_location(model, images: Tensor, aux: Tensor) -> Tensor:
    """Location embeddings ``(B, embed_dim)`` of ``model`` (a ``GeoTreeCLIP``) by the plain official forward.

    Inputs as for ``GeoTreeCLIP.encode_location``: images ``(B, T, C, H, W)`` and aux ``(B, 27)`` with NaN for
    missing data.
    """
    dtype = model.image_projection[0].weight.dtype
    present = month_mask(images)
    pixels = model.normaliser.images(images.float()).to(dtype)
    aux_in = model.normaliser.aux(aux.float()).to(dtype)
    image_features = model.image_projection(temporal_features(model, pixels, present))
    aux_features = model.aux_projection(model.auxiliary_encoder(aux_in))
    return model.fusion(torch.cat([image_features, aux_features], dim=-1))
