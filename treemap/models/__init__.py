"""Models: GeoTreeCLIP (architecture, input normalisation, checkpoints) and the CLIP tokenizer for its text tower.

Modules: ``config`` (sizes, band and auxiliary-variable order), ``normalise`` (batch / fixed input scaling),
``clip`` (CLIP transformer towers), ``geotreeclip`` (the model), ``engine`` (its fast inference path),
``reference`` (the plain official forward, for tests and benchmarks), ``checkpoint`` (model files and cards),
``tokenizer`` (offline CLIP BPE tokenizer).
"""

from treemap.models.checkpoint import ModelCard, demo_model, load_model, random_model, save_model
from treemap.models.config import AUX_VARIABLES, BANDS, GeoTreeCLIPConfig
from treemap.models.geotreeclip import GeoTreeCLIP
from treemap.models.tokenizer import tokenize
from treemap.models import reference  # noqa: E402 (after the model it uses)

__all__ = [
    "AUX_VARIABLES", "BANDS", "GeoTreeCLIP", "GeoTreeCLIPConfig", "ModelCard",
    "demo_model", "load_model", "random_model", "reference", "save_model", "tokenize",
]
