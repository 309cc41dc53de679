"""Static int8 quantisation of an ONNX model with onnxruntime.quantization, calibrated on real images.

Choices, and why:
- static, not dynamic: dynamic quantisation only covers MatMul/Gemm-heavy models (its activations are quantised
  at run time per batch); a convolutional network gains only when its convolutions run in int8, which needs
  activation ranges fixed ahead of time, from calibration images.
- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops): the format ONNX Runtime recommends, which
  its CPU provider fuses into int8 kernels and which mobile providers (NNAPI, CoreML, XNNPACK) understand.
- unsigned 8-bit activations, signed 8-bit weights (U8S8): on x86 ONNX Runtime's int8 kernels are built on the
  u8×s8 instructions (VNNI's VPDPBUSD); measured here (AVX-512 VNNI), the same model ran ~2× faster than with
  signed activations (S8S8, onnxruntime's default, which ARM runs as fast). Without VNNI, U8S8 can saturate an
  intermediate sum: the certificate is measured on the exporting machine, so export where you serve.
- per-channel weights: after BatchNorm is folded into convolutions, output channels have very different weight
  ranges; one scale per tensor wastes most of the 8 bits on the small channels (graft's bench shows the cost).
- MinMax calibration over the images given by default: deterministic and quick; Percentile and Entropy (both
  onnxruntime's) clip outliers instead, and are there to be measured (`bench/int8_export.py`); the certificate says
  what each cost.
- the first convolution stays float by default (`KEEP_FLOAT`): its input is the raw image with one or three
  channels, so it is a small share of the work, but quantising it adds rounding before everything else; a fold
  bundle's first conv is also followed by a spatial offset map (an Add) and a BatchNorm that cannot be folded into
  it, each of which would be rounded to 8 bits again. Measured on the fold recipe (bench/int8_export.py), keeping
  it float raised top-1 agreement with the float model. The classifier (`last-linear`) can be kept float too.
The calibration images are the bundle's training images through graft.data.preprocess, exactly as in training.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from graft.errors import GraftError, first_line

ACTIVATIONS, WEIGHTS = "QUInt8", "QInt8"
PER_CHANNEL = True
CALIBRATION_METHODS = ("MinMax", "Percentile", "Entropy")  # onnxruntime.quantization.CalibrationMethod names
CALIBRATION_METHOD = "MinMax"
FLOAT_LAYERS = ("first-conv", "last-linear")  # what --keep-float may name
KEEP_FLOAT: tuple[str, ...] = ("first-conv",)
_AFFINE = {"Add", "Sub", "Mul", "Div", "BatchNormalization"}  # what follows a conv and belongs to it (bias, offset, BN)
_LINEAR = {"Gemm", "MatMul"}


def parse_keep_float(text: str) -> tuple[str, ...]:
    """`first-conv,last-linear` → ("first-conv", "last-linear"); `none` or "" → (); anything else is refused."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [name for name in names if name not in FLOAT_LAYERS]
    if unknown:
        raise GraftError(
            f"--keep-float {text!r}: unknown layer {unknown[0]!r}; name {', '.join(FLOAT_LAYERS)} (comma-separated) "
            "or none"
        )
    return names


def calibration_method(name: str) -> str:
    """The onnxruntime calibration method's name, whatever its case (minmax → MinMax); anything else is refused."""
    found = {method.lower(): method for method in CALIBRATION_METHODS}.get(name.lower())
    if found is None:
        raise GraftError(f"unknown calibration method {name!r}; choose {', '.join(CALIBRATION_METHODS)}")
    return found


def float_nodes(model, keep: Iterable[str]) -> list[str]:
    """Names of the ONNX nodes that `keep` (FLOAT_LAYERS) names, in graph order.

    first-conv: the first Conv node, and the affine nodes (Add, Sub, Mul, Div, BatchNormalization) that follow it
    one after another and only it; last-linear: the last Gemm or MatMul node. A model without such a node is
    refused rather than quantised whole while the record says otherwise.
    """
    keep = tuple(keep)
    nodes = list(model.graph.node)
    chosen: list[str] = []
    if "first-conv" in keep:
        first = next((node for node in nodes if node.op_type == "Conv"), None)
        if first is None:
            raise GraftError("--keep-float first-conv: this model has no Conv node")
        chosen.append(first.name)
        consumers: dict[str, list] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        current = first
        while len(current.output) == 1 and len(users := consumers.get(current.output[0], [])) == 1:
            if users[0].op_type not in _AFFINE:
                break
            current = users[0]
            chosen.append(current.name)
    if "last-linear" in keep:
        last = next((node for node in reversed(nodes) if node.op_type in _LINEAR), None)
        if last is None:
            raise GraftError("--keep-float last-linear: this model has no Gemm or MatMul node")
        chosen.append(last.name)
    if any(not name for name in chosen):
        raise GraftError("--keep-float: the layer to keep float has no node name in the ONNX graph")
    return chosen


def quantise(
    onnx_bytes: bytes,
    batches: Iterable[np.ndarray],
    input_name: str,
    *,
    per_channel: bool = PER_CHANNEL,
    method: str = CALIBRATION_METHOD,
    keep_float: Iterable[str] = KEEP_FLOAT,
) -> tuple[bytes, list[str]]:
    """A QDQ int8 copy of the serialised ONNX model, calibrated on `batches` (normalised float32 NCHW arrays) with
    `method`, and the names of the nodes left float (`keep_float`, see `float_nodes`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix="graft-int8-") as tmp:
        source, prepared, target = (Path(tmp) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        chatter = io.StringIO()
        quiet = logging.getLogger().level
        try:
            logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs advice at WARNING for every model
            with contextlib.redirect_stdout(chatter):
                # Shape inference and graph clean-up first, as onnxruntime recommends before quantising.
                quant_pre_process(str(source), str(prepared))
                excluded = float_nodes(onnx.load(str(prepared)), keep_float)
                quantize_static(
                    str(prepared),
                    str(target),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType[ACTIVATIONS],
                    weight_type=QuantType[WEIGHTS],
                    calibrate_method=CalibrationMethod[calibration_method(method)],
                    nodes_to_exclude=excluded,
                )
        except GraftError:
            raise
        except Exception as error:
            raise GraftError(f"onnxruntime cannot quantise this model to int8: {first_line(error)}") from None
        finally:
            logging.getLogger().setLevel(quiet)
        return target.read_bytes(), excluded
