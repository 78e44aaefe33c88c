"""Pretraining and evaluation for treemap's encoders (GeoTreeCLIP contrastive, SeCo-Eco seasonal contrast)."""
