#!/usr/bin/env python3
"""Runs an exported Flotilla ONNX model with onnxruntime.

  run.py predict MODEL ROWS.csv   rows (no header, raw features) -> one JSON object on stdout:
                                   {"probabilities": [[...], ...], "class": [...]}
                                   (FLOTILLA_ORT_EXACT=1: no graph optimisation, so that an int8
                                   model's DequantizeLinear runs as written instead of being
                                   fused into integer kernels that also quantise activations)
  run.py latency MODEL ROWS.csv   single-row latency over the rows -> {"p50_us": .., "p99_us": ..}

Used by the export tests (predictions against the Rust forward pass) and scripts/bench-export.
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path):
    options = ort.SessionOptions()
    if os.environ.get("FLOTILLA_ORT_EXACT") == "1":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("predict", "latency"):
        sys.exit(__doc__)
    mode, model, rows_path = sys.argv[1:]
    rows = np.loadtxt(rows_path, delimiter=",", dtype=np.float32, ndmin=2)
    sess = session(model)
    if mode == "predict":
        probabilities, classes = sess.run(["probabilities", "class"], {"features": rows})
        json.dump({"probabilities": probabilities.tolist(), "class": classes.tolist()}, sys.stdout)
        return
    times = []
    for i in range(max(1000, len(rows))):
        row = rows[i % len(rows)][None, :]
        start = time.perf_counter()
        sess.run(["class"], {"features": row})
        times.append(time.perf_counter() - start)
    times = np.array(times[100:]) * 1e6
    json.dump({"p50_us": float(np.percentile(times, 50)), "p99_us": float(np.percentile(times, 99))}, sys.stdout)


if __name__ == "__main__":
    main()
