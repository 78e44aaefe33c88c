"""Models: GeoTreeCLIP (architecture, input normalisation, checkpoints) and the CLIP tokenizer for its text tower.

Modules: ``config`` (sizes, band and auxiliary-variable order), ``normalise`` (batch / fixed input scaling),
``clip`` (CLIP transformer towers), ``geotreeclip`` (the model), ``checkpoint`` (model files and cards),
``tokenizer`` (offline CLIP BPE tokenizer).
"""

from treemap.models.checkpoint import ModelCard, demo_model, load_model, random_model, save_model
from treemap.models.config import AUX_VARIABLES, BANDS, GeoTreeCLIPConfig
from treemap.models.geotreeclip import GeoTreeCLIP
from treemap.models.tokenizer import tokenize

__all__ = [
    "AUX_VARIABLES", "BANDS", "GeoTreeCLIP", "GeoTreeCLIPConfig", "ModelCard",
    "demo_model", "load_model", "random_model", "save_model", "tokenize",
]
