"""A stage is one module: the test-only toy stage (``toy_stage``, ``toy_step``: no file of src/ names it) is an
installed plugin (tests/conftest.py) and goes through everything a built-in stage does.

Here: the registry finds it through its entry point; ``simclrv2 --help`` and ``simclrv2 toy --help`` list it
and its options (torch-free: tests/test_cli.py's parametrised help tests include it); a real run writes a
checkpoint with its record, after the memory check; a SIGKILLed run resumes to the very weights of an
uninterrupted one; its step gets the step index. Elsewhere, by following the registry: the memory estimate
against the measured peak (tests/engine/test_memory_estimate.py), the host-sync probe
(tests/engine/test_host_sync.py), activation checkpointing (tests/models/test_activation_checkpointing.py)
and the benchmarks (``benchmarks/memory_estimate.py --quick --measure`` in tests/test_benchmarks.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import toy_stage

from simclrv2.checkpoint import list_checkpoints, load_checkpoint
from simclrv2.stages import Stage, kinds, register, stage_named
from simclrv2.stages.configs import PretrainConfig

RUN = ["toy", "--data", "digits", "--holdout", "0.5", "--image-size", "16", "--batch-size", "128", "--epochs", "2",
       "--workers", "0",
       "--checkpoint-every", "4", "--log-every", "1", "--no-tensorboard", "--precision", "fp32"]


def simclrv2(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simclrv2", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_the_registry_finds_the_toy_through_its_entry_point():
    assert stage_named("toy") is toy_stage.TOY  # loaded by importlib.metadata from the plugin's entry point
    assert "toy" in kinds() and kinds()["toy"].row is None and not kinds()["toy"].optional


def test_register_refuses_a_name_or_command_already_taken():
    assert register(toy_stage.TOY) is toy_stage.TOY  # the same stage again: nothing to do
    with pytest.raises(ValueError, match="already registered"):
        register(Stage("toy", "toy-again", "another toy", toy_stage.ToyConfig, "toy_step"))
    with pytest.raises(ValueError, match=r"\['pretrain'\] already registered"):
        register(Stage("other", "pretrain", "clashes with pretrain's command", PretrainConfig, "toy_step"))


def test_help_lists_the_toy_and_its_options():
    top = simclrv2("--help")
    assert top.returncode == 0 and "toy" in top.stdout and "regress each image's mean brightness" in top.stdout
    own = simclrv2("toy", "--help")
    assert own.returncode == 0 and "--ramp-steps" in own.stdout and "--micro-batch" in own.stdout


def test_a_killed_toy_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    whole = simclrv2(*RUN, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "memory: a training step needs about" in whole.stderr  # the memory check ran on the toy's step
    reference = load_checkpoint(tmp_path / "whole" / "model.pt")
    assert reference["record"]["stage"] == "toy" and reference["record"]["config"]["ramp_steps"] == 4

    # the step gets the step index: the ramp of the loss weight, logged every step
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    ramps = [round(r["ramp"], 6) for r in records if r["kind"] == "train"][:5]
    assert ramps == [0.25, 0.5, 0.75, 1.0, 1.0]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "simclrv2", *RUN, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(int(p.stem.split("-")[1]) >= 8 for p in list_checkpoints(out / "checkpoints")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists()
    resumed = simclrv2(*RUN, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    got = load_checkpoint(out / "model.pt")["model"]
    for name, tensor in reference["model"].items():
        assert got[name].equal(tensor), name
