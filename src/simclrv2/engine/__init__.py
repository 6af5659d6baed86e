"""The training engine: one loop for every stage.

- ``stage``: the contract a stage fulfils (``build -> Parts``, ``TrainStep``, ``StepSettings``);
- ``loop``: the loop (``run``, ``Engine``); ``schedule``: learning rates and recipe warnings;
  ``signals``: stop signals; ``checkpointing``: save, resume, the final save; ``recalibration``:
  batch-norm recalibration; ``memory_estimate``: the step's peak memory, checked before training;
- ``run_folder``: the folder's files, lock and rules; ``placement``: device, layout, DDP, compile,
  precision; ``display``: progress bar or log lines; ``summary``: the end-of-run summary.
"""

from .loop import Engine, NonFiniteLoss, run, train
from .run_folder import RunFolder
from .signals import Preempted
from .stage import Parts, StepSettings, TrainStep

__all__ = ["Engine", "NonFiniteLoss", "Parts", "Preempted", "RunFolder", "StepSettings", "TrainStep", "run", "train"]
