"""graft on a CUDA GPU, checked end to end: train (precision auto and fp32, device auto), the bundle on a CPU,
CPU-vs-CUDA logits (TF32 on/off, channels-last, bf16), surgery certificates of a CUDA-trained bundle (and what they
would say if computed on the GPU), ONNX export, and GPU-only step throughput. Every check prints PASS/FAIL/SKIP with
its numbers and lands in $OUT/gpu_check.json; all CLI output in $OUT/gpu_check.log.

Why: graft has CUDA code paths (device auto, bf16 autocast, DDP) that CI, which has no GPU, never runs.

    GRAFT_DATA=/path/to/datasets python3 bench/gpu_check.py          # on the GPU machine, from the repo root
    QUICK=1 GRAFT_DATA=... uv run python bench/gpu_check.py           # a CPU dry run (GPU parts SKIP; tiny data)

On this workplace's device machine (no pydantic/platformdirs there, no network), carry the MNIST .gz files and
the wheels of pydantic, pydantic-core, annotated-types, typing-inspection, platformdirs and typing-extensions in
one git-ignored folder, install them with pip --target and put that folder and src on PYTHONPATH (docs/benchmarks.md).
Expect about 5 minutes on an H200. The `graft eval` check needs MNIST's full test set (it fails under QUICK=1:
the run then tested on a subset).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

OUT = Path(os.environ.get("OUT") or "/tmp/gpu_out")
WORK = Path(os.environ.get("WORK") or "/tmp/gpu_work")
QUICK = os.environ.get("QUICK") == "1"
OUT.mkdir(parents=True, exist_ok=True)
WORK.mkdir(parents=True, exist_ok=True)
LOG = OUT / "gpu_check.log"
RESULTS: dict = {"env": {}, "checks": [], "runs": {}}
CUDA = torch.cuda.is_available()
T0 = time.perf_counter()


def save() -> None:
    RESULTS["elapsed_s"] = round(time.perf_counter() - T0, 1)
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def log(text: str) -> None:
    print(text, flush=True)
    with LOG.open("a") as handle:
        handle.write(text + "\n")


def check(name: str, ok: bool | None, **numbers) -> None:
    status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    RESULTS["checks"].append({"name": name, "status": status, **numbers})
    log(f"{status} {name} {json.dumps(numbers, default=str)}")
    save()


def guarded(name: str):
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # a crash is a finding: record it, go on with the next check
                check(f"{name} (crashed)", False, error=repr(error)[:500], trace=traceback.format_exc()[-2500:])
                return None

        return run

    return wrap


def graft(*args: str, env: dict | None = None, timeout: int = 300) -> tuple[int, float, str, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "graft", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
    )
    seconds = time.perf_counter() - started
    text = proc.stdout + proc.stderr
    log(f"$ graft {' '.join(args)}  -> rc {proc.returncode} in {seconds:.1f}s\n{text[-6000:]}")
    return proc.returncode, seconds, text, proc.stdout


def set_tf32(on: bool) -> None:
    """TF32 for cuDNN convolutions and CUDA matmuls, through the new precision API (graft's evaluation uses it;
    mixing it with the legacy allow_tf32 flags makes torch refuse to read them)."""
    value = "tf32" if on else "ieee"
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = value


def tf32_flags() -> tuple[str, str]:
    return torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision


def restore_tf32(saved: tuple[str, str]) -> None:
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved


def environment() -> None:
    env = RESULTS["env"]
    env["torch"] = torch.__version__
    env["cuda"] = CUDA
    env["python"] = sys.version.split()[0]
    if CUDA:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    env["float32_matmul_precision_default"] = torch.get_float32_matmul_precision()
    for path in ("torch.backends.cudnn.conv.fp32_precision", "torch.backends.cuda.matmul.fp32_precision"):
        try:
            obj = torch
            for part in path.split(".")[1:]:
                obj = getattr(obj, part)
            env[path] = obj
        except AttributeError:
            env[path] = "absent"
    for name in ("timm", "torchvision", "onnx", "onnxruntime", "onnxscript", "pydantic", "safetensors", "numpy"):
        try:
            env[name] = __import__(name).__version__
        except Exception as error:
            env[name] = f"missing: {error!r}"
    log(f"env {json.dumps(env)}")
    save()


def mnist_test(limit: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    root = Path(os.environ["GRAFT_DATA"]) / "mnist"
    with gzip.open(root / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8).astype(np.int64)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), labels


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@guarded("train")
def train(name: str, recipe: str, *extra: str) -> Path | None:
    run_dir = WORK / name
    bundle = run_dir / "bundle"
    args = ["train", recipe, "--run-dir", str(run_dir), "-o", str(bundle), "--offline", "--force", *extra]
    if QUICK:
        args += ["--max-train", "1024", "--max-valid", "256", "--max-test", "256", "--epochs", "1"]
    rc, seconds, text, _ = graft(*args, timeout=400)
    runtime_line = next((line for line in text.splitlines() if line.startswith("graft train:")), "")
    metrics = read_metrics(run_dir)
    record = json.loads((bundle / "graft.json").read_text()) if (bundle / "graft.json").exists() else {}
    final = record.get("metrics", {})
    info = {
        "rc": rc,
        "wall_s": round(seconds, 1),
        "runtime": runtime_line.split(";")[-1].strip(),
        "images_per_s_by_epoch": [round(m.get("images_per_s", 0)) for m in metrics if "images_per_s" in m],
        "epoch_seconds": [round(m.get("seconds", 0), 1) for m in metrics if "seconds" in m],
        "valid_acc": [m.get("valid_acc") for m in metrics if "valid_acc" in m],
        "test_acc": final.get("test_acc"),
        "final_metrics": {k: v for k, v in final.items() if not isinstance(v, list | dict)},
        "provenance_runtime": {k: v for k, v in record.get("provenance", {}).items() if k in ("runtime", "training")},
    }
    RESULTS["runs"][name] = info
    want = "cuda" if CUDA else "cpu"
    check(
        f"train {name}: exit 0 and device auto picked {want}",
        rc == 0 and runtime_line.split(";")[-1].strip().startswith(want),
        **{k: info[k] for k in ("rc", "wall_s", "runtime", "images_per_s_by_epoch", "test_acc")},
    )
    return bundle if rc == 0 else None


@guarded("bundle on cpu")
def bundle_on_cpu(name: str, path: Path) -> None:
    from safetensors import safe_open

    from graft.bundle import load
    from graft.data.preprocess import to_model_input

    dtypes = {}
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            dtypes[key] = str(handle.get_tensor(key).dtype)
    float_dtypes = {d for k, d in dtypes.items() if "num_batches_tracked" not in k}
    check(
        f"{name}: weights saved in float32 (no autocast dtype leaked)",
        float_dtypes == {"torch.float32"},
        dtypes=sorted(set(dtypes.values())),
    )

    bundle = load(path)
    devices = {str(p.device) for p in bundle.model.state_dict().values()}
    check(f"{name}: bundle loads on cpu", devices == {"cpu"}, devices=sorted(devices))

    rc, _, _, stdout = graft("eval", str(path), "--json", "--offline", env={"CUDA_VISIBLE_DEVICES": ""})
    try:
        evaluated = json.loads(stdout[stdout.index("{") :]) if rc == 0 else {}
    except ValueError:
        evaluated = {}
    cpu_acc = evaluated.get("accuracy")
    recorded = bundle.metrics.get("test_acc")
    check(
        f"{name}: `graft eval` on CPU (no GPU visible) reproduces the recorded test accuracy "
        f"(evaluated on {'cuda' if CUDA else 'cpu'})",
        rc == 0 and cpu_acc is not None and recorded is not None and abs(cpu_acc - recorded) < 1e-9,
        rc=rc,
        cpu_accuracy=cpu_acc,
        recorded_test_acc=recorded,
        eval_keys=sorted(evaluated)[:20],
    )

    images, labels = mnist_test(None if not QUICK else 2000)
    x = to_model_input(images, bundle.spec)
    model = bundle.model.eval()

    def batched(net, inputs, device="cpu", dtype=torch.float32, channels_last=False, bf16=False):
        outs = []
        with torch.no_grad():
            for i in range(0, len(inputs), 1000):
                chunk = inputs[i : i + 1000].to(device, dtype)
                if channels_last:
                    chunk = chunk.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    outs.append(net(chunk).double().cpu())
        return torch.cat(outs)

    cpu32 = batched(model, x)
    # The float64 reference: on the GPU when there is one (CPU float64 of a ResNet-18 on 10 000 images takes
    # minutes); checked against CPU float64 on 500 images.
    ref64 = batched(
        copy.deepcopy(model).double().to("cuda" if CUDA else "cpu"), x, "cuda" if CUDA else "cpu", torch.float64
    )
    half = len(x) // 2
    depends = float((cpu32[:half] - cpu32[half : 2 * half]).abs().max())
    spread = float((ref64.max(1).values - ref64.min(1).values).median())
    cpu_top = cpu32.argmax(1)
    row = {
        "images": len(x),
        "reference_depends_on_input": depends,
        "logit_spread_median": spread,
        "cpu_fp32_vs_fp64": float((cpu32 - ref64).abs().max()),
        "cpu_acc": float((cpu_top.numpy() == labels).mean()),
    }
    if CUDA:
        saved = tf32_flags()  # torch's defaults: cuDNN convolutions in TF32, matmuls not
        modes = (
            ("tf32_off", ("ieee", "ieee"), False, False),
            ("torch_default", saved, False, False),
            ("torch_default_channels_last", saved, True, False),
            ("tf32_all", ("tf32", "tf32"), False, False),
            ("bf16_autocast", saved, False, True),
        )
        try:
            for label, flags, channels_last, bf16 in modes:
                gpu = copy.deepcopy(model).cuda()
                if channels_last:
                    gpu = gpu.to(memory_format=torch.channels_last)
                restore_tf32(flags)
                out = batched(gpu, x, "cuda", channels_last=channels_last, bf16=bf16)
                row[f"cuda_{label}"] = {
                    "max_vs_cpu_fp32": float((out - cpu32).abs().max()),
                    "max_vs_fp64": float((out - ref64).abs().max()),
                    "rel_vs_fp64": float((out - ref64).abs().max()) / spread,
                    "top1_flips_vs_cpu": int((out.argmax(1) != cpu_top).sum()),
                    "acc": float((out.argmax(1).numpy() == labels).mean()),
                }
            restore_tf32(saved)
            cpu64 = batched(copy.deepcopy(model).double(), x[:500], dtype=torch.float64)
            row["cuda_fp64_vs_cpu_fp64_500"] = float((cpu64 - ref64[:500]).abs().max())
        finally:
            restore_tf32(saved)
        ok = row["cuda_tf32_off"]["max_vs_cpu_fp32"] < 1e-3 and row["cuda_torch_default"]["top1_flips_vs_cpu"] <= 2
        check(f"{name}: CPU vs CUDA logits of the same bundle (all test images)", ok and depends > 0, **row)
    else:
        check(f"{name}: CPU vs CUDA logits of the same bundle", None, **row)


@guarded("surgery")
def surgery(name: str, path: Path, label: str, *args: str) -> Path | None:
    out = WORK / f"{name}-{label}"
    rc, seconds, text, stdout = graft(
        "surgery", str(path), "-o", str(out), "--require", "exact", "--json", "--force", *args
    )
    try:
        result = json.loads(stdout[stdout.index("{") :]) if rc == 0 else {}
    except ValueError:
        result = {}
    keep = (
        "operation",
        "verdict",
        "max_abs_logit_delta",
        "relative_delta",
        "top1_agreement",
        "train_forward_delta",
        "step_ratio",
        "probe",
        "probe_count",
    )
    steps = [{k: c.get(k) for k in keep} for c in result.get("steps", [])]
    check(
        f"surgery {label} on {name} (CUDA-trained): --require exact",
        rc == 0 and result.get("verdict") == "exact",
        rc=rc,
        wall_s=round(seconds, 1),
        verdict=result.get("verdict"),
        steps=steps,
        tail=text[-300:] if rc else "",
    )
    return out if rc == 0 else None


@guarded("certificates on the GPU")
def certificates_on_gpu(name: str, path: Path) -> None:
    """Would the 1e-4 exactness claim survive if certificates ran on the GPU? graft computes them in float64 on
    the CPU; here the same operations are certified with the eval logits computed on CUDA in float32 (TF32 on / off)
    and in float64."""
    import graft.surgery.certificate as certificate
    from graft.bundle import load
    from graft.surgery import operations

    bundle = load(path)
    original = certificate._logits
    is_resnet = bundle.architecture.timm_name.startswith("resnet")
    if is_resnet:
        ops = {"deeper after layer2": lambda: operations.deepen(bundle, "layer2")}
    else:
        ops = {
            "channels 1->3": lambda: operations.rechannel(bundle, 3),
            "size stem 56": lambda: operations.resize_input(bundle, 56, mode="stem"),
        }

    def patched(dtype: torch.dtype, tf32: bool):
        def logits(model, inputs, batch_size: int = 64):
            model = copy.deepcopy(model).to("cuda", dtype).eval()
            set_tf32(tf32)
            with torch.no_grad():
                return (
                    torch.cat(
                        [model(inputs[i : i + batch_size].to("cuda", dtype)) for i in range(0, len(inputs), batch_size)]
                    )
                    .double()
                    .cpu()
                )

        return logits

    modes = {"cpu_fp64 (graft)": None}
    if CUDA:
        modes.update({"cuda_fp32_tf32_on": (torch.float32, True), "cuda_fp32_tf32_off": (torch.float32, False)})
    saved = tf32_flags()
    for op_name, op in ops.items():
        row = {}
        for mode, spec in modes.items():
            certificate._logits = original if spec is None else patched(*spec)
            try:
                step = op()
                c = step.certificate
                row[mode] = {
                    "verdict": c.verdict,
                    "max_abs_logit_delta": c.max_abs_logit_delta,
                    "relative_delta": c.relative_delta,
                }
            finally:
                certificate._logits = original
                restore_tf32(saved)
        ok = row["cpu_fp64 (graft)"]["verdict"] == "exact"
        check(f"certificate {op_name} on {name}: graft's (CPU float64) exact; GPU variants reported", ok, **row)


@guarded("export")
def export(name: str, path: Path) -> None:
    rc, seconds, text, _ = graft("export", str(path), "--certify-images", "1000")
    record = json.loads((path / "graft.json").read_text())
    exports = record.get("exports", {})
    entry = next(iter(exports.values()), {}) if isinstance(exports, dict) else {}
    flat = {k: v for k, v in (entry or {}).items() if not isinstance(v, dict | list)}
    cert = (entry or {}).get("certificate") or {}
    check(
        f"export onnx from {name} (CUDA-trained)",
        rc == 0 and bool(entry),
        rc=rc,
        wall_s=round(seconds, 1),
        export=flat,
        certificate={k: v for k, v in cert.items() if not isinstance(v, dict | list)},
        tail=text[-600:],
    )


@guarded("throughput")
def step_throughput() -> None:
    """Pure GPU train-step throughput of graft_cnn_s at 28×28, batch 256 (no data pipeline): is training GPU-bound?"""
    if not CUDA:
        check("GPU-only step throughput", None)
        return
    import timm

    import graft.models  # noqa: F401  (registers graft_cnn_*)

    row = {}
    for model_name, size, batch in (("graft_cnn_s", 28, 256), ("resnet18", 32, 64)):
        for precision in ("fp32", "bf16"):
            model = (
                timm.create_model(model_name, num_classes=10, in_chans=1).cuda().to(memory_format=torch.channels_last)
            )
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randn(batch, 1, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (batch,), device="cuda")

            def one(model=model, optimizer=optimizer, x=x, y=y, precision=precision):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            for _ in range(10):
                one()
            torch.cuda.synchronize()
            started = time.perf_counter()
            steps = 100
            for _ in range(steps):
                one()
            torch.cuda.synchronize()
            row[f"{model_name}_b{batch}_{precision}_img_per_s"] = round(steps * batch / (time.perf_counter() - started))
    check("GPU-only train-step throughput (synthetic data, no input pipeline)", True, **row)


def main() -> None:
    environment()
    epochs = "2"
    s_auto = train("cnn_s-auto", "recipes/mnist-cpu-5min.toml", "--epochs", epochs, "--precision", "auto")
    s_fp32 = train("cnn_s-fp32", "recipes/mnist-cpu-5min.toml", "--epochs", epochs, "--precision", "fp32")
    r_auto = train("resnet18-fold32-auto", "recipes/mnist-fold-32.toml", "--precision", "auto")
    for name, path in (("cnn_s-auto", s_auto), ("cnn_s-fp32", s_fp32), ("resnet18-fold32-auto", r_auto)):
        if path is not None:
            bundle_on_cpu(name, path)
    step_throughput()
    if s_auto is not None:
        surgery("cnn_s-auto", s_auto, "channels3", "--channels", "3")
        surgery("cnn_s-auto", s_auto, "sizestem56", "--size", "56", "--size-mode", "stem")
        certificates_on_gpu("cnn_s-auto", s_auto)
    if r_auto is not None:
        surgery("resnet18-fold32-auto", r_auto, "deeper-layer2", "--insert-after", "layer2")
        certificates_on_gpu("resnet18-fold32-auto", r_auto)
    if s_auto is not None:
        export("cnn_s-auto", s_auto)
    if r_auto is not None:
        export("resnet18-fold32-auto", r_auto)
    RESULTS["summary"] = {s: sum(c["status"] == s for c in RESULTS["checks"]) for s in ("PASS", "FAIL", "SKIP")}
    save()
    log(f"summary {RESULTS['summary']} in {time.perf_counter() - T0:.0f}s")


if __name__ == "__main__":
    main()
