"""A PCA projection of embeddings that several maps can share.

An embedding map of 512 or 768 bands is large and hard to look at; its first principal components keep most of the
variance in a few bands. A projection is fitted once (:func:`fit_projection`, an SVD of a centred sample) and saved
(:func:`save_projection`) beside the product, so that a later run of another region applies exactly the same
projection (``treemap embed --pca-from FILE``) and the two maps are comparable band by band.

A component's sign is arbitrary in an SVD; it is fixed here so that the largest-magnitude loading of each component is
positive, which makes a refit on the same sample give the same projection.

File format: safetensors with tensors ``mean`` (D,) and ``components`` (K, D), float32, and string metadata
``format`` (:data:`FORMAT`), ``model_key`` (the digest of the model whose embeddings were fitted), ``explained``
(JSON list of the explained-variance share per component), ``samples`` and ``checksum`` (sha256 of the two tensors'
bytes). Loading checks the format and the checksum, so a damaged or edited file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treemap.errors import ProjectionError, ProjectionNotFoundError

FORMAT = "treemap-pca/1"


@dataclass(frozen=True)
class Projection:
    """``y = (x - mean) @ components.T``: (D,) mean and (K, D) orthonormal components."""

    mean: np.ndarray
    components: np.ndarray
    explained: tuple[float, ...]
    model_key: str
    samples: int

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) float32; NaN rows stay NaN."""
        return ((np.asarray(x, np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def checksum(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.mean, np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.components, np.float32).tobytes())
        return digest.hexdigest()

    def check_for(self, model_key: str, dim: int, source: str = "the projection") -> None:
        """A :class:`ProjectionError` unless this projection was fitted on embeddings of this model."""
        if self.dim != dim:
            raise ProjectionError(f"{source} takes {self.dim}-dim embeddings; the model gives {dim}")
        if self.model_key and model_key and self.model_key != model_key:
            raise ProjectionError(f"{source} was fitted on another model's embeddings (model {self.model_key[:12]}, "
                                  f"this run's is {model_key[:12]}): refit it with --pca K")


def fit_projection(x: np.ndarray, k: int, model_key: str = "") -> Projection:
    """The first ``k`` principal components of the rows of ``x`` (N, D); rows with a NaN are left out."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if k < 1:
        raise ProjectionError(f"--pca {k}: use 1 or more components")
    if k > x.shape[1]:
        raise ProjectionError(f"--pca {k}: the embeddings have only {x.shape[1]} dimensions")
    if x.shape[0] <= k:
        raise ProjectionError(f"--pca {k}: only {x.shape[0]} pixels with an embedding to fit it on; use fewer "
                              f"components or a larger AOI")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = vt[:k]
    flip = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * flip[:, None]
    variance = s ** 2
    explained = tuple(float(v) for v in variance[:k] / variance.sum()) if variance.sum() > 0 else (0.0,) * k
    return Projection(mean.astype(np.float32), components.astype(np.float32), explained, model_key, int(x.shape[0]))


def save_projection(projection: Projection, path: Path) -> Path:
    """Write ``path`` atomically (temporary name, fsync, rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    meta = {"format": FORMAT, "model_key": projection.model_key, "explained": json.dumps(projection.explained),
            "samples": str(projection.samples), "checksum": projection.checksum()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({"mean": np.ascontiguousarray(projection.mean, np.float32),
                   "components": np.ascontiguousarray(projection.components, np.float32)}, str(tmp), metadata=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_projection(path: Path) -> Projection:
    """A projection file written by :func:`save_projection`; one-line errors for a missing, foreign or damaged
    file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ProjectionNotFoundError(f"projection file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ProjectionError(f"{path} is not a treemap PCA projection (format {meta.get('format')!r})")
            mean, components = fh.get_tensor("mean"), fh.get_tensor("components")
        explained = tuple(float(v) for v in json.loads(meta.get("explained", "[]")))
        samples = int(meta.get("samples", "0"))
    except ProjectionError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing error
        raise ProjectionError(f"cannot read projection {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
        raise ProjectionError(f"{path}: mean {mean.shape} and components {components.shape} do not fit together")
    projection = Projection(mean.astype(np.float32), components.astype(np.float32), explained,
                            meta.get("model_key", ""), samples)
    if projection.checksum() != meta.get("checksum"):
        raise ProjectionError(f"{path}: checksum mismatch, the file is damaged or was edited")
    return projection
