"""SeCo-Eco: a ResNet-50 over 9 Sentinel-2 channels, pretrained with seasonal contrast (the SSL4Eco recipe).

* Backbone (:class:`SecoResNet`): ResNet-50 (bottleneck blocks 3-4-6-3, stride on the 3x3 convolution) written here,
  with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...), so a
  torchvision-layout state dict loads into it. It has no classifier: ``forward`` returns the globally pooled feature
  (2048-d at full size). Input channel count, stage widths and depths come from :class:`SecoConfig` (tiny configs
  for tests).
* Input (:func:`to_input`): seasonal composites (reflectance, 10 bands in ``treemap.phenology.BAND_ORDER``) ->
  9 channels ``B02 B03 B04 B05 B06 B07 B08 B8A NDVI`` (NDVI from B08 and B04), each scaled by the per-channel mean
  and standard deviation kept with the model (:class:`ChannelStats`); missing values become 0 after scaling (the
  channel mean).
* SeCo head (:class:`SecoModel`): one MoCo v2 projection (Linear-ReLU-Linear) per embedding subspace.
  Interpretation of the subspaces used here (SeCo: one subspace invariant to every augmentation plus one per
  augmentation that is sensitive to that augmentation and invariant to the others; SSL4Eco's augmentation is the
  change of phenological season):

  - ``"agnostic"``: season-agnostic. Two images of one location taken in two different seasons are positives.
  - ``"season"``: season-specific, one subspace for the one seasonal augmentation. Two differently augmented
    (flips, rotations, noise) copies of the *same* season image are positives; the other season's image of the same
    location is an extra negative, so this subspace has to keep what distinguishes seasons.

  ``SecoConfig.subspaces`` names the subspaces; every name after the first is treated as a season-specific one.
  Downstream tasks use the backbone feature, not the projections.
* Files: safetensors holding ``model.state_dict()`` (``backbone.*`` in torchvision names, ``heads.<subspace>.*``)
  and JSON metadata under ``"treemap_seco"`` (config, channel order, statistics, notes).
  :func:`import_resnet50` reads a torchvision-layout ResNet-50 (``.pth``/``.pt`` with ``torch.load(weights_only=True)``
  only, or ``.safetensors``), strips the wrappers' prefixes and checks every name and shape.

Every failure to read a model raises ``ModelError`` with one line.

The code is in :mod:`treemap.models.seco_input` (input channels and statistics), :mod:`treemap.models.seco_net`
(config, backbone, projection heads) and :mod:`treemap.models.seco_files` (model files, torchvision import); every
name is importable from here.
"""

from treemap.models.seco_files import (IGNORED_ROOTS, PREFIXES, SECO_KEY, SECO_VERSION, SecoCard, backbone_state,
                                       import_resnet50, load_seco, save_seco)
from treemap.models.seco_input import CHANNELS, INPUT_BANDS, ChannelStats, compute_stats, raw_channels, to_input
from treemap.models.seco_net import (Bottleneck, SecoConfig, SecoModel, SecoResNet, parameter_count, projection_head,
                                     random_seco)

__all__ = [
    "CHANNELS", "ChannelStats", "INPUT_BANDS", "SecoCard", "SecoConfig", "SecoModel", "SecoResNet",
    "backbone_state", "compute_stats", "import_resnet50", "load_seco", "parameter_count", "random_seco",
    "raw_channels", "save_seco", "to_input",
    "Bottleneck", "IGNORED_ROOTS", "PREFIXES", "SECO_KEY", "SECO_VERSION", "projection_head",
]
