"""Every bad input or fault is one line naming the thing and the fix, with exit code 2 (never a traceback).

- YAML nested deeper than any setting (a config file, ``--set``, ``simclrv2 run``): refused by depth,
  before PyYAML's recursive composer exhausts the stack.
- A full disk (or quota, or file-size limit) during a checkpoint or the final save: the write's own
  error, naming the file, not the zip writer's garbled text; the partial file is removed.
- A file name that is not valid UTF-8: ``predict``, ``embed`` and ``select`` just work (the name is
  written as its bytes); see also ``test_no_data_lost.py``.
- A kill's partial last line in metrics.jsonl: ``--resume`` and ``report`` skip it; a damaged
  result.json is one line from ``report``.
- ``--workers`` beyond the cores: capped at the cores, with a warning.
- A model whose weights cannot fit in memory (a huge ``--model``, a crafted checkpoint record): refused
  with the figure before anything is allocated, not killed by the kernel.
- An ``--out`` that is a looping symbolic link: named as such (not "free disk space").
"""

import json
import resource
import signal
import subprocess
import sys

import pytest
import torch

from reliability_helpers import ENV, TINY, digit_images, one_line_error, simclrv2, small_classifier
from simclrv2 import cli


@pytest.mark.parametrize("where", ["config", "set", "run"])
def test_deeply_nested_yaml_is_one_line(tmp_path, where):
    deep = "[" * 3000 + "]" * 3000
    (tmp_path / "deep.yaml").write_text(f"epochs: {deep}\n")
    argv = {"config": ["pretrain", "--config", tmp_path / "deep.yaml", "--out", tmp_path / "o"],
            "set": ["pretrain", "--data", "digits", "--set", f"epochs={deep}", "--out", tmp_path / "o"],
            "run": ["run", tmp_path / "deep.yaml"]}[where]
    one_line_error(simclrv2(*argv), "nests lists or mappings more than 32 deep")


def test_a_full_disk_while_saving_is_one_line_naming_the_file(tmp_path):
    from simclrv2.checkpoint import torch_save_to

    with pytest.raises(OSError) as error, open("/dev/full", "wb", buffering=0) as full:  # ENOSPC on every write
        torch_save_to({"w": torch.zeros(100_000)}, full, "run/ckpt.pt")
    assert error.value.errno == 28 and error.value.filename == "run/ckpt.pt"

    def file_size_limit():  # a real write failure from the kernel: EFBIG past 300 kB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    proc = subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", *TINY, "--checkpoint-every", "2",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=ENV, timeout=300,
                          preexec_fn=file_size_limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and "unexpected pos" not in proc.stderr
    assert last.startswith("simclrv2: error: cannot write ") and "ckpt-000000002.pt" in last and "free disk space" in last
    assert not (tmp_path / "run").exists()  # a failed start leaves no folder (and no partial file)


def test_predict_prints_a_file_name_that_is_not_utf8_as_its_bytes(tmp_path):
    model = small_classifier(tmp_path / "model.pt")
    data = digit_images(tmp_path / "images", count=3, names=["a.png", b"\xe9t\xe9.png", "c.png"])
    # stdout as in a UTF-8 locale (strict): in the C locale Python's UTF-8 mode would escape the name itself
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "predict", "--model", str(model), str(data)],
                          capture_output=True, env={**ENV, "PYTHONIOENCODING": "utf-8:strict"}, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert b"/1/\xe9t\xe9.png," in proc.stdout and len(proc.stdout.splitlines()) == 4


def test_a_partial_metrics_line_is_skipped_by_resume_and_report(tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--checkpoint-every", "2", "--log-every", "1", "--log-seconds", "0", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "simclrv2", *map(str, args)], stderr=subprocess.PIPE, text=True,
                             env=ENV)
    try:
        for line in first.stderr:
            if line.startswith("pretrain step 5/"):
                break
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.stderr.close()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line cut short by the kill
    proc = simclrv2(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "tr')
    assert simclrv2("report", out).returncode == 0
    (out / "result.json").write_text("[1,")
    one_line_error(simclrv2("report", out), "result.json is damaged")


def test_workers_beyond_the_cores_are_capped_with_a_warning(tmp_path, tiny_pretrained):
    data = digit_images(tmp_path / "images", count=6)
    proc = simclrv2("embed", "--from", tiny_pretrained, "--data", data, "--workers", "10000", "--out", tmp_path / "e")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--workers 10000 is more than the" in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path):
    from simclrv2.checkpoint import load_checkpoint, save_checkpoint

    one_line_error(simclrv2("pretrain", "--data", "digits", "--model", "r50_100x_sk0", "--out", tmp_path / "o"),
                   "GiB of weights, more than this machine's", "choose a smaller --model")
    assert not (tmp_path / "o").exists()
    crafted = load_checkpoint(small_classifier(tmp_path / "model.pt"))
    crafted["record"]["model_config"]["encoder"] = "r18_400x_sk0"  # a record edited to a huge width
    save_checkpoint({k: v for k, v in crafted.items() if k not in ("format", "version")}, tmp_path / "crafted.pt")
    one_line_error(simclrv2("evaluate", "--model", tmp_path / "crafted.pt", "--data", "digits"), "GiB of weights")


def test_an_out_that_is_a_looping_link_is_named_as_such(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    one_line_error(simclrv2("pretrain", *TINY, "--out", tmp_path / "loop"), "symbolic link that points to itself")
    assert cli.user_error(OSError(40, "Too many levels of symbolic links", "x")).endswith("fix or remove the link")
    assert "free disk space" in cli.user_error(OSError(28, "No space left on device", "x"))
