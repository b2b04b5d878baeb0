"""TreeMTL layouts and tree-structured branched multi-task models (Flax NNX)."""

from mtajax.models.branched import BranchedModel
from mtajax.models.build import (BACKBONES, backbone_blocks, build_model, coarse_mapping,
                                 fine_layout, resolve_layout)
from mtajax.models.layouts import (Layout, all_shared, coarse_to_fine, enumerate_layouts,
                                   is_independent, parse_layout, sharing_level)
from mtajax.models.pure import Apply, Predict, pure_apply, pure_predict
from mtajax.models.table import (PAPER_TABLE_INDICES, TRAINED_LAYOUTS, LayoutRow, block_params,
                                 format_layout_table, layout_params, layout_table)
from mtajax.models.torch_import import MODEL_CLASSES, from_torch, read_checkpoint

__all__ = [
    "Apply", "BACKBONES", "BranchedModel", "Layout", "LayoutRow", "MODEL_CLASSES", "PAPER_TABLE_INDICES", "Predict",
    "TRAINED_LAYOUTS", "all_shared", "backbone_blocks", "block_params", "build_model", "coarse_mapping",
    "coarse_to_fine", "enumerate_layouts", "fine_layout", "format_layout_table", "from_torch",
    "is_independent", "layout_params", "layout_table", "parse_layout", "pure_apply", "pure_predict",
    "read_checkpoint", "resolve_layout", "sharing_level",
]
