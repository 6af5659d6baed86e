"""The released SimCLRv2 models by name, where they are, and where they are cached (torch-free).

``official:<model>`` is a pretrained model with its linear-eval head (a contrastive model whose
monitor is the 1000-class linear classifier); ``official:<model>/finetuned_1pct``,
``/finetuned_10pct`` and ``/finetuned_100pct`` are the classifiers fine-tuned on that share of the
ImageNet labels. ``<model>`` is one of the 13 released encoders.

The release's layout, from the official README (google-research/simclr, README.md "Pre-trained
models for SimCLRv2") and the code that reads it:

- one bucket, ``gs://simclr-checkpoints``, served over HTTPS at
  ``https://storage.googleapis.com/simclr-checkpoints``; its folder ``simclrv2/`` holds
  ``pretrained/``, ``finetuned_1pct/``, ``finetuned_10pct/``, ``finetuned_100pct/`` (and
  ``supervised/``, ``distill_1pct/``, ``distill_10pct/``, not offered here), each with one folder per
  model named as the encoders are (``r152_3x_sk1``);
- each model folder is a TF1 checkpoint folder: a ``checkpoint`` state file whose
  ``model_checkpoint_path`` names ``model.ckpt-<step>``, that prefix's ``.index`` and its
  ``.data-0000i-of-0000n`` shards (beside ``graph.pbtxt``, ``.meta`` and a ``hub/`` module, which
  the import does not need). The pretrained folders are at step 250228 (the files that
  Separius/SimCLRv2-Pytorch's ``download.py`` fetches); the step of the others is read from their
  ``checkpoint`` file, never assumed, and the shard count from the ``.index`` file.
- the TF1 names are ``base_model/...``, ``head_contrastive/...``, ``head_supervised/...``, with the
  EMA copies under ``ema_model/`` (SPEC "Official checkpoints"); the import takes the trained weights.

The paper's ImageNet top-1 of each (Table 1; the README's table, also in SPEC) is listed by
``simclrv2 models --official``; the parameter counts are the encoders' (SPEC, from the official code).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError

PREFIX = "official:"
DEFAULT_URL = "https://storage.googleapis.com/simclr-checkpoints"
RELEASE_FOLDER = "simclrv2"


@dataclass(frozen=True)
class Paper:
    """An encoder's size and the paper's ImageNet top-1 (%) for it."""

    params_m: float
    linear: float
    finetuned_1pct: float
    finetuned_10pct: float
    finetuned_100pct: float


# The 13 released encoders (SPEC's table = the official README's Table 1).
MODELS: dict[str, Paper] = {
    "r50_1x_sk0": Paper(23.5, 71.7, 57.9, 68.4, 76.3),
    "r50_1x_sk1": Paper(35.2, 74.6, 64.5, 72.1, 78.7),
    "r50_2x_sk0": Paper(93.9, 75.6, 66.3, 73.9, 79.1),
    "r50_2x_sk1": Paper(140.3, 77.7, 70.6, 77.0, 81.3),
    "r101_1x_sk0": Paper(42.5, 73.6, 62.1, 71.4, 78.2),
    "r101_1x_sk1": Paper(64.7, 76.3, 68.3, 75.1, 80.6),
    "r101_2x_sk0": Paper(169.8, 77.0, 69.1, 75.8, 80.7),
    "r101_2x_sk1": Paper(257.1, 79.0, 73.2, 78.8, 82.4),
    "r152_1x_sk0": Paper(58.1, 74.5, 64.0, 73.0, 79.3),
    "r152_1x_sk1": Paper(88.9, 77.2, 70.0, 76.5, 81.3),
    "r152_2x_sk0": Paper(232.3, 77.4, 70.2, 76.6, 81.1),
    "r152_2x_sk1": Paper(353.4, 79.4, 74.2, 79.4, 82.9),
    "r152_3x_sk1": Paper(794.7, 79.8, 74.9, 80.1, 83.1),
}


@dataclass(frozen=True)
class Variant:
    """One folder of the release: which checkpoints, and the model the import builds from them."""

    suffix: str  # what follows '/' in the name ('' for the pretrained models)
    folder: str  # the release's folder
    head_layer: Optional[int]  # None: a contrastive model; j: a classifier on projection layer j
    what: str


# Head layers: 1 for the 1%/10% fine-tuned models, 0 for 100% (see convert.tf_import's docstring).
VARIANTS: dict[str, Variant] = {v.suffix: v for v in (
    Variant("", "pretrained", None, "pretrained, with its linear-eval head"),
    Variant("finetuned_1pct", "finetuned_1pct", 1, "fine-tuned on 1% of the ImageNet labels"),
    Variant("finetuned_10pct", "finetuned_10pct", 1, "fine-tuned on 10% of the ImageNet labels"),
    Variant("finetuned_100pct", "finetuned_100pct", 0, "fine-tuned on all the ImageNet labels"),
)}


@dataclass(frozen=True)
class OfficialName:
    """A parsed ``official:<model>[/<variant>]``."""

    model: str
    variant: Variant

    @property
    def spec(self) -> str:
        return PREFIX + self.model + (f"/{self.variant.suffix}" if self.variant.suffix else "")

    @property
    def release_path(self) -> str:
        """The model's folder below the release root, e.g. ``simclrv2/pretrained/r50_1x_sk1``."""
        return f"{RELEASE_FOLDER}/{self.variant.folder}/{self.model}"

    @property
    def cache_dir(self) -> Path:
        return home() / "official" / self.variant.folder / self.model

    @property
    def cached(self) -> Path:
        """The converted simclrv2 checkpoint."""
        return self.cache_dir / "model.pt"

    def source(self, base: str | None = None) -> str:
        """The URL (or local folder) of the model's release folder."""
        return f"{base or base_url()}/{self.release_path}"


def is_official(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def all_names() -> list[str]:
    """Every name, the pretrained model first, then its fine-tuned classifiers."""
    return [OfficialName(m, v).spec for m in MODELS for v in VARIANTS.values()]


def parse_official(spec: str) -> OfficialName:
    """``"official:r50_1x_sk1/finetuned_1pct"`` -> its model and variant; one-line errors."""
    if not is_official(spec):
        raise UserError(f"{spec!r} is not an official model name: use official:<model>, e.g. official:r50_1x_sk1")
    model, _, suffix = spec[len(PREFIX):].partition("/")
    if model not in MODELS:
        raise UserError(f"{spec} names no released model: use one of {', '.join(MODELS)} "
                        "(`simclrv2 models --official` lists every name)")
    if suffix not in VARIANTS:
        choices = ", ".join(f"/{s}" for s in VARIANTS if s)
        raise UserError(f"{spec}: {suffix!r} is not a released variant: use {PREFIX}{model} (pretrained) or "
                        f"add one of {choices}")
    return OfficialName(model, VARIANTS[suffix])


# -- The environment (as TORCH_HOME and HF_HOME) ---------------------------------------------------

def home() -> Path:
    """``$SIMCLRV2_HOME``, else ``$XDG_CACHE_HOME/simclrv2``, else ``~/.cache/simclrv2``."""
    if os.environ.get("SIMCLRV2_HOME"):
        return Path(os.environ["SIMCLRV2_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "simclrv2"


def base_url() -> str:
    """``$SIMCLRV2_OFFICIAL_URL`` (the URL or local folder holding the release's ``simclrv2/``)."""
    return (os.environ.get("SIMCLRV2_OFFICIAL_URL") or DEFAULT_URL).rstrip("/")


def offline() -> bool:
    """``SIMCLRV2_OFFLINE=1``: use only the cache."""
    return os.environ.get("SIMCLRV2_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def local_folder(base: str) -> Optional[Path]:
    """The folder a ``file://`` URL or plain path names; None for a network URL."""
    if base.startswith("file://"):
        return Path(base[len("file://"):])
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", base):
        return None
    return Path(base).expanduser()


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet classes in the official label order (``imagenet_classes.txt``).

    The names are the CLIP authors' readable ones (openai/CLIP's ImageNet notebook, as in
    mlfoundations/open_clip ``IMAGENET_CLASSNAMES``), in the order of the ILSVRC-2012 label indices
    (281 is "tabby cat"). Two of theirs repeat; here they follow WordNet: 744 (n04008634
    "projectile, missile") is "projectile", 836 (n04355933 "sunglass") is "sunglass".
    """
    text = (Path(__file__).parent / "imagenet_classes.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]
