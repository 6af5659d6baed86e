"""The labelling round trip against a real Label Studio server (SQLite, local files, a fresh data folder, a
free port): select -> tasks with pre-annotations imported through the API -> annotations as a labeller
makes them -> export -> fine-tune from the export -> the next round.

The server comes from ``$SIMCLRV2_LABEL_STUDIO`` (the ``label-studio`` executable of its own virtual
environment, as ``.ci/run`` makes it) or ``label-studio`` on PATH; without one the module is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simclrv2.cli import main
from simclrv2.data.label_studio_client import Client
from simclrv2.models.checkpoints import read_trained

EXECUTABLE = os.environ.get("SIMCLRV2_LABEL_STUDIO") or shutil.which("label-studio")
pytestmark = pytest.mark.skipif(not EXECUTABLE or not os.access(EXECUTABLE, os.X_OK),
                                reason="no Label Studio server: set SIMCLRV2_LABEL_STUDIO to its label-studio "
                                       "executable (.ci/run installs one)")
TOKEN = "simclrv2-test-token"
NAMES = ["red", "green", "blue"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, document root): one server for the module, stopped at its end."""
    root = tmp_path_factory.mktemp("label_studio")
    port = free_port()
    env = {**os.environ, "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_USERNAME": "labeller@example.com",
           "LABEL_STUDIO_PASSWORD": "simclrv2-test", "LABEL_STUDIO_USER_TOKEN": TOKEN,
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = open(root / "server.log", "wb")
    started = time.perf_counter()
    process = subprocess.Popen([EXECUTABLE, "start", "--no-browser", "--data-dir", str(root / "ls-data"),
                                "--port", str(port), "--enable-legacy-api-token"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.perf_counter() - started > 240:
                pytest.fail(f"Label Studio did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        print(f"Label Studio up in {time.perf_counter() - started:.1f} s")
        yield url, root
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def photos(server):
    """24 PNGs of noise under the document root; the labeller's class of image k is NAMES[k % 3]."""
    folder = server[1] / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(24):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{k:02d}.png")
    return folder


def truth(path: str) -> str:
    return NAMES[int(Path(path).stem[3:]) % 3]


def annotate(client: Client, task: dict, label: str, user: int | None = None, cancelled: bool = False) -> None:
    body = {"result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}],
            "was_cancelled": cancelled, "lead_time": 1.5}
    if user is not None:
        body["completed_by"] = user
    client.request("POST", f"/api/tasks/{task['id']}/annotations", body)


def project_tasks(client: Client, project: int) -> list[dict]:
    return client.request("GET", f"/api/tasks?project={project}&page_size=1000&fields=all")["tasks"]


def labeled_set(run: Path) -> dict[str, str]:
    """The images a fine-tuning run trained on and their labels (its labeled.txt)."""
    return dict(line.split("\t") for line in (run / "labeled.txt").read_text().splitlines())


def finetune(tiny_pretrained, photos, labels, out, *extra) -> int:
    return main(["finetune", "--from", str(tiny_pretrained), "--data", str(photos), "--labels", str(labels),
                 "--epochs", "1", "--image-size", "16", "--workers", "0", "--device", "cpu", "--no-tensorboard",
                 "--out", str(out), *extra])


def test_select_label_export_finetune_and_the_next_round(server, photos, tiny_pretrained, tmp_path, monkeypatch,
                                                         capsys):
    url, root = server
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    client = Client(url)
    common = ["--from", str(tiny_pretrained), "--data", str(photos), "--workers", "0", "--device", "cpu",
              "--no-figures", "--label-studio-url", url, "--project", "round trip", "--document-root", str(root)]

    # Round 1: no model yet; the tasks and the labelling config go straight to a new project.
    assert main(["select", *common, "--budget", "6", "--classes", ",".join(NAMES), "--out", str(tmp_path / "r1")]) == 0
    project = client.find_project("round trip")
    assert "<Choice value=\"green\"/>" in project["label_config"]
    tasks = project_tasks(client, project["id"])
    written = json.loads((tmp_path / "r1" / "tasks.json").read_text())
    assert [t["data"]["path"] for t in tasks] == [t["data"]["path"] for t in written]
    assert [t["data"]["path"] for t in tasks] == (tmp_path / "r1" / "selected.txt").read_text().splitlines()
    image = urllib.request.Request(url + tasks[0]["data"]["image"], headers={"Authorization": f"Token {TOKEN}"})
    with urllib.request.urlopen(image) as answer:  # local storage attached: the server serves the file
        assert answer.read() == Path(tasks[0]["data"]["path"]).read_bytes()

    # A labeller annotates five of the six, skips the sixth (its result is not empty: was_cancelled decides).
    for task in tasks[:5]:
        annotate(client, task, truth(task["data"]["path"]))
    annotate(client, tasks[5], "red", cancelled=True)
    export = tmp_path / "export1.json"
    assert main(["pull-annotations", "--label-studio-url", url, "--project", "round trip", "--out", str(export)]) == 0
    assert finetune(tiny_pretrained, photos, export, tmp_path / "ft1") == 0
    record = read_trained(tmp_path / "ft1" / "model.pt").record
    labeled = labeled_set(tmp_path / "ft1")
    assert labeled == {t["data"]["path"]: truth(t["data"]["path"]) for t in tasks[:5]}  # exactly, skip left out
    assert record.class_names == sorted(set(labeled.values()))

    # Round 2: six more, where the labeled ones are not, with the fine-tuned model's guesses as predictions.
    capsys.readouterr()
    assert main(["select", *common, "--budget", "6", "--labeled", str(export), "--classifier",
                 str(tmp_path / "ft1" / "model.pt"), "--out", str(tmp_path / "r2")]) == 0
    assert "round 1: 5 labeled" in capsys.readouterr().err
    tasks = project_tasks(client, project["id"])
    new = [t for t in tasks if t["data"].get("round") == 2]
    assert len(tasks) == 12 and len(new) == 6
    assert not {t["data"]["path"] for t in new} & {t["data"]["path"] for t in tasks[:6]}
    predictions = [client.request("GET", f"/api/predictions?task={t['id']}")[0] for t in new]
    assert all(p["result"][0]["value"]["choices"][0] in record.class_names and 0 < p["score"] <= 1
               for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores)  # least sure first

    # Two annotators disagree on one image: an error naming it, unless a rule settles it.
    second = client.request("POST", "/api/users", {"email": "second@example.com", "username": "second"})["id"]
    for task in new[:3]:
        annotate(client, task, truth(task["data"]["path"]))
    disputed = new[0]["data"]["path"]
    later = next(n for n in NAMES if n != truth(disputed))
    annotate(client, new[0], later, user=second)
    export2 = tmp_path / "export2.json"
    export2.write_bytes(client.export(project["id"], "JSON"))
    capsys.readouterr()
    assert finetune(tiny_pretrained, photos, export2, tmp_path / "ft2") == 2
    err = capsys.readouterr().err
    assert "annotators disagree on " + disputed in err and "--label-conflicts" in err
    assert finetune(tiny_pretrained, photos, export2, tmp_path / "ft2", "--label-conflicts", "latest") == 0
    labeled = labeled_set(tmp_path / "ft2")
    want = {t["data"]["path"]: truth(t["data"]["path"]) for t in tasks[:5] + new[:3]}
    assert labeled == {**want, disputed: later}
    # the CSV and JSON-min exports carry the same labels
    for kind, name in (("CSV", "export2.csv"), ("JSON_MIN", "export2_min.json")):
        (tmp_path / name).write_bytes(client.export(project["id"], kind))
        assert finetune(tiny_pretrained, photos, tmp_path / name, tmp_path / f"ft_{kind}", "--label-conflicts",
                        "latest") == 0
        assert labeled_set(tmp_path / f"ft_{kind}") == labeled
