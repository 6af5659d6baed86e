"""Nothing a user has is lost or left half written.

- ``export`` and ``predict --out`` never write over their own input, and over an existing file only
  with ``--overwrite``.
- ``--overwrite`` never reads a file it replaces (``finetune --from OUT/model.pt --out OUT``), and replaces
  the old run only once the new one has finished: the old run's files wait in ``OUT/.replaced/`` and come
  back, byte for byte, when the new run fails; a killed ``--overwrite`` run resumes, and its end removes them.
- ``select`` holds its folder's lock, replaces an earlier selection only with ``--overwrite`` and then all
  of it (no stale figure); ``embed`` and ``select`` write their files together or not at all, whatever
  the file names (not valid UTF-8 included).
- Temporary files of writes that a kill cut short are removed by the next run in the folder.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys

import numpy as np

from reliability_helpers import ENV, TINY, digit_images, one_line_error, simclrv2, small_classifier, snapshot
from simclrv2 import cli


def test_export_and_predict_never_write_over_their_input_and_replace_files_only_when_asked(tmp_path, capsys):
    model = small_classifier(tmp_path / "model.pt")
    before = model.read_bytes()
    image = digit_images(tmp_path / "images", count=3) / "0" / "0.png"
    for argv in (["export", "--model", model, "--format", "safetensors", "--out", model, "--overwrite"],
                 ["predict", "--model", model, image, "--out", model, "--overwrite"],
                 ["predict", "--model", model, image, "--out", image, "--overwrite"]):
        assert cli.main(list(map(str, argv))) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would destroy it" in err[0], err
    assert model.read_bytes() == before
    kept = tmp_path / "notes.csv"
    kept.write_text("mine\n")
    assert cli.main(["predict", "--model", str(model), str(image), "--out", str(kept)]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err and kept.read_text() == "mine\n"
    assert cli.main(["predict", "--model", str(model), str(image), "--out", str(kept), "--overwrite"]) == 0
    assert kept.read_text().startswith("path,class")


def test_overwrite_refuses_an_input_that_is_a_file_of_the_run_it_replaces(pretrain_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pretrain_run, out)
    before = snapshot(out)
    proc = simclrv2("finetune", "--from", out / "model.pt", "--data", "digits", "--labels", "2/class",
                    "--image-size", "16", "--epochs", "1", "--workers", "0", "--out", out, "--overwrite")
    one_line_error(proc, "--from", "which --overwrite would replace")
    assert snapshot(out) == before


def test_overwrite_and_resume_together_are_refused(pretrain_run):
    proc = simclrv2("pretrain", *TINY, "--out", pretrain_run, "--overwrite", "--resume", "/nowhere/ckpt.pt")
    one_line_error(proc, "pass only one of them")


def test_a_failed_overwrite_leaves_the_finished_run_byte_for_byte(tmp_path):
    data = digit_images(tmp_path / "images", count=60)
    (data / "1" / "broken.png").write_bytes(b"not an image")
    run = ["pretrain", "--data", data, "--model", "r18_0.125x_sk0", "--image-size", "16", "--epochs", "2",
           "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--no-knn-monitor", "--out", tmp_path / "run"]
    assert simclrv2(*run).returncode == 0  # the broken image is skipped
    before = snapshot(tmp_path / "run")
    proc = simclrv2(*run, "--overwrite", "--cache", "off", "--strict-data", "--checkpoint-every", "1")
    assert proc.returncode == 2 and "broken.png" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
    assert snapshot(tmp_path / "run") == before  # .replaced gone, the new run's checkpoints gone
    assert simclrv2(*run, "--overwrite").returncode == 0  # a finished overwrite leaves nothing aside
    assert not (tmp_path / "run" / ".replaced").exists() and snapshot(tmp_path / "run") != before


def test_a_killed_overwrite_keeps_the_old_run_aside_until_the_resumed_run_finishes(pretrain_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(pretrain_run, out)
    old = snapshot(out)
    args = [sys.executable, "-m", "simclrv2", "pretrain", *map(str, TINY), "--checkpoint-every", "2",
            "--log-every", "1", "--log-seconds", "0", "--out", str(out)]
    proc = subprocess.Popen(args + ["--overwrite"], stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stderr:
            if line.startswith("pretrain step 3/"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert snapshot(out / ".replaced") == old  # the finished run, whole, aside
    one_line_error(simclrv2(*args[3:]), "unfinished run (the run it replaces waits in", ".replaced")
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "result.json").is_file() and not (out / ".replaced").exists()


def test_select_holds_a_lock_and_replaces_an_earlier_selection_only_whole_and_when_asked(tiny_pretrained, tmp_path,
                                                                                        capsys):
    from simclrv2.engine.run_folder import RunFolder

    out = tmp_path / "sel"
    argv = ["select", "--from", str(tiny_pretrained), "--data", "digits", "--budget", "10", "--workers", "0",
            "--out", str(out)]
    holder = RunFolder(out)
    holder.claim()  # another select (or run) writing there
    try:
        assert cli.main(argv) == 2
        assert f"in use by a running simclrv2 process (pid {os.getpid()})" in capsys.readouterr().err
    finally:
        holder.release(failed=True)
    assert cli.main(argv) == 0 and (out / "contact_sheet.png").is_file()
    first = snapshot(out)
    assert cli.main(argv + ["--seed", "1"]) == 2
    assert "holds a selection already: pass --overwrite" in capsys.readouterr().err and snapshot(out) == first
    assert cli.main(argv + ["--seed", "1", "--overwrite", "--no-figures"]) == 0
    assert not (out / "contact_sheet.png").exists() and not (out / "map.png").exists()  # no stale figure
    assert sorted(os.listdir(out)) == ["features.npy", "index.csv", "selected.txt", "selection.csv", "selection.json"]


def test_embed_and_select_write_their_files_together_and_take_any_file_name(tiny_pretrained, tmp_path, monkeypatch):
    from simclrv2.commands import embed

    names = [f"{k}.png" for k in range(12)]
    names[4] = b"\xff\xfeodd.png"  # not valid UTF-8, as some cameras and old archives write
    data = digit_images(tmp_path / "images", count=12, names=names)
    for command in ("embed", "select"):
        out = tmp_path / command
        extra = ["--budget", "3", "--no-figures"] if command == "select" else []
        assert cli.main([command, "--from", str(tiny_pretrained), "--data", str(data), "--workers", "0",
                         "--out", str(out), *extra]) == 0
        with open(out / "index.csv", encoding="utf-8", errors="surrogateescape", newline="") as f:
            paths = [row["path"] for row in csv.DictReader(f)]
        assert os.fsencode(paths[4]).endswith(b"/1/\xff\xfeodd.png") or any(
            os.fsencode(p).endswith(b"\xff\xfeodd.png") for p in paths)
        assert not np.isnan(np.load(out / "features.npy")).any()

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(embed, "atomic_write_bytes", full_disk)  # index.csv cannot be written
    out = tmp_path / "half"
    assert cli.main(["embed", "--from", str(tiny_pretrained), "--data", str(data), "--workers", "0",
                     "--out", str(out)]) == 2
    assert not out.exists()  # neither features.npy alone nor an empty folder


def test_temporary_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    from simclrv2.engine.run_folder import RunFolder

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("")
    stale = [out / ".model.pt.k2j3.tmp", out / ".result.json.x1.tmp", out / "checkpoints" / ".ckpt-000000003.pt.a.tmp"]
    for path in stale:
        path.write_bytes(b"")
    folder = RunFolder(out)
    folder.claim()
    folder.release(failed=False)
    assert not any(p.exists() for p in stale) and (out / "metrics.jsonl").exists()
