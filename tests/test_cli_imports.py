"""The CLI answers at once (issue 16): `--help` of every command, and `graft info`, import no torch.

Each check runs in a fresh interpreter and inspects `sys.modules`, so a module-level import of a heavy package
anywhere under `graft.cli` (or in a light module it reads options from) fails here, naming the package. Timing is
measured by bench/cli_latency.py, not asserted: this machine's load would make a time limit flaky.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "torchvision", "timm", "numpy", "PIL", "fastapi", "uvicorn", "onnx", "onnxruntime", "safetensors",
         "matplotlib", "sklearn", "h5py", "av")  # fmt: skip

COMMANDS = ["", "train", "eval", "predict", "surgery", "info", "schema", "models", "import-keras", "export", "serve",
            "data", "data frames", "data clutter", "rounds", "rounds init", "rounds add", "rounds redo",
            "rounds train", "rounds status"]  # fmt: skip

# Runs graft's entry point for each argument list in one interpreter, and reports after each which heavy packages
# are loaded (cumulative, so the first command that loads one is the culprit).
_PROBE = """
import contextlib, io, json, sys
from graft.cli import main
heavy, report = json.loads(sys.argv[1]), {}
for args in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args)
        except SystemExit as stop:
            code = stop.code
    report[" ".join(args)] = {"code": code, "heavy": [m for m in heavy if m in sys.modules], "out": out.getvalue()}
print(json.dumps(report))
"""


def _probe(*commands: list[str], heavy: tuple[str, ...] = HEAVY) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(heavy), json.dumps(list(commands))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_help_imports_no_torch_nor_other_heavy_packages():
    report = _probe(*[[*command.split(), "--help"] for command in COMMANDS], ["--version"])
    for command, result in report.items():
        assert result["code"] == 0, (command, result)
        assert result["heavy"] == [], f"`graft {command}` imported {result['heavy']}"
    assert "Usage: graft train" in report["train --help"]["out"]
    assert "--input-mode" in report["train --help"]["out"]  # the options generated from TrainConfig are there
    assert "--max-forgetting" in report["rounds init --help"]["out"]


def test_the_probe_can_see_a_loaded_package():
    """The check above can fail: the probe reports a package the CLI does load (typer), and not one it does not."""
    report = _probe(["--help"], heavy=("typer", "torch"))
    assert report["--help"]["heavy"] == ["typer"]


def test_info_reads_the_record_without_torch_and_says_what_a_load_says(tiny_run, serve_bundle, tmp_path: Path):
    from graft.api import info, load

    for bundle in (tiny_run.bundle.path, serve_bundle):  # without and with an ONNX export
        report = _probe(["info", str(bundle), "--json"], ["info", str(bundle)])
        assert report[f"info {bundle} --json"]["heavy"] == []
        assert report[f"info {bundle}"]["heavy"] == []
        assert json.loads(report[f"info {bundle} --json"]["out"]) == json.loads(json.dumps(info(load(bundle))))
        assert f"{tiny_run.bundle.record().parameters / 1e6:.2f} M parameters" in report[f"info {bundle}"]["out"]


def test_info_loads_the_model_where_the_record_is_not_enough(tiny_run, tmp_path: Path):
    """A record whose parameter count is not the weights' is not believed: the model is loaded and counted; a
    damaged weights file is refused as before (both in one interpreter: importing torch takes seconds)."""
    lying, damaged = tmp_path / "lying", tmp_path / "damaged"
    for bundle in (lying, damaged):
        shutil.copytree(tiny_run.bundle.path, bundle)
    record = json.loads((lying / "graft.json").read_text())
    true_count = record["parameters"]
    record["parameters"] = true_count + 1
    (lying / "graft.json").write_text(json.dumps(record))
    (damaged / "model.safetensors").write_bytes(b"not safetensors at all")
    report = _probe(["info", str(lying), "--json"], ["info", str(damaged)])  # lying first: it imports torch
    assert report[f"info {damaged}"]["code"] == 2
    result = report[f"info {lying} --json"]
    assert result["code"] == 0
    assert "torch" in result["heavy"]
    assert json.loads(result["out"])["parameters"] == true_count


def test_import_graft_and_its_light_modules_load_no_torch():
    code = (
        "import sys, graft, graft.training.config, graft.data.groups, graft.serve.settings, graft.rounds.project\n"
        "from graft.training import TrainConfig\n"
        "graft.training.config.make_config(epochs=2)\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_imports_no_package_a_prediction_does_not_use(tmp_path: Path):
    """`graft predict` pays for torch and timm (timm imports torchvision, which imports torch._dynamo: the floor
    bench/cli_latency.py reports), and for nothing else heavy: no server, ONNX, plotting or Keras-reading stack."""
    import numpy as np
    from PIL import Image

    from graft.bundle import Bundle
    from graft.models import create_model

    model, arch, spec, _ = create_model("resnet10t", 3, input_mode="fold", size=16)
    Bundle(model.eval(), arch, spec, ["a", "b", "c"]).save(tmp_path / "b")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "one.png")
    unused = ("fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "matplotlib", "sklearn", "h5py", "av", "keras")
    args = ["predict", str(tmp_path / "b"), str(tmp_path / "one.png")]
    result = _probe(args, heavy=("torch", *unused))[" ".join(args)]
    assert result["code"] == 0 and result["out"].startswith(f"{tmp_path / 'one.png'}: ")
    assert result["heavy"] == ["torch"]  # torch is seen (the check can see a package), the unused ones are not
