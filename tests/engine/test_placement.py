"""Device placement choices (``simclrv2.engine.placement``), with the CUDA queries faked on a CPU."""

from __future__ import annotations

import pytest
import torch

from simclrv2.engine.placement import autocast_dtype


@pytest.mark.parametrize("capability, want", [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, want):
    # V100 (7.0) and T4 (7.5) report bf16 as supported (emulated, slow): auto keeps them in fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == want
    assert autocast_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None


def test_auto_precision_is_fp32_on_a_cpu():
    assert autocast_dtype("auto", torch.device("cpu")) is None
