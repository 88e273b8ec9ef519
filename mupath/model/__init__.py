"""The root model and its components: how a timm model (ViT or EfficientNet family) is cut into
shareable pieces and put back together along a path."""
from mupath.model.components import (
    ComponentSpec,
    build_component,
    component_num_params,
    new_component_tensors,
    slot_order,
)
from mupath.model.path_model import PathModel, root_modules
from mupath.model.root import RootSpec, create_root, cut_root, load_weights, root_num_params

__all__ = [
    "RootSpec", "create_root", "load_weights", "cut_root", "root_num_params",
    "ComponentSpec", "build_component", "new_component_tensors", "component_num_params",
    "slot_order", "PathModel", "root_modules",
]
