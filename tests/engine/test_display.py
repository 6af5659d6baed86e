"""The progress display: a bar on a terminal (tested on a pseudo-terminal), plain lines on a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest


def finetune_args(checkpoint, out):
    return [sys.executable, "-m", "simclrv2", "finetune", "--from", str(checkpoint), "--data", "digits",
            "--labels", "2/class", "--epochs", "3", "--log-every", "1", "--holdout", "0.2", "--workers", "0",
            "--device", "cpu", "--no-tensorboard", "--out", str(out)]


def on_terminal(argv, rows: int = 30, columns: int = 120) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a pseudo-terminal of that size (0 x 0: one that reports
    none); everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("size", [(30, 120), (0, 0)])
def test_a_terminal_gets_a_bar_with_rate_eta_loss_and_the_held_out_figure(tiny_pretrained, tmp_path, size):
    code, out = on_terminal(finetune_args(tiny_pretrained, tmp_path / "tty"), *size)
    assert code == 0, out[-3000:]
    assert "\r" in out and "finetune:" in out and "3/3" in out
    assert "step/s" in out or "s/step" in out
    assert "loss=" in out and "<" in out  # the postfix and the time left
    assert "finetune step 1/3" not in out  # no plain log lines under the bar
    assert "held-out top-1" in out  # the end-of-run summary


def test_a_pipe_gets_plain_log_lines(tiny_pretrained, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(finetune_args(tiny_pretrained, tmp_path / "pipe"), capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr
    # the first and the last step (a line at most every 30 s between them: these take less)
    assert [line.split(" epoch")[0] for line in proc.stderr.splitlines() if line.startswith("finetune step ")] == [
        f"finetune step {k}/3" for k in (1, 3)]
    assert "held-out top-1" in proc.stdout and "{" not in proc.stdout  # the summary, not a JSON dump


def test_plain_lines_come_at_most_every_30_seconds_with_the_steps_headline(caplog):
    """Not on a terminal: a line at the first step, then at most one per --log-seconds (30), and at the last
    step; a step whose headline is not its loss shows the headline by name, and the loss beside it."""
    from simclrv2.engine.display import Display

    now = [0.0]
    display = Display("distill", 100, 0, main=True, bar=False, headline=("distill_kl_t2", "KL to teacher x tau^2"),
                      seconds=30.0, clock=lambda: now[0])
    with caplog.at_level("INFO", logger="simclrv2"):
        for step in range(1, 101):
            now[0] = step * 1.0  # a step a second
            display.train({"step": step, "epoch": step / 10, "loss": 300.0, "distill_kl_t2": 0.02, "lr": 0.1,
                           "images_per_s": 50.0})
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" epoch")[0] for line in lines] == [f"distill step {k}/100" for k in (1, 31, 61, 91, 100)]
    assert "KL to teacher x tau^2 0.0200 (loss 300.0000) lr 0.1" in lines[0]
