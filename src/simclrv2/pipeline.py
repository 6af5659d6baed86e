"""``simclrv2 run CONFIG.yaml``: the paper's three steps as one resumable job, and ``simclrv2 demo``.

A pipeline config names the data once and gives each stage its settings::

    out: runs/demo            # the run folder; each stage writes a sub-folder of it
    data: digits              # every stage's --data (and eval_data / holdout / seed below)
    holdout: 0.2
    common: {workers: 0}      # settings every stage takes (any training flag)
    pretrain: {model: r18_1x_sk0, epochs: 100, ...}
    labels: ["1%", "10%"]     # fine-tune (and baseline, distill) once per label fraction
    finetune: {epochs: 60, ...}
    baseline: {}              # the supervised baseline (--from scratch) over the finetune settings
    linear_eval: {}           # linear evaluation of the pretrained encoder
    distill: {epochs: 400, students: [self, r18_1x_sk0]}
    skip: []                  # any of baseline, linear_eval, distill

Stage folders: ``pretrain``, ``linear_eval``, ``finetune_1pct``, ``supervised_1pct``,
``distill_self_1pct``, ``distill_<encoder>_1pct``. Re-running the same command skips the
finished stages (those with a result.json) and resumes an interrupted one from its latest
good checkpoint. Every key, type and value, the data paths and the label specs are validated
before the first stage starts (what only a stage can see, such as a batch too large for the
memory, is reported by that stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, List, Optional

from .config import apply_overrides, from_mapping, load_yaml, option, save_yaml, unknown_key_error
from .errors import UserError
from .models import parse_model_name

log = logging.getLogger("simclrv2")

SHARED_KEYS = ("data", "eval_data", "holdout", "seed")
OPTIONAL_STAGES = ("baseline", "linear_eval", "distill")
PIPELINE_PRESETS = ("demo", "cifar", "imagenet")  # configs/*.yaml for `run`; the rest are per stage


@dataclass
class PipelineConfig:
    """The whole SimCLRv2 method: pretrain, fine-tune per label fraction, baseline, distill, evaluate."""

    out: str = option("", "run folder", required=True)
    data: str = option("", "images: a folder, a CSV/TSV list, or 'digits'", required=True)
    eval_data: Optional[str] = option(None, "held-out labeled images (else --holdout of data)")
    holdout: float = option(0.0, "fraction of data held out for evaluation", minimum=0, maximum=0.9)
    seed: int = option(0, "random seed of every stage", minimum=0)
    labels: Optional[List[str]] = option(None, "label fractions to fine-tune with (default ['1%', '10%']; "
                                         "'5/class', 'all' or subset files also work)")
    skip: Optional[List[str]] = option(None, "optional stages to leave out: baseline, linear_eval, distill",
                                       choices=OPTIONAL_STAGES)
    common: Optional[dict] = option(None, "settings every stage takes (e.g. workers, device, precision)")
    pretrain: Optional[dict] = option(None, "settings of `simclrv2 pretrain`")
    finetune: Optional[dict] = option(None, "settings of `simclrv2 finetune`")
    baseline: Optional[dict] = option(None, "settings of the supervised baseline (`finetune --from scratch`), "
                                      "over the fine-tuning ones")
    linear_eval: Optional[dict] = option(None, "settings of `simclrv2 linear-eval`")
    distill: Optional[dict] = option(None, "settings of `simclrv2 distill`, plus 'students': a list of "
                                     "encoders ('self' = the teacher's; default [self])")

    def label_specs(self) -> list[str]:
        return [str(x) for x in (self.labels if self.labels is not None else ["1%", "10%"])]

    def runs(self, stage: str) -> bool:
        return stage not in (self.skip or [])


@dataclass
class Stage:
    """One stage of the pipeline: its folder, config and the function that runs it."""

    name: str
    kind: str
    label: str | None
    cfg: Any
    run: Callable[[Any], dict[str, Any]]


def label_slug(label: str) -> str:
    """A folder-name form of a label spec: '1%' -> '1pct', '5/class' -> '5perclass'."""
    text = label.replace("%", "pct").replace("/class", "perclass")
    text = Path(text).stem if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _section(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    return dict(getattr(cfg, name) or {})


def _stage_config(cls, settings: dict[str, Any], where: str) -> Any:
    return from_mapping(cls, settings, prefix=f"{where}.")


def plan(cfg: PipelineConfig) -> list[Stage]:
    """Every stage with its validated config, in run order. Raises UserError before any work."""
    from .train.distill import DistillConfig, distill
    from .train.finetune import FinetuneConfig, finetune
    from .train.linear_eval import LinearEvalConfig, linear_eval
    from .train.pretrain import PretrainConfig, pretrain

    if not cfg.label_specs():
        raise UserError("config key 'labels' is empty: give at least one label fraction, e.g. ['1%']")
    root = Path(cfg.out)
    shared = {k: getattr(cfg, k) for k in SHARED_KEYS}
    common = _section(cfg, "common")
    for key in ("out", "resume", *SHARED_KEYS):
        if key in common:
            raise UserError(f"config key 'common.{key}' is set by the pipeline: move it to the top level"
                            if key in SHARED_KEYS else f"config key 'common.{key}' is set by the pipeline: remove it")

    def settings(section: dict[str, Any], folder: str, **fixed: Any) -> dict[str, Any]:
        for key in ("out", "data", "resume"):
            if key in section:
                raise UserError(f"config key '{key}' is set by the pipeline (stage folder {folder}): remove it")
        return {**common, **shared, **section, **fixed, "out": str(root / folder)}

    stages = [Stage("pretrain", "pretrain", None,
                    _stage_config(PretrainConfig, settings(_section(cfg, "pretrain"), "pretrain"), "pretrain"),
                    pretrain)]
    pretrained = str(root / "pretrain" / "model.pt")
    encoder = stages[0].cfg.model
    if cfg.runs("linear_eval"):
        stages.append(Stage("linear_eval", "linear-eval", "all", _stage_config(
            LinearEvalConfig, settings(_section(cfg, "linear_eval"), "linear_eval", init=pretrained),
            "linear_eval"), linear_eval))
    finetune_section = _section(cfg, "finetune")
    distill_section = _section(cfg, "distill")
    students = distill_section.pop("students", ["self"])
    if not isinstance(students, list) or not students:
        raise UserError("config key 'distill.students' must be a non-empty list of encoders ('self' for the teacher's)")
    for student in students:
        if student != "self":
            parse_model_name(str(student))
    for label in cfg.label_specs():
        slug = label_slug(str(label))
        stages.append(Stage(f"finetune_{slug}", "finetune", str(label), _stage_config(
            FinetuneConfig, settings(finetune_section, f"finetune_{slug}", init=pretrained, labels=str(label)),
            "finetune"), finetune))
        if cfg.runs("baseline"):
            base = {**finetune_section, **_section(cfg, "baseline")}
            base.setdefault("model", encoder)
            base.setdefault("image_size", stages[0].cfg.image_size)
            stages.append(Stage(f"supervised_{slug}", "supervised", str(label), _stage_config(
                FinetuneConfig, settings(base, f"supervised_{slug}", init="scratch", labels=str(label)),
                "baseline"), finetune))
        if cfg.runs("distill"):
            teacher = str(root / f"finetune_{slug}" / "model.pt")
            for student in students:
                name = "self" if student in ("self", encoder) else str(student)
                folder = f"distill_{name}_{slug}"
                extra = {} if name == "self" else {"student": name}
                stages.append(Stage(folder, "distill", str(label), _stage_config(
                    DistillConfig, settings(distill_section, folder, teacher=teacher, **extra), "distill"),
                    distill))
    return stages


def load_pipeline_config(path: str | None, overrides: list[str], extra: dict[str, Any] | None = None) -> PipelineConfig:
    """A pipeline config from YAML, ``--set`` overrides and fixed values; validated."""
    data = load_yaml(path) if path else {}
    data.update(extra or {})
    data = apply_overrides(data, overrides)
    names = [f.name for f in dataclasses.fields(PipelineConfig)]
    for key in data:
        if key not in names:
            raise unknown_key_error(str(key), names)
    return from_mapping(PipelineConfig, data)


def _check_inputs(cfg: PipelineConfig) -> None:
    """The data paths and label specs exist, so that a typo fails now and not after pretraining."""
    from .data.sources import data_path
    from .data.subsets import parse_label_spec

    for spec in (cfg.data, cfg.eval_data):
        if spec:
            data_path(spec)
    for label in cfg.label_specs():
        if label != "all":
            parse_label_spec(label)


def run_pipeline(cfg: PipelineConfig, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run every stage not yet finished; returns the results by stage and writes the report."""
    from . import report
    from .train.loop import RunDir

    stages = plan(cfg)
    _check_inputs(cfg)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(dataclasses.asdict(cfg), root / "pipeline.yaml")
    results: dict[str, Any] = {}
    for i, stage in enumerate(stages, 1):
        run_dir = RunDir(stage.cfg.out)
        if run_dir.finished:
            progress(f"[{i}/{len(stages)}] {stage.name}: finished earlier, skipped")
            results[stage.name] = run_dir.read_result()
            continue
        resume = "auto" if (run_dir.path / "checkpoints").is_dir() else None
        progress(f"[{i}/{len(stages)}] {stage.name}" + (": resuming" if resume else ""))
        results[stage.name] = stage.run(dataclasses.replace(stage.cfg, resume=resume))
    summary = {"stages": {s.name: {"kind": s.kind, "labels": s.label, **results[s.name]} for s in stages},
               "labels": cfg.label_specs()}
    (root / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    report.write_report(root)
    return summary


def packaged_config(name: str) -> Path:
    """The path of a preset shipped with the package (``configs/<name>.yaml``)."""
    path = resources.files("simclrv2") / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no preset named {name!r}: see `simclrv2 run --help` for the presets")
    return Path(str(path))


def cmd_run(args: argparse.Namespace) -> int:
    from . import report

    config = args.config
    if not Path(config).is_file() and not config.endswith((".yaml", ".yml")):
        config = str(packaged_config(config))
    cfg = load_pipeline_config(config, args.set)
    run_pipeline(cfg)
    print(report.results_table(Path(cfg.out)))
    print(f"report: {Path(cfg.out) / 'report.md'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import report

    cfg = load_pipeline_config(str(packaged_config("demo")), args.set, {"out": args.out})
    run_pipeline(cfg)
    print(report.results_table(Path(cfg.out)))
    print(f"report: {Path(cfg.out) / 'report.md'}")
    return 0


def register(sub: Any) -> None:
    """Add ``run`` and ``demo`` to the command line."""
    p = sub.add_parser("run", help="the whole method: pretrain, fine-tune, baseline, distill, evaluate, report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="pipeline YAML file, or a preset name: "
                   + ", ".join(PIPELINE_PRESETS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set pretrain.epochs=10 (repeatable)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="the whole method on scikit-learn digits in a few minutes on a CPU",
                       description="Runs the 'demo' preset: SimCLRv2 on scikit-learn's bundled digits (no "
                       "download), then prints the results table and writes the report.")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_demo)
