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


def _conv_graph(height: int | str, width: int | str, kernel: int = 3) -> bytes:
    weight = numpy_helper.from_array(
        np.arange(2.0 * kernel * kernel, dtype=np.float32).reshape(2, 1, kernel, kernel), "w"
    )
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, height, width])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("height, width", [("h", "w"), (1, "w"), (4, 4)])
def test_graphs_without_a_fixed_small_size_come_back_unchanged(height, width):
    """A spatial size the graph does not fix may be anything at run time: no tap can be called unseen."""
    model = _conv_graph(height, width)
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
