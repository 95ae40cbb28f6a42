#!/usr/bin/env python3
"""Token ids for the peer benchmark: the calibration windows qaas-quantize draws, and the
evaluation windows of the perplexity protocol, computed once and stored for every tool.

Tokenization is qaas's: the model's tokenizer.model through the `sentencepiece` package's
encode(text, out_type=int) (what qaas's SentencePiece tokenizer is tested to equal), or its
tokenizer.json through the `tokenizers` package's encode(text, add_special_tokens=False); no
BOS/EOS is added.

Calibration (quant/data/text_dataset.cc, SampleCalibrationWindows): the whole calibration file
is encoded (no BOS), then `num_samples` windows of `seq_len` tokens start at offsets drawn by
std::uniform_int_distribution<size_t>(0, n - seq_len - 1) over std::mt19937_64(seed). Both are
reproduced here bit for bit: MT19937-64 as the C++ standard defines it, and the distribution as
libstdc++ 12 implements it for a 64-bit generator (Lemire's nearly-divisionless method with a
128-bit product, bits/uniform_int_dist.h).

Evaluation (quant/pipeline.cc): tokens = [BOS] + encode(whole file), cut into non-overlapping
windows of `seq_len` tokens (the remainder dropped), at most `max_windows` of them.

  peers_data.py windows --model DIR --calib FILE --num_samples N --calib_seq_len L --seed S
                        --eval FILE --eval_seq_len L --max_windows W --out DIR
writes DIR/calib.npy ([N, L] int64), DIR/eval.npy ([W, L] int64) and DIR/tokens.json.
"""

import argparse
import json
import os
import sys

import numpy as np

MASK64 = (1 << 64) - 1


class MT19937_64:
    """std::mt19937_64 (C++11 [rand.eng.mers] with the mt19937_64 parameters)."""

    N, M = 312, 156
    MATRIX_A = 0xB5026F5AA96619E9
    UPPER, LOWER = 0xFFFFFFFF80000000, 0x7FFFFFFF

    def __init__(self, seed=5489):
        self.mt = [0] * self.N
        self.mt[0] = seed & MASK64
        for i in range(1, self.N):
            prev = self.mt[i - 1]
            self.mt[i] = (6364136223846793005 * (prev ^ (prev >> 62)) + i) & MASK64
        self.index = self.N

    def _twist(self):
        mt = self.mt
        for i in range(self.N):
            y = (mt[i] & self.UPPER) | (mt[(i + 1) % self.N] & self.LOWER)
            v = mt[(i + self.M) % self.N] ^ (y >> 1)
            if y & 1:
                v ^= self.MATRIX_A
            mt[i] = v
        self.index = 0

    def __call__(self):
        if self.index >= self.N:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y & MASK64


def uniform_size_t(rng, a, b):
    """libstdc++'s std::uniform_int_distribution<size_t>(a, b)(rng) for a 64-bit rng."""
    urange = b - a
    if urange == MASK64:
        return a + rng()
    erange = urange + 1
    product = rng() * erange  # the 128-bit product of Lemire's method
    low = product & MASK64
    if low < erange:
        threshold = (-erange & MASK64) % erange
        while low < threshold:
            product = rng() * erange
            low = product & MASK64
    return a + (product >> 64)


def calibration_starts(n_tokens, num_samples, seq_len, seed):
    if n_tokens < seq_len + 1:
        raise ValueError(f"calibration text has {n_tokens} tokens; seq_len {seq_len} needs at least {seq_len + 1}")
    rng = MT19937_64(seed)
    return [uniform_size_t(rng, 0, n_tokens - seq_len - 1) for _ in range(num_samples)]


class Tokenizer:
    def __init__(self, model_dir):
        spm_path = os.path.join(model_dir, "tokenizer.model")
        json_path = os.path.join(model_dir, "tokenizer.json")
        if os.path.exists(spm_path):
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=spm_path)
            self.kind = "sentencepiece tokenizer.model"
            self.bos_id = self.sp.bos_id()
            self._encode = lambda text: self.sp.encode(text, out_type=int)
        elif os.path.exists(json_path):
            from tokenizers import Tokenizer as HfTokenizer

            tok = HfTokenizer.from_file(json_path)
            self.kind = "tokenizers tokenizer.json"
            with open(os.path.join(model_dir, "config.json")) as f:
                self.bos_id = json.load(f).get("bos_token_id", -1)
            if self.bos_id is None:
                self.bos_id = -1
            self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
        else:
            raise FileNotFoundError(f"{model_dir}: no tokenizer.model or tokenizer.json")

    def encode(self, text):
        return self._encode(text)


def write_timing(output, t_start, t_imports, t_loaded, t_quantized, t_saved, torch_threads):
    """A Python tool's own phases (perf_counter marks) as report.py reads them:
    <output>/peers_timing.json."""
    with open(os.path.join(output, "peers_timing.json"), "w") as f:
        json.dump({"imports_s": t_imports - t_start, "load_s": t_loaded - t_imports,
                   "quantize_s": t_quantized - t_loaded, "save_s": t_saved - t_quantized,
                   "torch_threads": torch_threads}, f, indent=1)


def read_text(path):
    # qaas reads the file's bytes as they are (a .txt file; .jsonl is not supported here).
    if path.endswith(".jsonl"):
        raise ValueError(f"{path}: only plain .txt files are supported by the benchmark")
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def cmd_windows(args):
    tok = Tokenizer(args.model)
    calib_ids = tok.encode(read_text(args.calib))
    starts = calibration_starts(len(calib_ids), args.num_samples, args.calib_seq_len, args.seed)
    calib = np.array([calib_ids[s:s + args.calib_seq_len] for s in starts], dtype=np.int64)
    if tok.bos_id < 0:
        raise ValueError("the tokenizer has no BOS token, which evaluation windows start with")
    eval_ids = [tok.bos_id] + tok.encode(read_text(args.eval))
    windows = len(eval_ids) // args.eval_seq_len
    if args.max_windows > 0:
        windows = min(windows, args.max_windows)
    if windows == 0:
        raise ValueError(f"evaluation text has {len(eval_ids)} tokens, fewer than one window of {args.eval_seq_len}")
    ev = np.array(eval_ids[:windows * args.eval_seq_len], dtype=np.int64).reshape(windows, args.eval_seq_len)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "calib.npy"), calib)
    np.save(os.path.join(args.out, "eval.npy"), ev)
    info = {
        "tokenizer": tok.kind,
        "calibration": {"file": args.calib, "tokens_in_file": len(calib_ids), "num_samples": args.num_samples,
                        "seq_len": args.calib_seq_len, "seed": args.seed, "starts": starts},
        "evaluation": {"file": args.eval, "tokens_with_bos": len(eval_ids), "seq_len": args.eval_seq_len,
                       "windows": windows},
    }
    with open(os.path.join(args.out, "tokens.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"tokens: calibration {calib.shape[0]}x{calib.shape[1]} from {len(calib_ids)} tokens of {args.calib}; "
          f"evaluation {ev.shape[0]}x{ev.shape[1]} from {len(eval_ids)} tokens of {args.eval} ({tok.kind})")


def self_test():
    # C++11 [rand.predef]: the 10000th consecutive invocation of a default-constructed
    # mt19937_64 produces 9981545732273789042.
    rng = MT19937_64()
    for _ in range(9999):
        rng()
    assert rng() == 9981545732273789042, "MT19937-64 does not match the C++ standard"
    # The distribution's contract: offsets in range, reproducible per seed.
    s = calibration_starts(1000, 16, 64, 42)
    assert all(0 <= x <= 1000 - 64 - 1 for x in s) and s == calibration_starts(1000, 16, 64, 42)
    print("peers_data self-test: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("windows")
    w.add_argument("--model", required=True)
    w.add_argument("--calib", required=True)
    w.add_argument("--num_samples", type=int, required=True)
    w.add_argument("--calib_seq_len", type=int, required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--eval", required=True)
    w.add_argument("--eval_seq_len", type=int, required=True)
    w.add_argument("--max_windows", type=int, default=0)
    w.add_argument("--out", required=True)
    sub.add_parser("self-test")
    args = p.parse_args()
    if args.cmd == "self-test":
        self_test()
    else:
        self_test()
        cmd_windows(args)


if __name__ == "__main__":
    sys.exit(main())
