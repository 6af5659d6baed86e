"""The memory estimate before training (issue 21): the data-free trace of the real step against the peak the
CPU allocator reports for the same two steps, and the refusal of a batch that does not fit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simclrv2.engine import memory_estimate
from simclrv2.engine.memory_estimate import HEADROOM, MemoryEstimate, estimate_step, largest_fitting
from simclrv2.stages import stages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _common import Case, make_batch, measured_peak, stage_engine  # noqa: E402


# every registered stage at one size, and the pretraining step's own ways of computing
CASES = [(s.name, "r18_0.5x_sk1:64:32", None, False) for s in stages()] + [
    ("pretrain", "r50_0.5x_sk0:96:32", None, False),   # bottlenecks, 96 px crops from 110 px, LARS
    ("pretrain", "r50_0.5x_sk0:96:32", None, True),    # --activation-checkpointing: blocks run again
    ("pretrain", "r18_0.5x_sk1:64:32", 8, False),      # SK blocks, gradient caching over 4 micro-batches
]


# What the bound covers. The trace counts every tensor PyTorch allocates, exactly: above the measured peak the
# estimate may be by at most 15% (it rounds to blocks, and frees at the op that frees). oneDNN's convolutions
# also take scratch buffers, whose size depends on the kernels the CPU's instruction set selects; the trace
# cannot see them. On this machine's AVX-512 kernels they are under 2%; restricted to AVX2
# (ONEDNN_MAX_CPU_ISA=AVX2) linear_eval's r18_0.5x_sk1 step at 64 px measured 24.2 MiB against 17.7 estimated,
# and on an AVX2-only AMD EPYC pretraining measured 20% more than estimated (issue 32). Below the measured
# peak the estimate may therefore be by up to 30% + 8 MiB: the check before training leaves HEADROOM of the
# memory for this and the allocator's fragmentation, which covers it only for steps well under the limit.
ABOVE, BELOW, BELOW_FIXED = 0.15, 0.30, 8 << 20


@pytest.mark.parametrize("stage,case,micro,checkpointed", CASES)
def test_estimate_is_within_15_percent_of_the_measured_peak(stage, case, micro, checkpointed):
    case = Case.parse(case)
    data, batch = make_batch(case, torch.device("cpu"), classes=10)
    engine = stage_engine(stage, case, data, torch.device("cpu"), micro_batch=micro,
                          settings={"activation_checkpointing": True} if checkpointed else None)
    estimate = estimate_step(engine)
    measured = measured_peak(engine, batch)
    assert estimate.images == (micro or case.batch)
    print(f"{stage} {case}: estimate {estimate.peak / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB")
    assert measured - (BELOW * measured + BELOW_FIXED) <= estimate.peak <= (1 + ABOVE) * measured, \
        (estimate.peak / 2**20, measured / 2**20)
    # the real model and optimizer were not touched by the trace: the first real step made the state
    assert engine.progress.step == 2


def test_estimate_grows_with_the_batch_and_names_the_largest_that_fits():
    case = Case.parse("r18_0.5x_sk0:64:32")
    data, _ = make_batch(case, torch.device("cpu"), classes=10)
    engine = stage_engine("pretrain", case, data, torch.device("cpu"))
    full = estimate_step(engine)
    half = estimate_step(engine, 16)
    assert half.resident == full.resident and half.peak < full.peak
    # pretend the machine has room for 20 images: the answer lies between 16 and 32 and does fit
    per_image = (full.peak - half.peak) / 16
    full.usable = int((full.peak - 12 * per_image) / (1 - HEADROOM))
    largest = largest_fitting(engine, full)
    assert 19 <= largest <= 20
    assert estimate_step(engine, largest).peak <= (1 - HEADROOM) * full.usable
    assert estimate_step(engine, largest + 2).peak > (1 - HEADROOM) * full.usable


def test_a_batch_that_does_not_fit_is_refused_before_the_run_folder_is_written(tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from simclrv2.engine import memory_estimate as m; "
         "m.usable_bytes = lambda device, resident: 600 << 20; "  # a 600 MiB machine
         "from simclrv2.cli import main; sys.exit(main(sys.argv[1:]))",
         "pretrain", "--data", "digits", "--out", str(out), "--model", "r18_1x_sk0", "--image-size", "32",
         "--batch-size", "512", "--epochs", "1", "--workers", "0", "--no-tensorboard"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "GiB per process of the 600 MiB this process may use" in message and "512 images per forward pass" in message
    assert "--batch-size" in message and "--micro-batch" in message and "--activation-checkpointing" in message
    assert not out.exists()  # the folder the run created is removed again


TINY_RUN = ["pretrain", "--data", "digits", "--model", "r18_0.25x_sk0", "--image-size", "16", "--batch-size", "128",
            "--epochs", "1", "--workers", "0", "--no-tensorboard"]


def test_no_check_memory_trains_what_the_check_would_refuse(tmp_path):
    patched = ("import sys; from simclrv2.engine import memory_estimate as m; "
               "m.usable_bytes = lambda device, resident: 1 << 20; "  # a 1 MiB machine
               "from simclrv2.cli import main; sys.exit(main(sys.argv[1:]))")
    refused = subprocess.run([sys.executable, "-c", patched, *TINY_RUN, "--out", str(tmp_path / "a")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "of the 1 MiB this process may use" in refused.stderr, refused.stderr[-2000:]
    tried = subprocess.run([sys.executable, "-c", patched, *TINY_RUN, "--out", str(tmp_path / "b"), "--no-check-memory"],
                           capture_output=True, text=True, timeout=300)
    assert tried.returncode == 0, tried.stderr[-2000:]
    assert (tmp_path / "b" / "model.pt").exists()


def test_a_step_that_cannot_be_traced_trains_without_the_check(monkeypatch, caplog):
    case = Case.parse("r18_0.25x_sk0:32:8")
    data, _ = make_batch(case, torch.device("cpu"))
    engine = stage_engine("pretrain", case, data, torch.device("cpu"))

    def untraceable(*args, **kwargs):
        raise NotImplementedError("no data-free kernel for aten::something")

    monkeypatch.setattr(memory_estimate, "trace_peak", untraceable)
    with caplog.at_level("WARNING", logger="simclrv2"):
        assert memory_estimate.check_memory(engine) is None
    assert "memory estimate unavailable (NotImplementedError: no data-free kernel" in caplog.text


def test_unknown_capacity_is_never_refused():
    assert MemoryEstimate(peak=10 << 30, resident=1, images=4, usable=0, knob="--batch-size").fits
