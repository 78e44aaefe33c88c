"""Optional: treemap's CLIP towers compute what Hugging Face transformers' CLIP modules compute on the same tensors.

The official GeoTreeCLIP was built from ``transformers.CLIPVisionModel`` / ``CLIPTextModel`` (4.24). This test runs
only where a transformers 4.x is importable (it is not a dependency of treemap); it is skipped otherwise.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="optional check against transformers' CLIP modules")

from treemap.models import tokenize  # noqa: E402

if not transformers.__version__.startswith("4."):
    pytest.skip("the module layout compared here is that of transformers 4.x", allow_module_level=True)

VISION = "temporal_extractor.clip_vit.model.vision_model."
TEXT = "text_encoder.text_encoder.text_model."


def _sub_state(model, prefix):
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def _load(module, state):
    result = module.load_state_dict(state, strict=False)
    # transformers >= 4.31 no longer saves position_ids; everything else must match exactly.
    assert all(k.endswith("position_ids") for k in result.missing_keys + result.unexpected_keys), result


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
    with torch.no_grad():
        ours = tiny_model.temporal_extractor.clip_vit(pixels)
        theirs = hf(pixel_values=pixels).last_hidden_state[:, 0]
    assert torch.allclose(ours, theirs, atol=1e-5)


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
