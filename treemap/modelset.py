"""The model set of a run (model, species list, few-shot head), loaded and checked once, and the per-process caches
of predictors and encoders, so that a worker loads a model once for all the tiles it runs."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from treemap.devices import worker_device
from treemap.errors import ModelError
from treemap.infer import InferenceSpec, PixelEncoder, SpeciesPredictor
from treemap.taxonomy import SpeciesList

log = logging.getLogger("treemap.modelset")


def resolve_model(model_ref: str | Path):
    """``(model, card, model_key)`` for a checkpoint path or ``demo`` (the built-in demo model). The key is a
    digest of the weights file: text-feature caches and few-shot heads are tied to it."""
    from treemap.cache import file_sha256
    from treemap.models.checkpoint import demo_model, load_model

    if str(model_ref) == "demo":
        model, card = demo_model()
        return model, card, hashlib.sha256(("demo:" + card.to_json()).encode()).hexdigest()
    model, card = load_model(model_ref)
    return model, card, file_sha256(model_ref)


def species_key(species: SpeciesList) -> str:
    return hashlib.sha256("\n".join(species.prompts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelRef:
    """Which model, species list and head a run uses: paths (absolute, for workers) or ``demo``."""

    model: str | Path | None
    species: str | Path | None
    head: Path | None
    demo_defaults: bool = False  # the demo catalog: model and species default to the built-in demo ones


@dataclass(frozen=True)
class LoadedModel:
    model: object
    card: object
    species: SpeciesList
    model_key: str
    head: object | None
    head_key: str | None


def load_model_set(ref: ModelRef) -> LoadedModel:
    """The model, species list and head of a run, checked against each other. Outside the demo catalog --model
    and --species (or --head) are required."""
    from treemap.cache import file_sha256
    from treemap.heads import load_head
    from treemap.taxonomy import demo_species_list, load_species_list

    model_ref = ref.model if ref.model is not None else ("demo" if ref.demo_defaults else None)
    if model_ref is None:
        raise ModelError("--model is required outside the demo catalog (e.g. an imported GGT_6M checkpoint)")
    head = None
    if ref.head is not None:
        if ref.species is not None:
            raise ModelError("--head classifies the species it was fitted on: leave out --species")
        head = load_head(ref.head)
        if head.encoder_name != "geotreeclip":
            raise ModelError(f"head {ref.head} was fitted on {head.encoder_name} features, not on a GeoTreeCLIP "
                             f"model's (treemap.predict_seco maps it)")
    species_ref = ref.species if ref.species is not None else ("demo" if ref.demo_defaults else None)
    if species_ref is None and head is None:
        raise ModelError("--species is required: a CSV with level0, level1_family, level2_genus, level3_species")
    model, card, model_key = resolve_model(model_ref)
    if head is not None:
        if head.model_key != model_key:
            raise ModelError(f"head {ref.head} was fitted on another model than {model_ref}")
        if head.embed_dim != model.config.embed_dim:
            raise ModelError(f"head {ref.head} expects {head.embed_dim}-dim embeddings, the model gives "
                             f"{model.config.embed_dim}")
        species = head.species
    else:
        species = demo_species_list() if str(species_ref) == "demo" else load_species_list(species_ref)
    head_key = file_sha256(ref.head) if head is not None else None
    return LoadedModel(model, card, species, model_key, head, head_key)


class PredictorCache:
    """The predictors of this process, so that a worker loads a model (and its text features) once for all the
    tiles it runs, not once per tile. Keyed by model, species, head and inference settings; the two most recent
    are kept (a long-lived cluster may serve runs with other models)."""

    def __init__(self, size: int = 2):
        self._items: OrderedDict[tuple, SpeciesPredictor] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self._offered: dict[tuple, LoadedModel] = {}
        self.loads = 0

    def offer(self, loaded: LoadedModel) -> None:
        """A model set this process has already loaded (the client of a run): used instead of a second load."""
        with self._lock:
            self._offered = {(loaded.model_key, species_key(loaded.species), loaded.head_key): loaded}

    def get(self, ref: ModelRef, keys: tuple[str, str, str | None], spec: InferenceSpec) -> SpeciesPredictor:
        """The predictor for ``ref``; ``keys`` = (model key, species key, head key) as the client computed them."""
        key = (*keys, spec)  # every inference setting (batch, device, compile, patch placement)
        with self._lock:
            predictor = self._items.get(key)
            if predictor is None:
                predictor = self._load(ref, keys, spec, self._offered.get(tuple(keys)))
                self._items[key] = predictor
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            return predictor

    def _load(self, ref: ModelRef, keys, spec: InferenceSpec, loaded: LoadedModel | None) -> SpeciesPredictor:
        from treemap.cache import cache_root

        if loaded is None:
            loaded = load_model_set(ref)
            self.loads += 1
            log.info("model %s loaded in this process", loaded.model_key[:12])
        if (loaded.model_key, species_key(loaded.species)) != tuple(keys[:2]):
            raise ModelError(f"the model or species list this worker reads ({ref.model}, {ref.species or ref.head}) "
                             f"differs from the client's: workers need the same files")
        device_spec = replace(spec, device=worker_device(spec.device))
        return SpeciesPredictor(loaded.model, loaded.species, device_spec, model_key=loaded.model_key,
                                cache_dir=cache_root(), head=loaded.head)


predictors = PredictorCache()


class EncoderCache:
    """The :class:`PixelEncoder` of this process for ``treemap embed`` (no species list, no head), loaded once per
    worker like :data:`predictors`; the client offers the model it has loaded already."""

    def __init__(self):
        self._lock = threading.Lock()
        self._item: tuple[tuple, PixelEncoder] | None = None
        self._offered: dict[str, object] = {}
        self.loads = 0

    def offer(self, model, model_key: str) -> None:
        with self._lock:
            self._offered = {model_key: model}

    def get(self, model_ref: str | Path, model_key: str, spec: InferenceSpec) -> PixelEncoder:
        key = (model_key, spec)
        with self._lock:
            if self._item is not None and self._item[0] == key:
                return self._item[1]
            model = self._offered.get(model_key)
            if model is None:
                model, _, loaded_key = resolve_model(model_ref)
                self.loads += 1
                if loaded_key != model_key:
                    raise ModelError(f"the model this worker reads ({model_ref}) differs from the client's: workers "
                                     f"need the same files")
            encoder = PixelEncoder(model, replace(spec, device=worker_device(spec.device)))
            self._item = (key, encoder)
            return encoder


encoders = EncoderCache()
