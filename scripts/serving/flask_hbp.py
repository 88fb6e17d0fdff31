#!/usr/bin/env python3
"""A minimal Flask + NumPy server of a Flotilla HBP model: the source article's deployment,
served side by side with the coordinator's own API by scripts/bench-serving.

    flask_hbp.py MODEL.json PORT

MODEL.json is what the coordinator serves at GET /v1/model/json. The routes and bodies are
the coordinator's: POST /v1/predict {"features": [...]} and POST /v1/predict/batch
{"rows": [[...], ...]}. The forward pass is the learner's (standardise and clip, ReLU trunk,
a softmax per head, the alpha-weighted mix of the heads' probabilities), in float32.
"""
import json
import sys

import numpy as np
from flask import Flask, jsonify, request
from werkzeug.serving import WSGIRequestHandler


def load(path):
    with open(path, encoding="utf-8") as handle:
        model = json.load(handle)
    segments = {
        s["name"]: np.asarray(s["values"], dtype=np.float32).reshape(s["shape"]) for s in model["segments"]
    }
    config = model["config"]
    standardization = model["standardization"]
    layers = config["hidden_layers"]
    return {
        "mean": np.asarray(standardization["mean"], dtype=np.float32),
        "inv_std": np.asarray(standardization["inv_std"], dtype=np.float32),
        "clip": np.float32(standardization["z_clip"]),
        "hidden": [(segments[f"hidden.{l}.weight"], segments[f"hidden.{l}.bias"]) for l in range(layers)],
        "input_head": (segments["input_head.weight"], segments["input_head.bias"]) if config["input_head"] else None,
        "heads_w": segments["hidden_heads.weight"],
        "heads_b": segments["hidden_heads.bias"],
        "alpha": segments["alpha"],
        "inputs": config["inputs"],
        "version": model.get("model_version"),
    }


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(m, rows):
    z = np.clip((rows - m["mean"]) * m["inv_std"], -m["clip"], m["clip"])
    k = 0
    mixed = 0.0
    if m["input_head"] is not None:
        w, b = m["input_head"]
        mixed = m["alpha"][0] * softmax(z @ w + b)
        k = 1
    h = z
    for l, (w, b) in enumerate(m["hidden"]):
        h = np.maximum(h @ w + b, 0.0)
        mixed = mixed + m["alpha"][k + l] * softmax(h @ m["heads_w"][l] + m["heads_b"][l])
    return mixed


def main():
    model = load(sys.argv[1])
    port = int(sys.argv[2])
    app = Flask(__name__)

    def rows_of(values):
        rows = np.asarray(values, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != model["inputs"]:
            raise ValueError(f"rows of {model['inputs']} features expected")
        return rows

    @app.post("/v1/predict")
    def predict_one():
        try:
            rows = rows_of([request.get_json(force=True)["features"]])
        except (KeyError, TypeError, ValueError) as error:
            return jsonify(error=str(error)), 400
        p = predict(model, rows)[0]
        return jsonify({"class": int(p.argmax()), "probabilities": p.tolist(), "model_version": model["version"]})

    @app.post("/v1/predict/batch")
    def predict_batch():
        try:
            rows = rows_of(request.get_json(force=True)["rows"])
        except (KeyError, TypeError, ValueError) as error:
            return jsonify(error=str(error)), 400
        p = predict(model, rows)
        return jsonify(
            {"classes": p.argmax(axis=1).tolist(), "probabilities": p.tolist(), "model_version": model["version"]}
        )

    # Keep-alive, as the coordinator's server does: the comparison is of the servers, not of
    # TCP handshakes.
    WSGIRequestHandler.protocol_version = "HTTP/1.1"
    app.run(host="127.0.0.1", port=port, threaded=True)


if __name__ == "__main__":
    main()
