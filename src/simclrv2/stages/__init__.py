"""The stages of SimCLRv2, and the one registry of them that everything follows.

A stage is one module: its training step class and ``build(cfg, runtime, settings) -> Parts``
(``simclrv2.engine.stage``); its config (``StageConfig`` plus its own options) is torch-free, for the
command line (the built-in ones are in ``configs``). ``STAGES`` lists them: the command line (one
sub-command each, its flags from the config), the pipeline (``simclrv2 run``), the checkpoint record,
the report, the tests (parametrised over it) and the benchmarks read it, and nothing else lists
stages. Importing this module imports no torch; a stage's module is imported when its ``build`` is
asked for.

A stage from outside this package (another package, or the tests' toy stage) is added with
``register(stage)``, or by an installed package declaring an entry point in the group
``simclrv2.stages`` that names a ``Stage`` (loaded on first use of the registry).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ..errors import UserError
from .configs import DistillConfig, FinetuneConfig, LinearEvalConfig, PretrainConfig

if TYPE_CHECKING:
    from ..engine.stage import Build

log = logging.getLogger("simclrv2")

ENTRY_POINT_GROUP = "simclrv2.stages"


@dataclass(frozen=True)
class Kind:
    """What a run of a stage is called in its checkpoint's record, its result and the report: a stage
    writes one kind, or several (fine-tuning from scratch is the supervised baseline).

    Args:
        name: the record's ``stage``, the ``stage`` of result.json and metrics.jsonl.
        row: the row of the report's results table (None: not a row, e.g. pretraining).
        rank: where its rows go in that table (the paper's order: the supervised baseline, linear
            evaluation, fine-tuning, distillation); the rows of one kind in the order they ran.
        optional: ``simclrv2 run`` may skip it (its ``skip:`` list).
        every_label: it learns from every label whatever the label spec (linear evaluation): the report
            gives its figure in every column.
    """

    name: str
    row: Optional[str] = None
    rank: int = 100
    optional: bool = False
    every_label: bool = False


@dataclass(frozen=True)
class Stage:
    """A stage as the command line, the pipeline, the report, the tests and the benchmarks see it.

    Args:
        name: config section and folder name; its first kind's name.
        command: the sub-command (the name with '-' for '_', as every flag).
        help: one line for ``simclrv2 --help``.
        config: the config dataclass (``StageConfig`` plus the stage's options; torch-free).
        module: the module defining ``build`` (imported on first use: it imports torch).
        kinds: the kinds its runs are (default: one, named as the stage).
        needs: config keys that name a checkpoint of another stage's model: ``{"from": "pretrain"}``.
            Tests and benchmarks make those checkpoints first (``benchmarks/_common.stage_engine``).
        produces: what its model.pt holds: "contrastive" (encoder + projection head: the report draws
            a t-SNE map of its features) or "classifier" (the report draws a confusion matrix).
        example: settings of a small run given ``needs`` (tests, benchmarks), beside data, out and
            the size of images and batch.
    """

    name: str
    command: str
    help: str
    config: type
    module: str
    kinds: tuple[Kind, ...] = ()
    needs: dict[str, str] = field(default_factory=dict)
    produces: str = "classifier"
    example: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kinds:
            object.__setattr__(self, "kinds", (Kind(self.name),))
        if self.kinds[0].name != self.name:
            raise ValueError(f"stage {self.name!r}: its first kind must be named as the stage")

    @property
    def build(self) -> Build:
        """``build(cfg, runtime, settings) -> Parts`` of the stage (importing its module imports torch)."""
        return importlib.import_module(self.module).build


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pretrain", "pretrain", "step 1: contrastive pretraining on unlabeled images",
          PretrainConfig, f"{__name__}.pretrain", produces="contrastive"),
    Stage("finetune", "finetune", "step 2: fine-tune a pretrained network on the labeled images (or --from scratch)",
          FinetuneConfig, f"{__name__}.finetune",
          (Kind("finetune", "fine-tuned", rank=2), Kind("supervised", "supervised baseline", rank=0, optional=True)),
          needs={"from": "pretrain"}, example={"labels": "all", "head_layer": "1"}),
    Stage("linear_eval", "linear-eval", "linear classifier on frozen features (the standard representation measure)",
          LinearEvalConfig, f"{__name__}.linear_eval", (Kind("linear_eval", "linear eval (all labels)", rank=1, optional=True,
                                                        every_label=True),),
          needs={"from": "pretrain"}, example={"labels": "all"}),
    Stage("distill", "distill", "step 3: distill a fine-tuned teacher into a student on unlabeled images",
          DistillConfig, f"{__name__}.distill", (Kind("distill", "distilled", rank=3, optional=True),),
          needs={"teacher": "finetune"}),
)}
_plugins_loaded = False


def register(stage: Stage) -> Stage:
    """Add a stage to the registry (a stage defined outside this package); returns it."""
    taken = {k.name for s in STAGES.values() for k in s.kinds} | {s.command for s in STAGES.values()}
    clash = {stage.name, stage.command, *(k.name for k in stage.kinds)} & taken
    if stage.name in STAGES and STAGES[stage.name] == stage:
        return stage
    if clash:
        raise ValueError(f"stage {stage.name!r}: {sorted(clash)} already registered")
    STAGES[stage.name] = stage
    return stage


def _load_plugins() -> None:
    """Stages that installed packages declare (entry point group ``simclrv2.stages``), once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            stage = point.load()
        except Exception as exc:  # a broken plugin must not break every command
            log.warning("stage plugin %s (%s) cannot be loaded: %s", point.name, point.value, exc)
            continue
        if not isinstance(stage, Stage):
            log.warning("stage plugin %s (%s) is not a simclrv2.stages.Stage: ignored", point.name, point.value)
            continue
        register(stage)


def stages() -> Iterator[Stage]:
    """Every registered stage, the built-in ones first, plugins included."""
    _load_plugins()
    return iter(list(STAGES.values()))


def stage_named(name: str) -> Stage:
    """The stage of that name; a one-line error for an unknown one."""
    _load_plugins()
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}: use one of {', '.join(STAGES)}")
    return STAGES[name]


def kinds() -> dict[str, Kind]:
    """Every kind of every registered stage, by name."""
    return {k.name: k for s in stages() for k in s.kinds}


def stage_of_kind(name: str) -> Stage:
    """The stage whose runs are of kind ``name`` ("supervised" -> fine-tuning)."""
    for stage in stages():
        if any(k.name == name for k in stage.kinds):
            return stage
    raise UserError(f"unknown stage {name!r}: use one of {', '.join(kinds())}")


def stage_of_config(cfg: Any) -> Stage:
    """The stage ``cfg`` is a config of."""
    for stage in stages():
        if type(cfg) is stage.config:
            return stage
    raise TypeError(f"{type(cfg).__name__} is the config of no registered stage")
