"""The naive baseline of bench/serve_load.py: a plain Flask app, one synchronous `Bundle.predict` per request.

This is what serving usually looks like before anyone measures it: Flask's threaded development server, a new
thread per request, each calling the PyTorch model on its own image (no batching, no queue bound, no limits).

    uv run python bench/naive_flask.py BUNDLE --port 8001 --threads 2
"""

from __future__ import annotations

import argparse
import logging

import torch
from flask import Flask, jsonify, request

import graft


def make_app(bundle: graft.Bundle) -> Flask:
    app = Flask("naive")

    @app.post("/v1/predict")
    def predict():
        data = request.files["file"].read() if "file" in request.files else request.get_data()
        prediction = bundle.predict(data, top_k=int(request.args.get("top_k", 5)))[0]
        return jsonify(prediction.to_dict())

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    make_app(graft.load(args.bundle)).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
