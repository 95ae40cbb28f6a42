#!/usr/bin/env python3
"""Generate the tiny OPT test model and its reference values for the qaas C++ tests.

What it makes:

  tests/data/tiny-opt/            (the whole directory is kept under 500 KB)
      A byte-level BPE tokenizer (GPT-2 pre-tokenizer and decoder, 400 ids:
      <s> <pad> </s> <unk> at 0..3 as in OPT, the 256 byte symbols, 140
      merges) trained with the `tokenizers` package on the TinyStories sample,
      saved both as tokenizer.json (+ tokenizer_config.json, written by
      transformers' GPT2TokenizerFast) and as vocab.json + merges.txt; and a
      random OPTForCausalLM (hidden 64, ffn 128, 2 layers, 4 heads, 128
      positions, tied lm_head) in float32 safetensors.  The weights are drawn
      with a fixed seed at scales chosen so that every parameter matters
      (biases and LayerNorm affine parameters are far from 0 / 1) and the
      logits span several units.

  tests/data/opt_reference.json
      * tokenizer: for a list of texts (stored in the file) the ids of
        encode(text, add_special_tokens=False) and with add_special_tokens=True,
        from transformers' AutoTokenizer loaded (a) from the directory with
        tokenizer.json and (b) from a directory holding only vocab.json,
        merges.txt and tokenizer_config.json; the bos/eos ids; and the
        encoding of the whole TinyStories sample file summarised as number of
        ids, first/last 50 ids and an FNV-1a 64 hash (as in
        make_references.py).
      * model: float64 logits of the first 8 positions of a 16-token input
        ([BOS] + first 15 ids of the TinyStories stream), their argmax, and the
        perplexity of the TinyStories sample at seq_len 128, first 8 windows,
        under the protocol of shared/data/README.md: tokens = [BOS] +
        encode(whole file), BOS = the tokenizer's bos (</s>, id 2),
        non-overlapping windows, positions 1..127 of each window scored,
        perplexity = exp(mean NLL).  In float64 and in float32.

Float64 reference: transformers' eager attention computes its softmax in
float32 even for a float64 model, so the float64 model runs with
attn_implementation="sdpa" (PyTorch's CPU SDPA stays in float64).  The logits
are cross-checked against an independent NumPy float64 forward written from
the OPT definition (learned positions at offset 2, pre-LayerNorm, q scaled by
head_dim^-0.5, ReLU MLP, final LayerNorm, tied head).

How to run (from the repository root, CPU only, takes a few seconds):

    /tmp/refenv/bin/pip install torch transformers tokenizers safetensors numpy
    /tmp/refenv/bin/python scripts/reference/make_opt_references.py \
        [--shared ../shared] [--out tests/data]

Package versions this was last run with are recorded in the JSON ("versions").
"""

import argparse
import json
import math
import os
import platform
import shutil
import tempfile

import numpy as np
import tokenizers
import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SEED = 20240601
VOCAB_SIZE = 400
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in OPT
BOS = "</s>"
SEQ_LEN = 128
MAX_WINDOWS = 8
LOGITS_WINDOW = 16
LOGITS_POSITIONS = 8
HEAD_TAIL = 50
MAX_DIR_BYTES = 500 * 1024

TEXTS = [
    ("hello_world", "Hello world"),
    ("empty", ""),
    ("ascii_sentence", "Once upon a time, there was a little dog named Max. He liked to run!"),
    ("contractions", "don't I'll we're they've I'm he'd it's"),
    ("contractions_upper_and_odd", "DON'T 'S 's's'''s x'd y'lls rock'n'roll"),
    ("numbers", "In 2024, 3.14159 and 1,000,000 apples cost $12.50 (x2)"),
    ("multiple_spaces", "multiple   spaces  here    and   "),
    ("leading_spaces", "   leading spaces"),
    ("only_spaces", "     "),
    ("newlines_tabs", "line one\nline two\n\n\tindented\r\nend\n"),
    ("space_before_newline", "a \nb  \n\n c"),
    ("punctuation", "Hello!!! ... (yes) -- \"quoted\" 'single' a+b=c; #tag @user"),
    ("unicode", "naïve café 日本語 🙂"),
    ("unicode_categories", "Ünïcödé — “q” ½ ٣٤ x\u00a0y\u3000z\u2028w Ωμέγα 𝟘𝟙 ⅷ"),
    ("unicode_space_then_letter", "a\u00a0b \u00a0c\u2003 d"),
    ("special_tokens_in_text", "x</s>y <pad> <s> <unk>z</s></s>"),
    ("story", "Lily and Ben went to the park. They saw a big red ball.\n\n"
              "\"Can I play?\" asked Ben. Lily said, \"Yes, let's play together!\""),
]


def read_text(path):
    # newline="" keeps the file's bytes-as-text exactly (no \r\n translation).
    with open(path, "r", encoding="utf-8", newline="") as f:
        return f.read()


def fnv1a64_ids(ids):
    """FNV-1a 64-bit over the ids, each as 4 bytes little-endian uint32."""
    h = 0xCBF29CE484222325
    for t in ids:
        for b in int(t).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "0x%016x" % h


def train_tokenizer(text):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i
    return tok


def save_tokenizer(tok, out_dir):
    fast = transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS,
                                          unk_token=BOS, pad_token="<pad>", add_bos_token=True)
    fast.save_pretrained(out_dir)
    tok.model.save(out_dir)  # vocab.json + merges.txt
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)


def init_weights(model):
    """Draws every parameter so that each one visibly matters in the output."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "layer_norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "embed_positions" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:  # linear weights [out, in]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def make_model(out_dir):
    cfg = transformers.OPTConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=SEQ_LEN, do_layer_norm_before=True,
        word_embed_proj_dim=64, activation_function="relu", enable_bias=True,
        layer_norm_elementwise_affine=True, dropout=0.0, attention_dropout=0.0,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(SEED)
    model = transformers.OPTForCausalLM(cfg).to(torch.float32).eval()
    init_weights(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(out_dir, extra)
        if os.path.exists(p):
            os.remove(p)


def load_model(model_dir, dtype, attn):
    model = transformers.OPTForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                        attn_implementation=attn)
    return model.eval()


def numpy_forward(st_path, cfg, ids):
    """Independent float64 OPT forward (pre-LayerNorm, tied head)."""
    W = {}
    with safe_open(st_path, "np") as f:
        for k in f.keys():
            W[k] = f.get_tensor(k).astype(np.float64)
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    hd = H // nh
    T = len(ids)

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * W[p + ".weight"] + W[p + ".bias"]

    def lin(x, p):
        return x @ W[p + ".weight"].T + W[p + ".bias"]

    d = "model.decoder."
    h = W[d + "embed_tokens.weight"][ids] + W[d + "embed_positions.weight"][np.arange(T) + 2]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = d + "layers.%d." % l
        x = ln(h, p + "self_attn_layer_norm")
        q = (lin(x, p + "self_attn.q_proj") * hd ** -0.5).reshape(T, nh, hd).transpose(1, 0, 2)
        k = lin(x, p + "self_attn.k_proj").reshape(T, nh, hd).transpose(1, 0, 2)
        v = lin(x, p + "self_attn.v_proj").reshape(T, nh, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(T, H)
        h = h + lin(o, p + "self_attn.out_proj")
        x = ln(h, p + "final_layer_norm")
        h = h + lin(np.maximum(lin(x, p + "fc1"), 0.0), p + "fc2")
    h = ln(h, d + "final_layer_norm")
    lm = W["lm_head.weight"] if "lm_head.weight" in W else W[d + "embed_tokens.weight"]
    return h @ lm.T


@torch.no_grad()
def window_nll(model, tokens, seq_len, max_windows):
    available = len(tokens) // seq_len
    n = min(available, max_windows)
    total, count = 0.0, 0
    for w in range(n):
        x = torch.tensor([tokens[w * seq_len:(w + 1) * seq_len]], dtype=torch.long)
        logp = torch.log_softmax(model(input_ids=x).logits[0], dim=-1)
        nll = -logp[:-1].gather(1, x[0, 1:, None])[:, 0]
        total += float(nll.to(torch.float64).sum())
        count += seq_len - 1
    return {"windows": n, "windows_available": available, "tokens_scored": count,
            "nll_sum": total, "mean_nll": total / count, "perplexity": math.exp(total / count)}


def tokenizer_form(tok_dir, text_file):
    t = transformers.AutoTokenizer.from_pretrained(tok_dir)
    cases = []
    for name, text in TEXTS:
        cases.append({"name": name, "text": text,
                      "ids": t(text, add_special_tokens=False)["input_ids"],
                      "ids_with_special_tokens": t(text, add_special_tokens=True)["input_ids"]})
    ids = t(text_file, add_special_tokens=False)["input_ids"]
    return t, {
        "files": sorted(os.listdir(tok_dir)),
        "loaded_as": type(t).__name__,
        "bos_id": t.bos_token_id,
        "eos_id": t.eos_token_id,
        "vocab_size": len(t),
        "cases": cases,
        "full_file": {"file_utf8_bytes": len(text_file.encode("utf-8")), "num_ids": len(ids),
                      "first_ids": ids[:HEAD_TAIL], "last_ids": ids[-HEAD_TAIL:],
                      "fnv1a64": fnv1a64_ids(ids)},
    }, ids


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser()
    default_shared = os.path.join(os.path.dirname(root), "shared")
    if not os.path.isdir(default_shared):
        default_shared = "/work/shared"
    ap.add_argument("--shared", default=default_shared)
    ap.add_argument("--out", default=os.path.join(root, "tests/data"))
    args = ap.parse_args()

    text = read_text(os.path.join(args.shared, "data/tinystories/valid-sample.txt"))
    model_dir = os.path.join(args.out, "tiny-opt")
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(model_dir)

    save_tokenizer(train_tokenizer(text), model_dir)
    make_model(model_dir)
    dir_bytes = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    print("tiny-opt: %s, %d bytes" % (sorted(os.listdir(model_dir)), dir_bytes))
    assert dir_bytes < MAX_DIR_BYTES

    # Tokenizer: the tokenizer.json form, and vocab.json + merges.txt alone.
    forms = {}
    tok_json, forms["tokenizer.json"], stream_ids = tokenizer_form(model_dir, text)
    with tempfile.TemporaryDirectory() as d:
        for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(os.path.join(model_dir, f), d)
        _, forms["vocab.json+merges.txt"], ids2 = tokenizer_form(d, text)
        forms["vocab.json+merges.txt"]["files"] = ["merges.txt", "tokenizer_config.json",
                                                   "vocab.json"]
    assert ids2 == stream_ids
    bos = tok_json.bos_token_id
    assert bos == 2

    # Model.
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    st_path = os.path.join(model_dir, "model.safetensors")
    with safe_open(st_path, "pt") as f:
        keys = sorted(f.keys())
    assert "lm_head.weight" not in keys, "expected a tied head"
    m64 = load_model(model_dir, torch.float64, "sdpa")
    m32 = load_model(model_dir, torch.float32, "eager")
    assert m64.lm_head.weight.data_ptr() == m64.model.decoder.embed_tokens.weight.data_ptr()

    tokens = [bos] + stream_ids
    ids16 = tokens[:LOGITS_WINDOW]
    with torch.no_grad():
        lg64 = m64(input_ids=torch.tensor([ids16])).logits[0].numpy()
        lg32 = m32(input_ids=torch.tensor([ids16])).logits[0].to(torch.float64).numpy()
    np_diff = float(np.max(np.abs(numpy_forward(st_path, cfg, ids16) - lg64)))
    f32_diff = float(np.max(np.abs(lg32 - lg64)))
    print("logits: max|f64 - numpy| = %.3e, max|f32 - f64| = %.3e, max|logit| = %.3f"
          % (np_diff, f32_diff, float(np.max(np.abs(lg64)))))
    assert np_diff < 1e-10, "independent NumPy forward disagrees with transformers"
    w0 = tokens[:SEQ_LEN]
    with torch.no_grad():
        lw = m64(input_ids=torch.tensor([w0])).logits[0].numpy()
    np_diff128 = float(np.max(np.abs(numpy_forward(st_path, cfg, w0) - lw)))
    assert np_diff128 < 1e-10

    ppl = {"float64": window_nll(m64, tokens, SEQ_LEN, MAX_WINDOWS),
           "float32": window_nll(m32, tokens, SEQ_LEN, MAX_WINDOWS)}
    for k, r in ppl.items():
        print("perplexity seq_len=%d first %d windows %s: %.12f (scored %d)"
              % (SEQ_LEN, MAX_WINDOWS, k, r["perplexity"], r["tokens_scored"]))

    ref = {
        "description": "Reference values for tests/data/tiny-opt; see "
                       "scripts/reference/make_opt_references.py.",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": np.__version__},
        "tokenizer": {"bos_token": BOS, "bos_id": bos, "vocab_size": VOCAB_SIZE, "forms": forms},
        "model": {
            "dir": "tests/data/tiny-opt",
            "dir_bytes": dir_bytes,
            "tensor_names": keys,
            "logits": {
                "input_ids": ids16,
                "positions": LOGITS_POSITIONS,
                "values": lg64[:LOGITS_POSITIONS].tolist(),
                "argmax": [int(i) for i in lg64[:LOGITS_POSITIONS].argmax(-1)],
                "float64_setup": "float64 weights, attn_implementation=sdpa (eager computes "
                                 "its softmax in float32)",
                "max_abs_diff_numpy_float64": np_diff,
                "max_abs_diff_numpy_float64_first_window_128": np_diff128,
                "max_abs_diff_transformers_float32": f32_diff,
            },
            "perplexity": {
                "protocol": "[BOS] + encode(whole TinyStories sample), BOS = </s> (id 2), "
                            "non-overlapping windows of seq_len, first max_windows windows, "
                            "positions 1..seq_len-1 scored, exp(mean NLL)",
                "seq_len": SEQ_LEN,
                "max_windows": MAX_WINDOWS,
                "num_tokens": len(tokens),
                **ppl,
            },
        },
    }
    out = os.path.join(args.out, "opt_reference.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote %s (%d bytes)" % (out, os.path.getsize(out)))


if __name__ == "__main__":
    main()
