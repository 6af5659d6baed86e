"""The benchmark scripts in benchmarks/ run (in their seconds-long --quick modes) and print their tables."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    # One thread: a smoke run of tiny ops is slowed most by threads waiting for busy cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("name, args, expected", [
    ("step_overhead.py", ("--quick", "--breakdown", "--profile"), ["| ratio full/bare |", "| augment |", "r18_0.25x_sk0"]),
    ("data_path.py", ("--quick",), ["workers=0", "workers=1", "| limits |"]),
    ("data_path.py", ("--photos", "2", "--photo-size", "1200x900"), ["| photo -> loader output |", "| 1200x900 JPEG"]),
    ("decode.py", ("--quick",), ["| + 2 crops to 224 img/s |", "| 320x240 (", "| 1200x900 (",
                                 "| Pillow draft (load_rgb, the loader's) |", "| old path: Pillow"]),
    ("gpu_throughput.py", ("--device", "cpu", "--quick"),
     ["bf16 matmul peak", "| GFLOP/img |", "compile (eager)", "| distill |", "| finetune |"]),
    ("fewshot_probe.py", ("--quick",), ["| raw pixels (8x8) |", "temperature=0.1: h0", "temperature=0.1: h1"]),
    ("finetune_rate_grid.py", ("--quick",), ["| network | lr 0.01 | lr 0.03 |", "| fine-tuned |", "| baseline (from scratch) |"]),
    # 15 s each, slow: the micro-batched step is tested in tests/stages/test_micro_batch.py, recalibration in
    # tests/stages/test_finetune.py
    pytest.param("micro_batch.py", ("--quick",), ["| micro-batch M |", "| r18_0.125x_sk0:16 | 32 | 8 |", "| plain |"],
                 marks=pytest.mark.slow),
    pytest.param("bn_recalibration.py", ("--quick",), ["| moving averages (default) | recalibrated (4096) |",
                                                       "| finetune_2perclass | 2 epochs |"], marks=pytest.mark.slow),
    ("label_selection.py", ("--quick",), ["| selection | 10 (10 images) |", "| uniform random |",
                                          "| typiclust - balanced random |"]),
    ("reference_loop.py", ("--quick",), ["| per-step ratio |", "| whole-run ratio |", "r18_0.25x_sk0 @ 32 px"]),
    ("color_jitter.py", ("--quick",), ["| evaluation | ms | masked / this |", "| 8 | 32 | 0.5 | fused |"]),
    ("checkpoint_stall.py", ("--quick",), ["| training stalled ms |", "background (host copy, thread)"]),
    ("memory_estimate.py", ("--quick",), ["| preset | model | images / GPU |", "--micro-batch 16 --activation-checkpointing"]),
    ("memory_estimate.py", ("--quick", "--measure"), ["| estimate GiB | measured GiB | ratio |", "| distill |"]),
])
def test_benchmark_quick_mode_prints_its_table(name, args, expected):
    out = run_script(name, *args)
    for text in expected:
        assert text in out, f"{text!r} missing from the output of {name}:\n{out}"


@pytest.mark.slow  # 70 s: tests/stages/test_pretrain.py::test_torchrun_two_processes checks the same (graph breaks, resume on fewer)
def test_gpu_smoke_script_runs_on_cpu_with_two_gloo_processes(tmp_path):
    """benchmarks/gpu_smoke.sh, unchanged, on this CPU: torchrun pretraining with --compile (aot_eager here),
    its step-10 checkpoint resumed on one process, the throughput benchmark's short case.

    Issue 21's acceptance: 2 gloo processes with --compile and global BN have no graph break in the network
    (``torch.distributed.nn.functional``'s all-reduce broke the graph at every BN layer; global BN now uses
    functional collectives). Dynamo deliberately leaves DDP's own forward prelude (its logger,
    ``_inside_ddp_forward``) to eager: those breaks, outside the network, are the only ones the script allows.
    And a checkpoint written by 2 processes resumes on 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}  # this interpreter, not PATH's python
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_smoke.sh"), str(tmp_path)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout
    assert "device cpu, 2 processes" in out and "resumed from" in out and "at step 10 of 20" in out
    assert "two: 20 steps" in out and "one: 20 steps" in out and "memory estimate" in out
    assert "0 outside DDP's forward prelude" in out and "gpu_smoke: ok" in out
