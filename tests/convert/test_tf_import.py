"""Importing official SimCLRv2 TensorFlow checkpoints (``simclrv2.convert.tf_*``).

The checkpoints are written here with TensorFlow (``pip install tensorflow-cpu``; the tests that
need it skip without it) by a small TF model whose object graph follows the official TF2 code
(attribute names and list positions of ``tf2/resnet.py`` and ``tf2/model.py``) and whose
TF1 names follow the creation-order numbering of ``resnet.py``/``model_util.py``. Its forward
pass, written with plain ``tf.nn`` ops, is the reference our converted model must reproduce.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import build_parser, main
from simclrv2.convert import tf_bundle
from simclrv2.convert.tf_bundle import crc32c
from simclrv2.convert.tf_import import convert_tf_checkpoint, import_tf_checkpoint
from simclrv2.convert.tf_layouts import TF1Layout, TF2Layout, model_entries, tf_shape
from simclrv2.errors import UserError
from simclrv2.models import build_model, classifier_config, contrastive_config

TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def read_key_list(path) -> dict[str, tuple[int, ...]]:
    """``key [d0, d1, ...]`` lines -> {key: shape}."""
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^(\S+) \[(.*)\]$", line.strip())
        if match:
            out[match.group(1)] = tuple(int(d) for d in match.group(2).split(",") if d.strip())
    return out


# ---------------------------------------------------------------------------------------------
# A TF model with the official object graph (written from the official structure, not copied)
# ---------------------------------------------------------------------------------------------

def official_tf_model(tf, depth: int, width: float, sk: bool, small_images: bool = False,
                      num_classes: int = 10, proj_layers: int = 3, seed: int = 0):
    """A tf.Module whose checkpoint keys are the official TF2 ones, with random weights.

    ``model.encoder_order`` lists the encoder's conv kernels and BN layers in creation order,
    from which the TF1 names (``conv2d_N``, ``batch_normalization_N``) follow.
    """
    rng = np.random.default_rng(seed)
    encoder_order: list[tuple[str, object]] = []
    calibrating = [False]

    def variable(shape, scale):
        return tf.Variable(rng.standard_normal(shape).astype(np.float32) * scale)

    def run(layers, x):
        for layer in layers:
            x = layer(x)
        return x

    def fixed_padding(k):
        def pad(x):
            beg = (k - 1) // 2
            return tf.pad(x, [[0, 0], [beg, k - 1 - beg], [beg, k - 1 - beg], [0, 0]])
        return pad

    class Op(tf.Module):
        """A weightless layer (padding, pooling, identity, dropblock): it only holds a position."""

        def __init__(self, fn=None):
            super().__init__()
            self.fn = fn

        def __call__(self, x):
            return x if self.fn is None else self.fn(x)

    class KerasConv(tf.Module):
        def __init__(self, cin, cout, k, stride=1, padding="SAME", track=True):
            super().__init__()
            self.kernel = variable((k, k, cin, cout), math.sqrt(2.0 / (k * k * cin)))
            self.stride, self.padding = stride, padding
            if track:
                encoder_order.append(("conv", self))

        def __call__(self, x):
            return tf.nn.conv2d(x, self.kernel, self.stride, self.padding)

    class Conv(tf.Module):  # Conv2dFixedPadding
        def __init__(self, cin, cout, k, stride):
            super().__init__()
            self.k, self.stride = k, stride
            self.conv2d = KerasConv(cin, cout, k, stride, "SAME" if stride == 1 else "VALID")

        def __call__(self, x):
            return self.conv2d(fixed_padding(self.k)(x) if self.stride > 1 else x)

    class KerasBN(tf.Module):
        def __init__(self, c, center=True, gamma_scale=1.0, track=True):
            super().__init__()
            self.center = center
            self.gamma = tf.Variable(rng.uniform(0.5, 1.0, c).astype(np.float32) * gamma_scale)
            if center:
                self.beta = variable((c,), 0.1)
            self.moving_mean = variable((c,), 0.1)
            self.moving_variance = tf.Variable(rng.uniform(0.5, 1.5, c).astype(np.float32))
            if track:
                encoder_order.append(("bn", self))

        def __call__(self, x):
            if calibrating[0]:
                # Moving statistics of real activations keep a deep random net's outputs
                # dependent on its input, as in a trained one; random ones wash it out.
                mean, var = tf.nn.moments(x, list(range(len(x.shape) - 1)))
                self.moving_mean.assign(mean)
                self.moving_variance.assign(var + rng.uniform(0.0, 0.1, var.shape).astype(np.float32))
            beta = self.beta if self.center else None
            return tf.nn.batch_normalization(x, self.moving_mean, self.moving_variance, beta, self.gamma, 1e-5)

    class BNRelu(tf.Module):  # BatchNormRelu
        def __init__(self, c, relu=True, center=True, gamma_scale=1.0, track=True):
            super().__init__()
            self.relu = relu
            self.bn = KerasBN(c, center, gamma_scale, track)

        def __call__(self, x):
            x = self.bn(x)
            return tf.nn.relu(x) if self.relu else x

    class SKConv(tf.Module):  # SK_Conv2D
        def __init__(self, cin, f, stride):
            super().__init__()
            self.conv2d_fixed_padding = Conv(cin, 2 * f, 3, stride)
            self.batch_norm_relu = BNRelu(2 * f)
            mid = max(int(f * 0.0625), 32)
            self.conv2d_0 = KerasConv(f, mid, 1)
            self.batch_norm_relu_1 = BNRelu(mid)
            self.conv2d_1 = KerasConv(mid, 2 * f, 1)

        def __call__(self, x):
            paths = tf.stack(tf.split(self.batch_norm_relu(self.conv2d_fixed_padding(x)), 2, axis=3))
            squeeze = tf.reduce_mean(tf.reduce_sum(paths, 0), [1, 2], keepdims=True)
            mixing = self.conv2d_1(self.batch_norm_relu_1(self.conv2d_0(squeeze)))
            mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=3)), axis=0)
            return tf.reduce_sum(paths * mixing, 0)

    def shortcut_layers(cin, cout, stride):
        if sk:  # ResNet-D: [pad,] average pool, 1x1 conv, BN
            layers = [Op(fixed_padding(2))] if stride > 1 else []
            pad = "SAME" if stride == 1 else "VALID"
            layers.append(Op(lambda x: tf.nn.avg_pool2d(x, 2, stride, pad)))
            layers.append(Conv(cin, cout, 1, 1))
        else:
            layers = [Conv(cin, cout, 1, stride)]
        return layers + [BNRelu(cout, relu=False)]

    class BottleneckBlock(tf.Module):
        expansion = 4

        def __init__(self, cin, f, stride, projection):
            super().__init__()
            self.projection_layers = shortcut_layers(cin, 4 * f, stride) if projection else []
            layers = [Conv(cin, f, 1, 1), BNRelu(f), Op()]
            layers += [SKConv(f, f, stride)] if sk else [Conv(f, f, 3, stride), BNRelu(f)]
            layers += [Op(), Conv(f, 4 * f, 1, 1), BNRelu(4 * f, relu=False, gamma_scale=0.3), Op()]
            self.conv_relu_dropblock_layers = layers

        def __call__(self, x):
            return tf.nn.relu(run(self.conv_relu_dropblock_layers, x) + run(self.projection_layers, x))

    class ResidualBlock(tf.Module):
        expansion = 1

        def __init__(self, cin, f, stride, projection):
            super().__init__()
            self.shortcut_layers = shortcut_layers(cin, f, stride) if projection else []
            self.conv2d_bn_layers = [Conv(cin, f, 3, stride), BNRelu(f), Conv(f, f, 3, 1),
                                     BNRelu(f, relu=False, gamma_scale=0.3)]

        def __call__(self, x):
            return tf.nn.relu(run(self.conv2d_bn_layers, x) + run(self.shortcut_layers, x))

    class BlockGroup(tf.Module):
        def __init__(self, block, cin, f, count, stride):
            super().__init__()
            self.layers = [block(cin, f, stride, True)]
            self.layers += [block(f * block.expansion, f, 1, False) for _ in range(count - 1)]

        def __call__(self, x):
            return run(self.layers, x)

    class Resnet(tf.Module):
        def __init__(self):
            super().__init__()
            block, counts = {18: (ResidualBlock, (2, 2, 2, 2)), 50: (BottleneckBlock, (3, 4, 6, 3)),
                             101: (BottleneckBlock, (3, 4, 23, 3))}[depth]
            c = int(64 * width)
            pool = Op(lambda x: tf.nn.max_pool2d(x, 3, 2, "SAME"))
            if small_images:
                stem = [Conv(3, c, 3, 1), Op(), BNRelu(c), Op()]
            elif sk:
                stem = [Conv(3, c // 2, 3, 2), BNRelu(c // 2), Conv(c // 2, c // 2, 3, 1), BNRelu(c // 2),
                        Conv(c // 2, c, 3, 1), Op(), BNRelu(c), pool, Op()]
            else:
                stem = [Conv(3, c, 7, 2), Op(), BNRelu(c), pool, Op()]
            self.initial_conv_relu_max_pool = stem
            groups, cin = [], c
            for base, count, stride in zip((64, 128, 256, 512), counts, (1, 2, 2, 2)):
                groups.append(BlockGroup(block, cin, int(base * width), count, stride))
                cin = int(base * width) * block.expansion
            self.block_groups = groups
            self.out_dim = cin

        def __call__(self, x):
            return tf.reduce_mean(run(self.block_groups, run(self.initial_conv_relu_max_pool, x)), [1, 2])

    class Dense(tf.Module):
        def __init__(self, cin, cout, bias):
            super().__init__()
            self.kernel = variable((cin, cout), 1.0 / math.sqrt(cin))
            self.use_bias = bias
            if bias:
                self.bias = variable((cout,), 0.1)

        def __call__(self, x):
            y = tf.matmul(x, self.kernel)
            return y + self.bias if self.use_bias else y

    class LinearLayer(tf.Module):
        def __init__(self, cin, cout, use_bias=True, use_bn=False):
            super().__init__()
            self.use_bn = use_bn
            self.dense = Dense(cin, cout, use_bias and not use_bn)
            if use_bn:
                self.bn_relu = BNRelu(cout, relu=False, center=use_bias, track=False)

        def __call__(self, x):
            x = self.dense(x)
            return self.bn_relu(x) if self.use_bn else x

    class ProjectionHead(tf.Module):
        def __init__(self, dim):
            super().__init__()
            self.linear_layers = [LinearLayer(dim, dim, True, True) for _ in range(proj_layers - 1)]
            self.linear_layers.append(LinearLayer(dim, 128, False, True))

        def __call__(self, h):
            hiddens = [h]
            for j, layer in enumerate(self.linear_layers):
                x = layer(hiddens[-1])
                hiddens.append(tf.nn.relu(x) if j != proj_layers - 1 else x)
            return hiddens

    class SupervisedHead(tf.Module):
        def __init__(self, dim):
            super().__init__()
            self.linear_layer = LinearLayer(dim, num_classes)

        def __call__(self, x):
            return self.linear_layer(x)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.resnet_model = Resnet()
            self._projection_head = ProjectionHead(self.resnet_model.out_dim)
            self.supervised_head = SupervisedHead(self.resnet_model.out_dim)

        def __call__(self, images_nchw: np.ndarray, head_layer: int = 0):
            """(projection z, supervised logits on hiddens[head_layer]) in inference mode."""
            x = tf.constant(images_nchw.transpose(0, 2, 3, 1))
            hiddens = self._projection_head(self.resnet_model(x))
            return hiddens[-1].numpy(), self.supervised_head(hiddens[head_layer]).numpy()

    model = Model()
    calibrating[0] = True
    model(images(8, 32 if small_images else 64, seed=seed + 100))
    calibrating[0] = False
    return TFReference(model, encoder_order)


class TFReference:
    """The TF model plus its encoder layers in creation order (kept off the tracked object graph)."""

    def __init__(self, module, encoder_order):
        self.module = module
        self.encoder_order = encoder_order

    def __call__(self, images_nchw: np.ndarray, head_layer: int = 0):
        return self.module(images_nchw, head_layer)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def save_tf2(tf, model: TFReference, prefix) -> str:
    """The official TF2 layout: ``tf.train.Checkpoint(model=...)`` keys."""
    return tf.train.Checkpoint(model=model.module).save(str(prefix))


def tf1_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights under TF1 names: layers numbered in creation order per scope."""
    out, convs, bns = {}, 0, 0
    for kind, layer in model.encoder_order:
        if kind == "conv":
            out[f"base_model/{'conv2d' + (f'_{convs}' if convs else '')}/kernel"] = layer.kernel.numpy()
            convs += 1
        else:
            name = "batch_normalization" + (f"_{bns}" if bns else "")
            for var in ("gamma", "beta", "moving_mean", "moving_variance"):
                out[f"base_model/{name}/{var}"] = getattr(layer, var).numpy()
            bns += 1
    for j, layer in enumerate(model._projection_head.linear_layers):
        out[f"head_contrastive/nl_{j}/dense/kernel"] = layer.dense.kernel.numpy()
        bn = layer.bn_relu.bn
        for var in ("gamma", "beta", "moving_mean", "moving_variance"):
            if hasattr(bn, var):
                out[f"head_contrastive/nl_{j}/batch_normalization/{var}"] = getattr(bn, var).numpy()
    dense = model.supervised_head.linear_layer.dense
    out["head_supervised/linear_layer/dense/kernel"] = dense.kernel.numpy()
    out["head_supervised/linear_layer/dense/bias"] = dense.bias.numpy()
    return out


def save_tf1(tf, tensors: dict[str, np.ndarray], prefix) -> str:
    """A TF1 name-based checkpoint written with ``tf.compat.v1`` variables and a Saver."""
    graph = tf.Graph()
    with graph.as_default():
        for name, value in tensors.items():
            scope, leaf = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                tf.compat.v1.get_variable(leaf, initializer=value)
        tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, str(prefix), global_step=250228)


def torch_outputs(payload, images: np.ndarray):
    model = build_model(payload["record"]["model_config"])
    model.load_state_dict(payload["model"], strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(images))


def assert_close(ours: torch.Tensor, theirs: np.ndarray, tol: float = 1e-4) -> None:
    """Equal to ``tol`` relative to the output's scale (deep random nets reach large values)."""
    ours = ours.numpy()
    scale = max(1.0, float(np.abs(theirs).max()))
    assert ours.shape == theirs.shape
    assert float(np.abs(ours - theirs).max()) <= tol * scale, float(np.abs(ours - theirs).max())


def images(n: int, size: int, seed: int = 1) -> np.ndarray:
    """Images in [0, 1] that differ in colour and layout, not only in pixel noise.

    Noise images alike in their statistics give nearly the same pooled features, so a
    comparison on them would hardly depend on the input.
    """
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size, dtype=np.float32)
    colour = rng.uniform(0, 1, (n, 3, 1, 1))
    frequency = rng.uniform(1, 6, (n, 1, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1, 1))
    pattern = 0.5 + 0.5 * np.sin(frequency * 2 * np.pi * (grid[:, None] + grid[None, :] ** 2) + phase)
    noise = rng.random((n, 3, size, size))
    return (0.5 * colour + 0.35 * pattern + 0.15 * noise).clip(0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Without TensorFlow: the reader's pieces and the key layouts against the official lists
# ---------------------------------------------------------------------------------------------

def test_crc32c_matches_reference_values_at_every_size():
    assert crc32c(b"123456789") == 0xE3069283  # the standard crc32c check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 2047, 2048, 4099, 65536 + 3, 1 << 20):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == tf_bundle._crc_bytes(data), n


def test_tf2_layout_is_exactly_the_official_key_list(shared_dir):
    reference = read_key_list(shared_dir / "reference" / "tf2_checkpoint_keys_r50_1x_sk1.txt")
    config = contrastive_config("r50_1x_sk1", monitor_classes=1000)
    with torch.device("meta"):
        model = build_model(config)
    state = model.state_dict()
    entries = model_entries(model, config, TF2Layout())
    mapped = {e.tf_key: tf_shape(e.kind, state[e.ours].shape) for e in entries}
    bookkeeping = {"_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter" + TF2_SUFFIX}
    assert mapped == {k: v for k, v in reference.items() if k not in bookkeeping}
    assert len({e.ours for e in entries}) == len(entries)


def test_tf1_numbering_matches_the_official_creation_order(shared_dir):
    """The official variable names number layers in creation order as TF1 does: same keys, same shapes."""
    names = read_key_list(shared_dir / "reference" / "tf2_variable_names_r50_1x_sk1.txt")
    expected = {}
    for name, shape in names.items():
        parts = name[: -len(":0")].split("/")
        if parts[0] == "resnet":
            layer = parts[-2].replace("sync_batch_normalization", "batch_normalization")
            expected[f"base_model/{layer}/{parts[-1]}"] = shape
        elif parts[0] == "projection_head":
            layer = "dense" if parts[2].startswith("dense") else "batch_normalization"
            expected[f"head_contrastive/{parts[1]}/{layer}/{parts[-1]}"] = shape
        else:
            expected[f"head_supervised/linear_layer/dense/{parts[-1]}"] = shape
    config = contrastive_config("r50_1x_sk1", monitor_classes=1000)
    with torch.device("meta"):
        model = build_model(config)
    state = model.state_dict()
    entries = model_entries(model, config, TF1Layout())
    assert {e.tf_key: tf_shape(e.kind, state[e.ours].shape) for e in entries} == expected
    # The first block's projection shortcut is created before its 1x1 conv.
    by_key = {e.tf_key: e.ours for e in entries}
    assert by_key["base_model/conv2d_3/kernel"] == "encoder.layer1.0.shortcut.conv.weight"
    assert by_key["base_model/conv2d_4/kernel"] == "encoder.layer1.0.conv1.weight"


def test_missing_and_non_checkpoint_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        convert_tf_checkpoint(tmp_path / "nope" / "model.ckpt-1", "r50_1x_sk1")
    assert "\n" not in str(err.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="is not a TensorFlow checkpoint") as err:
        convert_tf_checkpoint(text, "r50_1x_sk1")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.index").write_bytes(b"\x00" * 100)
    (tmp_path / "junk.data-00000-of-00001").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="not a valid TensorFlow checkpoint index") as err:
        convert_tf_checkpoint(tmp_path / "junk", "r50_1x_sk1")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no TensorFlow checkpoint"):
        convert_tf_checkpoint(tmp_path / "empty", "r50_1x_sk1")
    with pytest.raises(UserError, match="unknown model"):
        convert_tf_checkpoint(text, "resnet50")


# ---------------------------------------------------------------------------------------------
# With TensorFlow: checkpoints written by TF, converted, and compared with TF's own forward
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_tf2(tf, tmp_path_factory):
    """A small official-layout TF2 checkpoint (r50 at width 0.25 with selective kernels)."""
    model = official_tf_model(tf, 50, 0.25, sk=True)
    prefix = save_tf2(tf, model, tmp_path_factory.mktemp("small_tf2") / "ckpt")
    return model, prefix


def test_official_r50_1x_sk1_tf2_checkpoint_converts_exactly(tf, shared_dir, tmp_path):
    model = official_tf_model(tf, 50, 1, sk=True, num_classes=1000)
    prefix = save_tf2(tf, model, tmp_path / "ckpt")
    written = {k: tuple(s) for k, s in tf.train.list_variables(prefix)}
    assert written == read_key_list(shared_dir / "reference" / "tf2_checkpoint_keys_r50_1x_sk1.txt")

    out = import_tf_checkpoint(tmp_path, "r50_1x_sk1", tmp_path / "r50.pt")
    payload = load_checkpoint(out)
    report = payload["record"]["config"]["report"]
    assert report["mapped"] == 387 and report["reader"] == "builtin" and report["format"] == "tf2"
    assert report["ignored"] == {"object graph": 1, "step counter": 1}
    record = payload["record"]
    assert record["stage"] == "import" and record["class_names"][:2] == ["0", "1"]
    assert len(record["class_names"]) == 1000 and record["image_size"] == 224
    assert record["model_config"]["kind"] == "contrastive"
    state = payload["model"]

    def same(ours: str, tf_var, layout: str = "vector"):
        value = tf_var.numpy()
        value = value.transpose(3, 2, 0, 1) if layout == "conv" else value.T if layout == "dense" else value
        assert torch.equal(state[ours], torch.from_numpy(np.ascontiguousarray(value))), ours

    resnet = model.resnet_model
    same("encoder.stem.convs.0.weight", resnet.initial_conv_relu_max_pool[0].conv2d.kernel, "conv")
    same("encoder.stem.bns.2.running_var", resnet.initial_conv_relu_max_pool[6].bn.moving_variance)
    block = resnet.block_groups[1].layers[0]
    sk = block.conv_relu_dropblock_layers[3]
    same("encoder.layer2.0.conv2.conv.weight", sk.conv2d_fixed_padding.conv2d.kernel, "conv")
    same("encoder.layer2.0.conv2.fc1.weight", sk.conv2d_0.kernel, "conv")
    same("encoder.layer2.0.conv2.fc1_bn.running_mean", sk.batch_norm_relu_1.bn.moving_mean)
    same("encoder.layer2.0.conv2.fc2.weight", sk.conv2d_1.kernel, "conv")
    same("encoder.layer2.0.shortcut.conv.weight", block.projection_layers[2].conv2d.kernel, "conv")
    first = resnet.block_groups[0].layers[0]
    same("encoder.layer1.0.shortcut.conv.weight", first.projection_layers[1].conv2d.kernel, "conv")
    last = resnet.block_groups[3].layers[2]
    same("encoder.layer4.2.bn3.weight", last.conv_relu_dropblock_layers[6].bn.gamma)
    head = model._projection_head.linear_layers
    same("projection_head.layers.0.linear.weight", head[0].dense.kernel, "dense")
    same("projection_head.layers.1.bn.bias", head[1].bn_relu.bn.beta)
    same("projection_head.layers.2.scale", head[2].bn_relu.bn.gamma)
    same("projection_head.layers.2.bn.running_var", head[2].bn_relu.bn.moving_variance)
    monitor = next(k[: -len(".linear.weight")] for k in state
                   if k.startswith("monitor") and k.endswith("linear.weight"))
    same(f"{monitor}.linear.weight", model.supervised_head.linear_layer.dense.kernel, "dense")
    same(f"{monitor}.linear.bias", model.supervised_head.linear_layer.dense.bias)

    x = images(2, 64)
    z, logits = torch_outputs(payload, x)
    tf_z, tf_logits = model(x)
    assert_close(z, tf_z)
    assert_close(logits, tf_logits)


@pytest.mark.parametrize("depth,width,sk,small,size", [
    (50, 0.25, False, False, 57),   # plain ResNet: 7x7 stem, odd input (symmetric SAME pooling)
    (18, 0.25, True, True, 32),     # basic blocks with ResNet-D shortcuts, CIFAR stem
    (50, 0.25, True, False, 64),    # SK bottlenecks, deep stem, even input
])
def test_converted_models_reproduce_tensorflow_outputs(tf, tmp_path, depth, width, sk, small, size):
    model = official_tf_model(tf, depth, width, sk, small_images=small, seed=depth)
    prefix = save_tf2(tf, model, tmp_path / "ckpt")
    name = f"r{depth}_{width}x_sk{int(sk)}"
    x = images(3, size)
    tf_z, tf_monitor = model(x)
    z, monitor = torch_outputs(convert_tf_checkpoint(prefix, name, small_images=small).payload, x)
    assert_close(z, tf_z)
    assert_close(monitor, tf_monitor)
    # A fine-tuned checkpoint: the classifier sits on projection layer 1.
    result = convert_tf_checkpoint(prefix, name, head_layer=1, small_images=small)
    assert result.report.ignored["projection layers above --head-layer"] == 9
    assert_close(torch_outputs(result.payload, x), model(x, head_layer=1)[1])


def test_builtin_reader_reads_the_common_dtypes_as_tensorflow_does(tf, tmp_path):
    rng = np.random.default_rng(0)
    module = tf.Module()
    for dtype in (np.float32, np.float16, np.float64):
        setattr(module, np.dtype(dtype).name, tf.Variable(rng.standard_normal((3, 5)).astype(dtype)))
    for dtype in (np.int32, np.int64):
        setattr(module, np.dtype(dtype).name, tf.Variable(rng.integers(-2**30, 2**30, (7,)).astype(dtype)))
    module.bfloat16 = tf.Variable(tf.constant(rng.standard_normal((2, 3)), dtype=tf.bfloat16))
    module.scalar = tf.Variable(3.5)
    prefix = tf.train.Checkpoint(m=module).save(str(tmp_path / "dtypes"))
    ours = tf_bundle.TensorBundleReader(prefix)
    theirs = tf.train.load_checkpoint(prefix)
    keys = [k for k in ours.shapes() if k.startswith("m/")]
    assert len(keys) == 7
    for key in keys:
        expected = np.asarray(theirs.get_tensor(key))
        if expected.dtype.name == "bfloat16":
            expected = expected.astype(np.float32)
        got = ours.read(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert np.array_equal(got, expected), key
    ours.close()


def test_tf1_checkpoint_with_ema_copies(tf, small_tf2, tmp_path):
    model, _ = small_tf2
    tensors = tf1_tensors(model)
    rng = np.random.default_rng(5)
    ema = {f"ema_model/{k}": (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
           for k, v in tensors.items() if not k.startswith("head_supervised")}
    slots = {f"{k}/Momentum": np.zeros_like(v) for k, v in tensors.items()}
    prefix = save_tf1(tf, {**tensors, **ema, **slots}, tmp_path / "model.ckpt")
    assert prefix.endswith("model.ckpt-250228")

    x = images(2, 64)
    plain = convert_tf_checkpoint(tmp_path, "r50_0.25x_sk1")
    assert plain.report.format == "tf1"
    assert plain.report.mapped == len(tensors)
    assert plain.report.ignored == {"EMA copies (--ema takes them)": len(ema), "optimizer state": len(slots),
                                    "step counter": 1}
    tf_z, tf_logits = model(x)
    z, logits = torch_outputs(plain.payload, x)
    assert_close(z, tf_z)
    assert_close(logits, tf_logits)

    averaged = convert_tf_checkpoint(prefix, "r50_0.25x_sk1", ema=True)
    state = averaged.payload["model"]
    assert torch.equal(state["encoder.stem.convs.0.weight"],
                       torch.from_numpy(ema["ema_model/base_model/conv2d/kernel"].transpose(3, 2, 0, 1).copy()))
    assert torch.equal(state["projection_head.layers.2.scale"],
                       torch.from_numpy(ema["ema_model/head_contrastive/nl_2/batch_normalization/gamma"]))
    # The supervised head has no EMA copy: taken as trained, and said so.
    assert averaged.report.ema_fallbacks == 2
    assert averaged.report.ignored["weights replaced by their EMA copies"] == len(ema)
    assert "without an EMA copy" in averaged.report.summary()


def test_tensorflow_reads_what_the_builtin_reader_leaves(tf, small_tf2, monkeypatch):
    model, prefix = small_tf2

    def unsupported(self, prefix, verify=True):
        raise tf_bundle.BundleUnsupported("a feature the test pretends not to know")

    monkeypatch.setattr(tf_bundle.TensorBundleReader, "__init__", unsupported)
    result = convert_tf_checkpoint(prefix, "r50_0.25x_sk1")
    assert result.report.reader == "tensorflow"
    x = images(2, 64)
    assert_close(torch_outputs(result.payload, x)[0], model(x)[0])
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
    with pytest.raises(UserError, match=re.escape("pip install simclrv2[tf]")) as err:
        convert_tf_checkpoint(prefix, "r50_0.25x_sk1")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model_name,message", [
    ("r50_0.5x_sk1", r"tensor model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel/\.ATTRIBUTES/"
                     r"VARIABLE_VALUE has shape \[3, 3, 3, 8\] but r50_0\.5x_sk1 expects \[3, 3, 3, 16\] .*"
                     r"suggest --model r50_0\.25x_sk1$"),
    ("r50_0.25x_sk0", r"lacks \d+ of the \d+ tensors that r50_0\.25x_sk0 needs .*"
                      r"suggest --model r50_0\.25x_sk1$"),
    ("r101_0.25x_sk1", r"lacks .*suggest --model r50_0\.25x_sk1$"),
    ("r18_0.25x_sk1", r"lacks .*suggest --model r50_0\.25x_sk1$"),
])
def test_wrong_model_is_a_one_line_error_naming_the_tensor(small_tf2, model_name, message):
    _, prefix = small_tf2
    with pytest.raises(UserError, match=message) as err:
        convert_tf_checkpoint(prefix, model_name)
    assert "\n" not in str(err.value)


def test_other_bad_requests_are_one_line_user_errors(tf, small_tf2, tmp_path):
    _, prefix = small_tf2
    with pytest.raises(UserError, match="no EMA copies"):
        convert_tf_checkpoint(prefix, "r50_0.25x_sk1", ema=True)
    with pytest.raises(UserError, match="--head-layer 3 is out of range.*from 0 to 2"):
        convert_tf_checkpoint(prefix, "r50_0.25x_sk1", head_layer=3)
    with pytest.raises(UserError, match="suggest --model r50_0.25x_sk1 --small-images"):
        small = official_tf_model(tf, 50, 0.25, sk=True, small_images=True)
        convert_tf_checkpoint(save_tf2(tf, small, tmp_path / "small" / "ckpt"), "r50_0.25x_sk1")
    # A deeper checkpoint than --model says: the extra blocks have no place.
    deeper = official_tf_model(tf, 101, 0.25, sk=True)
    with pytest.raises(UserError, match=r"has \d+ tensors that r50_0.25x_sk1 has no place for .*"
                                        r"suggest --model r101_0.25x_sk1$"):
        convert_tf_checkpoint(save_tf2(tf, deeper, tmp_path / "deep" / "ckpt"), "r50_0.25x_sk1")
    # A tensor the importer does not know is an error, not silently dropped.
    model = official_tf_model(tf, 50, 0.25, sk=True)
    model.module.resnet_model.extra = tf.Variable(np.zeros(3, np.float32))
    with pytest.raises(UserError, match=r"has 1 tensors .* no place for \(model/resnet_model/extra/"):
        convert_tf_checkpoint(save_tf2(tf, model, tmp_path / "extra" / "ckpt"), "r50_0.25x_sk1")


def test_damaged_data_is_caught_by_the_checksum(small_tf2, tmp_path):
    _, prefix = small_tf2
    for path in (f"{prefix}.index", f"{prefix}.data-00000-of-00001"):
        target = tmp_path / os.path.basename(path)
        target.write_bytes(open(path, "rb").read())
    data = tmp_path / (os.path.basename(prefix) + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="is damaged .*crc32c mismatch.*download it again"):
        convert_tf_checkpoint(tmp_path / os.path.basename(prefix), "r50_0.25x_sk1")


def test_import_tf_command_prints_a_one_paragraph_report(small_tf2, tmp_path, capsys):
    _, prefix = small_tf2
    out = tmp_path / "imported.pt"
    assert main(["import-tf", f"{prefix}.index", "--model", "r50_0.25x_sk1", "--out", str(out),
                 "--head-layer", "1"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed
    assert re.search(r"mapped \d+ tensors .*ignored 11 \(object graph 1, projection layers above "
                     r"--head-layer 9, step counter 1\)", printed), printed
    payload = load_checkpoint(out)
    assert payload["record"]["model_config"] == classifier_config("r50_0.25x_sk1", 10, head_layer=1)
    help_text = build_parser()._subparsers._group_actions[0].choices["import-tf"].format_help()
    assert "--head-layer J" in help_text and "finetuned_1pct" in help_text


def test_imported_checkpoints_continue_through_every_stage(tf, small_tf2, tmp_path):
    """An official checkpoint, once converted, is an ordinary starting point: evaluate, fine-tune,
    linear-eval and distill all accept it (issue: "the converted model continues in our pipeline")."""
    from simclrv2.config import from_mapping
    from simclrv2.data import open_images
    from simclrv2.distributed import single_process
    from simclrv2.commands.evaluate import evaluate
    from simclrv2.metrics import eval_loader
    from simclrv2.engine import train
    from simclrv2.stages.distill import DistillConfig
    from simclrv2.stages.finetune import FinetuneConfig
    from simclrv2.stages.linear_eval import LinearEvalConfig

    model, prefix = small_tf2
    pretrained = import_tf_checkpoint(prefix, "r50_0.25x_sk1", tmp_path / "pretrained.pt")
    classifier = import_tf_checkpoint(prefix, "r50_0.25x_sk1", tmp_path / "classifier.pt", head_layer=0)
    common = dict(data="digits", holdout=0.2, workers=0, image_size=32, log_every=50, tensorboard=False)

    # evaluate: the imported supervised head predicts what TensorFlow's does on the same views
    result = evaluate(str(classifier), data="digits", image_size=32, workers=0, device="cpu",
                      precision="fp32")  # TensorFlow computes in fp32
    digits = open_images("digits", labeled=True)
    views, labels = [], []
    for batch in eval_loader(digits, 32, single_process("cpu"), workers=0).epoch(0):
        views.append(batch.images.float().div(255).numpy())
        labels.append(batch.labels.numpy())
    _, tf_logits = model(np.concatenate(views))
    tf_top1 = float((tf_logits.argmax(1) == np.concatenate(labels)).mean())
    metrics = result["metrics"]
    assert metrics["images"] == len(digits) == 1797
    assert metrics["top1"] == pytest.approx(tf_top1, abs=0.5 / len(digits))

    # fine-tune at lr 0 from the import: the classifier starts from exactly the TF weights
    tuned = tmp_path / "finetune"
    train(from_mapping(FinetuneConfig, {**common, "from": str(pretrained), "out": str(tuned),
                                           "labels": "2/class", "head_layer": "1", "epochs": 1, "lr": 0.0}))
    source = load_checkpoint(pretrained)["model"]
    weights = load_checkpoint(tuned / "model.pt")["model"]
    assert torch.equal(weights["head_layers.0.linear.weight"], source["projection_head.layers.0.linear.weight"])
    encoder = [k for k in weights if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    assert len(encoder) > 50 and all(torch.equal(weights[k], source[k]) for k in encoder)

    # linear evaluation on the imported features, and distillation from the imported classifier
    probe = train(from_mapping(LinearEvalConfig, {**common, "from": str(pretrained),
                                                        "out": str(tmp_path / "linear"), "epochs": 1}))
    assert 0.0 <= probe["holdout_top1"] <= 1.0
    student = train(from_mapping(DistillConfig, {**common, "teacher": str(classifier), "student": "r18_0.125x_sk0",
                                                   "out": str(tmp_path / "distill"), "epochs": 1, "batch_size": 128}))
    assert student["student"] == "r18_0.125x_sk0" and 0.0 <= student["holdout_top1"] <= 1.0
    assert load_checkpoint(tmp_path / "distill" / "model.pt")["record"]["model_config"]["encoder"] == "r18_0.125x_sk0"
