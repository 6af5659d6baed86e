"""Reliability and safety of training runs: SIGKILL at random points, SIGTERM/SIGINT, damaged and
malicious checkpoints.

- A CPU pretraining run killed with SIGKILL at random points (at a random step, at a random
  time, in the middle of a checkpoint write), then resumed with ``--resume``, ends with final
  weights equal bit for bit to those of an uninterrupted run; after every kill each checkpoint
  in the run folder loads; ``--resume`` skips a newest checkpoint that was damaged afterwards.
- SIGTERM / SIGINT: a checkpoint at the next step boundary, exit code 143 / 130, and resuming
  from it finishes.
- Truncated, corrupted and object-carrying checkpoints are refused by ``load_checkpoint`` with
  a one-line UserError, and by ``simclrv2 pretrain --resume PATH`` with exit code 2 and one
  line on stderr.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import CHECKPOINT_PATTERN, CheckpointManager, list_checkpoints, load_checkpoint, \
    save_checkpoint
from simclrv2.errors import UserError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 1797 digits / 64 = 28 steps an epoch, 56 in all; a checkpoint every 3 steps.
TINY = ["--data", "digits", "--model", "r18_0.25x_sk0", "--image-size", "16", "--batch-size", "64",
        "--workers", "0", "--no-tensorboard", "--log-every", "1", "--log-seconds", "0", "--seed", "5",
        "--checkpoint-every", "3"]
TOTAL_STEPS = 56
WAIT = 240  # seconds any one wait may take before the test gives up (never reached normally)
STEP_LINE = re.compile(r"^pretrain step (\d+)/(\d+)")


class Run:
    """``simclrv2 pretrain`` in a subprocess, its stderr lines read as they come."""

    def __init__(self, out: Path, *extra: str, epochs: int = 2, resume: bool = False):
        self.out = out
        args = [sys.executable, "-m", "simclrv2", "pretrain", *TINY, "--epochs", str(epochs),
                "--out", str(out), *extra] + (["--resume"] if resume else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=ENV)
        self.stderr: list[str] = []
        self.last_step = 0  # the newest step the run has logged, as read so far
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            if match := STEP_LINE.match(line):
                self.last_step = max(self.last_step, int(match.group(1)))
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_step(self, step: int) -> bool:
        """Block until the run logs ``step`` (True) or ends first (False)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                return False
            match = STEP_LINE.match(line)
            if match and int(match.group(1)) >= step:
                return True
        raise AssertionError(f"no step {step} within {WAIT} s")

    def wait_for_checkpoint_write(self) -> bool:
        """Block until a checkpoint is being written (its temporary file exists) or the run ends."""
        folder = self.out / "checkpoints"
        deadline = time.monotonic() + WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                if any(n.startswith(".ckpt-") and n.endswith(".tmp") for n in os.listdir(folder)):
                    return True
            except FileNotFoundError:
                pass
            time.sleep(0.002)  # a write takes ~30 ms
        return False

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=WAIT)
        finally:
            self.kill()
        self._reader.join(timeout=10)
        return code

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(timeout=WAIT)

    def text(self) -> str:
        return "\n".join(self.stderr[-30:])


def assert_checkpoints_load(out: Path) -> list[int]:
    """Every checkpoint in the run folder loads; the other files there are checksums of checkpoints
    or hidden temporary files of a write the kill cut short. Returns the checkpoint steps."""
    folder = out / "checkpoints"
    steps = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = path.name
        if CHECKPOINT_PATTERN.match(name):
            payload = load_checkpoint(path)  # raises UserError for a bad one
            assert payload["record"]["stage"] == "pretrain" and payload["progress"]["step"] == int(name[5:14])
            steps.append(payload["progress"]["step"])
        elif name.endswith(".pt.sha256"):
            continue
        else:
            assert name.startswith(".ckpt-") and name.endswith(".tmp"), f"unexpected file {name}"
    if (out / "model.pt").exists():
        load_checkpoint(out / "model.pt")
    found = CheckpointManager(folder).latest()
    assert (found[1]["progress"]["step"] if found else None) == (max(steps) if steps else None)
    return steps


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["result"]["steps"] == second["result"]["steps"] == TOTAL_STEPS
    assert first["model"].keys() == second["model"].keys()
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped bit in the middle of the tensor data (only the checksum can tell)
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))


# ---------------------------------------------------------------- SIGKILL and resume

# (seed, kinds of kill, how to damage the newest checkpoint before the last resume)
SCENARIOS = [(11, ["write", "time"], "truncate"), (12, ["step", "write"], "flip")]


@pytest.mark.slow  # 39 s; test_stop_signals_write_a_checkpoint_within_a_step_and_resume_finishes and the toy stage's
# SIGKILL test check a kill, then an exact resume, at one point each
def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path):
    # The uninterrupted reference runs alongside (two cores, one thread each).
    reference = Run(tmp_path / "reference")
    try:
        for seed, kills, harm in SCENARIOS:
            rng = random.Random(seed)
            out = tmp_path / f"killed-{seed}"
            for n, kind in enumerate(kills):
                run = Run(out, resume=n > 0)
                try:
                    if kind == "time":
                        time.sleep(rng.uniform(0.5, 12.0))  # startup, data, model, training or saving
                    elif kind == "step":
                        run.wait_for_step(rng.randrange(1, TOTAL_STEPS))
                    else:
                        run.wait_for_step(rng.randrange(1, TOTAL_STEPS - 6))
                        run.wait_for_checkpoint_write()
                    run.kill()
                finally:
                    run.kill()
                assert run.proc.returncode in (-signal.SIGKILL, 0), run.text()
                left = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() else []
                print(f"seed {seed} kill {n} ({kind}) after {run.stderr[-1:]}: {left}")  # shown with -s
                assert_checkpoints_load(out)
            steps = assert_checkpoints_load(out)
            damaged = len(steps) >= 2 and not (out / "result.json").exists()
            if damaged:
                # Damage the newest checkpoint after the fact: --resume must fall back to the one before.
                newest = list_checkpoints(out / "checkpoints")[-1]
                damage(newest, harm)
                if harm == "truncate":
                    newest.with_name(newest.name + ".sha256").unlink()  # the zip reader must notice
                with pytest.raises(UserError):
                    load_checkpoint(newest)
            finished = (out / "result.json").exists()  # a kill that came after the run's end
            run = Run(out, resume=True)
            assert run.finish() == (2 if finished else 0), run.text()  # a finished run is not resumed
            print(f"seed {seed} damaged newest: {damaged and harm}; final run: "
                  f"{[line for line in run.stderr if line.startswith(('skipping', 'resumed'))]}")
            if damaged:
                assert any(line.startswith("skipping ") for line in run.stderr), run.text()
                assert any(line.startswith("resumed from ") and f" at step {steps[-2]} " in line
                           for line in run.stderr), run.text()
            assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
            assert (out / "result.json").exists()
        assert reference.finish() == 0, reference.text()
    finally:
        reference.kill()
    for seed, _, _ in SCENARIOS:
        assert_same_weights(tmp_path / "reference" / "model.pt", tmp_path / f"killed-{seed}" / "model.pt")


# ---------------------------------------------------------------- SIGTERM / SIGINT

def test_stop_signals_write_a_checkpoint_within_a_step_and_resume_finishes(tmp_path):
    """SIGTERM -> exit 143, SIGINT -> exit 130 (the two runs side by side: two cores)."""
    signals = {signal.SIGTERM: 143, signal.SIGINT: 130}
    # No periodic checkpoints: the only one is the one the signal asks for.
    runs = {signum: Run(tmp_path / signum.name, "--checkpoint-every", "0", epochs=1) for signum in signals}
    try:
        for signum, run in runs.items():
            assert run.wait_for_step(4), run.text()
            run.seen = run.last_step  # later than 4 when the machine is busy and lines queued up
            run.sent = time.monotonic()
            run.proc.send_signal(signum)
        for signum, run in runs.items():
            assert run.finish() == signals[signum], run.text()
            run.took = time.monotonic() - run.sent
    finally:
        for run in runs.values():
            run.kill()
    resumed = {}
    for signum, run in runs.items():
        out = tmp_path / signum.name
        assert run.stderr[-1].startswith(f"simclrv2: stopped by {signum.name}; checkpoint "), run.text()
        last_step = max(int(m.group(1)) for line in run.stderr if (m := STEP_LINE.match(line)))
        checkpoints = list_checkpoints(out / "checkpoints")
        assert len(checkpoints) == 1, checkpoints
        assert str(checkpoints[0]) in run.stderr[-1]
        payload = load_checkpoint(checkpoints[0])
        # The signal came after the line of step `seen`: the run stops at the end of the step under
        # way (one more if the reading of its lines lagged), and logs no step after the checkpoint.
        step = payload["progress"]["step"]
        assert step == last_step, (step, run.text())
        assert run.seen <= step <= run.seen + 2 < TOTAL_STEPS // 2, (run.seen, step)
        assert run.took < 30, run.took
        assert not (out / "model.pt").exists() and not (out / "result.json").exists()
        resumed[signum] = (Run(out, "--checkpoint-every", "0", epochs=1, resume=True), checkpoints[0],
                           step)
    for signum, (run, checkpoint, step) in resumed.items():
        out = tmp_path / signum.name
        assert run.finish() == 0, run.text()
        assert any(line.startswith(f"resumed from {checkpoint} at step {step} ") for line in run.stderr), \
            run.text()
        assert load_checkpoint(out / "model.pt")["result"]["steps"] == TOTAL_STEPS // 2 and (out / "result.json").exists()


# ---------------------------------------------------------------- bad checkpoints

class Gadget:
    """Any class: a checkpoint holding an instance must not load (unpickling runs code)."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Plain:
    def __init__(self):
        self.value = 3


def good_payload() -> dict:
    record = {"stage": "pretrain", "model_config": {"kind": "contrastive", "encoder": "r18_0.25x_sk0"},
              "image_size": 16}
    return {"record": record, "model": {"w": torch.randn(64, 64), "b": torch.zeros(64)}, "step": 3}


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment of the error it must give)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    truncated = save_checkpoint(good_payload(), folder / "truncated.pt")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    truncated.with_name("truncated.pt.sha256").unlink()
    files["truncated"] = (truncated, "is truncated or corrupt")
    flipped = save_checkpoint(good_payload(), folder / "flipped.pt")
    damage(flipped, "flip")
    files["corrupted byte"] = (flipped, "sha256 does not match")
    copied = save_checkpoint(good_payload(), folder / "copied.pt")
    damage(copied, "flip")
    copied.with_name("copied.pt.sha256").unlink()  # a copy without its checksum: the zip CRC-32 tells
    files["corrupted byte, no checksum file"] = (copied, "Bad CRC-32")
    pickle_part = save_checkpoint(good_payload(), folder / "pickle.pt")
    data = bytearray(pickle_part.read_bytes())
    data[data.index(b"model_config") + 2] ^= 0x01  # inside data.pkl
    pickle_part.write_bytes(bytes(data))
    pickle_part.with_name("pickle.pt.sha256").unlink()
    files["corrupted pickle, no checksum file"] = (pickle_part, "corrupt")
    for name, obj in [("instance", {**good_payload(), "extra": Plain()}),
                      ("reduce gadget", {**good_payload(), "extra": Gadget()}),
                      ("function", {**good_payload(), "hook": os.system}),
                      ("bare object", Plain())]:
        path = folder / f"{name.replace(' ', '_')}.pt"
        torch.save(obj, path)
        files[name] = (path, "carries pickled Python objects")
    files["empty"] = (folder / "empty.pt", "truncated or corrupt")
    files["empty"][0].write_bytes(b"")
    files["not a checkpoint"] = (folder / "plain.pt", "not a simclrv2 checkpoint")
    torch.save({"w": torch.ones(2)}, files["not a checkpoint"][0])
    return files


def test_load_checkpoint_refuses_bad_files_with_one_line_errors(tmp_path, capfd):
    save_checkpoint(good_payload(), tmp_path / "good.pt")
    assert torch.equal(load_checkpoint(tmp_path / "good.pt")["model"]["b"], torch.zeros(64))
    for name, (path, fragment) in bad_checkpoints(tmp_path / "bad").items():
        with pytest.raises(UserError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert fragment in message and str(path) in message, (name, message)
        assert len(message.splitlines()) == 1, (name, message)
    assert "pwned" not in capfd.readouterr().out  # the gadget never ran


def test_resume_from_a_bad_checkpoint_is_exit_code_2_and_one_line(tmp_path):
    files = bad_checkpoints(tmp_path / "bad")
    chosen = ["truncated", "corrupted byte", "reduce gadget"]
    procs = {}
    for i, name in enumerate(chosen):  # in parallel: each is mostly interpreter start-up
        path = files[name][0]
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "simclrv2", "pretrain", *TINY, "--epochs", "1", "--out",
             str(tmp_path / f"run{i}"), "--resume", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=WAIT)
        path, fragment = files[name]
        assert proc.returncode == 2, (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (name, stderr)
        assert lines[0].startswith("simclrv2: error: ") and fragment in lines[0] and str(path) in lines[0]
        assert "pwned" not in stdout


def test_latest_falls_back_past_a_truncated_or_corrupted_newest_checkpoint(tmp_path, caplog):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=3)
    for step in (3, 6, 9):
        manager.save({**good_payload(), "step": step}, step)
    newest = list_checkpoints(manager.directory)[-1]
    newest.write_bytes(newest.read_bytes()[:5000])  # truncated, checksum kept
    path, payload = manager.latest()
    assert payload["step"] == 6 and path.name == "ckpt-000000006.pt"
    assert any("skipping" in r.getMessage() and "ckpt-000000009.pt" in r.getMessage() for r in caplog.records)
    # without its checksum the truncated zip is caught by the reader itself
    newest.with_name(newest.name + ".sha256").unlink()
    assert manager.latest()[1]["step"] == 6
    # a second damaged one (flipped byte, checksum kept): back to step 3
    damage(list_checkpoints(manager.directory)[-2], "flip")
    assert manager.latest()[1]["step"] == 3
    # a stale temporary file of a killed write is removed by the next save
    stale = manager.directory / ".ckpt-000000012.pt.abc123.tmp"
    stale.write_bytes(b"partial")
    manager.save({**good_payload(), "step": 12}, 12)
    assert not stale.exists() and manager.latest()[1]["step"] == 12


def test_written_files_follow_the_umask_not_mkstemps_private_mode(tmp_path):
    from simclrv2.checkpoint import FILE_MODE, atomic_write_bytes

    mask = os.umask(0)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    atomic_write_bytes(tmp_path / "result.json", b"{}")
    path = save_checkpoint(good_payload(), tmp_path / "model.pt")
    for written in (tmp_path / "result.json", path, path.with_name(path.name + ".sha256")):
        assert written.stat().st_mode & 0o777 == FILE_MODE, written


def test_background_checkpoint_writes_the_snapshot_and_reports_its_error_on_wait(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    weights = torch.zeros(1000)
    path = manager.save_in_background({**good_payload(), "model": {"w": weights}}, 3)
    weights += 1  # training goes on while the file is written: the file holds the values at save time
    manager.wait()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(1000))
    # a second write waits for none (the first is done) and prunes as save does
    for step in (6, 9):
        manager.save_in_background({**good_payload(), "step": step}, step)
    manager.wait()
    assert [p.name for p in list_checkpoints(manager.directory)] == ["ckpt-000000006.pt", "ckpt-000000009.pt"]
    # a write that fails (its folder became a file) raises in the training thread, at the next wait
    blocked = CheckpointManager(tmp_path / "not_a_folder", keep=2)
    (tmp_path / "not_a_folder").write_text("x")
    blocked.save_in_background(good_payload(), 12)
    with pytest.raises(OSError):
        blocked.wait()
    blocked.wait()  # reported once
    # what weights_only loading would refuse fails at once, not in the thread
    with pytest.raises(TypeError):
        manager.save_in_background({**good_payload(), "bad": object()}, 15)
