"""The options of each training stage: the config dataclasses of ``pretrain``, ``finetune``,
``linear-eval`` and ``distill`` (``StageConfig`` plus the stage's own options).

Torch-free, so that the command line's ``--help`` (its flags come from these classes) never imports
torch; each stage module imports its config from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..config import RECALIBRATION_IMAGES, Changed, StageConfig, defaults, option
from ..errors import UserError
from ..names import parse_model_name

if TYPE_CHECKING:
    from ..augment import AugmentConfig


def recalibrate_bn_option(whose: str):
    """``--recalibrate-bn`` of fine-tuning and distillation (``models.batchnorm.recalibrate``)."""
    return option(0, f"after the last step, re-estimate {whose} batch-norm statistics on N training images, "
                  f"labeled or not, with the training augmentation (PreciseBN; e.g. {RECALIBRATION_IMAGES}; 0: off, "
                  "the default: it rescues runs too short for the moving averages, and cost 0-2 points on full ones)",
                  minimum=0)


@dataclass
class PretrainConfig(StageConfig):
    """Contrastive pretraining. Defaults follow the paper's SimCLRv2 recipe (SPEC) except the
    batch size, epochs and warmup (512, 100 and 10 epochs, the official code's defaults; the
    paper used 4096, 800 and 5% of the epochs: see configs/imagenet_pretrain.yaml)."""

    model: str = option("r50_1x_sk1", "encoder, r{depth}_{width}x_sk{0|1} (see `simclrv2 models`)")
    init: str = option("scratch", "continue pretraining from this contrastive checkpoint (pretrain, import-tf, or "
                       "an official name such as official:r50_1x_sk1) instead of random weights ('scratch'); "
                       "its encoder and projection head, so --model and the head options come from it",
                       key="from", path=True)
    temperature: float = option(0.1, "NT-Xent temperature", minimum=0, exclusive_minimum=True)
    head_layers: int = option(3, "projection head layers", minimum=1)
    head_hidden_dim: Optional[int] = option(None, "projection head width (default: the encoder's)", minimum=1)
    head_out_dim: int = option(128, "projection output dimension", minimum=1)
    color_strength: Optional[float] = option(None, "colour jitter strength s (default: 1.0, or 0.5 at <= 32 px)",
                                             minimum=0)
    blur: str = option("auto", "Gaussian blur with p 0.5 (auto: on above 32 px)", choices=("auto", "on", "off"))
    memory: int = option(0, "memory-queue negatives from a momentum encoder (paper: 65536; 0: off)", minimum=0)
    memory_momentum: float = option(0.999, "EMA decay of the momentum encoder", minimum=0, maximum=1)
    linear_monitor: bool = option(True, "train a linear classifier on stop-gradient features when the "
                                  "images have labels (the official 'linear eval while pretraining')")
    knn_monitor: bool = option(True, "kNN accuracy on the held-out images after every --knn-every epochs "
                               "(a bank of at most 100,000 training images, at most 20,000 queries)")
    knn_every: int = option(1, "epochs between kNN monitor evaluations", minimum=1)
    knn_k: int = option(20, "neighbours of the kNN monitor", minimum=1)

    def check(self) -> None:
        parse_model_name(self.model)

    def augment_config(self) -> AugmentConfig:
        from ..augment import AugmentConfig  # imports torch

        base = AugmentConfig.pretrain(self.image_size)
        blur_p = {"on": 0.5, "off": 0.0}.get(self.blur, base.blur_p)
        return base.replace(color_strength=self.color_strength, blur_p=blur_p,
                            crop_area=(self.crop_min_area, 1.0), flip=self.flip)


@dataclass
@defaults(
    epochs=Changed(None, "training epochs (default: the paper's, 60 when under 5% of the images are "
                   "labeled, as at 1%, else 30, as at 10% and 100%)", Optional[int]),
    batch_size=Changed(1024, "global batch size, capped at the number of labeled images"),
    lr=Changed(None, "base learning rate, scaled by --lr-scaling (default: 0.005 for 1x sk0 encoders such "
               "as r50_1x_sk0, 0.002 for wider or SK ones)", Optional[float]),
    warmup_epochs=0.0, weight_decay=0.0,
    image_size=Changed(None, "side of the training images (default: the pretraining run's, else 224)",
                       Optional[int]),
)
class FinetuneConfig(StageConfig):
    """Fine-tuning (or the supervised baseline with --from scratch). Defaults are the paper's
    1%-label recipe (SPEC); the batch is capped at the number of labeled images."""

    init: str = option("", "pretrained checkpoint to start from (pretrain, import-tf or a classifier), "
                       "or 'scratch' for the supervised baseline", required=True, key="from", path=True)
    model: Optional[str] = option(None, "encoder; needed with --from scratch, else taken from the checkpoint")
    labels: str = option("all", "labeled images used: 'all', a percentage ('1%'), a count per class "
                         "('5/class'), a subset file (e.g. the official 1percent.txt or `select`'s "
                         "selected.txt), a .csv of path,label rows or a Label Studio export (labels from "
                         "annotation)", path=True)
    label_conflicts: str = option("error", "with a Label Studio export: annotators who disagree on an image are "
                                  "an 'error' (naming it), or settled by 'majority' or the 'latest'",
                                  choices=("error", "majority", "latest"))
    head_layer: Optional[str] = option(None, "classify hiddens[j]: 0 = encoder output, 1 = after the first "
                                       "head layer, ...; 'auto' tries each on held-out labeled images "
                                       "(default: the paper's, 1 for a label subset, 0 for --labels all)")
    head_search_fraction: float = option(0.3, "share of the labeled images scoring --head-layer auto",
                                         minimum=0.05, maximum=0.9)
    eval_every: int = option(0, "evaluate on the held-out images every N epochs (0: at the end only)",
                             minimum=0)
    recalibrate_bn: int = recalibrate_bn_option("the")

    def check(self) -> None:
        if self.model:
            parse_model_name(self.model)
        if self.init == "scratch" and not self.model:
            raise UserError("--from scratch needs --model (e.g. --model r50_1x_sk0)")
        if self.head_layer not in (None, "auto"):
            try:
                if int(self.head_layer) < 0:
                    raise ValueError
            except ValueError:
                raise UserError(f"--head-layer {self.head_layer!r} is not a layer number (0, 1, 2) or 'auto'") from None


@dataclass
@defaults(
    epochs=90, batch_size=Changed(4096, "global batch size, capped at the number of labeled images"),
    optimizer="sgd", lr_scaling="linear", warmup_epochs=0.0,
    weight_decay=Changed(1e-6, "weight decay of the linear layer"),
    image_size=Changed(None, "side of the images (default: the checkpoint's run, else 224)", Optional[int]),
    global_bn=Changed(False, "unused: the frozen network's BN statistics do not change"),
)
class LinearEvalConfig(StageConfig):
    """Linear evaluation on frozen features (SPEC: SGD with Nesterov momentum, lr 0.1 * B / 256,
    weight decay 1e-6, 90 epochs; batch 4096, capped at the number of labeled images)."""

    init: str = option("", "checkpoint whose features are evaluated (pretrain, import-tf, fine-tune or "
                       "distill)", required=True, key="from", path=True)
    labels: str = option("all", "labeled images used: 'all', a percentage, a count per class or a subset file")
    head_layer: int = option(0, "classify hiddens[j] (0: the encoder output)", minimum=0)


@dataclass
@defaults(
    epochs=400, warmup_epochs=0.0,
    image_size=Changed(None, "side of the training images (default: the teacher's)", Optional[int]),
)
class DistillConfig(StageConfig):
    """Distillation of a fine-tuned teacher into a student on unlabeled images. Defaults follow
    SPEC: the pretraining optimizer settings (LARS, lr 0.1 * sqrt(B), weight decay 1e-4),
    crop + flip, 400 epochs (the paper's; the batch here is the official code's default 512).
    SPEC states no warmup; none by default, 5% of the epochs in the ImageNet presets."""

    teacher: str = option("", "fine-tuned classifier checkpoint that teaches", required=True, path=True)
    student: Optional[str] = option(None, "student encoder (default: the teacher's, i.e. self-distillation)")
    student_from: str = option("scratch", "initialise the student from random weights ('scratch') or from "
                               "a checkpoint's encoder (pretrain, import-tf, fine-tune)", path=True)
    temperature: Optional[float] = option(None, "distillation temperature tau (default: 0.1 for "
                                          "self-distillation, 1.0 for another student)", minimum=0,
                                          exclusive_minimum=True)
    alpha: float = option(1.0, "weight of the distillation loss; 1 - alpha goes to cross-entropy on "
                          "--labels", minimum=0, maximum=1)
    labels: Optional[str] = option(None, "labeled images for --alpha < 1: 'all', '1%', '5/class', a subset "
                                  "file or a .csv of path,label rows", path=True)
    recalibrate_bn: int = recalibrate_bn_option("the student's")

    def check(self) -> None:
        if self.student:
            parse_model_name(self.student)
        if self.alpha < 1 and not self.labels:
            raise UserError(f"--alpha {self.alpha} mixes in labels: pass --labels (e.g. --labels 1%) or "
                            "use --alpha 1")
