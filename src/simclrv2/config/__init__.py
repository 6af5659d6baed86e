"""Typed, validated configuration shared by the command line, YAML files and the Python API.

- ``options``: the machinery. Settings are described once, as dataclass fields with help text and
  limits (``option``); the flags, the YAML reader, ``--set`` overrides and the one-line errors come
  from that description.
- ``groups``: the option groups every training stage composes (``StageConfig``).

The names below are the package's API (``from simclrv2.config import from_mapping``).
"""

from .groups import (RECALIBRATION_IMAGES, DataOptions, OptimOptions, RecipeOptions, RunOptions, RuntimeOptions,
                     StageConfig, resumable_changes, with_absolute_paths)
from .options import (MAX_IMAGE_SIZE, Changed, add_arguments, apply_overrides, defaults, flag_of, from_args,
                      from_mapping, image_side, load_yaml, option, parse_override, positive_int, save_yaml, to_dict,
                      unknown_key_error, user_key, validate)

__all__ = [
    "MAX_IMAGE_SIZE", "RECALIBRATION_IMAGES", "Changed", "DataOptions", "OptimOptions", "RecipeOptions", "RunOptions",
    "RuntimeOptions", "StageConfig", "add_arguments", "apply_overrides", "defaults", "flag_of", "from_args",
    "from_mapping", "image_side", "load_yaml", "option", "parse_override", "positive_int", "resumable_changes",
    "save_yaml", "to_dict", "unknown_key_error", "user_key", "validate", "with_absolute_paths",
]
