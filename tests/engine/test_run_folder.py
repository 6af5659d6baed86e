"""Run-folder safety: a run is never lost, mixed with another, or left half-made by a failed start."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simclrv2 import cli
from simclrv2.config import from_mapping
from simclrv2.engine import Preempted, loop, run
from simclrv2.stages import pretrain
from simclrv2.stages.pretrain import PretrainConfig

TINY = ["--data", "digits", "--model", "r18_0.125x_sk0", "--image-size", "16", "--epochs", "1",
        "--batch-size", "128", "--workers", "0", "--no-tensorboard", "--knn-monitor", "--holdout", "0.2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def simclrv2(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "simclrv2", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-3000:]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a folder with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = simclrv2("pretrain", *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_resume_of_a_finished_run_is_refused_and_leaves_it_untouched(finished):
    before = snapshot(finished)
    proc = simclrv2("pretrain", *TINY, "--model", "r18_0.25x_sk0", "--resume", "--out", str(finished))
    one_line_error(proc, "holds a finished run: there is nothing to resume")
    assert snapshot(finished) == before


def test_overwrite_checks_every_input_before_deleting_anything(finished):
    before = snapshot(finished)
    for args, fragment in [(["--data", "/nonexistent"], "/nonexistent"),
                           (["--model", "r51_1x_sk0"], "r51_1x_sk0"),
                           (["--batch-size", "5000"], "larger than the 1438 training images"),
                           (["--resume", "/nowhere/ckpt.pt"], "pass only one of them")]:
        proc = simclrv2("pretrain", *TINY, *args, "--overwrite", "--out", str(finished))
        one_line_error(proc, fragment)
        assert snapshot(finished) == before, args


def test_a_failed_start_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    out = tmp_path / "never"
    one_line_error(simclrv2("pretrain", *TINY, "--data", "/nonexistent", "--out", str(out)), "/nonexistent")
    assert not out.exists()

    # out of memory in the first step (CPU allocator message): one line, exit 2, no folder
    def out_of_memory(self, batch, generator, index):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789012 bytes")

    monkeypatch.setattr(pretrain.ContrastiveStep, "__call__", out_of_memory)
    assert cli.main(["pretrain", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory: lower --batch-size" in err[0], err
    assert not out.exists()


def test_a_signal_before_the_first_step_stops_at_once_and_removes_the_new_folder(tmp_path):
    out = tmp_path / "signalled"
    cfg = from_mapping(PretrainConfig, {"data": "digits", "model": "r18_0.125x_sk0", "image_size": 16,
                                        "epochs": 1, "batch_size": 128, "workers": 0, "out": str(out)})

    def build_then_signal(cfg, runtime, settings):
        pretrain.build(cfg, runtime, settings)
        assert out.is_dir()  # claimed before the build
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. a scheduler cancelling the job while data loads
        raise AssertionError("the signal should have stopped the run")

    with pytest.raises(Preempted) as stop:
        run(cfg, build_then_signal)
    assert stop.value.exit_code == 143 and stop.value.checkpoint is None
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_live_run_refuses_a_second_process_and_a_killed_one_does_not_block_resume(tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "simclrv2", "pretrain", *TINY, "--epochs", "5",
                              "--checkpoint-every", "2", "--log-every", "1", "--log-seconds", "0", "--out", str(out)],
                             stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in first.stderr:  # wait until it trains: the lock is held and a checkpoint exists
            if line.startswith("pretrain step 3/"):
                break
        for extra in ([], ["--overwrite"], ["--resume"]):
            proc = simclrv2("pretrain", *TINY, *extra, "--out", str(out))
            one_line_error(proc, f"in use by a running simclrv2 process (pid {first.pid})")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.stderr.close()
    # the kernel dropped the dead process's lock: --resume continues the run
    proc = simclrv2("pretrain", *TINY, "--epochs", "5", "--checkpoint-every", "2", "--log-every", "1",
                    "--resume", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and (out / "result.json").is_file()
    assert not (out / ".lock").exists()


def test_resume_has_no_duplicated_step_and_counts_all_training_time(tmp_path, monkeypatch):
    cfg = dict(data="digits", model="r18_0.125x_sk0", image_size=16, epochs=1, batch_size=128, workers=0,
               holdout=0.2, knn_monitor=False, log_every=1, checkpoint_every=4, keep_checkpoints=2,
               out=str(tmp_path / "run"))
    original = loop.Engine._stop_requested

    def killed_at_step_6(self):  # as SIGKILL after step 6 was logged; the last checkpoint is step 4
        if self.progress.step == 6:
            time.sleep(0.5)
            raise SystemExit("killed")
        return original(self)

    monkeypatch.setattr(loop.Engine, "_stop_requested", killed_at_step_6)
    with pytest.raises(SystemExit):
        run(from_mapping(PretrainConfig, cfg), pretrain.build)
    monkeypatch.setattr(loop.Engine, "_stop_requested", original)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("ckpt-*.pt"))[-1]
    from simclrv2.checkpoint import load_checkpoint
    progress = load_checkpoint(checkpoint)["progress"]
    assert progress["step"] == 4 and progress["train_seconds"] > 0

    result = run(from_mapping(PretrainConfig, {**cfg, "resume": "auto"}), pretrain.build)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if json.loads(x)["kind"] == "train"]
    assert steps == list(range(1, result["steps"] + 1))
    assert result["train_seconds"] > progress["train_seconds"]
    # --keep-checkpoints 2: only the last two of ckpt-4, ckpt-8 ... are left
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.pt"))
    assert kept == [f"ckpt-{s:09d}.pt" for s in (4, 8)], kept


def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    cfg = dict(data="digits", model="r18_0.125x_sk0", image_size=16, epochs=1, batch_size=128, workers=0,
               knn_monitor=False, checkpoint_every=2, out=str(out))
    original = loop.Engine._stop_requested
    try:
        loop.Engine._stop_requested = lambda self: self.progress.step == 2 or original(self)
        with pytest.raises(Preempted):
            run(from_mapping(PretrainConfig, cfg), pretrain.build)
    finally:
        loop.Engine._stop_requested = original
    before = snapshot(out)
    proc = simclrv2("pretrain", "--data", "digits", "--model", "r18_0.125x_sk0", "--image-size", "16",
                    "--epochs", "1", "--batch-size", "128", "--workers", "0", "--no-knn-monitor",
                    "--lr", "0.2", "--resume", "--out", str(out))
    assert proc.returncode == 2 and "error: checkpoint" in proc.stderr.splitlines()[-1]
    assert "was trained with other settings (lr 0.1 -> 0.2)" in proc.stderr.splitlines()[-1]
    assert snapshot(out) == before


def test_saved_config_and_record_name_the_files_from_any_folder(tmp_path, monkeypatch):
    import yaml
    from PIL import Image

    from simclrv2.checkpoint import load_checkpoint
    from simclrv2.data import open_images
    from simclrv2.commands.evaluate import training_eval_split
    from simclrv2.record import Record

    digits = open_images("digits", labeled=True)
    for c in range(3):
        (tmp_path / "images" / str(c)).mkdir(parents=True)
        for k, i in enumerate((digits.labels == c).nonzero()[0][:10]):
            Image.fromarray(digits.load(int(i))).save(tmp_path / "images" / str(c) / f"{k}.png")
    monkeypatch.chdir(tmp_path)  # --data and --out as a user types them: relative
    run(from_mapping(PretrainConfig, {"data": "images", "out": "run", "model": "r18_0.125x_sk0", "image_size": 16,
                                      "epochs": 1, "batch_size": 8, "workers": 0, "holdout": 0.2,
                                      "knn_monitor": False, "tensorboard": False}), pretrain.build)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"] == str(tmp_path / "images") and saved["out"] == str(tmp_path / "run")
    record = Record.from_payload(load_checkpoint(tmp_path / "run" / "model.pt"), "model.pt")
    assert record.held_out.data == str(tmp_path / "images") and record.config["data"] == saved["data"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the held-out images are found again from another folder
    assert len(training_eval_split(record, "model.pt")) == 6


def test_epoch_checkpoints_are_at_most_one_a_minute_unless_asked(tmp_path):
    """Epochs of one step (a fine-tuning on 20 labels) wrote a checkpoint every step: half its time."""
    cfg = dict(data="digits", model="r18_0.125x_sk0", image_size=16, epochs=3, batch_size=512, workers=0,
               holdout=0.2, knn_monitor=False, keep_checkpoints=10, tensorboard=False)
    written = {}
    for minutes in (0.0, 1.0):
        out = tmp_path / f"every_{minutes}"
        run(from_mapping(PretrainConfig, {**cfg, "checkpoint_minutes": minutes, "out": str(out)}), pretrain.build)
        written[minutes] = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.pt"))
    assert written[0.0] == ["ckpt-000000002.pt", "ckpt-000000004.pt"]  # 2 steps an epoch; none after the last
    assert written[1.0] == []  # the run is over in seconds
