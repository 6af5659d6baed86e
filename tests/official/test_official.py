"""Official weights by name (``simclrv2.official``): a local HTTP server plays the public bucket.

The bucket holds TF1 name-based checkpoints written with TensorFlow by the helpers of
``tests/convert/test_tf_import.py``, laid out as the release is (``simclrv2/<folder>/<model>/`` with a
``checkpoint`` state file naming ``model.ckpt-<step>``, its ``.index``, ``.data-*`` and ``.meta``, EMA
copies and optimizer slots); the server sends ``x-goog-hash: md5=...`` and honours Range requests. A
small encoder (r50_0.25x_sk0, 1000 classes) is added to the catalogue for the tests, so that each
takes seconds; the real names differ only in their width.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.convert.tf_import import import_tf_checkpoint
from simclrv2.errors import UserError
from simclrv2.official import catalogue, fetch, resolve_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
from test_tf_import import images, official_tf_model, save_tf1, tf1_tensors  # noqa: E402

MODEL = "r50_0.25x_sk0"
NAME = f"official:{MODEL}"
FINETUNED = f"official:{MODEL}/finetuned_1pct"
FINETUNED_STEP = 37535
# Two lines that run the command line with the test encoder in the catalogue (for subprocesses).
CLI = textwrap.dedent(f"""
    import sys
    from simclrv2.official import catalogue
    catalogue.MODELS[{MODEL!r}] = catalogue.Paper(1.0, 1.0, 1.0, 1.0, 1.0)
    from simclrv2.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A folder laid out as gs://simclr-checkpoints: simclrv2/pretrained and simclrv2/finetuned_1pct."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    model = official_tf_model(tf, 50, 0.25, sk=False, num_classes=1000, seed=3)
    tensors = tf1_tensors(model)
    rng = np.random.default_rng(7)
    ema = {f"ema_model/{k}": (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
           for k, v in tensors.items() if not k.startswith("head_supervised")}
    slots = {f"{k}/Momentum": np.zeros_like(v) for k, v in tensors.items()}
    root = tmp_path_factory.mktemp("bucket")
    pretrained = root / "simclrv2" / "pretrained" / MODEL
    pretrained.mkdir(parents=True)
    save_tf1(tf, {**tensors, **ema, **slots}, pretrained / "model.ckpt")
    (pretrained / "graph.pbtxt").write_text("node {}\n")
    # The fine-tuned folder: another step, and a state file naming the path it was trained at.
    finetuned = root / "simclrv2" / "finetuned_1pct" / MODEL
    finetuned.mkdir(parents=True)
    for file in pretrained.glob("model.ckpt-250228.*"):
        shutil.copy(file, finetuned / file.name.replace("250228", str(FINETUNED_STEP)))
    (finetuned / "checkpoint").write_text(
        f'model_checkpoint_path: "gs://somewhere/ft_1pct/model.ckpt-{FINETUNED_STEP}"\n'
        f'all_model_checkpoint_paths: "gs://somewhere/ft_1pct/model.ckpt-{FINETUNED_STEP}"\n')
    return model, root


class Bucket:
    """``http.server`` serving ``root`` as Cloud Storage does: x-goog-hash, Range; and faults on demand."""

    def __init__(self, root: Path, throttle_s: float = 0.0):
        self.root, self.throttle_s = root, throttle_s
        self.requests: list[tuple[str, str]] = []  # (path, Range header)
        self.faults: dict[str, str] = {}  # file name -> "corrupt" | "truncate" | "drop" (once)
        bucket = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rel = self.path.lstrip("/")
                bucket.requests.append((rel, self.headers.get("Range", "")))
                file = bucket.root / rel
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                fault = bucket.faults.get(file.name)
                if fault == "corrupt":
                    data = data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]
                elif fault == "truncate":
                    data = data[:len(data) - 100]
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-goog-hash", "crc32c=AAAAAA==")
                self.send_header("x-goog-hash", f"md5={md5}")
                self.end_headers()
                if fault == "drop":
                    del bucket.faults[file.name]
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for i in range(0, len(body), 1 << 16):
                    self.wfile.write(body[i:i + (1 << 16)])
                    if bucket.throttle_s:
                        threading.Event().wait(bucket.throttle_s)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, name: str) -> list[str]:
        """The Range headers of the requests for files called ``name``."""
        return [r for path, r in self.requests if path.endswith("/" + name)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bucket(release):
    server = Bucket(release[1])
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path, monkeypatch, bucket):
    """The cache in tmp_path, the local server as SIMCLRV2_OFFICIAL_URL, the test encoder released."""
    monkeypatch.setenv("SIMCLRV2_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SIMCLRV2_OFFICIAL_URL", bucket.url)
    monkeypatch.delenv("SIMCLRV2_OFFLINE", raising=False)
    monkeypatch.setitem(catalogue.MODELS, MODEL, catalogue.Paper(1.0, 1.0, 1.0, 1.0, 1.0))
    monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
    return tmp_path / "home" / "official"


def data_file(step: int = 250228) -> str:
    return f"model.ckpt-{step}.data-00000-of-00001"


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------

def test_names_catalogue_and_class_names(capsys):
    assert len(catalogue.all_names()) == 13 * 4
    name = catalogue.parse_official("official:r152_3x_sk1/finetuned_10pct")
    assert (name.model, name.variant.folder, name.variant.head_layer) == ("r152_3x_sk1", "finetuned_10pct", 1)
    assert name.release_path == "simclrv2/finetuned_10pct/r152_3x_sk1"
    assert catalogue.parse_official("official:r50_1x_sk0/finetuned_100pct").variant.head_layer == 0
    assert catalogue.parse_official("official:r50_1x_sk0").variant.head_layer is None
    for bad, message in [("official:r50_4x_sk1", "names no released model"),
                         ("official:r50_1x_sk1/finetuned_5pct", "not a released variant")]:
        with pytest.raises(UserError, match=message) as err:
            resolve_checkpoint(bad)
        assert "\n" not in str(err.value)
    assert resolve_checkpoint("runs/x/model.pt") == Path("runs/x/model.pt")
    names = catalogue.imagenet_class_names()
    assert len(names) == len(set(names)) == 1000 and names[281] == "tabby cat" and names[0] == "tench"
    assert main(["models", "--official"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("official:")]) == 52
    assert re.search(r"official:r152_3x_sk1\s+794\.7\s+79\.8\s+linear eval", out)
    assert re.search(r"official:r152_3x_sk1/finetuned_1pct\s+794\.7\s+74\.9\s+fine-tuned, 1% labels", out)


def test_names_through_the_cli_equal_import_tf(release, env, bucket, tmp_path, capsys):
    root = release[1]
    assert main(["download", NAME, FINETUNED]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(env / "pretrained" / MODEL / "model.pt"), str(env / "finetuned_1pct" / MODEL / "model.pt")]
    # only what the import needs was fetched, the state file first; tf/ is gone once converted
    assert [p.rsplit("/", 1)[1] for p, _ in bucket.requests][:3] == [
        "checkpoint", "model.ckpt-250228.index", data_file()]
    assert not any(p.endswith((".meta", ".pbtxt")) for p, _ in bucket.requests)
    assert not (env / "pretrained" / MODEL / "tf").exists()

    # the same tensors as `import-tf` on the same files
    pretrained = import_tf_checkpoint(root / "simclrv2" / "pretrained" / MODEL, MODEL, tmp_path / "p.pt")
    classifier = import_tf_checkpoint(root / "simclrv2" / "finetuned_1pct" / MODEL, MODEL, tmp_path / "c.pt",
                                      head_layer=1)
    ours, theirs = load_checkpoint(printed[0]), load_checkpoint(pretrained)
    assert states_equal(ours["model"], theirs["model"])
    assert ours["record"]["source"] == NAME and ours["record"]["class_names"][281] == "tabby cat"
    assert states_equal(load_checkpoint(printed[1])["model"], load_checkpoint(classifier)["model"])

    # predict with the official classifier: ImageNet names, TensorFlow's probabilities
    folder = tmp_path / "photos"
    folder.mkdir()
    x = images(3, 64, seed=9)
    from PIL import Image
    for i, image in enumerate(x):
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    common = ["--image-size", "64", "--top-k", "2", "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", "--model", FINETUNED, str(folder), *common]) == 0
    by_name = capsys.readouterr().out.splitlines()
    assert main(["predict", "--model", str(classifier), str(folder), *common]) == 0
    by_file = capsys.readouterr().out.splitlines()
    names = catalogue.imagenet_class_names()
    assert len(by_name) == 4
    for named, numbered in zip(by_name[1:], by_file[1:]):
        a, b = named.split(","), numbered.split(",")
        assert a[1] == names[int(b[1])] and a[3] == names[int(b[3])] and a[2] == b[2] and a[4] == b[4]

    # fine-tune and continue pretraining from the names, at learning rate 0: the official weights go in
    tiny = ["--data", str(folder), "--image-size", "32", "--epochs", "1", "--workers", "0", "--lr", "0",
            "--batch-size", "3", "--no-check-memory", "--no-tensorboard"]
    assert main(["pretrain", "--from", NAME, *tiny, "--no-knn-monitor", "--out", str(tmp_path / "pre")]) == 0
    continued = load_checkpoint(tmp_path / "pre" / "model.pt")
    assert continued["record"]["source"] == NAME and continued["record"]["model_config"]["encoder"] == MODEL
    weights = [k for k in theirs["model"] if k.endswith(".weight") and not k.startswith("monitor.")]
    assert len(weights) > 50 and all(torch.equal(continued["model"][k], theirs["model"][k]) for k in weights)
    assert main(["pretrain", "--from", FINETUNED, *tiny, "--out", str(tmp_path / "bad")]) == 2
    assert "holds a classifier, not a contrastive model" in capsys.readouterr().err
    labeled = tmp_path / "labeled"
    for i, image in enumerate(sorted(folder.iterdir())[:2] * 2):
        (labeled / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, labeled / "ab"[i % 2] / f"{i}.png")
    tiny[1] = str(labeled)
    assert main(["finetune", "--from", NAME, *tiny, "--head-layer", "1", "--out", str(tmp_path / "ft")]) == 0
    tuned = load_checkpoint(tmp_path / "ft" / "model.pt")
    assert tuned["record"]["source"] == NAME
    assert torch.equal(tuned["model"]["head_layers.0.linear.weight"],
                       theirs["model"]["projection_head.layers.0.linear.weight"])
    encoder = [k for k in weights if k.startswith("encoder.")]
    assert len(encoder) > 50 and all(torch.equal(tuned["model"][k], theirs["model"][k]) for k in encoder)


def test_second_call_uses_the_cache_with_the_server_stopped(env, bucket, release, monkeypatch):
    first = resolve_checkpoint(NAME)
    bucket.stop()
    assert resolve_checkpoint(NAME) == first
    monkeypatch.setenv("SIMCLRV2_OFFLINE", "1")
    assert resolve_checkpoint(NAME) == first
    # once converted it loads as any checkpoint, by name
    from simclrv2.models.checkpoints import load_model
    assert load_model(NAME)[1].kind == "contrastive"
    monkeypatch.delenv("SIMCLRV2_OFFLINE")
    monkeypatch.setenv("SIMCLRV2_OFFICIAL_URL", str(release[1]))  # the fine-tuned model from a local mirror
    out = env.parent / "classifier.safetensors"
    assert main(["export", "--model", FINETUNED, "--format", "safetensors", "--out", str(out), "--image-size", "32"]) == 0
    meta = __import__("json").loads(out.with_name(out.name + ".json").read_text())
    assert meta["class_names"][281] == "tabby cat" and meta["source_checkpoint"]["path"] == FINETUNED


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_a_corrupt_or_truncated_file_is_refused_and_nothing_is_cached(env, bucket, fault, capsys):
    bucket.faults[data_file()] = fault
    assert main(["download", NAME]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(rf"{re.escape(bucket.url)}/simclrv2/pretrained/{MODEL}/{data_file()} arrived corrupt 3 times "
                     r"\((MD5 \S+, the server's x-goog-hash says \S+|\d+ bytes .*)\); nothing was kept", err[-1]), err
    assert len(bucket.gets(data_file())) == 3
    cache = env / "pretrained" / MODEL
    assert not (cache / "model.pt").exists()
    assert not [p for p in cache.rglob("*data-*")]  # neither the file nor a .part of it
    # the fault gone, the next call fetches the file again (the state file and index stay)
    del bucket.faults[data_file()]
    assert resolve_checkpoint(NAME) == cache / "model.pt"
    assert len(bucket.gets("checkpoint")) == 1


def test_an_interrupted_download_resumes_with_a_range_request(env, bucket, release):
    bucket.faults[data_file()] = "drop"  # the connection breaks half-way, once
    path = resolve_checkpoint(NAME)
    ranges = bucket.gets(data_file())
    size = (release[1] / "simclrv2" / "pretrained" / MODEL / data_file()).stat().st_size
    assert ranges == ["", f"bytes={size // 2}-"]
    assert load_checkpoint(path)["record"]["source"] == NAME


def test_a_killed_download_resumes_in_the_next_process(env, bucket, release):
    """A .part left by a killed process (with the hashes of its first answer) is continued, not restarted."""
    source = release[1] / "simclrv2" / "pretrained" / MODEL
    tf_dir = env / "pretrained" / MODEL / "tf"
    tf_dir.mkdir(parents=True)
    shutil.copy(source / "checkpoint", tf_dir)
    shutil.copy(source / "model.ckpt-250228.index", tf_dir)
    data = (source / data_file()).read_bytes()
    (tf_dir / (data_file() + ".part")).write_bytes(data[:1000])
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    (tf_dir / (data_file() + ".part.json")).write_text(f'{{"size": {len(data)}, "hashes": {{"md5": "{md5}"}}}}')
    resolve_checkpoint(NAME)
    assert bucket.gets(data_file()) == ["bytes=1000-"]
    assert [p for p, _ in bucket.requests] == [f"simclrv2/pretrained/{MODEL}/{data_file()}"]


def test_two_processes_download_once(env, bucket, tmp_path):
    bucket.throttle_s = 0.005  # the data file takes about two seconds: the second process arrives meanwhile
    environ = {**os.environ, "SIMCLRV2_HOME": str(tmp_path / "home"), "SIMCLRV2_OFFICIAL_URL": bucket.url}
    procs = [subprocess.Popen([sys.executable, "-c", CLI, "download", NAME], env=environ,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] == f"{env / 'pretrained' / MODEL / 'model.pt'}\n"
    for file in ("checkpoint", "model.ckpt-250228.index", data_file()):
        assert len(bucket.gets(file)) == 1, bucket.requests
    # the second one waited for the first (the lock), then found the converted file
    assert sum("converting" in err for _, err in outs) == 1
    assert sum("waiting for another process that is fetching" in err for _, err in outs) == 1


def test_offline_mode_and_unreachable_servers(env, bucket, release, monkeypatch, capsys):
    monkeypatch.setenv("SIMCLRV2_OFFLINE", "1")
    tf_dir = env / "pretrained" / MODEL / "tf"
    assert main(["download", NAME]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "SIMCLRV2_OFFLINE=1" in err
    assert f"{bucket.url}/simclrv2/pretrained/{MODEL}/" in err and str(tf_dir) in err
    assert bucket.requests == []
    # a cache filled by hand is converted offline
    shutil.copytree(release[1] / "simclrv2" / "pretrained" / MODEL, tf_dir)
    assert resolve_checkpoint(NAME) == env / "pretrained" / MODEL / "model.pt"
    assert bucket.requests == [] and not tf_dir.exists()
    # a server that does not answer: the URL, and the folder to fill by hand
    monkeypatch.delenv("SIMCLRV2_OFFLINE")
    bucket.stop()
    assert main(["download", FINETUNED]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(rf"cannot download {re.escape(bucket.url)}/simclrv2/finetuned_1pct/{MODEL}/checkpoint \(.*\): "
                     rf"check the network .* into {re.escape(str(env / 'finetuned_1pct' / MODEL / 'tf'))} by hand", err)


def test_a_local_mirror_is_converted_in_place(env, release, monkeypatch, capsys):
    for url in (str(release[1]), f"file://{release[1]}"):
        shutil.rmtree(env, ignore_errors=True)
        monkeypatch.setenv("SIMCLRV2_OFFICIAL_URL", url)
        path = resolve_checkpoint(FINETUNED)
        assert path == env / "finetuned_1pct" / MODEL / "model.pt" and not (path.parent / "tf").exists()
        assert load_checkpoint(path)["record"]["model_config"]["head_layer"] == 1
    monkeypatch.setenv("SIMCLRV2_OFFICIAL_URL", str(release[1] / "simclrv2"))  # one level too deep
    shutil.rmtree(env)
    assert main(["download", NAME]) == 2
    assert "must be the folder holding the release's simclrv2/ folder" in capsys.readouterr().err
