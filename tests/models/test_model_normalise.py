"""Input normalisation: the official batch rule against a direct loop reference, fixed statistics, missing data."""

from __future__ import annotations

import math

import torch

from treemap.models import GeoTreeCLIPConfig, demo_model, random_model
from treemap.models.normalise import BatchNormaliser, FixedNormaliser, month_mask


def reference_batch_images(images: torch.Tensor) -> torch.Tensor:
    """The DOMAIN.md rule, element by element: missing months -> 0, per-band min/max over everything (zeros of
    missing months included), 2 (x - min) / (max - min + 1e-6) - 1, missing months -> 0."""
    b, t, c, h, w = images.shape
    present = [[not bool(torch.isnan(images[i, m]).all()) for m in range(t)] for i in range(b)]
    out = torch.zeros_like(images)
    for band in range(c):
        values = []
        for i in range(b):
            for m in range(t):
                values += images[i, m, band].flatten().tolist() if present[i][m] else [0.0] * (h * w)
        lo = torch.tensor(min(values), dtype=torch.float32)
        hi = torch.tensor(max(values), dtype=torch.float32)
        for i in range(b):
            for m in range(t):
                if present[i][m]:
                    out[i, m, band] = 2.0 * ((images[i, m, band] - lo) / (hi - lo + 1e-6)) - 1.0
    return out


def reference_batch_aux(aux: torch.Tensor) -> torch.Tensor:
    """Per variable min/max over the present values; constant -> max = min + 1; none present -> 0, 1."""
    out = torch.zeros_like(aux)
    for v in range(aux.shape[1]):
        col = aux[:, v]
        valid = col[~torch.isnan(col)]
        if len(valid):
            lo, hi = valid.min(), valid.max()
            if abs(hi - lo) < 1e-6:
                hi = lo + 1.0
        else:
            lo, hi = torch.tensor(0.0), torch.tensor(1.0)
        for i in range(aux.shape[0]):
            if not math.isnan(float(col[i])):
                out[i, v] = 2.0 * ((col[i] - lo) / (hi - lo + 1e-6)) - 1.0
    return out


def with_gaps(make_inputs, batch=6):
    images, aux = make_inputs(batch, seed=1)
    images[0, 3] = float("nan")  # one missing month
    images[1, :7] = float("nan")  # several
    images[2] = float("nan")  # a sample without any month
    aux[0, 2] = float("nan")
    aux[:, 9] = float("nan")  # a variable missing everywhere
    aux[:, 12] = 7.0  # a constant variable
    return images, aux


def test_month_mask(make_inputs):
    images, _ = with_gaps(make_inputs)
    mask = month_mask(images)
    assert mask.shape == (6, 12)
    assert not mask[0, 3] and mask[0, 4] and not mask[1, :7].any() and not mask[2].any() and mask[3].all()
    images[3, 5, 0, 0, 0] = float("nan")  # a single NaN does not make a month missing
    assert month_mask(images)[3, 5]


def test_batch_rule_matches_reference(make_inputs):
    images, aux = with_gaps(make_inputs)
    images[4] = images[4] * 3 - 0.2  # widen the range so that the zeros of missing months matter less trivially
    norm = BatchNormaliser()
    assert torch.allclose(norm.images(images), reference_batch_images(images), atol=1e-6)
    assert torch.allclose(norm.aux(aux), reference_batch_aux(aux), atol=1e-6)


def test_zeros_of_missing_months_enter_the_batch_minimum(make_inputs):
    images, _ = make_inputs(2, seed=2)
    images = images + 0.5  # all values in [0.5, 1.0]
    full = BatchNormaliser().images(images)
    assert torch.isclose(full.amin(), torch.tensor(-1.0), atol=1e-5)
    images[1, 0] = float("nan")
    gapped = BatchNormaliser().images(images)
    assert gapped[0].amin() > -0.1  # the minimum is now the 0 of the missing month


def test_batch_rule_is_batch_dependent(make_inputs):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=0)
    images, aux = make_inputs(8, seed=3)
    with torch.no_grad():
        alone = model.encode_location(images[:1], aux[:1])
        together = model.encode_location(images, aux)[:1]
    assert not torch.allclose(alone, together, atol=1e-4)


def test_fixed_rule_is_batch_independent(make_inputs):
    model, _ = demo_model()
    images, aux = with_gaps(make_inputs, batch=9)
    with torch.no_grad():
        together = model.encode_location(images, aux)
        for i in range(len(images)):
            alone = model.encode_location(images[i : i + 1], aux[i : i + 1])
            assert torch.allclose(alone, together[i : i + 1], atol=1e-5), i


def test_fixed_rule_formula_and_missing_values():
    norm = FixedNormaliser([0.0] * 10, [0.6] * 10, [-180.0] + [0.0] * 26, [180.0] + [5.0] + [1.0] * 25)
    images = torch.full((1, 12, 10, 5, 5), 0.3)
    images[0, 2] = float("nan")
    out = norm.images(images)
    assert torch.allclose(out[0, 0], torch.zeros(10, 5, 5), atol=1e-5)  # 0.3 is mid-range
    assert (out[0, 2] == 0).all()
    aux = torch.zeros(1, 27)
    aux[0, 0], aux[0, 1], aux[0, 2] = 180.0, 5.0, float("nan")
    out = norm.aux(aux)
    assert torch.isclose(out[0, 0], torch.tensor(1.0), atol=1e-5)
    assert torch.isclose(out[0, 1], torch.tensor(1.0), atol=1e-5)
    assert out[0, 2] == 0 and torch.isclose(out[0, 3], torch.tensor(-1.0))


def test_missing_data_gives_finite_output_in_both_modes(make_inputs):
    images, aux = with_gaps(make_inputs)
    images[3, 5, 2, 1, 1] = float("nan")  # an isolated NaN inside a present month
    aux[5] = float("nan")  # a sample without auxiliary data
    batch_model = random_model(GeoTreeCLIPConfig.tiny(), seed=0)
    fixed_model, _ = demo_model()
    with torch.no_grad():
        for model in (batch_model, fixed_model):
            loc = model.encode_location(images, aux)
            assert torch.isfinite(loc).all()
            probs = model.zero_shot(loc, model.encode_prompts(["a / b / c / d", "e / f / g / h"]))
            assert torch.isfinite(probs).all()


def test_all_missing_batch(make_inputs):
    images, aux = make_inputs(3)
    images[:] = float("nan")
    aux[:] = float("nan")
    for model in (random_model(GeoTreeCLIPConfig.tiny(), seed=0), demo_model()[0]):
        with torch.no_grad():
            assert torch.isfinite(model.encode_location(images, aux)).all()


def test_swapping_the_strategy(make_inputs):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=0)
    assert isinstance(model.normaliser, BatchNormaliser)
    keys = set(model.state_dict())
    model.set_normalisation("fixed", band_min=[0] * 10, band_max=[1] * 10, aux_min=[0] * 27, aux_max=[1] * 27)
    assert isinstance(model.normaliser, FixedNormaliser) and model.config.normalisation == "fixed"
    assert set(model.state_dict()) == keys  # statistics do not change the checkpoint names
    model.set_normalisation("batch")
    assert isinstance(model.normaliser, BatchNormaliser) and model.config.band_min is None
