"""Exporting classifiers (``simclrv2.commands.export``): ONNX, TorchScript, safetensors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from simclrv2.checkpoint import file_sha256, save_checkpoint
from simclrv2.cli import build_parser, main
from simclrv2.commands.export import export_model
from simclrv2.errors import UserError
from simclrv2.models import build_model, classifier_config, contrastive_config
from simclrv2.record import Record

CLASSES = ["cat", "dog", "eel", "fox", "gnu", "hen", "owl"]


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, so that every layer shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif tensor.dim() == 4:
                tensor.copy_(noise * (2.0 / tensor[0].numel()) ** 0.5)
            else:
                tensor.copy_(noise * 0.3 + (1.0 if name.endswith(("bn1.weight", "bn.weight")) else 0.0))
    return model.eval()


def make_checkpoint(path, config, names=None, seed=0):
    model = randomised(build_model(config), seed)
    size = 32 if config["small_images"] else 224
    record = Record("finetune", config, size, names)
    save_checkpoint({"record": record.to_data(), "model": model.state_dict()}, path)
    return model


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A small fine-tuned-style classifier checkpoint on the CIFAR stem."""
    path = tmp_path_factory.mktemp("ckpt") / "finetuned.pt"
    config = classifier_config("r18_1x_sk1", num_classes=7, head_layer=1, small_images=True)
    model = make_checkpoint(path, config, CLASSES)
    return path, model


def inputs(batch: int, size: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(classifier, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, model = classifier
    out = export_model(path, "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "images" and isinstance(graph_input.shape[0], str)
    x = inputs(3, 32)  # exported with a batch of 2
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert expected.std() > 0.1  # the comparison is not between near-constant outputs

    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert sidecar["class_names"] == CLASSES
    assert sidecar["image_size"] == 32 and sidecar["inputs"]["shape"] == ["batch", 3, 32, 32]
    assert sidecar["preprocessing"]["interpolation"] == "bicubic"
    assert sidecar["preprocessing"]["value_range"] == [0.0, 1.0]
    assert sidecar["preprocessing"]["normalization"] is None
    assert sidecar["model_config"] == classifier_config("r18_1x_sk1", 7, head_layer=1, small_images=True)
    assert sidecar["source_checkpoint"]["sha256"] == file_sha256(path)


def test_onnx_export_of_an_imagenet_stem_with_selective_kernels(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    config = classifier_config("r50_0.25x_sk1", num_classes=5, head_layer=1)
    model = make_checkpoint(tmp_path / "sk.pt", config, seed=1)
    out = export_model(tmp_path / "sk.pt", "onnx", tmp_path / "sk.onnx", image_size=64)
    x = inputs(4, 64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    sidecar = json.loads((tmp_path / "sk.onnx.json").read_text())
    assert sidecar["preprocessing"]["center_crop_proportion"] == 0.875
    assert sidecar["class_names"] == ["0", "1", "2", "3", "4"]


def test_torchscript_reload_gives_the_same_outputs(classifier, tmp_path):
    path, model = classifier
    out = export_model(path, "torchscript", tmp_path / "model.ts")
    extra = {"simclrv2.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still shipped
        loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["simclrv2.json"])["class_names"] == CLASSES
    x = inputs(5, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5, rtol=1e-5)


def test_safetensors_reload_into_build_model_gives_identical_tensors(classifier, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path, model = classifier
    out = export_model(path, "safetensors", tmp_path / "model.safetensors")
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    rebuilt = build_model(json.loads(metadata["model_config"]))
    tensors = load_file(str(out))
    rebuilt.load_state_dict(tensors, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensors[name], tensor), name
    assert json.loads(metadata["class_names"]) == CLASSES
    assert metadata["source_sha256"] == file_sha256(path)
    x = inputs(2, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


def test_a_model_without_classifier_must_be_fine_tuned_first(tmp_path):
    config = contrastive_config("r18_0.25x_sk0", small_images=True)
    save_checkpoint({"record": Record("pretrain", config, 32).to_data(), "model": build_model(config).state_dict()},
                    tmp_path / "pretrained.pt")
    with pytest.raises(UserError, match="without a classifier: fine-tune it first") as err:
        export_model(tmp_path / "pretrained.pt", "onnx", tmp_path / "x.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists()


def test_bad_requests_are_one_line_user_errors(classifier, tmp_path):
    path, _ = classifier
    with pytest.raises(UserError, match="unknown export format 'tflite'"):
        export_model(path, "tflite", tmp_path / "x")
    with pytest.raises(UserError, match="does not exist"):
        export_model(tmp_path / "missing.pt", "onnx", tmp_path / "x.onnx")
    with pytest.raises(UserError, match="is a folder"):
        export_model(path, "onnx", tmp_path)
    with pytest.raises(UserError, match="--image-size must be positive") as err:
        export_model(path, "onnx", tmp_path / "x.onnx", image_size=0)
    assert "\n" not in str(err.value)


def test_export_command(classifier, tmp_path, capsys):
    path, _ = classifier
    out = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(path), "--format", "safetensors", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.is_file() and (tmp_path / "model.safetensors.json").is_file()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--model", str(path), "--format", "pickle", "--out", str(out)])
