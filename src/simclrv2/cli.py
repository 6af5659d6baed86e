"""The ``simclrv2`` command line: one sub-command per task, one-line errors with exit code 2.

Training sub-commands take their flags from the stage's config dataclass (``simclrv2.config``),
so ``--help`` lists every setting with its default, and ``--config FILE.yaml`` plus
``--set key=value`` give the same settings from a file.

Every command's flags are declared here, and nothing on the way to ``--help`` imports torch
(1.5 s): a command's function is named ``"module:function"`` and imported once the arguments are
parsed, and descriptions that are module docstrings are read from the module's source file.
"""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

from .config import image_side, positive_int
from .errors import UserError
from .names import DEFAULT_METHOD, FORMATS, IMAGE_EXTENSIONS, METHODS, PIPELINE_PRESETS

log = logging.getLogger("simclrv2")

EXIT_USER_ERROR = 2


def module_doc(module: str) -> str:
    """The docstring of ``simclrv2.<module>`` (e.g. ``"selection.command"``), read from its source
    file: importing the module would import torch."""
    source = Path(__file__).parent.joinpath(*module.split(".")).with_suffix(".py")
    return ast.get_docstring(ast.parse(source.read_text(encoding="utf-8")), clean=False)


def command_function(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function that runs the parsed command: ``args.func``, imported now when it is named
    ``"module:function"``."""
    if not isinstance(args.func, str):
        return args.func
    module, name = args.func.split(":")
    return getattr(importlib.import_module(module), name)


def _run_stage(stage) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from .config import from_args
        from .distributed import is_main_process
        from .engine import run

        from .engine.summary import summary_text

        cfg = from_args(stage.config, args, args.config, args.set)
        result = run(cfg, stage.build)
        if is_main_process():
            print(summary_text({"stage": stage.name, **result}, cfg.out))
        return 0

    return handler


def add_stage_command(sub, stage) -> argparse.ArgumentParser:
    """A training sub-command whose flags come from the stage's config dataclass."""
    from .config import add_arguments

    doc = (stage.config.__doc__ or "").strip()
    p = sub.add_parser(stage.command, help=stage.help, description=f"{stage.help}. {doc}")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of --config (repeatable)")
    p.add_argument("--resume", nargs="?", const="auto", default=argparse.SUPPRESS, metavar="CKPT",
                   help="continue an interrupted run: from CKPT, or without a value from the latest good "
                        "checkpoint in --out")
    add_arguments(p, stage.config)
    p.set_defaults(func=_run_stage(stage))
    return p


def build_parser() -> argparse.ArgumentParser:
    from .stages import stages

    parser = argparse.ArgumentParser(
        prog="simclrv2",
        description="SimCLRv2: contrastive pretraining, fine-tuning from few labels, distillation. "
                    "Errors print one line and exit with code 2; a run stopped by SIGTERM/SIGINT "
                    "writes a checkpoint and exits with 128 + the signal number (143 / 130).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("models", help="list the registered encoders and their parameter counts",
                       description=module_doc("commands.models"))
    p.add_argument("--official", action="store_true", help="list the released SimCLRv2 weights by name "
                   "(official:r50_1x_sk1, .../finetuned_1pct), their sizes and the paper's ImageNet top-1")
    p.set_defaults(func="simclrv2.commands.models:cmd_models")
    p = sub.add_parser("download", help="fetch official SimCLRv2 weights into the cache, convert them once, "
                       "print the file", description=module_doc("commands.download"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="official:<model> or official:<model>/finetuned_{1,10,100}pct, e.g. official:r152_3x_sk1")
    p.set_defaults(func="simclrv2.commands.download:cmd_download")
    for stage in stages():
        add_stage_command(sub, stage)
    add_views_command(sub)
    add_classifier_commands(sub)
    add_feature_commands(sub)
    add_pipeline_commands(sub)
    add_convert_commands(sub)
    return parser


def add_views_command(sub) -> None:
    """``views``: the two training views of a few images, drawn as pretraining draws them."""
    from .commands.views import view_options  # torch-free: it imports torch only when it runs
    from .config import add_arguments

    p = sub.add_parser("views", help="the two augmented views pretraining draws of N images, as PNGs and a "
                       "contact sheet", description=module_doc("commands.views"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for <i>_a.png, <i>_b.png, "
                   "contact_sheet.png and views.csv (new or empty)")
    p.add_argument("--n", type=positive_int, default=16, help="images whose views are drawn (default 16)")
    p.add_argument("--batch-size", dest="views_batch", type=positive_int, default=None, metavar="B",
                   help="draw them as a step of B images does and keep the first --n: the views of a run "
                        "with --batch-size B (random numbers are drawn per batch; default: --n)")
    p.add_argument("--overwrite", action="store_true", help="replace the views in a non-empty --out")
    add_arguments(p, view_options())
    p.set_defaults(func="simclrv2.commands.views:cmd_views")


def add_classifier_commands(sub) -> None:
    """``evaluate`` and ``predict``: a fine-tuned or distilled classifier on labeled or new images."""
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion matrix of a classifier",
                       description=module_doc("commands.evaluate"))
    p.add_argument("--model", required=True, metavar="CKPT", help="fine-tuned classifier or distilled student (a file, or an official name such as official:r50_1x_sk1/finetuned_1pct)")
    p.add_argument("--data", default=None, help="labeled images (folder, list or 'digits'); default: the "
                                                "images the checkpoint's run held out")
    p.add_argument("--out", default=None, metavar="DIR", help="write evaluation.json and evaluation.txt here")
    p.add_argument("--image-size", type=image_side, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="bf16 autocast or fp32 (auto: as training: bf16 where the device computes it natively)")
    p.set_defaults(func="simclrv2.commands.evaluate:cmd_evaluate")

    p = sub.add_parser("predict", help="class and probability for each image (CSV)", description=module_doc("commands.predict"))
    p.add_argument("--model", required=True, metavar="CKPT", help="fine-tuned classifier or distilled student (a file, or an official name such as official:r50_1x_sk1/finetuned_1pct)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help=f"image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                   "or one folder")
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write the CSV here instead of printing it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never the model or an image)")
    p.add_argument("--top-k", type=positive_int, default=1, help="classes per image (default 1)")
    p.add_argument("--image-size", type=image_side, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="decoding processes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="bf16 autocast or fp32 (auto: as training: bf16 where the device computes it natively)")
    p.set_defaults(func="simclrv2.commands.predict:cmd_predict")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The flags ``embed`` and ``select`` share: which network, which layer, how to run it."""
    p.add_argument("--from", dest="model", required=True, metavar="CKPT",
                   help="any simclrv2 checkpoint: pretrained, fine-tuned, distilled or imported (model.pt), or an "
                        "official name such as official:r50_1x_sk1")
    p.add_argument("--data", required=True, metavar="IMAGES",
                   help="a folder of images, a .csv/.tsv list of paths, or 'digits'")
    p.add_argument("--layer", type=int, default=0, metavar="J",
                   help="hiddens[J] of the projection head: 0 = the encoder output (default), 1 = the first "
                        "head layer's output")
    p.add_argument("--image-size", type=image_side, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1, at most 8)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")


def add_feature_commands(sub) -> None:
    """``embed`` and ``select``: the features of any checkpoint, and the images to label chosen from them."""
    p = sub.add_parser("embed", help="the features of every image (features.npy + index.csv)",
                       description=module_doc("commands.embed"), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for features.npy and index.csv")
    p.set_defaults(func="simclrv2.commands.embed:cmd_embed")

    p = sub.add_parser("select", help="which images to label: chosen from the pretrained features, no labels used",
                       description=module_doc("commands.select"),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--budget", required=True, metavar="N|P%",
                   help="how many images to choose: a count (40) or a percentage of the candidates (10%%)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for selected.txt, selection.csv and the figures")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"how to choose (default {DEFAULT_METHOD}; see `simclrv2.selection.methods`)")
    p.add_argument("--labeled", default=None, metavar="FILE",
                   help="images labeled already (a selected.txt, a path,label CSV or a Label Studio export): never chosen again, "
                        "and the new ones go where they are not (the next round of labeling)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same selection)")
    p.add_argument("--holdout", type=float, default=0.0, metavar="F",
                   help="the --holdout your fine-tuning will use (with the same --seed): those images are never chosen")
    p.add_argument("--no-figures", action="store_true", help="skip the contact sheet and the t-SNE map")
    add_label_studio_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a selection already in --out (its files are replaced once the new ones are written)")
    p.set_defaults(func="simclrv2.commands.select:cmd_select")

    p = sub.add_parser("pull-annotations", help="a Label Studio project's annotations, exported to a file",
                       description=module_doc("commands.label_studio"))
    p.add_argument("--label-studio-url", required=True, metavar="URL", help="the server, e.g. http://localhost:8080 "
                   "(API key from LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", default="simclrv2", help="the project's title (default simclrv2)")
    p.add_argument("--out", required=True, metavar="FILE", help="export.json (JSON export) or export.csv (CSV)")
    p.set_defaults(func="simclrv2.commands.label_studio:cmd_pull")


def add_label_studio_arguments(p: argparse.ArgumentParser) -> None:
    """``select``'s Label Studio flags: tasks.json and labeling_config.xml, pre-annotations, the server."""
    p.add_argument("--label-studio", action="store_true",
                   help="also write tasks.json and labeling_config.xml for Label Studio (see the README)")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="the class names to choose from in Label Studio (default: --classifier's, the "
                        "labeled export's or the data's class folders)")
    p.add_argument("--classifier", default=None, metavar="CKPT",
                   help="a fine-tuned model: its guess for each task is a pre-annotation, least sure first")
    p.add_argument("--document-root", default=None, metavar="DIR",
                   help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: that variable, else "
                        "the folder above the data)")
    p.add_argument("--label-studio-url", default=None, metavar="URL",
                   help="also create or extend the project on this server (API key from LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", default="simclrv2", help="the Label Studio project's title (default simclrv2)")


def add_pipeline_commands(sub) -> None:
    """``run`` and ``demo``: the whole method as one job; ``report``: the report of a run folder."""
    p = sub.add_parser("run", help="the whole method: pretrain, fine-tune, baseline, distill, evaluate, report",
                       description=module_doc("commands.run"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML file, or a preset name: "
                   + ", ".join(PIPELINE_PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pretrain.epochs=10 (repeatable)")
    p.set_defaults(func="simclrv2.commands.run:cmd_run")

    p = sub.add_parser("demo", help="the whole method on scikit-learn digits in a few minutes on a CPU",
                       description="Runs the 'demo' preset: SimCLRv2 on scikit-learn's bundled digits (no "
                       "download), then prints the results table and writes the report.")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func="simclrv2.commands.run:cmd_demo")

    p = sub.add_parser("report", help="report.md and its figures for a run folder (a pipeline's or one stage's)",
                       description=module_doc("commands.report"))
    p.add_argument("run", metavar="RUN_DIR", help="the out folder of `simclrv2 run`/`demo`, or of one training command")
    p.set_defaults(func="simclrv2.commands.report:cmd_report")


IMPORT_DESCRIPTION = """\
Convert an official SimCLRv2 TensorFlow checkpoint (google-research/simclr, TF1 or TF2) into a
simclrv2 checkpoint. Every tensor of the checkpoint is either mapped into the model or reported
as ignored (optimizer state, step counters, unused EMA copies, ...); anything else is an error.
TensorFlow is not needed, except for rare files the built-in reader leaves to it
(pip install simclrv2[tf]).

Without --head-layer the result is a contrastive model (encoder + projection head; the
pretrained checkpoints' linear-eval head becomes its monitor), ready for fine-tuning. With
--head-layer J it is a classifier on projection layer J, for fine-tuned checkpoints: the
released finetuned_1pct and finetuned_10pct models use J=1, finetuned_100pct, distilled and
supervised models J=0.

examples:
  simclrv2 import-tf r50_1x_sk1/model.ckpt-250228 --model r50_1x_sk1 --out r50_1x_sk1.pt
  simclrv2 import-tf finetuned_1pct/r50_1x_sk1 --model r50_1x_sk1 --head-layer 1 --out ft1.pt
"""

EXPORT_DESCRIPTION = """\
Export a fine-tuned classifier or distilled student for deployment. The exported network takes
float32 NCHW RGB images in [0, 1] (no mean/std normalisation) and returns logits; FILE.json
beside it gives the class names, the input size and the preprocessing (centre crop of 87.5%,
bicubic resize), the model config and the source checkpoint's sha256.

formats:
  onnx         dynamic batch axis, fixed image size (opset 17)
  torchscript  traced; torch.jit.load(FILE) runs it without simclrv2
  safetensors  the weights; model_config in the metadata rebuilds the network with
               simclrv2.models.build_model
"""


def add_convert_commands(sub) -> None:
    """``import-tf`` and ``export``: official TensorFlow checkpoints in, classifiers out for deployment."""
    p = sub.add_parser(
        "import-tf", help="convert an official SimCLRv2 TensorFlow checkpoint (TF1 or TF2)",
        description=IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt_path", metavar="CKPT_PATH",
                   help="checkpoint prefix (e.g. r50_1x_sk1/model.ckpt-250228), its .index file, or "
                        "the folder holding it")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="encoder of the checkpoint, r{depth}_{width}x_sk{0|1} as the released folders "
                        "are named (e.g. r152_3x_sk1)")
    p.add_argument("--out", required=True, metavar="FILE", help="simclrv2 checkpoint to write (.pt)")
    p.add_argument("--ema", action="store_true",
                   help="take the exponential-moving-average weights (TF1 ema_model/ copies) instead "
                        "of the trained ones")
    p.add_argument("--head-layer", type=int, default=None, metavar="J",
                   help="build a classifier on projection-head layer J (0 = encoder output) for "
                        "fine-tuned checkpoints: 1 for finetuned_1pct/10pct, 0 for finetuned_100pct, "
                        "distilled and supervised ones; omit for pretrained checkpoints")
    p.add_argument("--small-images", action="store_true",
                   help="the checkpoint has the CIFAR stem (one 3x3 conv, no max pool; images of "
                        "32 px or less)")
    p.set_defaults(func="simclrv2.commands.import_tf:cmd_import_tf")

    p = sub.add_parser(
        "export", help="export a fine-tuned classifier or student (ONNX, TorchScript, safetensors)",
        description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="simclrv2 checkpoint of a classifier (fine-tuned model or distilled student; a file, or an official name such as official:r50_1x_sk1/finetuned_1pct)")
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write; FILE.json goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never the --model file)")
    p.add_argument("--image-size", type=image_side, default=None, metavar="N",
                   help="input height and width (default: the size the model was trained at); ONNX and "
                        "TorchScript are fixed to it")
    p.set_defaults(func="simclrv2.commands.export:cmd_export")


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix (disk, links, permissions, memory), else None."""
    if isinstance(exc, OSError):
        return _os_error(exc)
    import torch

    text = str(exc)
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or (
            isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
        asked = re.search(r"allocate (\d+) bytes|Tried to allocate ([\d.]+ [GMK]iB)", text)
        size = ""
        if asked:
            size = f"; {int(asked.group(1)) / 2**30:.1f} GiB asked at once" if asked.group(1) else f"; {asked.group(2)} asked at once"
        return ("out of memory: lower --batch-size or --image-size, add --micro-batch, or choose a smaller --model "
                f"(the weights, and a classifier's number of classes, count too{size})")
    return None


def _os_error(exc: OSError) -> str:
    """A file error in one line, with the fix its cause calls for."""
    name = exc.filename if isinstance(exc.filename, str) else (os.fsdecode(exc.filename) if exc.filename else None)
    what = name or "a file"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"cannot write {what}: {reason}: free disk space or choose another --out (the disk or your quota "
                "is full, or a file-size limit is set)")
    if exc.errno == errno.ELOOP:
        return f"cannot open {what}: it is a symbolic link that points to itself or into a loop: fix or remove the link"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read {what}: {reason}: fix the permissions or choose another --out"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"cannot write or read {what}: {reason}: check the path (can its folder be created there?)"
    return f"cannot write or read {what}: {reason}: check the path, the disk and the permissions"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import distributed  # after parsing, as every import of torch (--help has exited)
    from .engine import Preempted

    # Under torchrun the other ranks log only warnings and errors: one progress log, not N.
    level = logging.INFO if distributed.is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)

    try:
        code = command_function(args)(args)
        sys.stdout.flush()  # here, where a reader that went away is handled, not at interpreter exit
        return code
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"simclrv2: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as exc:
        print(f"simclrv2: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("simclrv2: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`simclrv2 predict ... | head`): stop quietly, as a shell tool
        # killed by SIGPIPE, and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"simclrv2: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        distributed.teardown()
