"""Crop convolution kernels to the taps that can ever see the image: an exact rewrite of an exported ONNX graph.

Why: at a small input the last stages of a network run on tiny maps. ResNet-18 at 32×32 ends on 1×1 maps, where
eight of each 3×3 kernel's nine taps only ever multiply the zero padding. ONNX Runtime computes them anyway, and
its int8 convolution goes through the whole kernel once per image: on the fold-32 recipe those three convolutions
were 40 % of the int8 model's time (bench/int8_export.py). Cutting the kernel to the taps that see pixels gives the
same sums without the zero terms.

The rule, per spatial axis of a Conv whose input size H is fixed in the graph (kernel K, stride s, pads b before and
e after, dilation 1, O = ⌊(H + b + e − K) / s⌋ + 1 outputs): tap k sees a pixel iff 0 ≤ o·s − b + k < H for some
output o in [0, O). The kernel is cut to the span [first, last] of those taps and the pads become (b − first,
e − (K − 1 − last)): every output position keeps its place and every product with a pixel, and only products with
padding zeros are dropped. Floats may differ in the last bits (fewer terms, another summation order); the export's
parity check and certificate measure the result like any other. An int8 export is quantised from the cut graph (a
cut kernel's per-channel scale comes from the taps that remain). Left as they are: spatial sizes not fixed by the
graph's inputs, dilation or auto_pad, Convs outside the default ONNX domain, weights that are not initializers of
the graph or that anything else reads (another node, a subgraph, a graph input or output), kernels whose every tap
sees a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def seen_taps(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> tuple[int, int] | None:
    """(first, last) kernel taps that see a pixel of an axis of `size` for some output; None when none does."""
    outputs = (size + pad_begin + pad_end - kernel) // stride + 1
    seen = [k for k in range(kernel) if any(0 <= o * stride - pad_begin + k < size for o in range(max(outputs, 0)))]
    return (seen[0], seen[-1]) if seen else None


def cropped_geometry(
    size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pads: Sequence[int]
) -> tuple[list[tuple[int, int]], list[int]] | None:
    """The kernel span [(first, last)] per axis and the new ONNX pads (begins, then ends) that give the same
    outputs; None when nothing can be cut (or the geometry is outside the rule)."""
    axes = len(kernel)
    spans: list[tuple[int, int]] = []
    begins, ends = list(pads[:axes]), list(pads[axes:])
    for axis in range(axes):
        span = seen_taps(size[axis], kernel[axis], stride[axis], pads[axis], pads[axes + axis])
        if span is None:
            return None
        first, last = span
        begins[axis] -= first
        ends[axis] -= kernel[axis] - 1 - last
        spans.append(span)
    if min(begins + ends) < 0 or all(span == (0, k - 1) for span, k in zip(spans, kernel, strict=True)):
        return None
    return spans, begins + ends


def crop_kernels(onnx_bytes: bytes) -> tuple[bytes, list[str]]:
    """The serialised model with each Conv's kernel cut to the taps that see pixels, and the names of the Conv
    nodes that were cut (the model comes back unchanged, as the same bytes, when none was)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    sizes = _spatial_sizes(model)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    uses = _uses(graph)
    for name in [*(info.name for info in graph.input), *(info.name for info in graph.output)]:
        uses[name] = uses.get(name, 0) + 1  # a weight the caller can read or feed is not ours to change
    cropped: list[str] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        weight = initializers.get(node.input[1])
        if weight is None or uses.get(node.input[1]) != 1 or node.input[0] not in sizes:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        kernel_array = numpy_helper.to_array(weight)
        kernel = list(kernel_array.shape[2:])
        axes = len(kernel)
        size = sizes[node.input[0]]
        if (
            len(size) != axes
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or any(d != 1 for d in attributes.get("dilations", [1] * axes))
            or list(attributes.get("kernel_shape", kernel)) != kernel
        ):
            continue
        strides, pads = attributes.get("strides", [1] * axes), attributes.get("pads", [0] * 2 * axes)
        geometry = cropped_geometry(size, kernel, strides, pads)
        if geometry is None:
            continue
        spans, pads = geometry
        window = (slice(None), slice(None), *(slice(first, last + 1) for first, last in spans))
        cut = np.ascontiguousarray(kernel_array[window])
        weight.CopyFrom(numpy_helper.from_array(cut, weight.name))
        kept = [a for a in node.attribute if a.name not in ("pads", "kernel_shape")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("pads", pads))
        node.attribute.append(onnx.helper.make_attribute("kernel_shape", list(cut.shape[2:])))
        cropped.append(node.name or f"Conv node #{index}")
    return (model.SerializeToString() if cropped else onnx_bytes), cropped


def _uses(graph) -> dict[str, int]:
    """Tensor name → how many node inputs read it, in the graph and in every subgraph (If, Loop, Scan bodies)."""
    import onnx

    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
        for attribute in node.attribute:
            value = onnx.helper.get_attribute_value(attribute)
            for body in value if isinstance(value, list) else [value]:
                if isinstance(body, onnx.GraphProto):
                    for name, count in _uses(body).items():
                        uses[name] = uses.get(name, 0) + count
    return uses


def _spatial_sizes(model) -> dict[str, list[int]]:
    """Tensor name → its fixed spatial sizes (the dims after N and C), for 3-D and longer tensors whose spatial
    dims are all known numbers, as ONNX shape inference derives them from the graph inputs alone.

    ONNX Runtime enforces the shapes of the graph inputs, not the shapes a model merely states for its inner
    tensors or outputs: those are dropped before inferring, so a stale or wrong annotation cannot fix a size."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(bare).graph
    sizes: dict[str, list[int]] = {}
    for info in [*inferred.input, *inferred.value_info]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 3 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[2:]):
            sizes[info.name] = [d.dim_value for d in dims[2:]]
    return sizes
