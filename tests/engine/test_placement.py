"""Device placement choices (``simclrv2.engine.placement``), with the CUDA queries faked on a CPU."""

from __future__ import annotations

import pytest
import torch

from simclrv2.engine import placement
from simclrv2.engine.placement import autocast_dtype, use_channels_last


@pytest.mark.parametrize("capability, want", [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16),
                                              ((9, 0), torch.bfloat16)])
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, capability, want):
    # V100 (7.0) and T4 (7.5) report bf16 as supported (emulated, slow): auto keeps them in fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == want
    assert autocast_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None


@pytest.mark.parametrize("flags, want", [({"avx2", "fma"}, None), ({"avx512f", "avx512bw"}, None),
                                         ({"avx512f", "avx512_bf16"}, torch.bfloat16), ({"amx_bf16"}, torch.bfloat16),
                                         ({"fp", "asimd", "bf16"}, torch.bfloat16), (set(), None)])
def test_auto_precision_on_a_cpu_is_bf16_only_with_native_bf16_instructions(monkeypatch, flags, want):
    monkeypatch.setattr(placement, "cpu_flags", lambda: frozenset(flags))
    assert autocast_dtype("auto", torch.device("cpu")) == want
    assert autocast_dtype("fp32", torch.device("cpu")) is None


def test_cpu_flags_are_read_from_this_machine():
    flags = placement.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux: the x86 "flags" or the Arm "Features" line
        assert {"fpu", "sse2", "fp", "asimd"} & flags


def test_channels_last_auto_is_on_for_gpus_and_cpus_with_onednn(monkeypatch):
    assert use_channels_last("auto", torch.device("cuda", 0))
    assert use_channels_last("off", torch.device("cuda", 0)) is False
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert use_channels_last("auto", torch.device("cpu"))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not use_channels_last("auto", torch.device("cpu")) and use_channels_last("on", torch.device("cpu"))
