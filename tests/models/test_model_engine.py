"""The fast location encoder (treemap.models.engine) against the plain official forward (treemap.models.reference):
folded resize + embedding, missing months, weight cache invalidation, dtypes, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from treemap.models import GeoTreeCLIPConfig, ModelCard, load_model, random_model, reference, save_model
from treemap.models import engine as engine_module
from treemap.models.engine import fold_patch_embedding, resize_matrix, tower_flops

TOLERANCE = 1e-4  # acceptance limit, fp32 CPU


def hard_batch(make_inputs, batch, seed=0):
    images, aux = make_inputs(batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    images[torch.rand(batch, 12, generator=g) < 0.25] = float("nan")
    images[0] = float("nan")  # a sample without any month
    images[1, :11] = float("nan")  # one month left
    aux[torch.rand(batch, 27, generator=g) < 0.2] = float("nan")
    aux[:, 6] = float("nan")
    return images, aux


def both(model, images, aux):
    with torch.inference_mode():
        return model.encode_location(images, aux), reference.encode_location(model, images, aux)


@pytest.mark.parametrize("size", [(5, 5), (16, 16), (7, 3), (1, 1)])
def test_folded_embedding_equals_resize_then_convolution(size):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(10, 48, kernel_size=16, stride=16, bias=False)
    torch.nn.init.normal_(conv.weight, std=0.05, generator=g)
    x = torch.rand(33, 10, *size, generator=g) * 2 - 1
    with torch.no_grad():
        want = conv(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)).flatten(1)
        folded = fold_patch_embedding(conv.weight, size)
        got = x.flatten(1).double() @ folded.T
    assert folded.shape == (48, 10 * size[0] * size[1])
    assert (got.float() - want).abs().max() <= 1e-5


def test_resize_matrix_is_torch_bilinear():
    x = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    want = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    got = (x.view(12, 25) @ resize_matrix((5, 5), (16, 16)).T).view(4, 3, 16, 16)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(resize_matrix((5, 5), (16, 16)).sum(1), torch.ones(256, dtype=torch.float64))


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fast_path_equals_reference_tiny(make_inputs, layers):
    model = random_model(GeoTreeCLIPConfig.tiny(vision_layers=layers), seed=layers)
    for seed in range(3):
        fast, plain = both(model, *hard_batch(make_inputs, 12, seed=seed))
        assert fast.shape == plain.shape == (12, 64)
        assert (fast - plain).abs().max() <= 1e-5


def test_fast_path_equals_reference_full(full_model, make_inputs):
    images, aux = hard_batch(make_inputs, 6, seed=4)
    fast, plain = both(full_model, images, aux)
    assert plain.abs().max() > 0.1
    assert (fast - plain).abs().max() <= TOLERANCE


def test_month_encoder_fast_path_on_full_size_images(full_model):
    encoder = full_model.temporal_extractor.clip_vit
    x = torch.randn(5, 10, 16, 16)
    with torch.inference_mode():
        assert (encoder(x) - encoder.reference(x)).abs().max() <= TOLERANCE


def test_missing_months_never_enter_the_tower(tiny_model, make_inputs, monkeypatch):
    rows = []
    run_tower = engine_module.run_tower

    def counting(prep, folded, pixels):
        rows.append(pixels.shape[0])
        return run_tower(prep, folded, pixels)

    monkeypatch.setattr(engine_module, "run_tower", counting)
    images, aux = hard_batch(make_inputs, 10, seed=1)
    present = int((~torch.isnan(images).flatten(2).all(-1)).sum())
    fast, plain = both(tiny_model, images, aux)
    assert rows == [present] and present < 10 * 12
    assert (fast - plain).abs().max() <= 1e-5


def test_batch_without_any_month(tiny_model, make_inputs):
    images, aux = make_inputs(4)
    images[:] = float("nan")
    fast, plain = both(tiny_model, images, aux)
    assert torch.isfinite(fast).all() and (fast - plain).abs().max() <= 1e-5


def test_fixed_normalisation_and_batch_independence():
    from treemap.models import demo_model

    model, _ = demo_model()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(8, 12, 10, 5, 5, generator=g) * 0.4
    images[2, 5:] = float("nan")
    aux = torch.rand(8, 27, generator=g) * 100
    fast, plain = both(model, images, aux)
    assert (fast - plain).abs().max() <= 1e-5
    alone, _ = both(model, images[2:3], aux[2:3])
    assert (alone - fast[2:3]).abs().max() <= 1e-5


def test_cache_follows_weight_changes(make_inputs):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=5)
    images, aux = hard_batch(make_inputs, 6, seed=2)
    first, _ = both(model, images, aux)
    vision = model.temporal_extractor.clip_vit.model.vision_model
    with torch.no_grad():  # in-place changes: conv weight (folded matrix), a projection (packed q/v/k), LN
        vision.embeddings.patch_embedding.weight.mul_(1.5)
        vision.encoder.layers[0].self_attn.k_proj.weight.add_(0.05)
        vision.encoder.layers[-1].mlp.fc1.bias.add_(0.1)
        vision.pre_layrnorm.weight.mul_(0.5)
    changed, plain = both(model, images, aux)
    assert (changed - first).abs().max() > 1e-3
    assert (changed - plain).abs().max() <= 1e-5
    # load_state_dict copies in place; the result must be the other model's
    other = random_model(GeoTreeCLIPConfig.tiny(), seed=6)
    model.load_state_dict(other.state_dict())
    loaded, _ = both(model, images, aux)
    want, _ = both(other, images, aux)
    assert (loaded - want).abs().max() <= 1e-6


def test_engine_adds_nothing_to_the_state_dict(tiny_model, make_inputs):
    keys = list(tiny_model.state_dict())
    both(tiny_model, *make_inputs(3))
    assert list(tiny_model.state_dict()) == keys
    assert not any("engine" in name for name, _ in tiny_model.named_modules())


def test_float64_model_runs_the_fast_path_in_float64(make_inputs):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=7).double()
    images, aux = hard_batch(make_inputs, 5, seed=3)
    fast, plain = both(model, images, aux)
    assert fast.dtype == torch.float64 and (fast - plain).abs().max() <= 1e-10


def test_bf16_autocast_smoke(tiny_model, full_model, make_inputs):
    for model, batch in ((tiny_model, 16), (full_model, 2)):
        images, aux = hard_batch(make_inputs, batch, seed=6)
        with torch.inference_mode():
            want = model.encode_location(images, aux)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model.encode_location(images, aux)
                plain = reference.encode_location(model, images, aux)
        assert torch.isfinite(got.float()).all()
        cos = F.cosine_similarity(got.float(), want, dim=-1)
        assert cos.min() > 0.98, cos
        # bf16 rounds differently on different CPUs (AVX-512 BF16 / AMX kernels accumulate in other orders), so
        # the engine is held to the official forward's own bf16 accuracy against fp32, not to its exact values
        engine_err = (got.float() - want).abs().max()
        official_err = (plain.float() - want).abs().max()
        print(f"bf16 max abs error vs fp32: engine {engine_err:.4f}, official forward {official_err:.4f}")
        assert engine_err <= 2 * official_err + 0.02 * want.abs().max(), (engine_err, official_err)


def test_gradients_use_the_plain_path(make_inputs):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=8).train(False)
    images, aux = hard_batch(make_inputs, 4, seed=1)
    loss = model.encode_location(images, aux).square().sum()
    loss.backward()
    conv = model.temporal_extractor.clip_vit.model.vision_model.embeddings.patch_embedding.weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0
    with torch.no_grad():
        fast = model.encode_location(images, aux)
    assert (fast - reference.encode_location(model, images, aux).detach()).abs().max() <= 1e-5


def test_saved_and_loaded_models_give_the_same_outputs(tiny_model, make_inputs, tmp_path):
    # (the full-size official .pth round trip is in test_model_checkpoint.py)
    images, aux = hard_batch(make_inputs, 4, seed=9)
    before, plain = both(tiny_model, images, aux)
    loaded, _ = load_model(save_model(tiny_model, ModelCard.for_model(tiny_model), tmp_path / "tiny.safetensors"))
    after, _ = both(loaded, images, aux)
    assert torch.equal(after, before)
    assert (after - plain).abs().max() <= 1e-5
    torch.save({"model_state_dict": tiny_model.state_dict()}, tmp_path / "official.pth")
    official, _ = load_model(tmp_path / "official.pth", config=GeoTreeCLIPConfig.tiny())
    images, aux = hard_batch(make_inputs, 4, seed=9)
    assert torch.equal(both(official, images, aux)[0], both(tiny_model, images, aux)[0])


def test_flop_count_of_the_full_tower():
    c = GeoTreeCLIPConfig.full()
    plain = 2 * 10 * 256 * 768 + c.vision_layers * 2 * (2 * 4 * 768 * 768 + 2 * 2 * 768 * 3072)
    fast = tower_flops(c.vision_hidden, c.vision_mlp, c.vision_layers, 10 * 5 * 5)
    assert 0.88 * plain < fast < 0.92 * plain  # about 9 % fewer FLOPs per month than the plain tower


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="no torch.compile")
def test_compile_can_be_switched_off_again(tiny_model):
    engine = tiny_model.temporal_extractor.clip_vit.engine
    assert engine.enable_compile(False) is False and engine.compiled is None
