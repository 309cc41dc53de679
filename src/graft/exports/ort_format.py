"""ONNX → ORT format (ONNX Runtime Mobile's), with onnxruntime's own converter.

`onnxruntime.tools.convert_onnx_models_to_ort` is the tool ONNX Runtime documents for mobile builds: it loads
the model in an InferenceSession with the graph optimisations applied ("Fixed" style, level "all") and saves the
optimised graph as a flatbuffer. It leaves out the NCHWc layout transformer (an x86-only rewrite), so the file
runs on ARM phones too. It works on files in a directory and prints as it goes; graft gives it a private temp
directory and keeps its output off the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

from graft.errors import GraftError, first_line

ORT_STYLE = "Fixed"


def onnx_to_ort(onnx_bytes: bytes) -> bytes:
    """The ORT-format file of a serialised ONNX model (GraftError with the converter's reason if it fails)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="graft-ort-") as tmp:
        source = Path(tmp) / "in" / "model.onnx"
        source.parent.mkdir()
        source.write_bytes(onnx_bytes)
        out = Path(tmp) / "out"
        chatter = io.StringIO()
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # "Created config in /tmp/…"
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(source, output_dir=out, optimization_styles=[OptimizationStyle[ORT_STYLE]])
        except Exception as error:
            raise GraftError(f"onnxruntime cannot convert this model to the ORT format: {first_line(error)}") from None
        produced = sorted(out.glob("*.ort"))
        if len(produced) != 1:
            raise GraftError(f"onnxruntime's ORT converter wrote {len(produced)} .ort files, expected one")
        return produced[0].read_bytes()
