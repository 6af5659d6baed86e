"""The training engine: one loop for every stage (``loop``), the run folder (``run_folder``),
device placement (``placement``) and what a stage declares (``stage``)."""

from .loop import Engine, NonFiniteLoss, Preempted, run
from .run_folder import RunFolder
from .stage import Parts, TrainStep

__all__ = ["Engine", "NonFiniteLoss", "Parts", "Preempted", "RunFolder", "TrainStep", "run"]
