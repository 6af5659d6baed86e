"""`simclrv2 report`: a pipeline's report (time per stage, best few-label model) and one stage's report."""

from __future__ import annotations

import json
import shutil

from simclrv2.cli import main
from simclrv2.engine.summary import summary_text
from simclrv2.commands.report import _best_classifier


def test_pipeline_report_has_time_per_stage_and_the_best_few_label_model(demo_run):
    report = (demo_run / "report.md").read_text()
    assert "## Time per stage" in report and "| pretrain |" in report and "| all stages |" in report
    results = json.loads((demo_run / "results.json").read_text())
    best = _best_classifier(results)
    assert best != "linear_eval" and f"best few-label classifier ({best})" in report


def test_best_classifier_skips_models_trained_on_every_label():
    stages = {"linear_eval": {"kind": "linear_eval", "labels": "all", "holdout_top1": 0.95},
              "finetune_all": {"kind": "finetune", "labels": "all", "holdout_top1": 0.97},
              "finetune_1pct": {"kind": "finetune", "labels": "1%", "holdout_top1": 0.80},
              "distill_self_1pct": {"kind": "distill", "labels": "1%", "holdout_top1": 0.83},
              "pretrain": {"kind": "pretrain", "labels": None}}
    assert _best_classifier({"stages": stages}) == "distill_self_1pct"
    only_all = {k: v for k, v in stages.items() if v["labels"] != "1%"}
    assert _best_classifier({"stages": only_all}) == "finetune_all"


def test_one_stage_folder_gets_its_own_report(demo_run, tmp_path, capsys):
    for stage, figures in [("finetune_2perclass", ["training_curves.png", "confusion_matrix.png"]),
                           ("pretrain", ["training_curves.png", "embedding_tsne.png"])]:
        folder = tmp_path / stage
        shutil.copytree(demo_run / stage, folder)
        assert main(["report", str(folder)]) == 0
        report = (folder / "report.md").read_text()
        assert f"# {stage.split('_')[0]} run report" in report and "finished:" in report
        for figure in figures:
            assert f"({figure})" in report
            assert (folder / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "report:" in capsys.readouterr().out


def test_report_of_a_folder_that_is_no_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither results.json nor result.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_summary_says_how_to_get_a_score_when_nothing_was_held_out():
    text = summary_text({"stage": "distill", "steps": 12, "train_seconds": 75.0}, "runs/x")
    assert text.startswith("distill finished: 12 steps in 1 min 15 s") and "--holdout" in text
    text = summary_text({"stage": "finetune", "steps": 3, "train_seconds": 1.0, "holdout_top1": 0.8217}, "r")
    assert "held-out top-1" in text and "82.2%" in text and "--holdout" not in text


def test_one_point_series_have_markers_and_equal_values_do_not_hide_each_other(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simclrv2.commands.report import _plot_label_fractions, _plot_panel

    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "train", "epoch": 1.0, "loss": 0.5}) + "\n")
    fig, ax = plt.subplots()
    assert _plot_panel(ax, folder, "stage")
    assert ax.lines[0].get_marker() == "o" and len(ax.lines[0].get_xdata()) == 1
    plt.close(fig)
    stages = {name: {"kind": kind, "labels": "1%", "student": None, "holdout_top1": 0.9}
              for name, kind in [("finetune_1pct", "finetune"), ("supervised_1pct", "supervised")]}
    captured = []
    real = plt.subplots

    def spy(*args, **kwargs):
        fig, ax = real(*args, **kwargs)
        captured.append(ax)
        return fig, ax

    plt.subplots = spy
    try:
        _plot_label_fractions(tmp_path, {"stages": stages, "labels": ["1%"]}, plt)
    finally:
        plt.subplots = real
    lines = captured[0].lines
    assert len(lines) == 2 and lines[0].get_ydata()[0] == lines[1].get_ydata()[0]
    assert lines[0].get_xdata()[0] != lines[1].get_xdata()[0] and lines[0].get_marker() != lines[1].get_marker()
