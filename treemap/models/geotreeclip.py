"""GeoTreeCLIP (GlobalGeoTree paper): a location encoder (Sentinel-2 monthly series + 27 auxiliary variables) aligned
with a CLIP text tower that reads taxon prompts.

Location path: normalise -> per month, resize the 10-band patch to 16 x 16 (bilinear) and take the class token of a
CLIP vision tower -> zero the missing months -> one self-attention over the 12 months -> mean over months -> image
projection; auxiliary variables -> four group encoders -> fusion -> aux projection; concat -> fusion = the location
embedding. Text path: CLIP text tower pooled at the end-of-text token; the official model has no text projection.

``encode_location`` computes this with the fast inference path of ``treemap.models.engine`` (missing months skipped,
resize and patch embedding folded into one matrix, two-token attention as elementwise arithmetic, CLS-only last
layer); ``treemap.models.reference`` is the plain step-by-step forward it is tested and benchmarked against.

Module attribute names follow the official code, so ``state_dict()`` has the tensor names of the official checkpoint
(``temporal_extractor.clip_vit.model.vision_model...``, ``text_encoder.text_encoder.text_model...``); the plain
``_Level`` containers exist only to reproduce that nesting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from treemap.models.clip import CLIPTextTransformer, CLIPVisionTransformer
from treemap.models.config import AUX_GROUPS, GeoTreeCLIPConfig
from treemap.models.engine import TwoTokenEngine
from treemap.models.normalise import Normaliser, make_normaliser, month_mask
from treemap.models.tokenizer import tokenize

LOGIT_SCALE = 100.0
"""Zero-shot logits are cosine similarities times this factor (the official evaluation)."""


class _Level(nn.Module):
    """A named level of module nesting, holding one child."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def _dense(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU())


class MonthEncoder(nn.Module):
    """Monthly patches -> feature vectors (class token of the vision tower).

    ``forward`` takes the fast path of ``treemap.models.engine`` (folded resize + embedding, two-token attention,
    CLS-only last layer) when the tower has one patch and no gradient is needed; ``reference`` is the plain
    computation (bilinear resize, then the tower's modules), which the fast path is tested against.
    """

    def __init__(self, c: GeoTreeCLIPConfig):
        super().__init__()
        self.image_size = c.image_size
        vision = CLIPVisionTransformer(c.vision_hidden, c.vision_layers, c.vision_heads, c.vision_mlp, c.channels,
                                       c.image_size, c.patch_size, c.layer_norm_eps)
        self.model = _Level(vision_model=vision)
        # A plain attribute, not a submodule: the engine's derived weights stay out of state_dict().
        self.engine = TwoTokenEngine(vision, c.vision_heads) if TwoTokenEngine.supports(vision) else None

    def _fast(self) -> bool:
        if self.engine is None:
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))

    def forward(self, patches: Tensor) -> Tensor:
        """``(N, channels, h, w)`` normalised patches -> ``(N, hidden)``."""
        return self.engine(patches) if self._fast() else self.reference(patches)

    def reference(self, patches: Tensor) -> Tensor:
        size = (self.image_size, self.image_size)
        if patches.shape[-2:] != size:
            patches = F.interpolate(patches, size=size, mode="bilinear", align_corners=False)
        return self.model.vision_model(patches)


class TemporalSelfAttention(nn.Module):
    """Self-attention over months with ``nn.MultiheadAttention``'s parameter layout (packed q/k/v projection)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _attend(self, qkv: Tensor) -> Tensor:
        b, t, width3 = qkv.shape
        width = width3 // 3
        q, k, v = (z.view(b, t, self.heads, width // self.heads).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v)  # (b, heads, t, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        out = self._attend(F.linear(x, self.in_proj_weight, self.in_proj_bias))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, width))

    def pooled(self, monthly: Tensor, index: Tensor, b: int, t: int) -> Tensor:
        """``forward(features).mean(1)``, where ``features`` ``(b, t, width)`` is zero except at the flat
        positions ``index`` (into ``b * t``), which hold ``monthly`` ``(len(index), width)``.

        The zero vectors are not projected (their q/k/v are the biases), and the output projection is applied
        once to the mean over months (it is affine, so it commutes with the mean)."""
        proj = F.linear(monthly, self.in_proj_weight, self.in_proj_bias)  # (M, 3 width)
        qkv = self.in_proj_bias.to(proj.dtype).expand(b * t, proj.shape[-1]).clone()
        qkv.index_copy_(0, index, proj)
        out = self._attend(qkv.view(b, t, -1)).mean(dim=2)  # (b, heads, head_dim)
        return self.out_proj(out.reshape(b, -1))


class TemporalPooling(nn.Module):
    """Self-attention over all months (missing ones take part as zero vectors), then the mean over months."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = TemporalSelfAttention(width, heads)

    def forward(self, features: Tensor) -> Tensor:
        return self.attn(features).mean(dim=1)


class TemporalEncoder(nn.Module):
    def __init__(self, c: GeoTreeCLIPConfig):
        super().__init__()
        self.clip_vit = MonthEncoder(c)
        self.temporal_attention = TemporalPooling(c.vision_hidden, c.temporal_heads)
        self.width = c.vision_hidden

    def forward(self, images: Tensor, present: Tensor) -> Tensor:
        """``images`` (B, T, C, H, W) normalised, ``present`` (B, T) bool -> (B, width).

        Missing months would be multiplied by zero after the vision tower: they are not computed at all.
        """
        b, t = present.shape
        index = present.flatten().nonzero().squeeze(1)  # one device-to-host synchronisation per batch
        monthly = self.clip_vit(images.flatten(0, 1).index_select(0, index))
        return self.temporal_attention.attn.pooled(monthly, index, b, t)


class AuxiliaryEncoder(nn.Module):
    """Four group encoders (geo, terrain, soil, bio) -> concatenation -> fusion."""

    def __init__(self, c: GeoTreeCLIPConfig):
        super().__init__()
        self.sizes = c.aux_groups
        for name, size in zip(AUX_GROUPS, c.aux_groups):
            self.add_module(f"{name}_encoder", _dense(size, c.aux_hidden))
        self.fusion = _dense(c.aux_hidden * len(AUX_GROUPS), c.aux_out)

    def forward(self, aux: Tensor) -> Tensor:
        groups = aux.split(list(self.sizes), dim=-1)
        encoded = [getattr(self, f"{name}_encoder")(g) for name, g in zip(AUX_GROUPS, groups)]
        return self.fusion(torch.cat(encoded, dim=-1))


class TextEncoder(nn.Module):
    def __init__(self, c: GeoTreeCLIPConfig):
        super().__init__()
        text = CLIPTextTransformer(c.vocab_size, c.text_width, c.text_layers, c.text_heads, c.text_mlp,
                                   c.context_length, c.layer_norm_eps)
        self.text_encoder = _Level(text_model=text)

    def forward(self, token_ids: Tensor) -> Tensor:
        return self.text_encoder.text_model(token_ids)


class GeoTreeCLIP(nn.Module):
    """The GeoTreeCLIP model. ``state_dict()`` names match the official checkpoint ``GGT_6M.pth``."""

    def __init__(self, config: GeoTreeCLIPConfig):
        super().__init__()
        self.config = config
        self.temporal_extractor = TemporalEncoder(config)
        self.auxiliary_encoder = AuxiliaryEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.image_projection = _dense(config.vision_hidden, config.embed_dim)
        self.aux_projection = _dense(config.aux_out, config.embed_dim)
        self.fusion = _dense(2 * config.embed_dim, config.embed_dim)
        self.normaliser: Normaliser = make_normaliser(config)

    # -- normalisation strategy -------------------------------------------------------------------------------
    def set_normalisation(self, mode: str, *, band_min=None, band_max=None, aux_min=None, aux_max=None) -> None:
        """Swap the input normalisation (``"batch"``, or ``"fixed"`` with its statistics)."""
        self.config = self.config.with_normalisation(mode, band_min=band_min, band_max=band_max,
                                                      aux_min=aux_min, aux_max=aux_max)
        device = next(self.parameters()).device
        self.normaliser = make_normaliser(self.config).to(device)

    def enable_compile(self, enabled: bool = True) -> bool:
        """Run the vision tower's fast path through ``torch.compile`` (off by default: on CPU the tower is GEMM-bound
        and compiling takes minutes). Returns whether compilation is active."""
        engine = self.temporal_extractor.clip_vit.engine
        return engine.enable_compile(enabled) if engine is not None else False

    # -- encoders ---------------------------------------------------------------------------------------------
    def encode_location(self, images: Tensor, aux: Tensor) -> Tensor:
        """Location embeddings ``(B, embed_dim)``, not L2-normalised.

        ``images``: ``(B, months, channels, H, W)`` reflectance with NaN for missing data (a month is missing when
        all its values are NaN); ``aux``: ``(B, 27)`` auxiliary variables with NaN for missing ones.
        """
        c = self.config
        if images.ndim != 5 or images.shape[1:3] != (c.months, c.channels):
            raise ValueError(f"images must be (B, {c.months}, {c.channels}, H, W), got {tuple(images.shape)}")
        if aux.ndim != 2 or aux.shape != (images.shape[0], c.n_aux):
            raise ValueError(f"aux must be ({images.shape[0]}, {c.n_aux}), got {tuple(aux.shape)}")
        present = month_mask(images)
        return self.encode_normalised(self.normaliser.images(images.float()), present,
                                      self.normaliser.aux(aux.float()))

    def encode_normalised(self, pixels: Tensor, present: Tensor, aux_in: Tensor) -> Tensor:
        """:meth:`encode_location` after the normaliser: ``pixels`` ``(B, months, channels, H, W)`` already scaled
        with 0 where missing, ``present`` ``(B, months)`` bool, ``aux_in`` ``(B, 27)`` scaled with 0 where missing.
        Lets a caller scale a whole tile once (fixed statistics) instead of every patch of it."""
        dtype = self.image_projection[0].weight.dtype
        pixels = pixels.to(dtype)
        aux_in = aux_in.to(dtype)
        image_features = self.image_projection(self.temporal_extractor(pixels, present))
        aux_features = self.aux_projection(self.auxiliary_encoder(aux_in))
        return self.fusion(torch.cat([image_features, aux_features], dim=-1))

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """Text embeddings ``(S, embed_dim)`` of token ids ``(S, context_length)``, not L2-normalised."""
        if token_ids.ndim != 2 or token_ids.shape[1] > self.config.context_length:
            raise ValueError(f"token_ids must be (S, <= {self.config.context_length}), got {tuple(token_ids.shape)}")
        return self.text_encoder(token_ids)

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Tokenise prompts with the shipped CLIP tokenizer and encode them."""
        ids = tokenize(list(prompts), context_length=self.config.context_length)
        return self.encode_text(ids.to(self.image_projection[0].weight.device))

    def forward(self, images: Tensor, aux: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_location(images, aux), self.encode_text(token_ids)

    @staticmethod
    def zero_shot(location_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Species probabilities ``(B, S)`` float32: softmax over ``100 x`` cosine similarity.

        Always computed in float32 (also under autocast): in bf16 the factor 100 would turn the cosine's rounding
        (about 0.004) into logit errors of about 0.4.
        """
        dtype = torch.promote_types(location_emb.dtype, torch.float32)
        with torch.autocast(location_emb.device.type, enabled=False):
            loc = F.normalize(location_emb.to(dtype), dim=-1)
            text = F.normalize(text_emb.to(loc.device, dtype), dim=-1)
            return (LOGIT_SCALE * loc @ text.T).softmax(dim=-1)
