"""Few-shot heads: fitting, cross-validation, and head files as untrusted input."""

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from treemap.errors import ModelError
from treemap.heads import Head, cross_validated_top1, fit_head, fit_weights, load_head, save_head
from treemap.taxonomy import Taxon


def _clusters(n_per=20, classes=4, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    labels = torch.arange(classes).repeat_interleave(n_per)
    emb = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=g) / dim ** 0.5
    return emb * 3.0, labels  # the scale of embeddings must not matter


def _taxa(labels):
    return [Taxon("Deciduous", f"Fam{int(c) % 2}", f"Genus{int(c)}", f"Genus{int(c)} species") for c in labels]


@pytest.mark.parametrize("kind", ["prototype", "linear"])
def test_separable_clusters_are_classified(kind):
    emb, labels = _clusters()
    head = fit_head(emb, _taxa(labels), kind, "model-key")
    probs = head.probabilities(emb)
    assert probs.shape == (80, 4) and torch.allclose(probs.sum(-1), torch.ones(80), atol=1e-5)
    assert (probs.argmax(-1) == labels).float().mean() == 1.0
    assert head.cv_top1 == 1.0 and head.counts == (20, 20, 20, 20)
    assert head.species.species == tuple(f"Genus{c} species" for c in range(4))


def test_prototypes_are_normalised_class_means():
    emb, labels = _clusters(n_per=3)
    w, b, scale = fit_weights(emb, labels, 4, "prototype")
    z = F.normalize(emb, dim=-1)
    for c in range(4):
        expected = F.normalize(z[labels == c].mean(0), dim=0)
        assert torch.allclose(w[c], expected, atol=1e-6)
    assert torch.all(b == 0) and scale == 100.0


def test_linear_beats_prototype_on_unequal_spreads():
    # class 0 is wide, class 1 tight and close to it: the nearest prototype takes much of class 0 for class 1,
    # a learned boundary does not
    g = torch.Generator().manual_seed(1)
    dim = 8
    a = F.normalize(torch.randn(dim, generator=g), dim=0)
    b = F.normalize(a + 0.25 * torch.randn(dim, generator=g), dim=0)
    x0 = a + 0.6 * torch.randn(200, dim, generator=g) / dim ** 0.5
    x1 = b + 0.05 * torch.randn(200, dim, generator=g) / dim ** 0.5
    emb, labels = torch.cat([x0, x1]), torch.cat([torch.zeros(200), torch.ones(200)]).long()
    proto = cross_validated_top1(emb, labels, 2, "prototype")
    linear = cross_validated_top1(emb, labels, 2, "linear")
    assert linear > proto + 0.02, (linear, proto)


def test_cross_validation_needs_two_samples_somewhere():
    emb, labels = _clusters(n_per=1)
    assert cross_validated_top1(emb, labels, 4, "prototype") is None
    emb2, labels2 = _clusters(n_per=2)
    assert cross_validated_top1(emb2, labels2, 4, "prototype") is not None


def test_head_file_round_trip(tmp_path):
    emb, labels = _clusters()
    head = fit_head(emb, _taxa(labels), "linear", "abc123")
    path = save_head(head, tmp_path / "h.safetensors")
    back = load_head(path)
    assert back.kind == "linear" and back.model_key == "abc123" and back.species.taxa == head.species.taxa
    assert back.counts == head.counts and back.cv_top1 == head.cv_top1
    assert torch.equal(back.probabilities(emb), head.probabilities(emb))
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_head_files_are_refused(tmp_path):
    emb, labels = _clusters()
    good = save_head(fit_head(emb, _taxa(labels), "prototype", "k", cross_validate=False), tmp_path / "g.safetensors")
    cases = {}
    cases["missing"] = tmp_path / "nope.safetensors"
    (tmp_path / "empty.safetensors").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.safetensors"

    class Evil:
        def __reduce__(self):
            return (exec, ("open('/tmp/treemap-pwned-head', 'w').write('x')",))

    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Evil()))
    cases["pickle"] = tmp_path / "evil.safetensors"
    save_file({"weight": torch.zeros(2, 3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cases["not a head"] = tmp_path / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(tmp_path / "short.safetensors"),
              metadata={**meta, "taxa": json.dumps(json.loads(meta["taxa"])[:2])})
    cases["taxa and weights disagree"] = tmp_path / "short.safetensors"
    save_file({**tensors, "weight": tensors["weight"] * np.nan}, str(tmp_path / "nan.safetensors"), metadata=meta)
    cases["non-finite"] = tmp_path / "nan.safetensors"
    for name, path in cases.items():
        with pytest.raises(ModelError) as info:
            load_head(path)
        assert "\n" not in str(info.value), name
    import os

    assert not os.path.exists("/tmp/treemap-pwned-head")


def test_head_rejects_mismatched_shapes():
    emb, labels = _clusters(n_per=1, classes=3)
    species = fit_head(emb, _taxa(labels), "prototype", "k").species
    with pytest.raises(ModelError):
        Head("prototype", torch.zeros(3, 4), torch.zeros(2), 1.0, species, "k")
    with pytest.raises(ModelError):
        Head("prototype", torch.zeros(2, 4), torch.zeros(2), 1.0, species, "k")
