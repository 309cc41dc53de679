"""Keras Applications → the timm model with the same computation: names, layouts and BatchNorm details mapped.

| Keras | timm name | preprocessing |
|---|---|---|
| MobileNet (alpha α) | `mobilenetv1_100` (α = 1) / `keras_mobilenetv1` | tf |
| MobileNetV2 (alpha α) | `mobilenetv2_035/050/075/100/140` / `keras_mobilenetv2` (α = 1.3) | tf |
| ResNet50 | `keras_resnet50` (stride in the first 1×1 conv, as Keras) | caffe |
| DenseNet121/169/201 | `densenet121/169/201` | torch |

What differs and how it is bridged:
- padding: Keras pads strided convs TensorFlow-style (extra pixel after): the MobileNets use timm's `pad_type="same"`
  (exact at every size for MobileNetV2, whose explicit padding follows the input's parity; for MobileNet v1, whose
  explicit padding is always (0, 1), exact whenever the strided layers see even sizes, e.g. multiples of 32).
  ResNet50 and DenseNet pad 3 then 1 symmetrically, as timm does (max pooling after a ReLU: zero padding = −∞).
- BatchNorm epsilon: the MobileNets pass Keras's 1e-3 (`bn_eps`); ResNet50/DenseNet use 1.001e-5, and the
  difference to timm's 1e-5 is added to the running variance, which gives the same normalisation.
- conv biases (ResNet50 only: every conv has one, each followed by BatchNorm) are folded into the running mean.
- caffe preprocessing feeds BGR: the first conv's input channels are swapped so the bundle takes RGB.

The importer checks every mapping against the layer-graph module before using it (see importer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from graft.errors import GraftError
from graft.models.keras.files import KerasFile
from graft.models.keras.graph import Node, _named, parse_nodes

TIMM_BN_EPS = 1e-5
PREPROCESS = {"MobileNet": "tf", "MobileNetV2": "tf", "ResNet50": "caffe", "DenseNet": "torch"}


@dataclass
class MappedApplication:
    name: str  # "MobileNet (alpha 0.25)", "DenseNet121", …
    timm_name: str
    timm_kwargs: dict
    preprocess: str
    num_classes: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def _norm(name: str) -> str:
    return name.replace("/", "_")


def detect(nodes: list[Node]) -> str | None:
    """Which Keras Application the layer names spell, if any (the mapping and the parity check decide the rest)."""
    names = {_norm(n.name) for n in nodes}
    if {"conv1", "conv_dw_13", "conv_pw_13_bn", "conv_preds"} <= names:
        return "MobileNet"
    if {"Conv1", "block_16_project_BN", "Conv_1_bn", "predictions"} <= names:
        return "MobileNetV2"
    if {"conv1_conv", "conv5_block3_3_bn", "predictions"} <= names and not {"conv4_block7_1_conv", "post_bn"} & names:
        return "ResNet50"
    if {"conv1_conv", "conv5_block16_concat", "bn", "predictions"} <= names:
        return "DenseNet"
    return None


# Keras Applications that import as layer graphs, by the layer names they spell → the preprocess_input mode their
# weights expect (their Keras preprocessing is outside the model, so the file does not say it otherwise).
_GRAPH_APPLICATIONS = (
    ("VGG", {"block1_conv1", "block5_conv3", "block5_pool"}, set(), "caffe"),
    ("ResNetV2", {"conv1_conv", "post_bn"}, set(), "tf"),
    ("ResNet", {"conv1_conv", "conv5_block3_3_bn"}, {"post_bn"}, "caffe"),
    ("Xception", {"block1_conv1", "block14_sepconv2"}, set(), "tf"),
    ("InceptionV3", {"mixed9", "mixed10"}, set(), "tf"),
    ("InceptionResNetV2", {"conv_7b", "conv_7b_bn"}, set(), "tf"),
)


def application_preprocessing(nodes: list[Node]) -> tuple[str, str] | None:
    """(application, preprocess_input mode) of a Keras Application that has no timm mapping; None otherwise."""
    names = {_norm(n.name) for n in nodes}
    for application, needed, absent, mode in _GRAPH_APPLICATIONS:
        if needed <= names and not absent & names:
            return application, mode
    return None


class _Mapper:
    """Collects timm tensors from Keras layers, remembering which Keras weights were used."""

    def __init__(self, source: KerasFile, nodes: list[Node]) -> None:
        self.nodes = {_norm(n.name): n for n in nodes}
        self.weights = {}
        for node in nodes:
            self.weights[_norm(node.name)] = _named(
                node.kind, node.config, source.weights.get(node.name, []), node.name
            )
        self.used: set[str] = set()
        self.state: dict[str, torch.Tensor] = {}

    def get(self, layer: str) -> dict[str, np.ndarray]:
        if layer not in self.weights or not self.weights[layer]:
            raise GraftError(f"layer {layer} missing or without weights")
        self.used.add(layer)
        return self.weights[layer]

    def conv(self, dst: str, layer: str, *, depthwise: bool = False) -> np.ndarray | None:
        w = self.get(layer)
        kernel = w.get("kernel", w.get("depthwise_kernel"))
        if depthwise:
            kh, kw, cin, mult = kernel.shape
            t = kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None]
        else:
            t = kernel.transpose(3, 2, 0, 1)
        self.state[f"{dst}.weight"] = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32))
        return w.get("bias")

    def bn(self, dst: str, layer: str, *, conv_bias: np.ndarray | None = None, fold_eps: bool = False) -> None:
        w = self.get(layer)
        mean = w["moving_mean"].astype(np.float64)
        var = w["moving_variance"].astype(np.float64)
        if conv_bias is not None:  # BN(conv + b) = BN'(conv) with the running mean moved by b
            mean = mean - conv_bias
        if fold_eps:  # (var + eps_keras) = (var' + eps_timm)
            eps = float(self.nodes[layer].config.get("epsilon", 1e-3))
            var = var + eps - TIMM_BN_EPS
        for key, value in (
            ("weight", w.get("gamma", np.ones_like(mean))),
            ("bias", w.get("beta", np.zeros_like(mean))),
            ("running_mean", mean),
            ("running_var", var),
        ):
            self.state[f"{dst}.{key}"] = torch.from_numpy(np.asarray(value, dtype=np.float32))

    def linear(self, dst: str, layer: str) -> int:
        w = self.get(layer)
        kernel = w["kernel"].reshape(-1, w["kernel"].shape[-1])  # Dense (in, out) or a 1×1 conv (1, 1, in, out)
        self.state[f"{dst}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T, dtype=np.float32))
        self.state[f"{dst}.bias"] = torch.from_numpy(np.asarray(w["bias"], dtype=np.float32))
        return kernel.shape[1]

    def unused(self) -> list[str]:
        return [name for name, w in self.weights.items() if w and name not in self.used]


def _mobilenet_v1(m: _Mapper) -> MappedApplication:
    stages = [[1], [2, 3], [4, 5], [6, 7, 8, 9, 10, 11], [12, 13]]
    m.conv("conv_stem", "conv1")
    m.bn("bn1", "conv1_bn")
    alpha = m.get("conv1")["kernel"].shape[3] / 32
    for s, blocks in enumerate(stages):
        for j, k in enumerate(blocks):
            m.conv(f"blocks.{s}.{j}.conv_dw", f"conv_dw_{k}", depthwise=True)
            m.bn(f"blocks.{s}.{j}.bn1", f"conv_dw_{k}_bn")
            m.conv(f"blocks.{s}.{j}.conv_pw", f"conv_pw_{k}")
            m.bn(f"blocks.{s}.{j}.bn2", f"conv_pw_{k}_bn")
    classes = m.linear("classifier", "conv_preds")
    name, kwargs = ("mobilenetv1_100", {}) if alpha == 1 else ("keras_mobilenetv1", {"channel_multiplier": alpha})
    kwargs.update(pad_type="same", bn_eps=_eps(m, "conv1_bn"))
    return MappedApplication(f"MobileNet (alpha {alpha:g})", name, kwargs, "tf", classes)


def _mobilenet_v2(m: _Mapper) -> MappedApplication:
    stages = [[1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12], [13, 14, 15], [16]]
    m.conv("conv_stem", "Conv1")
    m.bn("bn1", "bn_Conv1")
    m.conv("blocks.0.0.conv_dw", "expanded_conv_depthwise", depthwise=True)
    m.bn("blocks.0.0.bn1", "expanded_conv_depthwise_BN")
    m.conv("blocks.0.0.conv_pw", "expanded_conv_project")
    m.bn("blocks.0.0.bn2", "expanded_conv_project_BN")
    for s, blocks in enumerate(stages, start=1):
        for j, k in enumerate(blocks):
            prefix = f"blocks.{s}.{j}"
            m.conv(f"{prefix}.conv_pw", f"block_{k}_expand")
            m.bn(f"{prefix}.bn1", f"block_{k}_expand_BN")
            m.conv(f"{prefix}.conv_dw", f"block_{k}_depthwise", depthwise=True)
            m.bn(f"{prefix}.bn2", f"block_{k}_depthwise_BN")
            m.conv(f"{prefix}.conv_pwl", f"block_{k}_project")
            m.bn(f"{prefix}.bn3", f"block_{k}_project_BN")
    m.conv("conv_head", "Conv_1")
    m.bn("bn2", "Conv_1_bn")
    classes = m.linear("classifier", "predictions")
    alpha = round(m.get("block_16_project")["kernel"].shape[3] / 320, 4)
    named = {0.35: "mobilenetv2_035", 0.5: "mobilenetv2_050", 0.75: "mobilenetv2_075", 1.0: "mobilenetv2_100"}
    named[1.4] = "mobilenetv2_140"
    name, kwargs = (named[alpha], {}) if alpha in named else ("keras_mobilenetv2", {"channel_multiplier": alpha})
    kwargs.update(pad_type="same", bn_eps=_eps(m, "bn_Conv1"))
    return MappedApplication(f"MobileNetV2 (alpha {alpha:g})", name, kwargs, "tf", classes)


def _eps(m: _Mapper, layer: str) -> float:
    return float(m.nodes[layer].config.get("epsilon", 1e-3))


def _resnet50(m: _Mapper) -> MappedApplication:
    m.bn("bn1", "conv1_bn", conv_bias=m.conv("conv1", "conv1_conv"), fold_eps=True)
    for s, blocks in enumerate((3, 4, 6, 3), start=2):
        for b in range(1, blocks + 1):
            src, dst = f"conv{s}_block{b}", f"layer{s - 1}.{b - 1}"
            for i in (1, 2, 3):
                bias = m.conv(f"{dst}.conv{i}", f"{src}_{i}_conv")
                m.bn(f"{dst}.bn{i}", f"{src}_{i}_bn", conv_bias=bias, fold_eps=True)
            if b == 1:
                bias = m.conv(f"{dst}.downsample.0", f"{src}_0_conv")
                m.bn(f"{dst}.downsample.1", f"{src}_0_bn", conv_bias=bias, fold_eps=True)
    classes = m.linear("fc", "predictions")
    return MappedApplication("ResNet50", "keras_resnet50", {}, "caffe", classes)


def _densenet(m: _Mapper) -> MappedApplication:
    counts = {}
    for stage in (2, 3, 4, 5):
        counts[stage] = max(int(n.split("_")[1][5:]) for n in m.nodes if n.startswith(f"conv{stage}_block"))
    variants = {(6, 12, 24, 16): 121, (6, 12, 32, 32): 169, (6, 12, 48, 32): 201}
    depth = variants.get(tuple(counts.values()))
    if depth is None:
        raise GraftError(f"DenseNet with blocks {tuple(counts.values())} is not 121, 169 or 201")
    m.conv("features.conv0", "conv1_conv")
    m.bn("features.norm0", "conv1_bn", fold_eps=True)
    for stage, blocks in counts.items():
        for b in range(1, blocks + 1):
            src, dst = f"conv{stage}_block{b}", f"features.denseblock{stage - 1}.denselayer{b}"
            m.bn(f"{dst}.norm1", f"{src}_0_bn", fold_eps=True)
            m.conv(f"{dst}.conv1", f"{src}_1_conv")
            m.bn(f"{dst}.norm2", f"{src}_1_bn", fold_eps=True)
            m.conv(f"{dst}.conv2", f"{src}_2_conv")
        if stage < 5:
            m.bn(f"features.transition{stage - 1}.norm", f"pool{stage}_bn", fold_eps=True)
            m.conv(f"features.transition{stage - 1}.conv", f"pool{stage}_conv")
    m.bn("features.norm5", "bn", fold_eps=True)
    classes = m.linear("classifier", "predictions")
    return MappedApplication(f"DenseNet{depth}", f"densenet{depth}", {}, "torch", classes)


_MAPPERS = {"MobileNet": _mobilenet_v1, "MobileNetV2": _mobilenet_v2, "ResNet50": _resnet50, "DenseNet": _densenet}
_FIRST_CONV = {"MobileNet": "conv_stem", "MobileNetV2": "conv_stem", "ResNet50": "conv1", "DenseNet": "features.conv0"}


def map_application(source: KerasFile, family: str, *, bgr: bool) -> MappedApplication:
    """The timm name, kwargs and state dict of a Keras Application; GraftError when the file does not fit it.

    `bgr`: the model takes BGR (caffe preprocessing): the first conv's input channels are swapped so the bundle
    takes RGB. With another preprocessing the user said the model takes RGB, and nothing is swapped."""
    assert source.config is not None
    nodes = parse_nodes(source.config)[0]
    mapper = _Mapper(source, nodes)
    try:
        mapped = _MAPPERS[family](mapper)
    except (KeyError, ValueError, IndexError) as error:
        raise GraftError(f"not a standard Keras {family}: {error}") from None
    unused = mapper.unused()
    if unused:
        raise GraftError(f"not a standard Keras {family}: extra weighted layers {', '.join(unused[:5])}")
    if bgr:  # the model expects BGR: swap the first conv's input channels to take RGB
        key = f"{_FIRST_CONV[family]}.weight"
        mapper.state[key] = mapper.state[key].flip(1).contiguous()
    mapped.state = mapper.state
    return mapped
