#!/usr/bin/env python3
"""Golden values for qaas's GPTQ (quant/methods/gptq.cc), from an independent
float64 NumPy GPTQ written from the paper.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers" (ICLR 2023), Algorithm 1:

    Q <- 0, E <- 0                                   (E: one lazy block of errors)
    H^-1 <- Cholesky(H^-1)^T                         (upper factor of the inverse)
    for i = 0, B, 2B, ...:
        for j = i, ..., i + B - 1:
            Q[:, j] <- quant(W[:, j])
            E[:, j - i] <- (W[:, j] - Q[:, j]) / [H^-1]_jj
            W[:, j:(i+B)] <- W[:, j:(i+B)] - E[:, j - i] [H^-1]_{j, j:(i+B)}
        W[:, (i+B):] <- W[:, (i+B):] - E [H^-1]_{i:(i+B), (i+B):}

plus the paper's damping (lambda = 1% of the mean diagonal, added to H),
"act-order" (columns by decreasing diag(H)) and grouping (one grid per
`group_size` consecutive columns, set when the group's first column comes up).
Everything runs in float64; only the inputs (W, H) are float32 values, so
that the C++ code (float32) sees exactly the same numbers.

Conventions are qaas's, so that codes are comparable one to one
(quant/formats/int_quant.h):
  * grid: code = clamp(round_half_even(w / s) + z, 0, 2^b - 1),
    w' = (code - z) s;  range [min, max] widened to include 0; asymmetric:
    s = (max - min) / (2^b - 1), z = round(-min / s), and a group whose z
    would be < 1 takes s = max(max / (2^b - 2), -min) (so z = 1);
    symmetric: m = max|w|, s = 2m / (2^b - 1), z = 2^(b-1); an all-zero
    range becomes [-1, 1]; s is rounded to float16 before z and the codes;
  * dead inputs (diag(H) == 0): diag set to 1, their weights set to 0
    before anything else (per-channel and static-group grids included);
  * damping lambda = percdamp * mean(diag(H)) (after the dead fix);
  * act-order: a stable sort of diag(H), descending; g_idx[j] = the group of
    column j's position in that order (dynamic groups), or j // g with
    static groups (grids from the unmodified W in the original order);
  * per channel: one grid per row from the whole (dead-zeroed) W.

Groups that begin inside a lazy block (group 16, block 32 here) are where
implementations differ, so both variants are produced:
  * "updated": the group's grid comes from its columns as updated so far,
    including the updates from the earlier columns of the same lazy block.
    This is what Algorithm 1 computes without lazy batching (B = 1), and
    the paper sets a group's grid during the sweep from the current weights:
    the script checks that this variant gives the same codes for B = 32 and
    B = 1.  qaas's default (GroupParamsFrom::kUpdated).
  * "block_start": the grid comes from the weights as they stood at the start
    of the lazy block (updated by earlier blocks only), as the GPTQ authors'
    code and AutoGPTQ do (find_params on W, whose block is updated in a
    copy).  qaas's GroupParamsFrom::kBlockStart.

Output: tests/data/gptq_golden.json (about 100 KB), read by
tests/quant/gptq_golden_test.cc: the layer (W 16x64, H 64x64, float32 values
written as shortest round-trip decimals) and, per case, the settings and the
expected codes [16][64], scales and zeros [16][groups], g_idx and perm.

How to run (from the repository root; needs only numpy, takes a second):

    pip install numpy        # if missing
    python3 scripts/reference/make_gptq_golden.py [--out tests/data/gptq_golden.json]

Last run with Python 3.11, numpy 2.4.6.  The output is deterministic (fixed
seed, numpy's PCG64 generator).
"""

import argparse
import json
import os
import sys

import numpy as np

ROWS, COLUMNS, TOKENS = 16, 64, 384
SEED = 20221031  # the GPTQ preprint's arXiv date
DEAD_COLUMN = 37


# ---------------------------------------------------------------- the layer

def make_layer():
    """W [16, 64] float32, H [64, 64] float32 (= float32(2 X^T X / n), float64 sums)."""
    rng = np.random.default_rng(SEED)
    w = (0.05 * rng.standard_normal((ROWS, COLUMNS))).astype(np.float32)
    # A few larger weights, so that ranges (and so grids) are set by outliers.
    w[rng.integers(0, ROWS, 12), rng.integers(0, COLUMNS, 12)] *= 4.0
    # Correlated inputs with channel scales spread over ~2 decades, so that
    # act-order reorders a lot and the error feedback matters.
    mix = rng.standard_normal((COLUMNS, COLUMNS)) / np.sqrt(COLUMNS)
    channel_scale = np.exp(rng.uniform(-2.0, 2.0, COLUMNS))
    x = (rng.standard_normal((TOKENS, COLUMNS)) @ (np.eye(COLUMNS) + 0.5 * mix)) * channel_scale
    x = x.astype(np.float32)
    x[:, DEAD_COLUMN] = 0.0  # one input that is always zero
    x64 = x.astype(np.float64)
    h = (2.0 / TOKENS * (x64.T @ x64)).astype(np.float32)
    h = np.triu(h) + np.triu(h, 1).T  # exactly symmetric
    return w, h


# ---------------------------------------------------------------- the grid

def range_to_scale_zero(xmin, xmax, bits, symmetric):
    """Per-row (scale, zero) from per-row ranges, float64 in and out."""
    maxq = 2.0 ** bits - 1
    xmin = np.minimum(xmin, 0.0)
    xmax = np.maximum(xmax, 0.0)
    if symmetric:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = np.where(empty, -1.0, xmin)
    xmax = np.where(empty, 1.0, xmax)
    s = (xmax - xmin) / maxq
    if not symmetric:
        low = np.round(-xmin / np.maximum(s, 6e-8)) < 1
        s = np.where(low, np.maximum(xmax / (maxq - 1), -xmin), s)
    s = np.maximum(s, 6e-8).astype(np.float16).astype(np.float64)
    if symmetric:
        z = np.full_like(s, 2.0 ** (bits - 1))
    else:
        z = np.clip(np.round(-xmin / s), 1.0, maxq)
    return s, z


def grid_of(cols, bits, symmetric):
    """Grid of a [rows, k] slice of columns: per-row min/max."""
    return range_to_scale_zero(cols.min(axis=1), cols.max(axis=1), bits, symmetric)


def quantize(w, s, z, bits):
    maxq = 2.0 ** bits - 1
    code = np.clip(np.round(w / s) + z, 0.0, maxq)
    return code, (code - z) * s


# ---------------------------------------------------------------- GPTQ

def gptq(w32, h32, bits, symmetric, group_size, blocksize, act_order, static_groups, variant,
         percdamp=0.01):
    """Algorithm 1 in float64. group_size 0 = per channel. Returns a dict of results."""
    assert variant in ("updated", "block_start")
    W = w32.astype(np.float64).copy()
    H = h32.astype(np.float64).copy()
    rows, columns = W.shape

    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    per_channel = group_size == 0
    if per_channel:
        channel_grid = grid_of(W, bits, symmetric)
    if static_groups:
        static = [grid_of(W[:, g:g + group_size], bits, symmetric) for g in range(0, columns, group_size)]

    perm = np.arange(columns)
    if act_order:
        d = np.diag(H)
        assert len(np.unique(d)) == columns, "ties in diag(H) would make the order ambiguous"
        perm = np.argsort(-d, kind="stable")
        W = W[:, perm]
        H = H[np.ix_(perm, perm)]

    damp = percdamp * np.mean(np.diag(H))
    Hd = H + damp * np.eye(columns)
    Hinv = np.linalg.inv(Hd)
    Hinv = 0.5 * (Hinv + Hinv.T)
    U = np.linalg.cholesky(Hinv).T  # upper: Hinv = U^T U

    n_groups = 1 if per_channel else (columns + group_size - 1) // group_size
    codes = np.zeros((rows, columns))
    scales = np.zeros((rows, n_groups))
    zeros = np.zeros((rows, n_groups))
    if per_channel:
        scales[:, 0], zeros[:, 0] = channel_grid

    s = z = None
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        block_start = W.copy()  # W as the lazy block begins (earlier blocks' updates applied)
        E = np.zeros((rows, i2 - i1))
        for j in range(i1, i2):
            if per_channel:
                s, z = channel_grid
            elif static_groups:
                s, z = static[perm[j] // group_size]
            elif j % group_size == 0:
                source = W if variant == "updated" else block_start
                s, z = grid_of(source[:, j:j + group_size], bits, symmetric)
                scales[:, j // group_size], zeros[:, j // group_size] = s, z
            code, q = quantize(W[:, j], s, z, bits)
            codes[:, j] = code
            E[:, j - i1] = (W[:, j] - q) / U[j, j]
            W[:, j:i2] -= np.outer(E[:, j - i1], U[j, j:i2])
        W[:, i2:] -= E @ U[i1:i2, i2:]

    invperm = np.argsort(perm)
    codes = codes[:, invperm]
    if static_groups:
        for g, (sg, zg) in enumerate(static):
            scales[:, g], zeros[:, g] = sg, zg
        g_idx = np.arange(columns) // group_size
    elif per_channel:
        g_idx = np.zeros(columns, dtype=np.int64)
    else:
        g_idx = invperm // group_size
    return {"codes": codes.astype(np.int64), "scales": scales, "zeros": zeros.astype(np.int64),
            "g_idx": g_idx.astype(np.int64), "perm": perm.astype(np.int64), "damp": damp}


# ---------------------------------------------------------------- output

def f32_text(a):
    """Shortest decimal strings that read back (as float32) to exactly `a`'s float32 values."""
    a = np.asarray(a, dtype=np.float32)
    out = []
    for v in a.ravel():
        t = np.format_float_scientific(v, unique=True, trim="-")
        assert np.float32(float(t)) == v
        out.append(float(t))
    return np.array(out).reshape(a.shape).tolist()


CASES = [
    # name, bits, symmetric, group, act_order, static_groups, variant
    ("w4_asym_per_channel", 4, False, 0, False, False, "updated"),
    ("w4_asym_g16_updated", 4, False, 16, False, False, "updated"),
    ("w4_asym_g16_block_start", 4, False, 16, False, False, "block_start"),
    ("w4_asym_g16_act_order_updated", 4, False, 16, True, False, "updated"),
    ("w4_asym_g16_act_order_block_start", 4, False, 16, True, False, "block_start"),
    ("w4_sym_g16_act_order_static", 4, True, 16, True, True, "updated"),
    ("w3_sym_per_channel_act_order", 3, True, 0, True, False, "updated"),
    ("w3_sym_g16_updated", 3, True, 16, False, False, "updated"),
    ("w2_asym_g16_updated", 2, False, 16, False, False, "updated"),
    ("w2_asym_g16_block_start", 2, False, 16, False, False, "block_start"),
    ("w2_asym_g16_act_order_static", 2, False, 16, True, True, "block_start"),
]
BLOCKSIZE = 32


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "data", "gptq_golden.json"))
    args = ap.parse_args()

    w, h = make_layer()
    w_text, h_text = f32_text(w), f32_text(h)
    w, h = np.array(w_text, dtype=np.float32), np.array(h_text, dtype=np.float32)

    cases = []
    for name, bits, sym, group, act, static, variant in CASES:
        r = gptq(w, h, bits, sym, group, BLOCKSIZE, act, static, variant)
        # Without lazy batching the two variants coincide; "updated" does not
        # depend on the block size at all (Algorithm 1's lazy batch is only a
        # reorganisation of the same arithmetic).
        r1 = gptq(w, h, bits, sym, group, 1, act, static, variant)
        same_as_b1 = float(np.mean(r["codes"] == r1["codes"]))
        if variant == "updated":
            assert same_as_b1 == 1.0, (name, same_as_b1)
        other = "block_start" if variant == "updated" else "updated"
        ro = gptq(w, h, bits, sym, group, BLOCKSIZE, act, static, other)
        vs_other = float(np.mean(r["codes"] == ro["codes"]))
        print(f"{name:36s} codes equal to B=1: {same_as_b1:.4f}  to the {other} variant: {vs_other:.4f}")
        cases.append({
            "name": name, "bits": bits, "symmetric": sym, "group_size": group,
            "blocksize": BLOCKSIZE, "act_order": act, "static_groups": static,
            "group_params_from": variant, "percdamp": 0.01, "damp": r["damp"],
            "codes": r["codes"].tolist(), "scales": r["scales"].tolist(),
            "zeros": r["zeros"].tolist(), "g_idx": r["g_idx"].tolist(), "perm": r["perm"].tolist(),
        })

    doc = {
        "about": "GPTQ golden values from scripts/reference/make_gptq_golden.py (float64 NumPy, "
                 "Frantar et al. 2022 Algorithm 1 in qaas's grid conventions)",
        "numpy": np.__version__, "seed": SEED, "rows": ROWS, "columns": COLUMNS, "tokens": TOKENS,
        "dead_columns": [DEAD_COLUMN], "W": w_text, "H": h_text, "cases": cases,
    }
    text = json.dumps(doc, separators=(",", ":"))
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.normpath(args.out)} ({len(text) // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
