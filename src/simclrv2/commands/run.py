"""``simclrv2 run CONFIG.yaml``: the paper's three steps as one resumable job, and ``simclrv2 demo``.

A pipeline config names the data once and gives each stage its settings::

    out: runs/demo            # the run folder; each stage writes a sub-folder of it
    data: digits              # every stage's --data (and eval_data / holdout / seed below)
    holdout: 0.2
    common: {workers: 0}      # settings every stage takes (any training flag)
    pretrain: {model: r18_1x_sk0, epochs: 100, ...}
    labels: ["1%", "10%"]     # fine-tune (and baseline, distill) once per label fraction
    finetune: {epochs: 60, ...}
    supervised: {}            # the supervised baseline (--from scratch) over the finetune settings
    linear_eval: {}           # linear evaluation of the pretrained encoder
    distill: {epochs: 400, students: [self, r18_1x_sk0]}
    select: {method: typiclust}  # optional: also choose the labeled images (`simclrv2 select`), as many
                              # as each label spec draws, and fine-tune (and distill) on them
    skip: []                  # any of supervised, linear_eval, distill

Stage folders: ``pretrain``, ``linear_eval``, ``finetune_1pct``, ``supervised_1pct``,
``distill_self_1pct``, ``distill_<encoder>_1pct``; with ``select``: ``select_1pct``,
``finetune_selected_1pct``, ``distill_self_selected_1pct``. Re-running the same command skips the
finished stages (those with a result.json) and resumes an interrupted one from its latest
good checkpoint. Every key, type and value, the data paths and the label specs are validated
before the first stage starts (what only a stage can see, such as a batch too large for the
memory, is reported by that stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, List, Optional

from ..config import apply_overrides, from_mapping, load_yaml, option, save_yaml
from ..errors import UserError
from ..names import PIPELINE_PRESETS, parse_model_name  # noqa: F401 - the presets of `run`, declared with the other names
from ..results import SELECTION, StageId, label_slug, read_result, write_results  # noqa: F401 - label_slug: the folder names
from ..stages import kinds, stage_of_kind
from .select import SELECTED, SelectOptions, SelectStage

log = logging.getLogger("simclrv2")

SHARED_KEYS = ("data", "eval_data", "holdout", "seed")
DEFAULT_LABELS = ["1%", "10%"]
OPTIONAL_STAGES = tuple(k.name for k in kinds().values() if k.optional)  # what `skip:` may name


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
    skip: Optional[List[str]] = option(None, "optional stages to leave out: supervised, linear_eval, distill",
                                       choices=OPTIONAL_STAGES)
    common: Optional[dict] = option(None, "settings every stage takes (e.g. workers, device, precision)")
    pretrain: Optional[dict] = option(None, "settings of `simclrv2 pretrain`")
    finetune: Optional[dict] = option(None, "settings of `simclrv2 finetune`")
    supervised: Optional[dict] = option(None, "settings of the supervised baseline (`finetune --from scratch`), "
                                        "over the fine-tuning ones")
    linear_eval: Optional[dict] = option(None, "settings of `simclrv2 linear-eval`")
    distill: Optional[dict] = option(None, "settings of `simclrv2 distill`, plus 'students': a list of "
                                     "encoders ('self' = the teacher's; default [self])")
    select: Optional[dict] = option(None, "choose the labeled images from the pretrained features as well "
                                    "({method, layer, distill}; see `simclrv2 select`): a 'selected labels' row "
                                    "beside each random one")

    def label_specs(self) -> list[str]:
        return [str(x) for x in (self.labels if self.labels is not None else DEFAULT_LABELS)]

    def runs(self, stage: str) -> bool:
        return stage not in (self.skip or [])


@dataclass
class PlannedStage:
    """One stage of the pipeline: what it is and its validated config."""

    id: StageId
    cfg: Any


def _section(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    return dict(getattr(cfg, name) or {})


def plan(cfg: PipelineConfig) -> list[PlannedStage]:
    """Every stage with its validated config, in run order. Raises UserError before any work."""
    if not cfg.label_specs():
        raise UserError("config key 'labels' is empty: give at least one label fraction, e.g. ['1%']")
    root = Path(cfg.out)
    shared = {k: getattr(cfg, k) for k in SHARED_KEYS}
    common = _section(cfg, "common")
    for key in ("out", "resume", *SHARED_KEYS):
        if key in common:
            raise UserError(f"config key 'common.{key}' is set by the pipeline: move it to the top level"
                            if key in SHARED_KEYS else f"config key 'common.{key}' is set by the pipeline: remove it")
    stages: list[PlannedStage] = []

    def add(stage_id: StageId, section: str, settings: dict[str, Any], **fixed: Any) -> Any:
        for key in ("out", "data", "resume"):
            if key in settings:
                raise UserError(f"config key '{section}.{key}' is set by the pipeline (stage folder "
                                f"{stage_id.folder}): remove it")
        data = {**common, **shared, **settings, **fixed, "out": str(root / stage_id.folder)}
        stage_cfg = from_mapping(stage_of_kind(stage_id.kind).config, data, prefix=f"{section}.")
        stages.append(PlannedStage(stage_id, stage_cfg))
        return stage_cfg

    encoder = add(StageId("pretrain"), "pretrain", _section(cfg, "pretrain")).model
    image_size = stages[0].cfg.image_size
    pretrained = str(root / "pretrain" / "model.pt")
    if cfg.runs("linear_eval"):
        add(StageId("linear_eval", "all"), "linear_eval", _section(cfg, "linear_eval"), **{"from": pretrained})
    finetune_section = _section(cfg, "finetune")
    distill_section = _section(cfg, "distill")
    students = distill_section.pop("students", ["self"])
    if not isinstance(students, list) or not students:
        raise UserError("config key 'distill.students' must be a non-empty list of encoders ('self' for the teacher's)")
    for student in students:
        if student != "self":
            parse_model_name(str(student))
    selecting = from_mapping(SelectOptions, cfg.select, prefix="select.") if cfg.select is not None else None

    def distill_from(finetuned: StageId) -> None:
        teacher = str(root / finetuned.folder / "model.pt")
        for student in students:
            name = "self" if student in ("self", encoder) else str(student)
            extra = {} if name == "self" else {"student": name}
            add(StageId("distill", finetuned.labels, name, finetuned.selected), "distill", distill_section,
                teacher=teacher, **extra)

    for label in cfg.label_specs():
        finetuned = StageId("finetune", label)
        match = add(finetuned, "finetune", finetune_section, **{"from": pretrained, "labels": label})
        if cfg.runs("supervised"):
            base = {"model": encoder, "image_size": image_size, **finetune_section, **_section(cfg, "supervised")}
            add(StageId("supervised", label), "supervised", base, **{"from": "scratch", "labels": label})
        if cfg.runs("distill"):
            distill_from(finetuned)
        if selecting is None or label == "all":
            continue
        chosen = StageId(SELECTION, label)
        stages.append(PlannedStage(chosen, SelectStage(str(root / chosen.folder), pretrained, match, selecting,
                                                       match.workers, match.device)))
        on_chosen = StageId("finetune", label, selected=True)
        add(on_chosen, "finetune", finetune_section,
            **{"from": pretrained, "labels": str(root / chosen.folder / SELECTED)})
        if cfg.runs("distill") and selecting.distill:
            distill_from(on_chosen)
    return stages


def load_pipeline_config(path: str | None, overrides: list[str], extra: dict[str, Any] | None = None) -> PipelineConfig:
    """A pipeline config from YAML, ``--set`` overrides and fixed values; validated."""
    data = load_yaml(path) if path else {}
    data.update(extra or {})
    data = apply_overrides(data, overrides)
    if "baseline" in data:
        raise UserError("config key 'baseline' is now called 'supervised' (the supervised baseline): rename it")
    return from_mapping(PipelineConfig, data)


def _check_inputs(cfg: PipelineConfig) -> None:
    """The data paths and label specs exist, so that a typo fails now and not after pretraining."""
    from ..data.sources import data_path
    from ..data.subsets import parse_label_spec

    for spec in (cfg.data, cfg.eval_data):
        if spec:
            data_path(spec)
    for label in cfg.label_specs():
        if label != "all":
            parse_label_spec(label)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {"pretrain.epochs": 20, ...}."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings of a pipeline that differ between ``old`` (its pipeline.yaml) and ``new``, as
    "key old -> new"; not those that only say how it runs (workers, device, ...: ``resumable_changes``) or
    where its folder is, nor label specs or skipped stages added (they add stages, and change none)."""
    from ..config import RunOptions, RuntimeOptions

    free = {f.name for group in (RunOptions, RuntimeOptions) for f in dataclasses.fields(group)}
    before, after = _flat(old), _flat(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b or key.rsplit(".", 1)[-1] in free:
            continue
        if key == "labels" and set(map(str, a or DEFAULT_LABELS)) <= set(map(str, b or DEFAULT_LABELS)):
            continue  # label specs added: more stages, none changed
        if key == "skip" and set(a or []) >= set(b or []):
            continue  # fewer stages skipped: more run, none changed
        changes.append(f"{key} {a!r} -> {b!r}")
    return changes


def _check_same_settings(root: Path, settings: dict[str, Any], stages: list[PlannedStage]) -> None:
    """Refuse to go on in a pipeline folder whose stages were run with other settings: skipping them would
    keep models trained with the old settings under a pipeline.yaml that claims the new ones."""
    from ..config import load_yaml
    from ..engine.run_folder import RunFolder

    saved = root / "pipeline.yaml"
    if not saved.is_file():
        return
    started = [s.id.folder for s in stages if (Path(s.cfg.out) / "selection.json").is_file()
               or RunFolder(s.cfg.out).finished or RunFolder(s.cfg.out).has_checkpoints()]
    changes = changed_settings(load_yaml(saved), settings)
    if started and changes:
        raise UserError(f"{root} was run with other settings ({'; '.join(changes)}): its finished stages "
                        f"({', '.join(started[:3])}{', ...' if len(started) > 3 else ''}) would be kept as they were "
                        "trained; run it with its settings (see its pipeline.yaml), or choose another out")


def run_pipeline(cfg: PipelineConfig, progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run every stage not yet finished; returns the results by stage and writes the report."""
    from . import report
    from ..distributed import is_main_process
    from ..engine.run_folder import RunFolder
    from ..engine import train

    stages = plan(cfg)
    _check_inputs(cfg)
    root = Path(cfg.out)
    _check_same_settings(root, dataclasses.asdict(cfg), stages)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(dataclasses.asdict(cfg), root / "pipeline.yaml")
    results: dict[str, Any] = {}
    for i, stage in enumerate(stages, 1):
        name = stage.id.folder
        if isinstance(stage.cfg, SelectStage):
            done = stage.cfg.finished
            progress(f"[{i}/{len(stages)}] {name}" + (": finished earlier, skipped" if done else ""))
            results[name] = stage.cfg.result() if done else stage.cfg.run()
            continue
        folder = RunFolder(stage.cfg.out)
        if folder.finished:
            progress(f"[{i}/{len(stages)}] {name}: finished earlier, skipped")
            results[name] = read_result(folder.path)
            continue
        resume = "auto" if folder.has_checkpoints() else None
        progress(f"[{i}/{len(stages)}] {name}" + (": resuming" if resume else ""))
        results[name] = train(dataclasses.replace(stage.cfg, resume=resume))
    if not is_main_process():
        return {"stages": {s.id.folder: {**results[s.id.folder], **dataclasses.asdict(s.id)} for s in stages},
                "labels": cfg.label_specs()}
    summary = write_results(root, [(s.id, results[s.id.folder]) for s in stages], cfg.label_specs())
    report.write_report(root)
    return summary


def packaged_config(name: str) -> Path:
    """The path of a preset shipped with the package (``configs/<name>.yaml``)."""
    path = resources.files("simclrv2") / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no preset named {name!r}: see `simclrv2 run --help` for the presets")
    return Path(str(path))


def print_results(cfg: PipelineConfig) -> None:
    """The results table and where the report is, once (the main process, under torchrun)."""
    from . import report
    from ..distributed import is_main_process

    if is_main_process():
        print(report.results_table(Path(cfg.out)))
        print(f"report: {Path(cfg.out) / 'report.md'}")


def cmd_run(args: argparse.Namespace) -> int:
    config = args.config
    if not Path(config).is_file() and not config.endswith((".yaml", ".yml")):
        config = str(packaged_config(config))
    cfg = load_pipeline_config(config, args.set)
    run_pipeline(cfg)
    print_results(cfg)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = load_pipeline_config(str(packaged_config("demo")), args.set, {"out": args.out})
    run_pipeline(cfg)
    print_results(cfg)
    return 0
