import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from simclrv2.errors import UserError
from simclrv2.models import (
    Classifier,
    ProjectionHead,
    build_model,
    classifier_config,
    count_parameters,
    create_model,
    encoder_parameter_count,
    list_models,
)
from simclrv2.models.layers import AvgPoolDown2x2, AvgPoolSame2x2, MaxPoolSame, SelectiveKernelConv


def spec_table(shared_dir):
    """Rows of SPEC's parameter table: name -> params in millions."""
    rows = {}
    for line in (shared_dir / "SPEC.md").read_text().splitlines():
        m = re.match(r"^\|\s*(r\d+_\dx_sk\d)\s*\|\s*([\d.]+)\s*\|", line)
        if m:
            rows[m.group(1)] = float(m.group(2))
    return rows


def test_encoder_parameter_counts_match_spec(shared_dir):
    table = spec_table(shared_dir)
    assert len(table) == 13
    for name, millions in table.items():
        assert abs(encoder_parameter_count(name) / 1e6 - millions) <= 0.05, name


def test_projection_head_parameter_counts_match_spec(shared_dir):
    text = (shared_dir / "SPEC.md").read_text()
    m = re.search(r"Projection head parameters: ([\d.]+)M at 1x, ([\d.]+)M at 2x, ([\d.]+)M at 3x", text)
    expected = [float(v) for v in m.groups()]
    for width, millions in zip((1, 2, 3), expected):
        with torch.device("meta"):
            head = ProjectionHead(2048 * width)
        assert abs(count_parameters(head) / 1e6 - millions) <= 0.01 * millions


def test_registry_lists_all_depths_widths_and_sk():
    names = list_models()
    assert len(names) == 6 * 3 * 2
    for depth in (18, 34, 50, 101, 152, 200):
        assert f"r{depth}_1x_sk0" in names and f"r{depth}_3x_sk1" in names


@pytest.mark.parametrize("bad", ["r51_1x_sk0", "resnet50", "r50_0x_sk0", "r50_1x_sk2", ""])
def test_unknown_model_name_is_a_user_error(bad):
    with pytest.raises(UserError, match="unknown model"):
        create_model(bad)


@pytest.mark.parametrize(
    "name,small,size,dim",
    [
        ("r18_1x_sk0", True, 32, 512),
        ("r34_1x_sk1", True, 32, 512),
        ("r50_1x_sk0", True, 32, 2048),
        ("r50_1x_sk1", False, 64, 2048),
        ("r50_1x_sk1", False, 67, 2048),  # odd size
        ("r18_2x_sk1", False, 45, 1024),
        ("r50_0.25x_sk1", False, 49, 512),  # fractional width for small CPU runs
    ],
)
def test_feature_shapes(name, small, size, dim):
    model = create_model(name, small_images=small).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size + 3))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()


def test_width_multiplier_scales_every_channel():
    for width in (1, 2, 3):
        with torch.device("meta"):
            model = create_model(f"r50_{width}x_sk1")
        assert model.out_dim == 2048 * width
        assert model.stem.convs[0].out_channels == 32 * width
        assert model.layer1[0].conv1.out_channels == 64 * width
        assert model.layer4[0].conv1.out_channels == 512 * width


def test_init_last_bn_zero_and_conv_fan_in_std():
    model = create_model("r50_1x_sk0")
    for block in list(model.layer1) + list(model.layer4):
        assert torch.all(block.bn3.weight == 0)
        assert torch.all(block.bn1.weight == 1)
    w = model.layer3[0].conv2.weight  # 3x3, 256 -> 256: fan-in 2304
    assert abs(w.std().item() - math.sqrt(1 / (256 * 9))) < 0.05 * math.sqrt(1 / (256 * 9))
    assert w.abs().max().item() <= 2 * math.sqrt(1 / (256 * 9)) / 0.8796 + 1e-6
    head = ProjectionHead(2048)
    assert abs(head.layers[0].linear.weight.std().item() - 0.01) < 0.0005


def tf_same_pool_reference(x, k, s, op):
    """Pool one (H, W) float64 map with TF SAME padding, padded cells ignored (hand loops)."""
    h, w = x.shape
    oh, ow = -(-h // s), -(-w // s)
    ph = max((oh - 1) * s + k - h, 0) // 2
    pw = max((ow - 1) * s + k - w, 0) // 2
    out = torch.empty(oh, ow, dtype=torch.float64)
    for i in range(oh):
        for j in range(ow):
            cells = [x[a, b] for a in range(i * s - ph, i * s - ph + k)
                     for b in range(j * s - pw, j * s - pw + k) if 0 <= a < h and 0 <= b < w]
            out[i, j] = max(cells) if op == "max" else sum(cells) / len(cells)
    return out


@pytest.mark.parametrize("h,w", [(8, 8), (7, 7), (8, 7), (7, 10), (1, 2), (112, 112)])
def test_max_pool_matches_tf_same_reference(h, w):
    x = torch.randn(1, 1, h, w, dtype=torch.float64)  # negative values: padding must not win
    got = MaxPoolSame(3, 2)(x)[0, 0]
    torch.testing.assert_close(got, tf_same_pool_reference(x[0, 0], 3, 2, "max"))
    if h == w == 8:
        # even input: TF pads (0, 1), unlike PyTorch's padding=1
        assert not torch.equal(got, F.max_pool2d(x, 3, 2, padding=1)[0, 0])


@pytest.mark.parametrize("h,w", [(4, 4), (5, 5), (4, 7), (1, 1)])
def test_stride1_avg_pool_matches_tf_same_reference(h, w):
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    got = AvgPoolSame2x2()(x)[0, 0]
    torch.testing.assert_close(got, tf_same_pool_reference(x[0, 0], 2, 1, "avg"))


def test_stride2_avg_pool_zero_pads_after():
    x = torch.arange(25, dtype=torch.float64).reshape(1, 1, 5, 5)
    got = AvgPoolDown2x2()(x)[0, 0]
    assert got.shape == (3, 3)
    assert got[0, 0] == (0 + 1 + 5 + 6) / 4
    assert got[2, 2] == 24 / 4  # three zero-padded cells counted, as TF's "VALID" on the padded map
    assert got[0, 2] == (4 + 9) / 4


def test_selective_kernel_conv_matches_explicit_formula():
    torch.manual_seed(0)
    sk = SelectiveKernelConv(8, 16, stride=2, sk_ratio=0.0625).double().train()
    x = torch.randn(4, 8, 9, 9, dtype=torch.float64)
    got = sk(x)
    y = F.conv2d(x, sk.conv.weight, stride=2, padding=1)
    y = F.relu(F.batch_norm(y, None, None, sk.bn.weight, sk.bn.bias, training=True, eps=1e-5))
    a, b = y[:, :16], y[:, 16:]
    s = (a + b).mean((2, 3), keepdim=True)
    s = F.conv2d(s, sk.fc1.weight)
    assert s.shape[1] == 32  # max(int(16 * 0.0625), 32)
    s = F.relu(F.batch_norm(s, None, None, sk.fc1_bn.weight, sk.fc1_bn.bias, training=True, eps=1e-5))
    m = F.conv2d(s, sk.fc2.weight)
    wa = torch.exp(m[:, :16]) / (torch.exp(m[:, :16]) + torch.exp(m[:, 16:]))
    torch.testing.assert_close(got, a * wa + b * (1 - wa))


def test_head_hiddens_and_classifier_from_layer_j():
    torch.manual_seed(0)
    config = classifier_config("r18_1x_sk0", num_classes=5, head_layer=2, small_images=True)
    model = build_model(config).eval()
    assert isinstance(model, Classifier) and model.head_layer == 2
    head = ProjectionHead(512)
    head.layers[0].load_state_dict(model.head_layers[0].state_dict())
    head.layers[1].load_state_dict(model.head_layers[1].state_dict())
    head.eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        hiddens = head.hiddens(model.encoder(x))
        torch.testing.assert_close(model.representation(x), hiddens[2])
        assert model(x).shape == (3, 5)
    assert (hiddens[1] >= 0).all()  # BN-ReLU output
    assert len(hiddens) == 4 and hiddens[3].shape == (3, 128)


def test_head_layer_beyond_head_is_a_user_error():
    with pytest.raises(UserError, match="head layer 3 is beyond"):
        build_model(classifier_config("r18_1x_sk0", 10, head_layer=3))


def test_last_head_layer_has_gamma_but_no_beta():
    head = ProjectionHead(64, out_dim=16)
    names = {n for n, p in head.named_parameters()}
    assert "layers.2.scale" in names and "layers.2.bn.bias" not in names
    assert "layers.0.bn.bias" in names


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 200])
@pytest.mark.parametrize("sk", [0, 1])
def test_channels_last_and_bf16_autocast(depth, sk):
    torch.manual_seed(0)
    model = create_model(f"r{depth}_0.25x_sk{sk}").eval()
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x.to(memory_format=torch.channels_last))
    assert out_bf16.dtype == torch.bfloat16
    rel = (out_bf16.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_cli_models_lists_every_model():
    out = subprocess.run([sys.executable, "-m", "simclrv2", "models"], capture_output=True,
                         text=True, check=True).stdout
    for name in list_models():
        assert name in out
    assert re.search(r"r152_3x_sk1\s+794\.7", out)


def test_selective_kernel_keeps_channels_last_and_the_autocast_dtype():
    from simclrv2.models.layers import SelectiveKernelConv

    torch.manual_seed(0)
    sk = SelectiveKernelConv(8, 16, 1, 0.0625).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        # float64 reference of the official formula: softmax over the two paths, weighted sum
        ref = sk.double()
        h = torch.relu(ref.bn(ref.conv(x.double())))
        paths = h.view(2, 2, 16, 6, 6)
        att = ref.fc2(torch.relu(ref.fc1_bn(ref.fc1(paths.sum(1).mean((2, 3), keepdim=True)))))
        want = (paths * att.view(2, 2, 16, 1, 1).softmax(1)).sum(1)
        sk = sk.float().to(memory_format=torch.channels_last)
        got = sk(x.contiguous(memory_format=torch.channels_last))
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = sk(x.contiguous(memory_format=torch.channels_last))
        assert low.dtype == torch.bfloat16 and low.is_contiguous(memory_format=torch.channels_last)


def test_the_projection_shortcut_is_a_strided_1x1_convolution():
    """Shortcut without ResNet-D: subsample, then 1x1 stride 1 (``layers.Subsample``) equals TF's 1x1 stride-2 conv."""
    from simclrv2.models.resnet import Shortcut

    torch.manual_seed(0)
    shortcut = Shortcut(8, 16, 2, resnet_d=False).double().eval()
    x = torch.randn(3, 8, 15, 15, dtype=torch.float64)
    reference = torch.nn.functional.conv2d(x, shortcut.conv.weight, stride=2)
    torch.testing.assert_close(shortcut.conv(shortcut.pool(x)), reference, rtol=0, atol=0)


def test_channels_last_training_on_an_odd_batch_of_few_channels_does_not_crash():
    """PyTorch 2.13's CPU kernel for a strided 1x1 convolution's backward in channels-last corrupts the heap on
    5 images of 8 channels with 2 threads (a segfault or "double free": fine-tuning r18_0.125x on 5 labels).
    The shortcut no longer uses it; this runs the step that crashed, in a process of its own."""
    code = ("import torch\n"
            "from simclrv2.models import build_model, classifier_config\n"
            "m = build_model(classifier_config('r18_0.125x_sk0', 3, 1, True)).train().to(memory_format=torch.channels_last)\n"
            "x = torch.rand(5, 3, 16, 16).contiguous(memory_format=torch.channels_last)\n"
            "for _ in range(5):\n"
            "    m(x).sum().backward()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
