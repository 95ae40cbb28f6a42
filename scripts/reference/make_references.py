#!/usr/bin/env python3
"""Generate reference values for the qaas C++ tests.

What it makes (small JSON files, each well under 200 KB):

  tests/data/tokenizer_reference.json
      For the stories260k tokenizer and the 32k-piece Llama 2 tokenizer: the
      tokenizer's vocab size and bos/eos/unk/pad ids, a few normalizer/trainer
      settings, and for a list of texts (stored in the file) the ids returned
      by the Python `sentencepiece` package's `encode(text, out_type=int)`
      (no BOS/EOS added).  Also, per tokenizer, the encoding of the whole
      TinyStories sample file summarised as: number of ids, first 50 ids,
      last 50 ids and an FNV-1a 64-bit hash of the ids (see `fnv1a64_ids`).

  tests/data/stories260k_reference.json
      For the stories260k model loaded with Hugging Face transformers'
      `LlamaForCausalLM` (eager attention, CPU):
        * perplexity of the TinyStories sample at seq_len 512 and 128,
          computed in float64 and in float32;
        * perplexity of wikitext-2 valid.txt at seq_len 512, first 40 windows
          only, float64 and float32;
        * float64 logits of the first 8 positions of the first 16-token
          window of the TinyStories token stream ([BOS] + ids[:15]) and
          those 16 input ids;
        * notes on how the checkpoint loaded (tied embeddings, missing /
          unexpected keys, loader warnings) and on an independent NumPy
          forward pass used as a cross-check of the logits.

Perplexity protocol (shared/data/README.md): the file is read as UTF-8 text
exactly as stored (no newline translation) and encoded as ONE string;
tokens = [BOS] + encode(text); the stream is cut into non-overlapping windows
of seq_len tokens (the remainder is dropped); each window is evaluated on its
own starting at position 0; positions 1..seq_len-1 of every window are
predicted from the previous ones; perplexity = exp(mean NLL over all those
predicted positions of all windows).  tokens_scored = windows * (seq_len-1).

How to run (from the repository root, CPU only, takes a minute or two):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch transformers sentencepiece safetensors numpy protobuf
    /tmp/refenv/bin/python scripts/reference/make_references.py \
        [--shared ../shared] [--out tests/data]

`--shared` defaults to `../shared` beside the checkout (falling back to
/work/shared).  `protobuf` is optional: it is only used to record a few
tokenizer settings.

Package versions this was last run with (Python 3.11.7, Linux x86_64, CPU):
    torch 2.15.0, transformers 5.23.0, sentencepiece 0.2.3,
    safetensors 0.8.0, numpy 2.4.6, protobuf 7.36.2
"""

import argparse
import io
import json
import logging
import math
import os
import platform
import sys
import warnings

import numpy as np
import sentencepiece as spm
import torch
from safetensors import safe_open

SEQ_LENS_TINYSTORIES = (512, 128)
WIKITEXT_SEQ_LEN = 512
WIKITEXT_MAX_WINDOWS = 40
LOGITS_WINDOW = 16
LOGITS_POSITIONS = 8
HEAD_TAIL = 50

FIXED_TEXTS = [
    ("hello_world", "Hello world"),
    ("empty", ""),
    ("leading_space", " leading space"),
    ("spaces_newlines", "multiple   spaces\n\nand newlines\n"),
    ("unicode_byte_fallback", "naïve café – 日本語 🙂"),
    ("digits", "2024-11-22 3.14159"),
]


def read_text(path):
    # newline="" keeps the file's bytes-as-text exactly (no \r\n translation).
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def fnv1a64_ids(ids):
    """FNV-1a 64-bit over the ids, each as 4 bytes little-endian uint32.

    offset basis 0xcbf29ce484222325, prime 0x100000001b3.
    """
    h = 0xCBF29CE484222325
    for t in ids:
        for b in int(t).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "0x%016x" % h


def tokenizer_settings(path):
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except Exception as e:  # protobuf missing
        return {"unavailable": "sentencepiece_model_pb2 could not be imported: %s" % e}
    m = pb.ModelProto()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    ts, ns = m.trainer_spec, m.normalizer_spec
    model_types = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}
    return {
        "model_type": model_types.get(ts.model_type, str(ts.model_type)),
        "byte_fallback": ts.byte_fallback,
        "split_digits": ts.split_digits,
        "treat_whitespace_as_suffix": ts.treat_whitespace_as_suffix,
        "normalizer_name": ns.name,
        "add_dummy_prefix": ns.add_dummy_prefix,
        "remove_extra_whitespaces": ns.remove_extra_whitespaces,
        "escape_whitespaces": ns.escape_whitespaces,
        "precompiled_charsmap_bytes": len(ns.precompiled_charsmap),
    }


def make_tokenizer_reference(shared, rel):
    tiny_path = os.path.join(shared, "data/tinystories/valid-sample.txt")
    wiki_path = os.path.join(shared, "data/wikitext-2/valid.txt")
    tiny = read_text(tiny_path)
    wiki = read_text(wiki_path)
    texts = [
        ("tinystories_first3000", tiny[:3000]),
        ("wikitext2_valid_first3000", wiki[:3000]),
    ] + FIXED_TEXTS

    out = {
        "description": (
            "SentencePiece reference encodings: ids = "
            "SentencePieceProcessor.encode(text, out_type=int), no BOS/EOS added. "
            "'first3000' texts are the first 3000 Unicode code points of the file "
            "read as UTF-8 without newline translation. 'full_file' is the encoding "
            "of the whole file as one string; 'fnv1a64' hashes the ids as 4-byte "
            "little-endian uint32 each with FNV-1a 64 (basis 0xcbf29ce484222325, "
            "prime 0x100000001b3)."
        ),
        "generator": "scripts/reference/make_references.py",
        "versions": versions(),
        "notes": [
            "Both models: BPE, byte_fallback, identity normalizer, add_dummy_prefix=true, "
            "remove_extra_whitespaces=false, split_digits=true (see 'settings').",
            "The literal text '<unk>' in wikitext-2 is encoded as ordinary pieces, never "
            "as unk_id: the unk piece is not matched from input text.",
            "decode(encode(text)) == text holds for every text here.",
        ],
        "tokenizers": {},
    }
    for name, path in (
        ("stories260k", "models/stories260k/tokenizer.model"),
        ("llama2", "models/llama2-tokenizer/tokenizer.model"),
    ):
        full = os.path.join(shared, path)
        sp = spm.SentencePieceProcessor(model_file=full)
        entry = {
            "model_path": rel(full),
            "vocab_size": sp.get_piece_size(),
            "bos_id": sp.bos_id(),
            "eos_id": sp.eos_id(),
            "unk_id": sp.unk_id(),
            "pad_id": sp.pad_id(),
            "settings": tokenizer_settings(full),
            "cases": [],
        }
        for cname, text in texts:
            ids = sp.encode(text, out_type=int)
            assert sp.decode(ids) == text, (name, cname)
            assert cname.startswith("wikitext") or sp.unk_id() not in ids
            entry["cases"].append({
                "name": cname,
                "text": text,
                "text_utf8_bytes": len(text.encode("utf-8")),
                "ids": ids,
            })
        ids = sp.encode(tiny, out_type=int)
        entry["full_file"] = {
            "path": rel(tiny_path),
            "file_utf8_bytes": len(tiny.encode("utf-8")),
            "num_ids": len(ids),
            "first_ids": ids[:HEAD_TAIL],
            "last_ids": ids[-HEAD_TAIL:],
            "fnv1a64": fnv1a64_ids(ids),
        }
        out["tokenizers"][name] = entry
    return out


# ---------------------------------------------------------------------------
# Model


def load_model(model_dir, dtype, attn):
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    hf_logging.set_verbosity_info()
    hf_logging.disable_progress_bar()
    hf_logger = hf_logging.get_logger("transformers")
    hf_logger.addHandler(handler)
    hf_logging.disable_default_handler()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = LlamaForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=attn,
            output_loading_info=True)
    hf_logger.removeHandler(handler)
    hf_logging.enable_default_handler()
    hf_logging.set_verbosity_warning()
    model.eval()
    log_lines = [l for l in stream.getvalue().splitlines() if l.strip()]
    # Keep only lines that look like warnings about weights / initialisation.
    # (Lines of the config dump, which start with blanks, braces or quotes, are skipped.)
    interesting = [l for l in log_lines
                   if not l.startswith((" ", "{", "}", '"'))
                   and any(k in l.lower() for k in ("missing", "unexpected", "newly initialized",
                                                     "not initialized", "not used", "mismatch",
                                                     "tie", "warn"))]
    info = {k: sorted(str(x) for x in v) if not isinstance(v, (str, int)) else v
            for k, v in info.items()}
    return model, info, interesting, [str(w.message) for w in caught]


def make_exact_float64(model, cfg):
    """Remove the float32 islands of transformers' LLaMA so a float64 model is
    float64 throughout.

    Stock transformers (checked on 5.23.0) computes, even for a float64 model:
      * LlamaRMSNorm: the normalisation in float32 (casts the input to float32);
      * LlamaRotaryEmbedding: inv_freq, angles, cos and sin in float32;
      * eager attention: softmax with dtype=float32.
    These limit the "float64" logits to about 1e-6 absolute accuracy.  Here
    the RMSNorm and rotary modules get float64 forwards (instance attributes,
    nothing global is changed) and the model must be loaded with
    attn_implementation="sdpa" (PyTorch's CPU SDPA keeps float64).
    """
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def rms_forward(mod):
        def fwd(h):
            var = h.pow(2).mean(-1, keepdim=True)
            return mod.weight * (h * torch.rsqrt(var + mod.variance_epsilon))
        return fwd

    n_norm = 0
    for m in model.modules():
        if isinstance(m, LlamaRMSNorm):
            m.forward = rms_forward(m)
            n_norm += 1
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv64 = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))

    def rope_forward(x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * inv64
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    model.model.rotary_emb.forward = rope_forward
    assert model.config._attn_implementation == "sdpa"
    return n_norm


@torch.no_grad()
def window_nll(model, tokens, seq_len, max_windows=None):
    n_windows = len(tokens) // seq_len
    available = n_windows
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    total = 0.0  # accumulate in Python float (float64)
    count = 0
    for w in range(n_windows):
        x = torch.tensor([tokens[w * seq_len:(w + 1) * seq_len]], dtype=torch.long)
        logits = model(input_ids=x).logits[0]  # [seq_len, vocab], model dtype
        logp = torch.log_softmax(logits, dim=-1)  # in model dtype
        tgt = x[0, 1:]
        nll = -logp[:-1].gather(1, tgt[:, None])[:, 0]
        total += float(nll.to(torch.float64).sum())
        count += seq_len - 1
    return {
        "windows": n_windows,
        "windows_available": available,
        "tokens_scored": count,
        "mean_nll": total / count,
        "perplexity": math.exp(total / count),
    }


def numpy_forward(st_path, cfg, ids):
    """Independent float64 forward pass (rotate-half RoPE) for cross-checking."""
    W = {}
    with safe_open(st_path, "np") as f:
        for k in f.keys():
            W[k] = f.get_tensor(k).astype(np.float64)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg["rope_theta"]
    T = len(ids)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)

    def rope(x):  # x: [heads, T, hd]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], axis=-1) * sin

    h = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        x = rms(h, W[p + "input_layernorm.weight"])
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, H)
        h = h + o @ W[p + "self_attn.o_proj.weight"].T
        x = rms(h, W[p + "post_attention_layernorm.weight"])
        g = x @ W[p + "mlp.gate_proj.weight"].T
        u = x @ W[p + "mlp.up_proj.weight"].T
        h = h + ((g / (1.0 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    h = rms(h, W["model.norm.weight"])
    return h @ W["model.embed_tokens.weight"].T


def make_model_reference(shared, rel):
    model_dir = os.path.join(shared, "models/stories260k")
    st_path = os.path.join(model_dir, "model.safetensors")
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    bos = sp.bos_id()
    tiny_path = os.path.join(shared, "data/tinystories/valid-sample.txt")
    wiki_path = os.path.join(shared, "data/wikitext-2/valid.txt")
    tiny_tokens = [bos] + sp.encode(read_text(tiny_path), out_type=int)
    wiki_tokens = [bos] + sp.encode(read_text(wiki_path), out_type=int)

    with safe_open(st_path, "pt") as f:
        keys = sorted(f.keys())
    has_lm_head = "lm_head.weight" in keys

    # Variants: exact float64 (transformers with its float32 islands removed,
    # cross-checked against NumPy), stock transformers float64 and float32.
    variants = (
        ("float64", torch.float64, "sdpa", True),
        ("float64_transformers_stock", torch.float64, "eager", False),
        ("float32", torch.float32, "eager", False),
    )
    results = {"tinystories": {}, "wikitext2_valid": {}}
    load_notes = {}
    models = {}
    for vname, dtype, attn, exact in variants:
        model, info, log_lines, warns = load_model(model_dir, dtype, attn)
        if exact:
            make_exact_float64(model, cfg)
        models[vname] = model
        tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        load_notes[vname] = {
            "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": attn,
            "float32_islands_removed": exact,
            "loading_info": info,
            "lm_head_shares_embed_tokens_storage": tied,
            "loader_log_lines": log_lines,
            "python_warnings": warns,
        }
        for L in SEQ_LENS_TINYSTORIES:
            r = window_nll(model, tiny_tokens, L)
            results["tinystories"].setdefault("seq_len_%d" % L, {})[vname] = r
            print("tinystories seq_len=%d %s: windows=%d scored=%d ppl=%.12f"
                  % (L, vname, r["windows"], r["tokens_scored"], r["perplexity"]))
        r = window_nll(model, wiki_tokens, WIKITEXT_SEQ_LEN, WIKITEXT_MAX_WINDOWS)
        results["wikitext2_valid"].setdefault("seq_len_%d" % WIKITEXT_SEQ_LEN, {})[vname] = r
        print("wikitext2 valid seq_len=%d (first %d windows) %s: windows=%d scored=%d ppl=%.12f"
              % (WIKITEXT_SEQ_LEN, WIKITEXT_MAX_WINDOWS, vname, r["windows"],
                 r["tokens_scored"], r["perplexity"]))

    # Logits of the first window of 16 tokens.
    ids16 = tiny_tokens[:LOGITS_WINDOW]
    with torch.no_grad():
        lg = {v: models[v](input_ids=torch.tensor([ids16])).logits[0].to(torch.float64).numpy()
              for v in models}
    lg64 = lg["float64"]
    ref_np = numpy_forward(st_path, cfg, ids16)
    np_diff = float(np.max(np.abs(ref_np - lg64)))
    stock_diff = float(np.max(np.abs(lg["float64_transformers_stock"] - lg64)))
    f32_diff = float(np.max(np.abs(lg["float32"] - lg64)))
    print("logits (16 tokens): max|exact f64 - numpy f64| = %.3e, max|stock f64 - exact| = %.3e, "
          "max|f32 - exact| = %.3e" % (np_diff, stock_diff, f32_diff))
    assert np_diff < 1e-10, "independent NumPy forward disagrees with transformers"
    # Also cross-check a full 512-token window (the first one).
    w0 = tiny_tokens[:512]
    with torch.no_grad():
        lw = models["float64"](input_ids=torch.tensor([w0])).logits[0].numpy()
    np_diff512 = float(np.max(np.abs(numpy_forward(st_path, cfg, w0) - lw)))
    print("logits (first 512-token window): max|exact f64 - numpy f64| = %.3e" % np_diff512)
    assert np_diff512 < 1e-10

    notes = [
        "safetensors keys: %d tensors; lm_head.weight present: %s (tied embeddings: "
        "the output head is model.embed_tokens.weight)." % (len(keys), has_lm_head),
        "loading_info (missing/unexpected/mismatched keys) and any captured loader "
        "log lines / Python warnings are listed per variant under 'loading'.",
        "Stock transformers is NOT float64 throughout even with dtype=float64: "
        "LlamaRMSNorm normalises in float32, the rotary embedding computes inv_freq/cos/sin "
        "in float32 and eager attention takes its softmax in float32. The 'float64' "
        "variant removes those islands (see make_exact_float64: float64 RMSNorm and RoPE "
        "forwards on the module instances, SDPA attention); 'float64_transformers_stock' "
        "is transformers as shipped with dtype=float64, eager attention.",
        "Independent NumPy float64 forward pass (rotate-half RoPE, GQA repeat, SwiGLU, "
        "tied head): max abs logit diff vs the 'float64' variant = %.3e on the 16-token "
        "window and %.3e on the first 512-token window. On the 16-token window, stock "
        "transformers float64 differs from 'float64' by up to %.3e and float32 by up to "
        "%.3e." % (np_diff, np_diff512, stock_diff, f32_diff),
        "float32 perplexities: transformers as shipped with dtype=float32 (eager "
        "attention), log_softmax in float32, per-window NLL sums accumulated in float64.",
        "wikitext2_valid is limited to the first %d windows of seq_len %d "
        "(windows_available gives the full count); it is out-of-domain for this "
        "model and its 512-piece vocabulary, so the perplexity is high."
        % (WIKITEXT_MAX_WINDOWS, WIKITEXT_SEQ_LEN),
    ]
    return {
        "description": (
            "Reference values for the stories260k model (transformers LlamaForCausalLM). "
            "Perplexity protocol: tokens = [BOS] + sp.encode(whole file as one string); "
            "non-overlapping windows of seq_len (remainder dropped), each evaluated "
            "independently from position 0; positions 1..seq_len-1 of each window are "
            "scored; perplexity = exp(mean NLL); tokens_scored = windows*(seq_len-1)."
        ),
        "generator": "scripts/reference/make_references.py",
        "versions": versions(),
        "model_path": rel(model_dir),
        "bos_id": bos,
        "tinystories_path": rel(tiny_path),
        "tinystories_total_tokens_with_bos": len(tiny_tokens),
        "wikitext2_valid_path": rel(wiki_path),
        "wikitext2_valid_total_tokens_with_bos": len(wiki_tokens),
        "wikitext2_valid_limit": "first %d windows of seq_len %d only"
                                 % (WIKITEXT_MAX_WINDOWS, WIKITEXT_SEQ_LEN),
        "perplexity": results,
        "logits": {
            "description": (
                "'values': float64 logits of the 'float64' variant (transformers in "
                "float64 with its float32 islands removed; matches an independent NumPy "
                "forward to max_abs_diff_numpy_vs_transformers_float64) for input_ids = "
                "[BOS] + ids[:15] of the TinyStories stream (the first %d-token window, "
                "run as one sequence), positions 0..%d, row-major [position][vocab]. "
                "'values_transformers_stock_float64': the same from stock transformers "
                "(dtype=float64), rounded to 10 significant digits." %
                (LOGITS_WINDOW, LOGITS_POSITIONS - 1)),
            "input_ids": ids16,
            "positions": LOGITS_POSITIONS,
            "vocab_size": int(lg64.shape[1]),
            "values": [[float(v) for v in row] for row in lg64[:LOGITS_POSITIONS]],
            "values_transformers_stock_float64": [
                [float("%.10g" % v) for v in row]
                for row in lg["float64_transformers_stock"][:LOGITS_POSITIONS]],
            "argmax": [int(np.argmax(row)) for row in lg64[:LOGITS_POSITIONS]],
            "max_abs_diff_numpy_vs_transformers_float64": np_diff,
            "max_abs_diff_numpy_vs_transformers_float64_512_window": np_diff512,
            "max_abs_diff_stock_float64_vs_float64": stock_diff,
            "max_abs_diff_float32_vs_float64": f32_diff,
        },
        "loading": {
            "safetensors_keys": len(keys),
            "has_lm_head_weight": has_lm_head,
            "per_dtype": load_notes,
        },
        "notes": notes,
    }


def dump_json(obj, indent=0):
    """JSON with one key per line but lists of numbers kept on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = ["%s %s: %s" % (pad, json.dumps(k), dump_json(v, indent + 1))
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}" + ("\n" if indent == 0 else "")
    if isinstance(obj, list):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
            return json.dumps(obj)
        items = ["%s %s" % (pad, dump_json(v, indent + 1)) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]" if obj else "[]"
    return json.dumps(obj, ensure_ascii=True)


def versions():
    import safetensors
    import transformers
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentencepiece": spm.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    try:
        import google.protobuf
        v["protobuf"] = google.protobuf.__version__
    except Exception:
        pass
    return v


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.abspath(os.path.join(here, "..", ".."))
    default_shared = os.path.join(repo, "..", "shared")
    if not os.path.isdir(default_shared):
        default_shared = "/work/shared"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=default_shared)
    ap.add_argument("--out", default=os.path.join(repo, "tests", "data"))
    args = ap.parse_args()
    shared = os.path.abspath(args.shared)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    def rel(p):
        # Paths recorded relative to the shared/ directory, as "shared/...".
        return "shared/" + os.path.relpath(os.path.abspath(p), shared)

    os.makedirs(args.out, exist_ok=True)
    tok = make_tokenizer_reference(shared, rel)
    mod = make_model_reference(shared, rel)
    for name, obj in (("tokenizer_reference.json", tok),
                      ("stories260k_reference.json", mod)):
        path = os.path.join(args.out, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(dump_json(obj))
        size = os.path.getsize(path)
        print("wrote %s (%d bytes)" % (path, size))
        assert size < 200 * 1024, "%s is too large" % path


if __name__ == "__main__":
    sys.exit(main())
