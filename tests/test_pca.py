"""PCA projections of embeddings (treemap.pca): the fit, its sign rule, and the file round trip with its checks."""

from __future__ import annotations

import numpy as np
import pytest

from treemap.errors import ProjectionError, ProjectionNotFoundError
from treemap.pca import fit_projection, load_projection, save_projection


def sample(n=2000, d=16, seed=0):
    """Rows with a known dominant direction: most variance along ``axis``, less along a second one."""
    rng = np.random.default_rng(seed)
    axis = np.zeros(d)
    axis[3] = 1.0
    second = np.zeros(d)
    second[7] = 1.0
    x = (rng.normal(0, 3.0, (n, 1)) * axis + rng.normal(0, 1.0, (n, 1)) * second
         + rng.normal(0, 0.1, (n, d)) + 5.0)
    return x.astype(np.float32)


def test_the_fit_finds_the_directions_of_most_variance_and_fixes_their_sign():
    x = sample()
    p = fit_projection(x, 2, "model")
    assert p.k == 2 and p.dim == 16
    assert abs(p.components[0, 3]) > 0.99 and abs(p.components[1, 7]) > 0.99
    assert p.components[0, 3] > 0 and p.components[1, 7] > 0  # the largest loading is positive
    assert np.allclose(p.components @ p.components.T, np.eye(2), atol=1e-5)
    assert p.explained[0] > p.explained[1] > 0 and sum(p.explained) < 1
    y = p.apply(x)
    assert abs(float(y[:, 0].mean())) < 1e-3 and abs(float(y[:, 0].std()) - 3.0) < 0.2
    # a sign flip of the data's direction gives the same components: the rule, not the SVD, fixes the sign
    assert np.allclose(fit_projection(-x, 2, "model").components, p.components, atol=1e-5)


def test_rows_with_nan_are_left_out_of_the_fit_and_stay_nan():
    x = sample()
    x[:10, 0] = np.nan
    p = fit_projection(x, 3)
    assert p.samples == x.shape[0] - 10
    assert np.isnan(p.apply(x[:10])).all(axis=1).all() and np.isfinite(p.apply(x[10:])).all()


def test_a_saved_projection_loads_identical(tmp_path):
    p = fit_projection(sample(), 4, "abc123")
    path = save_projection(p, tmp_path / "p.safetensors")
    q = load_projection(path)
    assert np.array_equal(q.mean, p.mean) and np.array_equal(q.components, p.components)
    assert q.explained == pytest.approx(p.explained) and q.model_key == "abc123" and q.samples == p.samples
    assert q.checksum() == p.checksum()
    assert [f.name for f in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary file left


def test_bad_projection_files_are_one_line_errors(tmp_path):
    with pytest.raises(ProjectionNotFoundError, match="not found"):
        load_projection(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ProjectionError, match="cannot read"):
        load_projection(junk)
    path = save_projection(fit_projection(sample(), 2, "m"), tmp_path / "p.safetensors")
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last stored float becomes inf: the checksum no longer matches
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ProjectionError, match="checksum"):
        load_projection(damaged)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"mean": np.zeros(2, np.float32)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ProjectionError, match="not a treemap PCA projection"):
        load_projection(other)


def test_fits_that_cannot_work_and_projections_of_another_model_are_refused():
    x = sample(n=50, d=8)
    with pytest.raises(ProjectionError, match="only 8 dimensions"):
        fit_projection(x, 9)
    with pytest.raises(ProjectionError, match="only 3 pixels"):
        fit_projection(x[:3], 3)
    with pytest.raises(ProjectionError, match="1 or more"):
        fit_projection(x, 0)
    p = fit_projection(x, 2, "a" * 64)
    p.check_for("a" * 64, 8)
    with pytest.raises(ProjectionError, match="another model"):
        p.check_for("b" * 64, 8)
    with pytest.raises(ProjectionError, match="8-dim"):
        p.check_for("a" * 64, 16)
