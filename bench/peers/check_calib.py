#!/usr/bin/env python3
"""Proof that each tool calibrated on the benchmark's windows (calib.npy): the SmoothQuant
scales of decoder layer 0 depend only on the model's weights and on the calibration tokens (its
input is their embeddings; nothing quantized comes before it), so they can be recomputed here
from calib.npy and compared with the attention norm each tool wrote.

  check_calib.py --model DIR --calib calib.npy --alpha 0.5 [--qaas DIR] [--llmc DIR] --out RESULT.json

x = RMSNorm(embed[calib]) (the input of q/k/v), W = [W_q; W_k; W_v], per input channel j:
  qaas (the paper's form):  s_j = max|x_j|^a / max|W_j|^(1-a)
  llm-compressor:           s_j = (max x_j - min x_j)^a / (2 max|W_j|)^(1-a)
both clamped to >= 1e-5; the norm weight written is w_j / s_j. A relative error near float32
rounding (1e-6) means the tool saw exactly these windows; other windows give errors of percents.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open


def read_tensor(model_dir, name):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            file = json.load(f)["weight_map"][name]
    else:
        file = "model.safetensors"
    with safe_open(os.path.join(model_dir, file), "pt") as f:
        return f.get_tensor(name).to(torch.float64)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--qaas")
    p.add_argument("--llmc")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    with open(os.path.join(args.model, "config.json")) as f:
        eps = json.load(f).get("rms_norm_eps", 1e-6)
    embed = read_tensor(args.model, "model.embed_tokens.weight")
    norm = read_tensor(args.model, "model.layers.0.input_layernorm.weight")
    w = torch.cat([read_tensor(args.model, f"model.layers.0.self_attn.{p}_proj.weight") for p in "qkv"])
    w_absmax = w.abs().amax(dim=0)
    calib = torch.from_numpy(np.load(args.calib)).long()
    hi = torch.full_like(norm, -float("inf"))
    lo = torch.full_like(norm, float("inf"))
    for row in calib:  # one window at a time: bounded memory at any size
        x = embed[row]
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm
        hi = torch.maximum(hi, y.amax(0))
        lo = torch.minimum(lo, y.amin(0))
    a = args.alpha
    absmax = torch.maximum(hi.abs(), lo.abs())
    expected = {
        "qaas": norm / (absmax.pow(a) / w_absmax.pow(1 - a)).clamp_min(1e-5),
        "llmc": norm / ((hi - lo).pow(a) / (2 * w_absmax).pow(1 - a)).clamp_min(1e-5),
    }
    result = {}
    for tool, d in (("qaas", args.qaas), ("llmc", args.llmc)):
        if not d:
            continue
        got = read_tensor(d, "model.layers.0.input_layernorm.weight")
        err = ((got - expected[tool]).abs() / expected[tool].abs()).max().item()
        result[tool] = {"dir": d, "max_rel_error": err, "same_windows": err < 1e-4}
        print(f"calibration check ({tool}): layer-0 smoothing scales recomputed from calib.npy match to "
              f"{err:.2g} relative -> {'same windows' if err < 1e-4 else 'DIFFERENT calibration data'}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0 if all(r["same_windows"] for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
