"""Root families: how a timm model family is cut into components and put back together. A family is
picked from the timm model name; a store records only the name, so its family is always rebuilt."""
from __future__ import annotations

import functools
from collections.abc import Iterable

from mupath.errors import ConfigError
from mupath.model.families.base import Part, RootFamily
from mupath.model.families.efficientnet import EFFICIENTNET, EfficientNetFamily
from mupath.model.families.vit import VIT, ViTFamily, resample_pos_embed

FAMILIES: tuple[RootFamily, ...] = (VIT, EFFICIENTNET)
#: timm module that holds each family's models
_MODULES = {"vit": "vision_transformer", "efficientnet": "efficientnet"}


@functools.lru_cache(maxsize=64)
def family_of(name: str) -> RootFamily:
    """The family of timm model `name` (a `.tag` suffix is ignored); ConfigError when none fits."""
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"unknown timm model '{name}'; pick a vit_* or tf_efficientnet_lite* model")
    for family in FAMILIES:
        if base in timm.list_models(module=_MODULES[family.name]):
            return family
    raise ConfigError(f"root '{name}' is not of a supported family (timm vision_transformer or "
                      "efficientnet); use a vit_* name or tf_efficientnet_lite0")


def family_for_slots(slots: Iterable[str]) -> RootFamily:
    """The family whose embedding slots a path has (paths carry no family name)."""
    slots = set(slots)
    for family in FAMILIES:
        if family.embed_slots[0] in slots:
            return family
    raise ValueError(f"no root family has the slots {sorted(slots)}")


__all__ = ["FAMILIES", "Part", "RootFamily", "VIT", "EFFICIENTNET", "ViTFamily", "EfficientNetFamily",
           "family_of", "family_for_slots", "resample_pos_embed"]
