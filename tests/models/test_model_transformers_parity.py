"""Optional: treemap's GeoTreeCLIP computes what the official architecture computes, built here from Hugging Face
transformers' CLIP classes (4.x, as the official code) and plain torch.

The official model (``GeoTreeClip`` in MUYang99/GlobalGeoTree, GeoTreeCLIP/models.py, transformers 4.24) is rebuilt
below from its documented structure: a ``CLIPVisionModel`` with a 10-channel bias-free patch convolution on 16 x 16
inputs, ``nn.MultiheadAttention`` over the months followed by average pooling, ``Linear/LayerNorm/ReLU`` blocks for
the auxiliary encoder and the projections, a ``CLIPTextModel`` read at its pooled output, and the official per-batch
normalisers (written out from the official code's rules). treemap's state dict is loaded into it strictly, so the
parameter names are checked too.

This test runs only where a transformers 4.x is importable (it is not a dependency of treemap); it is skipped
otherwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers", reason="optional check against transformers' CLIP modules")

from treemap.models import GeoTreeCLIPConfig, random_model, reference, tokenize  # noqa: E402

if not transformers.__version__.startswith("4."):
    pytest.skip("the module layout compared here is that of transformers 4.x", allow_module_level=True)

VISION = "temporal_extractor.clip_vit.model.vision_model."
TEXT = "text_encoder.text_encoder.text_model."
TOLERANCE = 1e-4  # the acceptance limit (fp32, CPU); measured differences are around 1e-6

PROMPTS = [
    "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica",
    "Evergreen Needleleaf / Pinaceae / Pinus / Pinus sylvestris",
    "Deciduous Broadleaf / Betulaceae / Betula / Betula pendula",
    "Evergreen Broadleaf / Fagaceae / Quercus / Quercus ilex",
    "Pinus nigra",
]


def _sub_state(model, prefix):
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def _load(module, state):
    result = module.load_state_dict(state, strict=False)
    # transformers >= 4.31 no longer saves position_ids; everything else must match exactly.
    assert all(k.endswith("position_ids") for k in result.missing_keys + result.unexpected_keys), result


# -- the official architecture ---------------------------------------------------------------------------------
def official_vision_config(c: GeoTreeCLIPConfig | None = None):
    """openai/clip-vit-base-patch16's vision config with image and patch size 16, as the official code sets it;
    with ``c``, the sizes of a smaller treemap config instead."""
    if c is None:
        sizes = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    else:
        sizes = dict(hidden_size=c.vision_hidden, intermediate_size=c.vision_mlp,
                     num_hidden_layers=c.vision_layers, num_attention_heads=c.vision_heads)
    return transformers.CLIPVisionConfig(**sizes, image_size=16, patch_size=16, hidden_act="quick_gelu",
                                         layer_norm_eps=1e-5)


def official_text_config(c: GeoTreeCLIPConfig | None = None):
    """openai/clip-vit-base-patch16's text config (the defaults of ``CLIPTextConfig``), or a smaller one."""
    if c is None:
        return transformers.CLIPTextConfig(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                                           num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                                           hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return transformers.CLIPTextConfig(vocab_size=c.vocab_size, hidden_size=c.text_width,
                                       intermediate_size=c.text_mlp, num_hidden_layers=c.text_layers,
                                       num_attention_heads=c.text_heads, max_position_embeddings=c.context_length,
                                       hidden_act="quick_gelu", layer_norm_eps=c.layer_norm_eps)


class Holder(nn.Module):
    """A named level of the official module tree."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def dense(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU())


class OfficialGeoTreeCLIP(nn.Module):
    """The official GeoTreeCLIP module tree and forward, on transformers' CLIP classes and plain torch."""

    def __init__(self, vision_config, text_config, channels=10, temporal_heads=4, aux_hidden=256, aux_out=256,
                 embed_dim=512, groups=(3, 2, 3, 19)):
        super().__init__()
        width = vision_config.hidden_size
        clip = transformers.CLIPVisionModel(vision_config)
        # The official CLIPViT16 swaps in a 10-channel convolution without bias (16 x 16 input, 2 positions).
        clip.vision_model.embeddings.patch_embedding = nn.Conv2d(channels, width, kernel_size=16, stride=16,
                                                                 bias=False)
        assert clip.vision_model.embeddings.position_embedding.num_embeddings == 2
        self.temporal_extractor = Holder(
            clip_vit=Holder(model=clip),
            temporal_attention=Holder(attn=nn.MultiheadAttention(width, temporal_heads, batch_first=True)),
        )
        self.groups = groups
        self.auxiliary_encoder = Holder(
            geo_encoder=dense(groups[0], aux_hidden), terrain_encoder=dense(groups[1], aux_hidden),
            soil_encoder=dense(groups[2], aux_hidden), bio_encoder=dense(groups[3], aux_hidden),
            fusion=dense(4 * aux_hidden, aux_out),
        )
        self.text_encoder = Holder(text_encoder=transformers.CLIPTextModel(text_config))
        self.image_projection = dense(width, embed_dim)
        self.aux_projection = dense(aux_out, embed_dim)
        self.fusion = dense(2 * embed_dim, embed_dim)

    @staticmethod
    def normalise_images(x, mask):
        """The official CLIPNormalizer with a month mask."""
        valid = mask[:, :, None, None, None]
        masked = torch.where(valid, x, torch.zeros_like(x))
        per_sample = masked.reshape(-1, x.shape[2], x.shape[3], x.shape[4])
        lo = per_sample.min(dim=0)[0].min(dim=1)[0].min(dim=1)[0]
        hi = per_sample.max(dim=0)[0].max(dim=1)[0].max(dim=1)[0]
        lo, hi = lo[None, None, :, None, None], hi[None, None, :, None, None]
        out = 2.0 * ((x - lo) / (hi - lo + 1e-6)) - 1.0
        return torch.where(valid, out, torch.zeros_like(out))

    @staticmethod
    def normalise_aux(values, mask):
        """The official AuxiliaryNormalizer: missing values as 0, per-column min/max over the valid values."""
        features = torch.nan_to_num(values, nan=0.0) * mask
        lows, highs = [], []
        for i in range(features.shape[1]):
            valid = features[:, i][mask[:, i]]
            if len(valid) > 0:
                lo, hi = valid.min(), valid.max()
                if abs(hi - lo) < 1e-6:
                    hi = lo + 1.0
            else:
                lo, hi = 0.0, 1.0
            lows.append(lo)
            highs.append(hi)
        lo, hi = torch.tensor(lows), torch.tensor(highs)
        return (2.0 * ((features - lo) / (hi - lo + 1e-6)) - 1.0) * mask

    def encode_location(self, images, aux):
        image_mask = ~torch.isnan(images).flatten(2).all(dim=-1)  # the official dataloader's month mask
        aux_mask = ~torch.isnan(aux)
        x = self.normalise_images(images, image_mask)
        b, t, c, h, w = x.shape
        x = F.interpolate(x.reshape(b * t, c, h, w), size=(16, 16), mode="bilinear", align_corners=False)
        features = self.temporal_extractor.clip_vit.model(x).last_hidden_state[:, 0, :].reshape(b, t, -1)
        features = features * image_mask.unsqueeze(-1)
        attended, _ = self.temporal_extractor.temporal_attention.attn(features, features, features)
        pooled = nn.AdaptiveAvgPool1d(1)(attended.transpose(1, 2)).squeeze(-1)
        image_features = self.image_projection(pooled)

        a = self.normalise_aux(aux, aux_mask)
        enc = self.auxiliary_encoder
        bounds = torch.tensor((0, *self.groups)).cumsum(0).tolist()
        parts = [a[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        encoded = [m(p) for m, p in zip((enc.geo_encoder, enc.terrain_encoder, enc.soil_encoder, enc.bio_encoder),
                                        parts)]
        aux_features = self.aux_projection(enc.fusion(torch.cat(encoded, dim=1)))
        return self.fusion(torch.cat([image_features, aux_features], dim=1))

    def encode_text(self, ids):
        mask = torch.zeros_like(ids)
        for i, row in enumerate(ids):  # attention mask up to and including the first end-of-text token
            mask[i, : int((row == 49407).nonzero()[0]) + 1] = 1
        return self.text_encoder.text_encoder(input_ids=ids, attention_mask=mask).pooler_output

    @staticmethod
    def zero_shot(location, text):
        logits = 100.0 * F.normalize(location, dim=-1) @ F.normalize(text, dim=-1).t()
        return logits.softmax(dim=-1)


def official_from(model) -> OfficialGeoTreeCLIP:
    c = model.config
    if c == GeoTreeCLIPConfig.full():
        official = OfficialGeoTreeCLIP(official_vision_config(), official_text_config())
    else:
        official = OfficialGeoTreeCLIP(official_vision_config(c), official_text_config(c), channels=c.channels,
                                       temporal_heads=c.temporal_heads, aux_hidden=c.aux_hidden, aux_out=c.aux_out,
                                       embed_dim=c.embed_dim, groups=c.aux_groups)
    official.load_state_dict(model.state_dict(), strict=True)  # same names and shapes as the official checkpoint
    return official.eval()


def hard_batch(batch, seed):
    """Reflectance-like inputs with missing months (single, runs, a sample without any) and missing auxiliary
    values (scattered, a whole variable, plus a constant variable)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 12, 10, 5, 5, generator=g) * 0.5
    aux = torch.cat([torch.rand(batch, 1, generator=g) * 360 - 180, torch.rand(batch, 1, generator=g) * 180 - 90,
                     torch.rand(batch, 25, generator=g) * 400], dim=1)
    missing = torch.rand(batch, 12, generator=g) < 0.25
    missing[0] = False
    missing[1, :7] = True
    missing[2] = True
    images[missing] = float("nan")
    aux[torch.rand(batch, 27, generator=g) < 0.15] = float("nan")
    aux[:, 5] = float("nan")
    aux[:, 9] = 12.5
    return images, aux


@pytest.fixture(scope="module", params=["tiny", "full"])
def pair(request):
    model = request.getfixturevalue(f"{request.param}_model")
    return model, official_from(model)


def test_location_text_and_probabilities_match_the_official_architecture(pair):
    model, official = pair
    images, aux = hard_batch(9, seed=11)
    ids = tokenize(PROMPTS)
    with torch.inference_mode():
        want_loc, want_text = official.encode_location(images, aux), official.encode_text(ids)
        want_prob = official.zero_shot(want_loc, want_text)
        loc, text = model.encode_location(images, aux), model.encode_text(ids)
        plain = reference.encode_location(model, images, aux)
    prob = model.zero_shot(loc, text)
    assert want_loc.abs().max() > 0.1 and ((want_prob > 0.01) & (want_prob < 0.99)).any()  # not degenerate
    assert (loc - want_loc).abs().max() <= TOLERANCE
    assert (plain - want_loc).abs().max() <= TOLERANCE
    assert (text - want_text).abs().max() <= TOLERANCE
    assert (prob - want_prob).abs().max() <= TOLERANCE


def test_missing_months_and_values_are_handled_like_the_official_code(pair):
    model, official = pair
    images, aux = hard_batch(5, seed=3)
    images[:, 4] = float("nan")  # a month missing everywhere
    aux[:, 0] = float("nan")
    with torch.inference_mode():
        want = official.encode_location(images, aux)
        got = model.encode_location(images, aux)
    assert (got - want).abs().max() <= TOLERANCE


def test_vision_tower_matches_transformers(tiny_model):
    c = tiny_model.config
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=c.vision_hidden, intermediate_size=c.vision_mlp, num_hidden_layers=c.vision_layers,
        num_attention_heads=c.vision_heads, image_size=c.image_size, patch_size=c.patch_size,
        num_channels=c.channels, hidden_act="quick_gelu", layer_norm_eps=c.layer_norm_eps,
    )).eval()
    embeddings = hf.vision_model.embeddings
    if embeddings.patch_embedding.in_channels != c.channels:
        # Older transformers (4.24 included) hard-code 3 channels; the official code swaps the convolution likewise.
        embeddings.patch_embedding = torch.nn.Conv2d(c.channels, c.vision_hidden, c.patch_size, c.patch_size,
                                                     bias=False)
    _load(hf.vision_model, _sub_state(tiny_model, VISION))
    pixels = torch.randn(6, c.channels, c.image_size, c.image_size)
    month_encoder = tiny_model.temporal_extractor.clip_vit
    with torch.no_grad():
        theirs = hf(pixel_values=pixels).last_hidden_state[:, 0]
        fast, plain = month_encoder(pixels), month_encoder.reference(pixels)
    assert torch.allclose(fast, theirs, atol=1e-5)
    assert torch.allclose(plain, theirs, atol=1e-5)


def test_text_tower_matches_transformers(tiny_model):
    c = tiny_model.config
    hf = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=c.text_mlp,
        num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads, max_position_embeddings=c.context_length,
        hidden_act="quick_gelu", layer_norm_eps=c.layer_norm_eps, eos_token_id=49407,
    )).eval()
    _load(hf.text_model, _sub_state(tiny_model, TEXT))
    ids = tokenize(["Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica", "Pinus nigra"])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = tiny_model.encode_text(ids)
        theirs = hf(input_ids=ids, attention_mask=mask).pooler_output
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_official_module_tree_has_treemap_names():
    # The reference is built independently of treemap's classes; its state dict names are those of a random
    # treemap model of the same sizes (strict load in both directions).
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=1)
    official = official_from(model)
    assert set(official.state_dict()) == set(model.state_dict())
    model.load_state_dict(official.state_dict(), strict=True)
