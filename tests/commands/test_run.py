"""`simclrv2 run` / `demo`: stage folders, skip and resume, validation before work, the report."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import load_checkpoint

from simclrv2.commands.run import PIPELINE_PRESETS, label_slug, load_pipeline_config, packaged_config, plan, run_pipeline
from conftest import SHORT_DEMO
from simclrv2.commands.report import results_table

STAGES = ["pretrain", "linear_eval", "finetune_2perclass", "supervised_2perclass", "distill_self_2perclass",
          "distill_r18_0.125x_sk0_2perclass", "select_2perclass", "finetune_selected_2perclass"]


def test_demo_pipeline_shows_the_papers_gains(demo_run):
    # The acceptance figures of the demo, on the shortened pipeline (see BENCHMARKS.md for the full one).
    results = json.loads((demo_run / "results.json").read_text())["stages"]
    assert list(results) == STAGES
    tuned, scratch = results["finetune_2perclass"], results["supervised_2perclass"]
    assert tuned["holdout_top1"] >= scratch["holdout_top1"] + 0.10
    assert results["distill_self_2perclass"]["holdout_top1"] >= tuned["holdout_top1"] - 0.01
    assert results["linear_eval"]["holdout_top1"] > 0.8
    table = results_table(demo_run)
    assert "| fine-tuned |" in table and "| supervised baseline |" in table and "distilled (self)" in table


def test_demo_fine_tunes_on_selected_labels_beside_random_ones(demo_run):
    results = json.loads((demo_run / "results.json").read_text())["stages"]
    selected = (demo_run / "select_2perclass" / "selected.txt").read_text().splitlines()
    assert len(selected) == results["finetune_2perclass"]["labeled_images"] == 20
    assert results["finetune_selected_2perclass"]["labeled_images"] == 20
    assert results["finetune_selected_2perclass"]["selected"] is True
    assert "| fine-tuned (selected labels) |" in results_table(demo_run)
    report = (demo_run / "report.md").read_text()
    assert "(select_2perclass/map.png)" in report and "(select_2perclass/contact_sheet.png)" in report


def test_select_section_is_validated_and_adds_selected_stages(tmp_path):
    cfg = load_pipeline_config(str(packaged_config("demo")), ['labels=["1%", "all"]', "select.distill=true"],
                               {"out": str(tmp_path)})
    folders = [stage.id.folder for stage in plan(cfg)]
    assert "select_1pct" in folders and "finetune_selected_1pct" in folders
    assert "distill_self_selected_1pct" in folders and "select_all" not in folders
    with pytest.raises(Exception, match="select.method"):
        plan(load_pipeline_config(str(packaged_config("demo")), ["select.method=best"], {"out": str(tmp_path)}))


def test_report_has_table_and_figures(demo_run):
    report = (demo_run / "report.md").read_text()
    assert "| method |" in report
    for figure in ("training_curves.png", "accuracy_vs_labels.png", "confusion_matrix.png", "embedding_tsne.png"):
        assert f"({figure})" in report
        assert (demo_run / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(demo_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(demo_run, run)
    last = run / STAGES[-1]
    (last / "result.json").unlink()  # as if killed after its last checkpoint
    (last / "model.pt").unlink()
    checkpoints = sorted((last / "checkpoints").glob("ckpt-*.pt"))
    assert checkpoints
    messages = []
    cfg = load_pipeline_config(str(packaged_config("demo")), SHORT_DEMO, {"out": str(run)})
    run_pipeline(cfg, progress=messages.append)
    assert all("skipped" in m for m in messages[:-1]), messages
    assert messages[-1].endswith(": resuming")
    result = json.loads((last / "result.json").read_text())
    assert result["steps"] == json.loads((demo_run / STAGES[-1] / "result.json").read_text())["steps"]


@pytest.mark.parametrize("override, message", [
    ("pretrain.epochz=3", "epochz"),
    ("pretrain.epochs=many", "'pretrain.epochs' must be an integer"),
    ("finetune.lr=-1", "'finetune.lr' must be >= 0"),
    ("colour=1", "colour"),
    ("distill.students=[r99_1x_sk0]", "r99_1x_sk0"),
    ("skip=[pretraining]", "skip"),
    ("data=/no/such/images", "data /no/such/images: no such file or folder"),
    ("labels=[2/class, /no/such/1percent.txt]", "/no/such/1percent.txt"),
])
def test_configs_are_validated_before_any_work(tmp_path, override, message):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "run", "demo", "--set", f"out={out}", "--set", override],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_every_preset_plans(tmp_path):
    for name in PIPELINE_PRESETS:
        cfg = load_pipeline_config(str(packaged_config(name)), [f"out={tmp_path / name}"])
        stages = plan(cfg)
        assert stages[0].id.folder == "pretrain" and any(s.id.kind == "distill" for s in stages)
    imagenet = plan(load_pipeline_config(str(packaged_config("imagenet")), [f"out={tmp_path}"]))
    assert imagenet[0].cfg.batch_size == 4096 and imagenet[0].cfg.memory == 65536
    assert imagenet[0].cfg.micro_batch == 64  # sized for 8 x 80 GB (benchmarks/memory_estimate.py)
    assert {s.cfg.student for s in imagenet if s.id.kind == "distill"} == {None, "r50_1x_sk0"}
    # the pipeline preset and the per-stage presets agree with each other and with SPEC
    from simclrv2.config import load_yaml
    stage_presets = {name: load_yaml(str(packaged_config(name))) for name in (
        "imagenet_pretrain", "imagenet_finetune_1pct", "imagenet_finetune_10pct", "imagenet_distill_self",
        "imagenet_distill_r50", "imagenet_linear_eval")}
    assert stage_presets["imagenet_finetune_1pct"]["epochs"] == 60
    assert stage_presets["imagenet_finetune_10pct"]["epochs"] == 30
    finetunes = [s for s in imagenet if s.id.kind == "finetune"]
    assert [s.cfg.epochs for s in finetunes] == [None, None]  # finetune's per-fraction defaults (test_finetune)
    for stage in imagenet:
        preset = {"pretrain": "imagenet_pretrain", "linear_eval": "imagenet_linear_eval",
                  "distill": "imagenet_distill_r50" if getattr(stage.cfg, "student", None) else "imagenet_distill_self",
                  }.get(stage.id.kind)
        if preset is None:
            continue
        for key, value in stage_presets[preset].items():
            # (the pipeline leaves the distillation temperature to its default by student: 0.1 / 1.0)
            if key not in ("image_size", "model", "checkpoint_epochs", "workers", "temperature"):
                assert getattr(stage.cfg, key) == value, (stage.id, key)


def test_label_slugs():
    assert label_slug("1%") == "1pct" and label_slug("5/class") == "5perclass"
    assert label_slug("/data/imagenet/1percent.txt") == "1percent"


def test_report_command_rebuilds_the_report(demo_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(demo_run, run)
    (run / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "report", str(run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "report.md").is_file() and "| fine-tuned |" in proc.stdout


# A pipeline of tiny stages (seconds each) with a checkpoint every 2 steps, for kill-and-rerun.
TINY_PIPELINE = """\
out: {out}
data: digits
holdout: 0.2
seed: 3
labels: ["2/class"]
common: {{image_size: 16, workers: 0, tensorboard: false, log_every: 1, log_seconds: 0, checkpoint_every: 2}}
pretrain: {{model: r18_0.125x_sk0, epochs: 2, batch_size: 128, temperature: 0.5, flip: false, knn_monitor: false}}
linear_eval: {{epochs: 2, batch_size: 256}}
finetune: {{epochs: 12, lr: 0.1}}
distill: {{students: [self], epochs: 2, batch_size: 128}}
"""
TINY_STAGES = ["pretrain", "linear_eval", "finetune_2perclass", "supervised_2perclass", "distill_self_2perclass"]
STEP = re.compile(r"^\S+ step (\d+)/(\d+)")
KILL_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simclrv2", "run", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=KILL_ENV)


def kill_in_the_middle_of(proc: subprocess.Popen, index: int, name: str) -> list[str]:
    """Read the run's log until stage ``name`` is half done, then SIGKILL it; returns the lines read."""
    lines, in_stage = [], False
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        lines.append(line.rstrip())
        if line.startswith(f"[{index}/") and f"] {name}" in line:
            in_stage = True
        elif in_stage and (match := STEP.match(line)):
            done, total = int(match.group(1)), int(match.group(2))
            if done >= max(3, total // 2):
                proc.kill()
                proc.wait(timeout=60)
                return lines
        assert time.monotonic() < deadline, "\n".join(lines[-20:])
    raise AssertionError(f"the run ended before the middle of {name}:\n" + "\n".join(lines[-20:]))


@pytest.mark.slow  # 55 s; test_rerun_skips_finished_stages_and_resumes_an_interrupted_one and the per-stage kill tests
# (tests/reliability/test_kill_and_resume.py, tests/stages/test_toy_stage.py) cover a killed stage and the rerun
def test_sigkill_in_every_stage_then_rerun_gives_the_uninterrupted_results(tmp_path):
    configs = {}
    for name in ("straight", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(TINY_PIPELINE.format(out=tmp_path / name))
    straight = start_run(configs["straight"])
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]

    for index, name in enumerate(TINY_STAGES, 1):
        proc = start_run(configs["killed"])
        lines = kill_in_the_middle_of(proc, index, name)
        earlier = [line for line in lines if (m := re.match(r"^\[(\d+)/", line)) and int(m.group(1)) < index - 1]
        assert len(earlier) == max(0, index - 2) and all("finished earlier, skipped" in x for x in earlier), lines
        if index > 1:  # the stage killed last time resumes and finishes, this one starts afresh
            assert f"[{index - 1}/5] {TINY_STAGES[index - 2]}: resuming" in lines, lines
            assert f"[{index}/5] {name}" in lines, lines
        assert not (tmp_path / "killed" / name / "result.json").exists()  # killed mid-stage
    final = start_run(configs["killed"])
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    assert f"] {TINY_STAGES[-1]}: resuming" in err

    expected = json.loads((tmp_path / "straight" / "results.json").read_text())["stages"]
    got = json.loads((tmp_path / "killed" / "results.json").read_text())["stages"]
    assert list(got) == TINY_STAGES
    for name in TINY_STAGES:
        for key in ("steps", "holdout_top1"):
            assert got[name].get(key) == expected[name].get(key), (name, key)
        mine = load_checkpoint(tmp_path / "killed" / name / "model.pt")["model"]
        theirs = load_checkpoint(tmp_path / "straight" / name / "model.pt")["model"]
        assert mine.keys() == theirs.keys()
        for key in theirs:
            assert torch.equal(mine[key], theirs[key]), (name, key)
