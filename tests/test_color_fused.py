"""The fused colour jitter (issue 31, item 2) against today's evaluations and a per-image loop.

Tolerances, float32 with pixels in [0, 1]:

- eager ``fused`` equals ``masked`` bit for bit: each affine pass does the float operations of
  ``adjust_brightness``/``adjust_contrast``/``adjust_saturation`` in the same order on the same
  whole-batch tensors (the means included), and hue is the same function; ``subset`` differs from
  them only in the means, taken over subsets of the batch (equal here too, within 1e-6 is asserted);
- compiled (inductor) vs ``masked``: at most 1e-5 (1.6e-6 seen over 80 batches of edge cases):
  the compiler contracts multiply-adds into FMAs and reorders the channel means, a few ulps
  (6e-8 each at 1.0) per operation, which the four operations can scale by at most their factors
  (<= 1.8 each); hue does not amplify them near gray, where its output moves with the chroma;
- float32 ``fused`` vs the float64 per-image loop: at most 1e-5 for the same reason (7e-7 seen).
"""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

from simclrv2 import augment
from sync_ops import SyncingOps
from simclrv2.augment import (
    FUSED_SCHEDULE,
    CompiledJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    fused_color_jitter,
    sample_jitter,
)

FLOAT32_TOLERANCE = 1e-5
OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def edge_images(n: int = 24, size: int = 12, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random images with the cases where the HSV arithmetic branches: gray (saturation 0), black,
    white, pure and secondary colours, only 0s and 1s, two equal channels (a hue sextant's border),
    nearly black, nearly white, and exact 0s and 1s among random pixels (from the 15th image on: n >= 16)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=dtype)
    x[0] = torch.rand(1, size, size, generator=g, dtype=dtype)
    x[1], x[2] = 0.0, 1.0
    for i, rgb in enumerate([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]):
        x[3 + i] = torch.tensor(rgb, dtype=dtype).view(3, 1, 1)
    x[9, :, ::2] = x[9, :1, ::2]  # gray rows in a coloured image
    x[10] = (torch.rand(3, size, size, generator=g) < 0.5).to(dtype)
    x[11, 0] = x[11, 1]
    x[12] *= 1e-3
    x[13] = 1 - x[13] * 1e-3
    rest = x[14:].view(-1)
    rest[torch.rand(rest.shape, generator=g) < 0.1] = 0.0
    rest[torch.rand(rest.shape, generator=g) < 0.1] = 1.0
    return x


def apply_mask(n: int) -> torch.Tensor:
    return torch.arange(n) % 5 != 4  # True and False, unselected images among the edge cases too


def draws(n: int, strength: float, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    return sample_jitter(n, strength, torch.Generator().manual_seed(seed), torch.device("cpu"))


def per_image_loop(x: torch.Tensor, params: list[torch.Tensor], order: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """The definition: one image at a time, its four operations in its order, clipped after each."""
    out = x.clone()
    for i in range(x.shape[0]):
        if not apply[i]:
            continue
        image = x[i:i + 1]
        for op_index in order[i].tolist():
            image = OPS[op_index](image, params[op_index][i:i + 1]).clamp(0, 1)
        out[i] = image[0]
    return out


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_generator_state_gives_the_same_pixels_in_every_evaluation(strength, seed):
    x = edge_images(seed=seed)
    apply = apply_mask(x.shape[0])
    out = {method: color_jitter(x, strength, apply, torch.Generator().manual_seed(seed), method=method)
           for method in ("subset", "masked", "fused")}
    assert torch.equal(out["fused"], out["masked"])
    torch.testing.assert_close(out["subset"], out["masked"], atol=1e-6, rtol=0)
    assert torch.equal(out["fused"][~apply], x[~apply])
    assert out["fused"].min() >= 0 and out["fused"].max() <= 1
    assert not torch.equal(out["fused"][apply], x[apply])


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_fused_matches_a_per_image_loop_in_float64_for_every_order(strength):
    x = edge_images(n=48, size=8, seed=3, dtype=torch.float64)
    params, order = draws(48, strength, seed=4)
    order = torch.tensor(list(itertools.permutations(range(4))) * 2)  # all 24 orders, each twice
    apply = apply_mask(48)
    want = per_image_loop(x, params, order, apply)
    torch.testing.assert_close(fused_color_jitter(x, params, order, apply), want, atol=1e-12, rtol=0)
    float32 = fused_color_jitter(x.float(), params, order, apply)
    torch.testing.assert_close(float32.double(), want, atol=FLOAT32_TOLERANCE, rtol=0)


def test_every_order_is_a_subsequence_of_the_schedule():
    for hue_position in range(4):
        wanted = iter(FUSED_SCHEDULE)
        pattern = "A" * hue_position + "H" + "A" * (3 - hue_position)
        assert all(kind in wanted for kind in pattern), pattern  # (``in`` consumes the iterator: subsequence)


def test_unselected_images_are_untouched_even_out_of_range():
    x = edge_images() * 3 - 1  # pixels in [-1, 2]: only images that jitter get clipped
    apply = torch.tensor([True, False] * 12)
    params, order = draws(24, 1.0, seed=0)
    y = fused_color_jitter(x, params, order, apply)
    assert torch.equal(y[~apply], x[~apply])
    torch.testing.assert_close(y, per_image_loop(x, params, order, apply), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ no host sync, no data-dependent shape

def run_on_fake_tensors(evaluation) -> torch.Tensor:
    """``evaluation`` on tensors without data: a data-dependent size or value raises."""
    params, order = draws(6, 1.0, seed=0)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (torch.rand(6, 3, 8, 8), *params, order, apply_mask(6))]
        return evaluation(fake[0], fake[1:5], fake[5], fake[6])


def test_fused_has_no_host_sync_and_no_data_dependent_shape():
    assert run_on_fake_tensors(fused_color_jitter).shape == (6, 3, 8, 8)
    with pytest.raises(DynamicOutputShapeException):  # the check can fail: by-subset reads subset sizes
        run_on_fake_tensors(augment._jitter_by_subset)
    x = edge_images()
    with SyncingOps() as ops:
        color_jitter(x, 1.0, apply_mask(24), torch.Generator().manual_seed(0), method="fused")
    assert ops.found == []
    with SyncingOps() as ops:
        color_jitter(x, 1.0, apply_mask(24), torch.Generator().manual_seed(0), method="subset")
    assert "aten::nonzero" in ops.found


def test_the_default_on_tensors_without_data_is_fused():
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.rand(4, 3, 8, 8))
        assert augment._jitter_method(x, None, None) == "fused"
        assert augment._jitter_method(x, True, None) == "fused"
        y = color_jitter(x, 1.0, mode.from_tensor(apply_mask(4)), torch.Generator().manual_seed(0))
    assert y.shape == (4, 3, 8, 8)


def test_method_choice():
    cpu = torch.zeros(1, 3, 2, 2)
    meta = torch.zeros(1, 3, 2, 2, device="meta")  # stands for an accelerator that is not CUDA
    assert augment._jitter_method(cpu, None, None) == "subset"
    assert augment._jitter_method(cpu, True, None) == "subset"
    assert augment._jitter_method(cpu, False, None) == "fused"
    assert augment._jitter_method(cpu, True, "masked") == "masked"
    assert augment._jitter_method(meta, None, None) == "fused"
    with pytest.raises(ValueError, match="method 'hsv'"):
        augment._jitter_method(cpu, None, "hsv")


# ------------------------------------------------------------------ the compiled evaluation

def test_compiled_traces_as_one_graph_and_gives_the_eager_pixels():
    """Cheap counterpart of the inductor test below: dynamo with fullgraph (a graph break, ``.item()`` or a
    data-dependent shape raises) and AOT autograd's functionalisation, without code generation."""
    jitter = CompiledJitter(backend="aot_eager")
    x, apply = edge_images(), apply_mask(24)
    params, order = draws(24, 1.0, seed=0)
    assert torch.equal(jitter(x, params, order, apply), fused_color_jitter(x, params, order, apply))
    assert jitter.error is None and jitter.compiled is not None


def test_compiled_falls_back_to_eager_once_compiling_fails(monkeypatch, caplog):
    calls = []

    def failing_compile(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", failing_compile)
    jitter = CompiledJitter()
    x, apply = edge_images(), apply_mask(24)
    params, order = draws(24, 1.0, seed=0)
    with caplog.at_level(logging.WARNING, logger="simclrv2"):
        first = jitter(x, params, order, apply)
        second = jitter(x, params, order, apply)
    assert torch.equal(first, fused_color_jitter(x, params, order, apply)) and torch.equal(first, second)
    assert calls == [1] and jitter.error == "RuntimeError: no compiler here"
    assert "torch.compile failed (RuntimeError: no compiler here)" in caplog.text


@pytest.mark.slow  # 15-25 s of inductor compilation on 2 cores; the aot_eager test above traces the same graph
def test_inductor_compiled_matches_masked_within_tolerance():
    jitter = CompiledJitter()
    apply = apply_mask(24)
    for seed, strength in itertools.product(range(6), (0.5, 1.0)):
        x = edge_images(seed=seed)
        params, order = draws(24, strength, seed)
        got = jitter(x, params, order, apply)
        torch.testing.assert_close(got, augment._jitter_masked(x, params, order, apply),
                                   atol=FLOAT32_TOLERANCE, rtol=0)
        assert torch.equal(got[~apply], x[~apply])
    assert jitter.error is None


@pytest.mark.slow  # on a GPU: Triton compilation, tens of seconds; skipped without CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_default_is_compiled_has_no_host_sync_and_matches_masked():
    device = torch.device("cuda")
    x, apply = edge_images().to(device), apply_mask(24).to(device)
    assert augment._jitter_method(x, None, None) == "compiled"

    def jitter(method: str | None) -> torch.Tensor:
        return color_jitter(x, 1.0, apply, torch.Generator(device).manual_seed(0), method=method)

    want = jitter("masked")
    jitter(None)  # compiles
    torch.cuda.set_sync_debug_mode("error")  # a host sync raises
    try:
        got, fused = jitter(None), jitter("fused")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert augment.COMPILED_JITTER.error is None
    torch.testing.assert_close(got, want, atol=FLOAT32_TOLERANCE, rtol=0)
    torch.testing.assert_close(fused, want, atol=FLOAT32_TOLERANCE, rtol=0)
