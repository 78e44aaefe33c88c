"""``treemap fewshot``: fit a classification head from labelled points and save it beside the model.

Points (CSV like ``treemap extract`` takes, or GeoJSON Point features whose properties carry ``species`` and
optionally ``genus``, ``family``, ``level0``, ``year``) are extracted with the same composites ``predict`` makes
(:func:`treemap.extract.extract_points`, cached and resumable under the cache folder), encoded by the model with
the auxiliary values ``predict`` gives it at the points' pixels (longitude and latitude, plus the ``--aux`` layer
set's variables, :mod:`treemap.auxiliary`; map with the same ``--aux``), and a head
(:mod:`treemap.heads`) is fitted on the embeddings. ``treemap predict --head FILE`` then maps the head's species.

With ``--encoder seco-eco`` the features are instead those of the SeCo-Eco model at each point's cell, made exactly
as ``treemap embed --encoder seco-eco`` makes a map cell (:mod:`treemap.fewshot_seco`; the imagery part is cached
per cell), so the two encoders can be compared on the same labelled points through the cross-validated top-1. The
head records the chip, stride and season; ``predict`` maps it on those cells (:mod:`treemap.predict_seco`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from treemap.auxiliary import LayerSet
from treemap.embed_seco import SecoEmbedSpec
from treemap.cache import cache_root, file_sha256
from treemap.documents import check_file, read_json, read_text
from treemap.errors import ModelError
from treemap.extract import AuxSource, ExtractOptions, PointsError, extract_points
from treemap.heads import HEAD_KINDS, fit_head, save_head
from treemap.taxonomy import Taxon

log = logging.getLogger("treemap.fewshot")

_PROPERTY_COLUMNS = ("species", "genus", "family", "level0", "level3_species", "level2_genus", "level1_family",
                     "year", "id")


@dataclass(frozen=True)
class FewShotRequest:
    points: Path
    model: str | Path
    catalog: str = "earth-search"
    kind: str = "prototype"
    out: Path | None = None
    year: int | None = None  # for points without a year
    taxonomy: Path | None = None  # species-list CSV filling level0/family/genus per species
    batch_size: int = 1024
    device: str = "auto"
    aux: LayerSet | None = None  # auxiliary layers, as predict --aux takes them
    encoder: str = "geotreeclip"  # or "seco-eco": features of the point's cell as `embed --encoder seco-eco` maps
    seco: SecoEmbedSpec | None = None  # chip, stride and season for seco-eco (its year: each point's)


@dataclass(frozen=True)
class FewShotResult:
    head: Path
    kind: str
    samples: int
    species: tuple[str, ...]
    counts: tuple[int, ...]
    skipped: int
    cv_top1: float | None
    majority_baseline: float  # top-1 of always answering the most frequent species

    def to_json(self) -> dict:
        return {"head": str(self.head), "kind": self.kind, "samples": self.samples, "species": list(self.species),
                "counts": list(self.counts), "skipped_points": self.skipped, "cv_top1": self.cv_top1,
                "majority_baseline": self.majority_baseline}


def geojson_to_csv(path: Path, target: Path) -> Path:
    """Write the Point features of a GeoJSON file as a points CSV (longitude, latitude, properties)."""
    doc = read_json(path, what="points file", kind="GeoJSON", error=PointsError)
    features = doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else \
        [doc] if isinstance(doc, dict) and doc.get("type") == "Feature" else None
    if not isinstance(features, list):
        raise PointsError(f"points file {path} is not a GeoJSON Feature or FeatureCollection")
    rows = []
    for n, feat in enumerate(features, start=1):
        geom = feat.get("geometry") if isinstance(feat, dict) else None
        props = feat.get("properties") if isinstance(feat, dict) else None
        geom, props = geom if isinstance(geom, dict) else {}, props if isinstance(props, dict) else {}
        coords = [geom.get("coordinates")] if geom.get("type") == "Point" else \
            geom.get("coordinates") if geom.get("type") == "MultiPoint" else None
        if not coords:
            raise PointsError(f"points file {path}: feature {n} is not a Point (few-shot labels are points)")
        for c in coords:
            if not (isinstance(c, list) and len(c) >= 2 and all(isinstance(v, (int, float)) for v in c[:2])):
                raise PointsError(f"points file {path}: feature {n} has no [longitude, latitude] coordinates")
            row = {"longitude": c[0], "latitude": c[1]}
            row.update({k: props[k] for k in _PROPERTY_COLUMNS if props.get(k) not in (None, "")})
            rows.append(row)
    columns = ["longitude", "latitude"] + [c for c in _PROPERTY_COLUMNS if any(c in r for r in rows)]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return target


def default_head_path(model_ref: str | Path, kind: str) -> Path:
    """``MODEL.head-KIND.safetensors`` beside the model file."""
    if str(model_ref) == "demo":
        raise ModelError("the built-in demo model has no folder of its own: give --out for the head file")
    p = Path(model_ref)
    return p.with_name(f"{p.name.rsplit('.', 1)[0]}.head-{kind}.safetensors")


def _samples(request: FewShotRequest, points_csv: Path):
    """Extract (or reuse) the points' samples: images, aux, taxa, skipped count."""
    from treemap.shards import read_shard

    digest = hashlib.sha256(json.dumps({
        "points": file_sha256(points_csv), "catalog": str(request.catalog), "year": request.year,
        "taxonomy": file_sha256(request.taxonomy) if request.taxonomy else None,
        "aux": request.aux.fingerprint() if request.aux else None}).encode()).hexdigest()[:16]
    work = cache_root() / "fewshot" / digest
    sources = {layer.variable: AuxSource(layer.path, layer.band, layer.scale, layer.offset, layer.units)
               for layer in (request.aux.layers if request.aux else ())}
    options = ExtractOptions(default_year=request.year, taxonomy=str(request.taxonomy) if request.taxonomy else None,
                             auxiliary=sources)
    result = extract_points(points_csv, work, request.catalog, options=options)
    images, aux, taxa = [], [], []
    for shard in result.shards:
        for sample in read_shard(shard):
            images.append(sample.images)
            aux.append(sample.aux_tensor())  # the values predict gives the model at the pixel (same --aux)
            t = sample.text
            taxa.append(Taxon(t["level0"], t["level1_family"], t["level2_genus"], t["level3_species"]))
    return images, aux, taxa, result.skipped


def _points_csv(points: Path) -> Path:
    """The points file as a CSV (GeoJSON converted into the cache)."""
    if points.suffix.lower() in (".geojson", ".json"):
        text = read_text(points, what="points file", kind="GeoJSON", error=PointsError)
        text_digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        return geojson_to_csv(points, cache_root() / "fewshot" / "points" / f"{text_digest}.csv")
    return points


def _fit_seco(request: FewShotRequest, points: Path, out: Path) -> FewShotResult:
    """A head on SeCo-Eco features of the points' cells (:mod:`treemap.fewshot_seco`)."""
    from treemap.embed_seco import SecoEmbedSpec
    from treemap.fewshot_seco import point_features
    from treemap.infer import InferenceSpec
    from treemap.models.seco import load_seco
    from treemap.points import read_points
    from treemap.stac import open_catalog

    if request.aux is not None:
        raise ModelError("--aux feeds GeoTreeCLIP; SeCo-Eco takes no auxiliary layers")
    if str(request.model) == "demo":
        raise ModelError("--encoder seco-eco needs --model: a SeCo-Eco model file (treemap train seco-eco)")
    spec = request.seco or SecoEmbedSpec()
    model, model_key = load_seco(request.model), file_sha256(request.model)
    rows, bad = read_points(_points_csv(points), taxonomy=str(request.taxonomy) if request.taxonomy else None,
                            default_year=request.year)
    device = str(InferenceSpec(request.batch_size, request.device).resolve_device())
    features, used, skipped = point_features(rows, open_catalog(str(request.catalog)), spec, model.to(device),
                                             min(request.batch_size, 256), device)
    for s in [*bad, *skipped]:
        log.warning("point row %d skipped (%s): %s", s.row, s.reason, s.message)
    if not used:
        raise PointsError(f"no usable point in {request.points}: {len(bad)} bad row(s), {len(skipped)} point(s) "
                          f"without a usable chip")
    taxa = []
    for i in used:
        t = dict(rows[i].text)
        taxa.append(Taxon(t["level0"], t["level1_family"], t["level2_genus"], t["level3_species"]))
    head = fit_head(torch.from_numpy(features), taxa, request.kind, model_key)
    recipe = {"encoder": "seco-eco", "chip": spec.chip, "stride": spec.stride, "season": spec.season,
              "index": spec.index, "min_valid": spec.min_valid}
    head = dataclasses.replace(head, encoder=recipe)
    save_head(head, out)
    log.info("%s head on SeCo-Eco features over %d species from %d points; cross-validated top-1 %s", request.kind,
             len(head.species), len(taxa), "n/a" if head.cv_top1 is None else f"{head.cv_top1:.3f}")
    majority = float(np.max(head.counts) / np.sum(head.counts))
    return FewShotResult(out, request.kind, len(taxa), head.species.species, head.counts, len(bad) + len(skipped),
                         head.cv_top1, majority)


def fit_from_points(request: FewShotRequest) -> FewShotResult:
    """Extract, encode, fit and save a head; see the module docstring."""
    from treemap.infer import InferenceSpec
    from treemap.modelset import resolve_model

    if request.kind not in HEAD_KINDS:
        raise ModelError(f"unknown head kind {request.kind!r}: use {' or '.join(HEAD_KINDS)}")
    # inputs first, in the order of the command line, then where the head goes, then the model
    points = check_file(request.points, what="points file", error=PointsError)
    if request.taxonomy is not None:
        check_file(request.taxonomy, what="taxonomy list", kind="CSV", error=PointsError)
    out = Path(request.out) if request.out is not None else default_head_path(request.model, request.kind)
    if not out.parent.is_dir():
        raise ModelError(f"folder {out.parent} for the head file does not exist")
    if request.encoder == "seco-eco":
        return _fit_seco(request, points, out)
    model, _, model_key = resolve_model(request.model)
    points = _points_csv(points)
    images, aux, taxa, skipped = _samples(request, points)
    if not images:
        raise PointsError(f"no usable point in {request.points}: see the extraction report for why")
    device = InferenceSpec(request.batch_size, request.device).resolve_device()
    model = model.to(device).eval()
    embeddings = []
    with torch.inference_mode():
        for s in range(0, len(images), request.batch_size):
            x = torch.stack(images[s:s + request.batch_size]).to(device)
            a = torch.stack(aux[s:s + request.batch_size]).to(device)
            embeddings.append(model.encode_location(x, a).float().cpu())
    emb = torch.cat(embeddings)
    head = fit_head(emb, taxa, request.kind, model_key)
    save_head(head, out)
    log.info("%s head over %d species from %d samples; cross-validated top-1 %s", request.kind, len(head.species),
             len(taxa), "n/a" if head.cv_top1 is None else f"{head.cv_top1:.3f}")
    majority = float(np.max(head.counts) / np.sum(head.counts))
    return FewShotResult(out, request.kind, len(taxa), head.species.species, head.counts, skipped, head.cv_top1,
                         majority)
