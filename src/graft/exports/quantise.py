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
- MinMax calibration over the images given: deterministic and quick; the certificate says what it cost.
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
CALIBRATION_METHOD = "MinMax"


def quantise(onnx_bytes: bytes, batches: Iterable[np.ndarray], input_name: str, *, per_channel: bool = PER_CHANNEL):
    """A QDQ int8 copy of the serialised ONNX model, calibrated on `batches` (normalised float32 NCHW arrays)."""
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
                quantize_static(
                    str(prepared),
                    str(target),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType[ACTIVATIONS],
                    weight_type=QuantType[WEIGHTS],
                    calibrate_method=CalibrationMethod[CALIBRATION_METHOD],
                )
        except GraftError:
            raise
        except Exception as error:
            raise GraftError(f"onnxruntime cannot quantise this model to int8: {first_line(error)}") from None
        finally:
            logging.getLogger().setLevel(quiet)
        return target.read_bytes()
