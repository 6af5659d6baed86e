"""Linear evaluation (``simclrv2.stages.linear_eval``): a linear classifier on frozen features."""

import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.config import from_mapping
from simclrv2.engine import train
from simclrv2.stages.configs import LinearEvalConfig

COMMON = dict(data="digits", workers=0, holdout=0.2, log_every=20, tensorboard=False)


def test_linear_eval_trains_only_the_linear_layer(pretrained, tmp_path):
    cfg = from_mapping(LinearEvalConfig, {**COMMON, "out": str(tmp_path / "lin"), "from": str(pretrained),
                                          "epochs": 10, "batch_size": 256, "flip": False})
    result = train(cfg)
    assert result["holdout_top1"] > 0.6
    source = load_checkpoint(pretrained)["model"]
    model = load_checkpoint(tmp_path / "lin" / "model.pt")["model"]
    encoder_keys = [k for k in model if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder_keys)
    for key in encoder_keys:  # weights and BN statistics frozen
        assert torch.equal(model[key], source[key]), key
