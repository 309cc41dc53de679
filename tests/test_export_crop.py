"""graft.exports.crop: convolution kernels cut to the taps that see pixels give the same outputs."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import graft
from graft.exports import _to_onnx
from graft.exports.certificate import open_session, runner
from graft.exports.crop import crop_kernels, cropped_geometry, seen_taps


def _geometries():
    """Every 1-D geometry with a size up to 6, a kernel up to 5, a stride up to 3 and pads up to the kernel."""
    for size, kernel, stride in itertools.product(range(1, 7), range(1, 6), range(1, 4)):
        for begin, end in itertools.product(range(kernel + 1), repeat=2):
            if (size + begin + end - kernel) // stride + 1 >= 1 and size + begin + end >= kernel:
                yield size, kernel, stride, begin, end


def _conv1d(x: torch.Tensor, w: torch.Tensor, stride: int, begin: int, end: int) -> torch.Tensor:
    return nn.functional.conv1d(nn.functional.pad(x, (begin, end)), w, stride=stride)


def test_seen_taps_are_exactly_the_taps_that_touch_a_pixel():
    """Against the convolution itself, in float64: the taps outside the span multiply only padding (zeroing them
    changes no bit), the span's ends do see pixels (zeroing either changes the output), and the cut kernel with
    the new pads gives the same outputs."""
    generator = torch.Generator().manual_seed(0)
    checked = cut = 0
    for size, kernel, stride, begin, end in _geometries():
        x = torch.randn(2, 3, size, dtype=torch.float64, generator=generator)
        w = torch.randn(4, 3, kernel, dtype=torch.float64, generator=generator)
        reference = _conv1d(x, w, stride, begin, end)
        span = seen_taps(size, kernel, stride, begin, end)
        if span is None:  # every window lies in the padding
            assert not reference.any() and cropped_geometry([size], [kernel], [stride], [begin, end]) is None
            continue
        assert not torch.equal(reference[0], reference[1])  # the reference depends on its input
        first, last = span
        outside = w.clone()
        outside[..., :first] = 0
        outside[..., last + 1 :] = 0
        assert torch.equal(_conv1d(x, outside, stride, begin, end), reference)
        for tap in {first, last}:
            without = w.clone()
            without[..., tap] = 0
            assert not torch.allclose(_conv1d(x, without, stride, begin, end), reference)
        geometry = cropped_geometry([size], [kernel], [stride], [begin, end])
        if geometry is None:
            assert (first, last) == (0, kernel - 1)
        else:
            [(first_, last_)], (new_begin, new_end) = geometry
            assert (first_, last_) == (first, last) and new_begin >= 0 and new_end >= 0
            got = _conv1d(x, w[..., first : last + 1], stride, new_begin, new_end)
            assert got.shape == reference.shape
            torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
            cut += 1
        checked += 1
    assert checked > 1000 and cut > 100


class SmallMaps(nn.Module):
    """Convolutions on 8×8, 2×2 and 1×1 maps: the first keeps its kernel, the stride-2 one on 2×2 keeps the
    2×2 taps that see pixels, the grouped 3×3 and the 5×3 ones on 1×1 keep their centre only."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(1, 8, 3, padding=1)
        self.shrink = nn.Conv2d(8, 8, 4, stride=4)  # 8×8 → 2×2, nothing to cut
        self.stride2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # 2×2 → 1×1
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)  # 1×1 → 1×1
        self.tall = nn.Conv2d(16, 10, (5, 3), padding=(2, 1))  # 1×1 → 1×1
        for conv in self.children():  # outputs of order 1, so that a wrong tap shows
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.shrink(torch.relu(self.big(x))))
        x = self.tall(torch.relu(self.grouped(torch.relu(self.stride2(x)))))
        return x.flatten(1)


def _kernels(model_bytes: bytes) -> dict[str, tuple[int, ...]]:
    model = onnx.load_from_string(model_bytes)
    weights = {tensor.name: numpy_helper.to_array(tensor).shape for tensor in model.graph.initializer}
    return {node.name: weights[node.input[1]][2:] for node in model.graph.node if node.op_type == "Conv"}


def test_an_exported_model_gives_the_same_logits_with_its_kernels_cut():
    torch.manual_seed(0)
    model = SmallMaps().eval()
    exported, _ = _to_onnx(model, torch.randn(2, 1, 8, 8), None)
    cropped, names = crop_kernels(exported)
    before, after = _kernels(exported), _kernels(cropped)
    assert sorted(after[name] for name in names) == [(1, 1), (1, 1), (2, 2)]
    assert sorted(after.values()) == sorted([(3, 3), (4, 4), (2, 2), (1, 1), (1, 1)])
    assert len(before) == len(after) == 5
    original, cut = runner(open_session(exported)), runner(open_session(cropped))
    batches = [np.random.default_rng(seed).standard_normal((5, 1, 8, 8)).astype(np.float32) for seed in (1, 2)]
    assert np.abs(original(batches[0]) - original(batches[1])).max() > 0.1  # the reference depends on its input
    for batch in batches:
        expected = model(torch.from_numpy(batch)).detach().numpy()
        np.testing.assert_allclose(cut(batch), original(batch), rtol=0, atol=1e-5)
        np.testing.assert_allclose(cut(batch), expected, rtol=0, atol=1e-5)


def _conv_graph(
    height: int | str = 1,
    width: int | str = 1,
    *,
    conv: dict | None = None,
    weight_as_input: bool = False,
    weight_as_output: bool = False,
    second_conv: bool = False,
    weight_in_subgraph: bool = False,
    weight_from_constant: bool = False,
    stated_size: int | None = None,
) -> bytes:
    """A graph with one Conv (3×3, pads 1) on an N×1×height×width input, changed in one way by each option:
    on a fixed 1×1 input, as built with no option, its kernel is cut to the centre."""
    kernel = np.arange(18.0, dtype=np.float32).reshape(2, 1, 3, 3)
    attributes = {key: value for key, value in {"pads": [1, 1, 1, 1], **(conv or {})}.items() if value is not None}
    domain = attributes.pop("domain", "")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", domain=domain, **attributes)]
    initializers = [] if weight_from_constant else [numpy_helper.from_array(kernel, "w")]
    if weight_from_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(kernel, "w")))
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, height, width])]
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 1, 3, 3]))
    if weight_as_output:
        outputs.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 1, 3, 3]))
    if second_conv:
        nodes.append(helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2", pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None))
    if weight_in_subgraph:
        branch = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1])],
            "branch",
            [],
            [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        )
        condition = numpy_helper.from_array(np.array(True), "c")
        nodes.append(helper.make_node("If", ["c"], ["z_out"], then_branch=branch, else_branch=branch))
        initializers.append(condition)
        outputs.append(helper.make_tensor_value_info("z_out", onnx.TensorProto.FLOAT, None))
    value_info = []
    if stated_size is not None:  # a size the model states for the Conv's input without fixing it at its input
        nodes.insert(0, helper.make_node("Identity", ["x0"], ["x"]))
        inputs[0] = helper.make_tensor_value_info("x0", onnx.TensorProto.FLOAT, ["n", 1, height, width])
        value_info.append(
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, stated_size, stated_size])
        )
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers, value_info=value_info)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


GUARDS = {
    "spatial size not fixed": {"height": "h", "width": "w"},
    "one spatial size not fixed": {"width": "w"},
    "every tap sees a pixel": {"height": 4, "width": 4},
    "auto_pad": {"conv": {"auto_pad": "VALID"}},  # the pads attribute is then not what runs
    "dilation": {"conv": {"pads": [2, 2, 2, 2], "dilations": [2, 2], "strides": [3, 3]}},  # tap 1 sees the pixel
    "kernel_shape that is not the weight's": {"conv": {"kernel_shape": [1, 1]}},
    "a Conv of another domain (NHWC)": {"conv": {"domain": "com.ms.internal.nhwc"}},
    "weight that is a graph input": {"weight_as_input": True},
    "weight that is a graph output": {"weight_as_output": True},
    "weight shared with another Conv": {"second_conv": True},
    "weight read inside a subgraph": {"weight_in_subgraph": True},
    "weight from a Constant node": {"weight_from_constant": True},
    "a size only stated, not fixed at the input": {"height": "h", "width": "w", "stated_size": 1},
}


@pytest.mark.parametrize("change", list(GUARDS))
def test_graphs_the_rule_cannot_vouch_for_come_back_unchanged(change):
    """Each differs from a graph that is cut (the first assertion) in one way that makes cutting unsafe."""
    assert crop_kernels(_conv_graph())[1] == ["conv"]
    model = _conv_graph(**GUARDS[change])
    assert crop_kernels(model) == (model, [])


def test_a_fixed_one_pixel_input_is_cut_and_still_runs():
    model = _conv_graph(1, 1)
    cropped, names = crop_kernels(model)
    assert names == ["conv"] and _kernels(cropped) == {"conv": (1, 1)}
    x = np.random.default_rng(0).standard_normal((3, 1, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(runner(open_session(cropped))(x), runner(open_session(model))(x), rtol=0, atol=1e-6)


def test_graft_export_records_the_cut_convolutions_and_passes_parity(serve_bundle):
    """The tiny resnet10t at 16 px ends on 1×1 maps: its export is cut, recorded, and still within tolerance."""
    record = graft.load(serve_bundle).exports["onnx"]
    assert record["cropped_convolutions"] and record["passed"]
    kernels = _kernels((serve_bundle / record["file"]).read_bytes())
    assert all(kernels[name] != (3, 3) for name in record["cropped_convolutions"])


@pytest.mark.parametrize(
    "shape, kernel, pads, strides",
    [
        ((2,), (5,), [1, 3], [1]),  # 1-D, asymmetric pads: taps 0 and 4 see nothing
        ((1, 1, 2), (3, 3, 3), [1, 1, 1, 1, 1, 1], [1, 1, 2]),  # 3-D, a stride along the one axis with 2 pixels
        ((1, 3), (3, 3), [2, 0, 0, 1], [1, 2]),  # 2-D, pads on one side only
    ],
)
def test_other_ranks_and_asymmetric_pads_give_the_same_outputs(shape, kernel, pads, strides):
    weights = np.random.default_rng(0).standard_normal((4, 2, *kernel)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=pads, strides=strides)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2, *shape])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    cropped, names = crop_kernels(model)
    assert names == ["conv"]
    assert np.prod(numpy_helper.to_array(onnx.load_from_string(cropped).graph.initializer[0]).shape) < weights.size
    original, cut = runner(open_session(model)), runner(open_session(cropped))
    first, second = (np.random.default_rng(seed).standard_normal((3, 2, *shape)).astype(np.float32) for seed in (1, 2))
    assert np.abs(original(first) - original(second)).max() > 0.1  # the reference depends on its input
    for batch in (first, second):
        np.testing.assert_allclose(cut(batch), original(batch), rtol=0, atol=1e-5)
