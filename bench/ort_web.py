"""What running a bundle's export in the phone's browser would cost: onnxruntime-web's bytes and ms per image.

Not part of graft (nothing is served from it): a measurement for issue 17's "offline inference on the page".
It serves onnxruntime-web's WebAssembly build and the bundle's ONNX files from 127.0.0.1, opens a page in
Debian's Chromium (headless, through Playwright, as tests/test_serve_browser.py does), and times single-image
inference with one WebAssembly thread (threads need cross-origin isolation headers; one thread is what any
page gets). Bytes are those a page must download: the ESM loader, its WebAssembly glue and the .wasm, raw and
gzip -9.

    npm pack onnxruntime-web@1.30.0 && tar xzf onnxruntime-web-1.30.0.tgz    # from the npm registry
    uv run python bench/ort_web.py --package package --bundle runs/x/bundle  # bundle with model(.int8).onnx
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import json
import shutil
import tempfile
import threading
from pathlib import Path

FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE = """<!doctype html><meta charset="utf-8"><script type="module">
import * as ort from "./ort.wasm.min.mjs";
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = "./";
const shape = SHAPE, runs = RUNS, out = {};
for (const name of MODELS) {
  const started = performance.now();
  const session = await ort.InferenceSession.create("./" + name, {executionProviders: ["wasm"]});
  const load = performance.now() - started;
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1)).map((_, i) => Math.sin(i));
  const feeds = {[session.inputNames[0]]: new ort.Tensor("float32", data, shape)};
  for (let i = 0; i < 3; i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    await session.run(feeds);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  out[name] = {load_ms: load, median_ms: times[Math.floor(runs / 2)]};
}
window.result = out;
</script>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, required=True, help="the unpacked onnxruntime-web npm package")
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with model.onnx (and model.int8.onnx)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    import graft

    bundle = graft.load(args.bundle)
    shape = [1, bundle.spec.channels, *bundle.spec.size]
    models = [name for name in ("model.onnx", "model.int8.onnx") if (args.bundle / name).is_file()]
    version = json.loads((args.package / "package.json").read_text())["version"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = {}
        for name in FILES:
            shutil.copy(args.package / "dist" / name, root / name)
            data = (root / name).read_bytes()
            sizes[name] = {"bytes": len(data), "gzip": len(gzip.compress(data, 9))}
        for name in models:
            shutil.copy(args.bundle / name, root / name)
            sizes[name] = {"bytes": (root / name).stat().st_size}
        page = PAGE.replace("SHAPE", json.dumps(shape)).replace("RUNS", str(args.runs))
        (root / "index.html").write_text(page.replace("MODELS", json.dumps(models)))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
        http.server.SimpleHTTPRequestHandler.extensions_map[".mjs"] = "text/javascript"
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium)
                page_ = browser.new_page()
                page_.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
                page_.wait_for_function("window.result !== undefined", timeout=600_000)
                timings = page_.evaluate("window.result")
                browser.close()
        finally:
            server.shutdown()
    runtime = sum(sizes[name]["bytes"] for name in FILES)
    runtime_gz = sum(sizes[name]["gzip"] for name in FILES)
    print(json.dumps({"onnxruntime_web": version, "input": shape, "files": sizes, "timings": timings,
                      "runtime_bytes": runtime, "runtime_gzip_bytes": runtime_gz}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
