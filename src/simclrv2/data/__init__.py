"""Data in: decode image files robustly, open image sources, choose label subsets."""

from ..names import IMAGE_EXTENSIONS
from .images import BadImage, load_rgb
from .sources import ImageSet, open_images
from .subsets import (
    LabelSpec,
    holdout_split,
    parse_label_spec,
    read_subset_file,
    select_labeled,
    write_index_list,
)

__all__ = [
    "IMAGE_EXTENSIONS", "BadImage", "ImageSet", "LabelSpec", "holdout_split", "load_rgb",
    "open_images", "parse_label_spec", "read_subset_file", "select_labeled", "write_index_list",
]
