"""What runs leave behind (``simclrv2.results``): read back whole, with one-line errors for damage, and the
pipeline's stage ids and folder names."""

from __future__ import annotations

import json

import pytest

from simclrv2.engine.run_folder import MetricsLog
from simclrv2.errors import UserError
from simclrv2.results import StageId, read_metrics, read_result, read_results, write_result


def test_a_partial_last_metrics_line_is_skipped_by_readers_and_by_resume(tmp_path):
    good = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"kind": "train", "st')  # a kill mid-write
    assert read_metrics(tmp_path, "train") == good
    MetricsLog(path, enabled=True, tensorboard=False).truncate(2)  # a resume from the step-2 checkpoint
    assert path.read_text().splitlines() == [json.dumps(r) for r in good[:2]]


def test_a_damaged_or_missing_result_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist: finish or resume the run first"):
        read_result(tmp_path)
    (tmp_path / "result.json").write_text('{"steps": 3')
    with pytest.raises(UserError, match=r"result.json is damaged \(not a JSON object\)"):
        read_result(tmp_path)
    write_result(tmp_path, {"steps": 3})
    assert read_result(tmp_path) == {"steps": 3}
    with pytest.raises(UserError, match="neither results.json nor result.json"):
        read_results(tmp_path / "nothing")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="results.json is damaged"):
        read_results(tmp_path)


@pytest.mark.parametrize("stage_id, folder, row", [
    (StageId("pretrain"), "pretrain", None),
    (StageId("linear_eval", "all"), "linear_eval", "linear eval (all labels)"),
    (StageId("finetune", "1%"), "finetune_1pct", "fine-tuned"),
    (StageId("finetune", "all"), "finetune_all", "fine-tuned"),
    (StageId("supervised", "5/class"), "supervised_5perclass", "supervised baseline"),
    (StageId("distill", "10%", "self"), "distill_self_10pct", "distilled (self)"),
    (StageId("distill", "1%", "r18_1x_sk0", selected=True), "distill_r18_1x_sk0_selected_1pct",
     "distilled (r18_1x_sk0, selected labels)"),
    (StageId("finetune", "1%", selected=True), "finetune_selected_1pct", "fine-tuned (selected labels)"),
    (StageId("select", "1%"), "select_1pct", None),
])
def test_stage_ids_name_their_folders_and_rows_as_before(stage_id, folder, row):
    assert stage_id.folder == folder and stage_id.row == row
