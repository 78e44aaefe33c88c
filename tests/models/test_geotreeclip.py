"""GeoTreeCLIP architecture: shapes, official parameter names, zero-shot head, determinism of the random init."""

from __future__ import annotations

import pytest
import torch

from treemap.models import GeoTreeCLIP, GeoTreeCLIPConfig, random_model, tokenize

PROMPTS = [
    "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica",
    "Evergreen Needleleaf / Pinaceae / Pinus / Pinus sylvestris",
    "Deciduous Broadleaf / Betulaceae / Betula / Betula pendula",
]


def official_keys(vision_layers: int = 12, text_layers: int = 12) -> set[str]:
    """Tensor names of the official GGT_6M.pth, written out from the official module tree
    (GeoTreeClip in MUYang99/GlobalGeoTree GeoTreeCLIP/models.py on transformers 4.24 CLIP modules)."""
    layer = [f"{m}.{p}" for m in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj",
                                  "layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2") for p in ("weight", "bias")]
    v = "temporal_extractor.clip_vit.model.vision_model."
    t = "text_encoder.text_encoder.text_model."
    keys = {
        v + "embeddings.class_embedding", v + "embeddings.position_ids",
        v + "embeddings.patch_embedding.weight", v + "embeddings.position_embedding.weight",
        *(v + f"{ln}.{p}" for ln in ("pre_layrnorm", "post_layernorm") for p in ("weight", "bias")),
        *(v + f"encoder.layers.{i}.{k}" for i in range(vision_layers) for k in layer),
        "temporal_extractor.temporal_attention.attn.in_proj_weight",
        "temporal_extractor.temporal_attention.attn.in_proj_bias",
        "temporal_extractor.temporal_attention.attn.out_proj.weight",
        "temporal_extractor.temporal_attention.attn.out_proj.bias",
        t + "embeddings.token_embedding.weight", t + "embeddings.position_embedding.weight",
        t + "embeddings.position_ids", t + "final_layer_norm.weight", t + "final_layer_norm.bias",
        *(t + f"encoder.layers.{i}.{k}" for i in range(text_layers) for k in layer),
    }
    dense = [f"{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]  # Linear, LayerNorm (ReLU has no tensors)
    for block in ("geo_encoder", "terrain_encoder", "soil_encoder", "bio_encoder", "fusion"):
        keys.update(f"auxiliary_encoder.{block}.{d}" for d in dense)
    for block in ("image_projection", "aux_projection", "fusion"):
        keys.update(f"{block}.{d}" for d in dense)
    return keys


def test_full_state_dict_has_the_official_names_and_shapes(full_model):
    state = full_model.state_dict()
    assert set(state) == official_keys()
    assert len(state) == 433
    v = "temporal_extractor.clip_vit.model.vision_model."
    t = "text_encoder.text_encoder.text_model."
    expected_shapes = {
        v + "embeddings.patch_embedding.weight": (768, 10, 16, 16),
        v + "embeddings.position_embedding.weight": (2, 768),
        v + "embeddings.position_ids": (1, 2),
        v + "encoder.layers.0.mlp.fc1.weight": (3072, 768),
        "temporal_extractor.temporal_attention.attn.in_proj_weight": (2304, 768),
        "auxiliary_encoder.bio_encoder.0.weight": (256, 19),
        "auxiliary_encoder.fusion.0.weight": (256, 1024),
        t + "embeddings.token_embedding.weight": (49408, 512),
        t + "embeddings.position_ids": (1, 77),
        "image_projection.0.weight": (512, 768),
        "aux_projection.0.weight": (512, 256),
        "fusion.0.weight": (512, 1024),
    }
    assert {k: tuple(state[k].shape) for k in expected_shapes} == expected_shapes
    assert 150e6 < sum(p.numel() for p in full_model.parameters()) < 160e6


def test_full_forward_shapes(full_model, make_inputs):
    images, aux = make_inputs(2)
    with torch.no_grad():
        loc = full_model.encode_location(images, aux)
        text = full_model.encode_text(tokenize(PROMPTS))
    assert loc.shape == (2, 512) and text.shape == (3, 512)
    assert torch.isfinite(loc).all() and torch.isfinite(text).all()


def test_tiny_shapes_and_zero_shot(tiny_model, make_inputs):
    images, aux = make_inputs(5)
    with torch.no_grad():
        loc = tiny_model.encode_location(images, aux)
        text = tiny_model.encode_prompts(PROMPTS)
        probs = tiny_model.zero_shot(loc, text)
    assert loc.shape == (5, 64) and text.shape == (3, 64) and probs.shape == (5, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    cos = torch.nn.functional.normalize(loc, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert torch.allclose(probs, (100 * cos).softmax(-1), atol=1e-6)


def test_location_embedding_comes_from_relu(tiny_model, make_inputs):
    images, aux = make_inputs(3)
    with torch.no_grad():
        assert (tiny_model.encode_location(images, aux) >= 0).all()


def test_text_pooled_at_first_end_token_ignores_padding(tiny_model):
    ids = tokenize(PROMPTS[:1])
    n = int((ids[0] != 0).sum())
    other_padding = ids.clone()
    other_padding[0, n:] = 49407  # transformers' CLIP tokenizer pads with the end token
    with torch.no_grad():
        a = tiny_model.encode_text(ids)
        b = tiny_model.encode_text(other_padding)
        c = tiny_model.encode_text(ids[:, :n])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)


def test_input_shapes_are_checked(tiny_model, make_inputs):
    images, aux = make_inputs(2)
    with pytest.raises(ValueError):
        tiny_model.encode_location(images[:, :11], aux)
    with pytest.raises(ValueError):
        tiny_model.encode_location(images, aux[:, :26])
    with pytest.raises(ValueError):
        tiny_model.encode_text(torch.zeros(2, 78, dtype=torch.long))


def test_random_model_is_seeded_and_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    a = random_model(GeoTreeCLIPConfig.tiny(), seed=3).state_dict()
    b = random_model(GeoTreeCLIPConfig.tiny(), seed=3).state_dict()
    c = random_model(GeoTreeCLIPConfig.tiny(), seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fusion.0.weight"], c["fusion.0.weight"])


def test_config_validation_and_dict_round_trip():
    config = GeoTreeCLIPConfig.tiny()
    assert GeoTreeCLIPConfig.from_dict(config.to_dict()) == config
    assert GeoTreeCLIPConfig.full().embed_dim == 512
    with pytest.raises(ValueError):
        GeoTreeCLIPConfig.tiny(embed_dim=32)  # no text projection: embed_dim is the text width
    with pytest.raises(ValueError):
        GeoTreeCLIPConfig.tiny(normalisation="fixed")  # statistics missing
    with pytest.raises(ValueError):
        GeoTreeCLIPConfig.tiny(aux_groups=(3, 2, 22))
    with pytest.raises(ValueError):
        GeoTreeCLIPConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_model_is_a_module_with_the_config(tiny_model):
    assert isinstance(tiny_model, GeoTreeCLIP) and tiny_model.config == GeoTreeCLIPConfig.tiny()
