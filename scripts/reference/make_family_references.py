#!/usr/bin/env python3
"""Tiny random models of the LLaMA-like families and Transformers' logits for them.

What it makes:

  tests/data/families/<case>/config.json, model.safetensors (float32)
      One small random model per case, made by Transformers' own
      <Family>ForCausalLM from a config that switches every feature of the
      family ON at the test's lengths: a sliding window shorter than the test
      sequence, a RoPE scaling that changes the result there, q/k/v (and o)
      biases, Qwen3's q/k norms, explicit head_dim, tied and untied heads.
      Weights are drawn with a fixed seed at scales where every parameter
      matters (norm weights far from 1, biases far from 0).

  tests/data/family_reference.json
      Per case: the input ids (T = 24 tokens) and Transformers' float64 logits
      for positions 12..23 ([12][vocab]: past the sliding windows and the
      original contexts of the RoPE scalings), with the features the case
      exercises and the package versions. Vocabulary 320, so that a
      byte-fallback tokenizer fits and the models also run whole jobs.

Float64: the model is converted with .double() and run with
attn_implementation="sdpa" (eager attention computes its softmax in float32);
Gemma 2 has no sdpa path (its soft-cap), so it runs eager: its reference
carries float32 softmax rounding (~1e-7 relative), far inside the test's 1e-5.
RoPE's cos/sin are computed in float32 by Transformers even then, as qaas
computes them.

How to run (from the repository root, CPU only, a few seconds):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch transformers safetensors numpy
    /tmp/refenv/bin/python scripts/reference/make_family_references.py [--out tests/data]
"""

import argparse
import json
import os
import platform
import shutil

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

T = 24
VOCAB = 320  # room for a byte-fallback tokenizer, so the models also run whole jobs
FIRST = 12    # logits are stored for positions FIRST..T-1 (past the window and the original contexts)

BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2, hidden_act="silu")

# (case, model_type, config overrides, features exercised)
CASES = [
    ("llama3", "llama",
     dict(hidden_size=48, head_dim=16, max_position_embeddings=128, tie_word_embeddings=True,
          attention_bias=True, mlp_bias=True,
          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=16)),
     "rope llama3 (original context 16 < T), tied embeddings, head_dim 16 != hidden/heads, "
     "attention (q/k/v/o) and MLP biases"),
    ("llama-linear", "llama",
     dict(max_position_embeddings=64, rope_scaling=dict(rope_type="linear", factor=4.0)),
     "rope linear x4"),
    ("llama-dynamic", "llama",
     dict(max_position_embeddings=16, rope_scaling=dict(rope_type="dynamic", factor=2.0)),
     "rope dynamic NTK x2, T 24 > max_position_embeddings 16 (frequencies grown for T)"),
    ("llama-yarn", "llama",
     dict(max_position_embeddings=64,
          rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, beta_fast=8.0,
                            beta_slow=1.0)),
     "rope yarn x4 (attention factor 1 + 0.1 ln 4), ramp between beta 8 and 1"),
    ("llama-longrope", "llama",
     dict(max_position_embeddings=64,
          rope_scaling=dict(rope_type="longrope", original_max_position_embeddings=16,
                            short_factor=[1.0, 1.1, 1.3, 1.7], long_factor=[1.0, 2.0, 3.5, 6.0])),
     "rope longrope, T 24 > original 16 (long factors), attention factor from 64/16"),
    ("mistral", "mistral",
     dict(max_position_embeddings=128, sliding_window=8),
     "sliding window 8 < T on every layer, untied"),
    ("qwen2", "qwen2",
     dict(num_hidden_layers=3, max_position_embeddings=128, use_sliding_window=True, sliding_window=8,
          max_window_layers=1, tie_word_embeddings=False),
     "q/k/v biases (o none), sliding window 8 on layers >= max_window_layers 1 (of 3), untied"),
    ("qwen3", "qwen3",
     dict(head_dim=16, max_position_embeddings=64, tie_word_embeddings=True, use_sliding_window=True,
          sliding_window=8, max_window_layers=1,
          rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)),
     "q/k RMSNorm per head before RoPE, head_dim 16, tied, sliding window 8 on layer 1, rope yarn x4"),
    ("gemma2", "gemma2",
     dict(num_hidden_layers=3, head_dim=16, max_position_embeddings=128, hidden_activation="gelu_pytorch_tanh",
          query_pre_attn_scalar=24, sliding_window=8, attn_logit_softcapping=1.0, final_logit_softcapping=1.5,
          tie_word_embeddings=True),
     "(1+w) RMSNorms, post-attention and pre/post-feedforward norms, GELU-tanh, embeddings x sqrt(32), "
     "query_pre_attn_scalar 24 != head_dim 16, attention soft-cap 1.0 and final soft-cap 1.5 (both bind), "
     "sliding window 8 on layers 0 and 2 (the default alternation), tied"),
    ("gemma3", "gemma3_text",
     dict(num_hidden_layers=3, head_dim=16, max_position_embeddings=128, hidden_activation="gelu_pytorch_tanh",
          query_pre_attn_scalar=16, sliding_window=8,
          layer_types=["sliding_attention", "full_attention", "sliding_attention"],
          rope_parameters={"full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1e6),
                           "sliding_attention": dict(rope_type="default", rope_theta=1e4)},
          tie_word_embeddings=True),
     "(1+w) RMSNorms incl. per-head q/k norms, sandwich norms, GELU-tanh, embeddings x sqrt(32), local RoPE "
     "(theta 1e4) on the sliding layers 0 and 2 (window 8), global RoPE (theta 1e6, linear x4) on layer 1, tied"),
    ("phi3", "phi3",
     dict(hidden_size=64, max_position_embeddings=64, original_max_position_embeddings=16, pad_token_id=0,
          partial_rotary_factor=0.75, sliding_window=8, tie_word_embeddings=True,
          rope_scaling=dict(rope_type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0, 2.5, 3.0],
                            long_factor=[1.0, 2.0, 3.0, 5.0, 8.0, 12.0])),
     "fused qkv_proj and gate_up_proj, partial rotary 0.75 of head_dim 16 (12 channels), longrope with the "
     "top-level original context 16 < T, sliding window 8, tied (as Phi-4-mini)"),
    ("phi3-mini", "phi3",
     dict(max_position_embeddings=64, original_max_position_embeddings=64, sliding_window=8, pad_token_id=0,
          tie_word_embeddings=False),
     "fused qkv_proj and gate_up_proj, full rotary, sliding window 8, untied (as Phi-3-mini)"),
    ("mixtral", "mixtral",
     dict(intermediate_size=48, max_position_embeddings=128, sliding_window=8, num_local_experts=4,
          num_experts_per_tok=2),
     "mixture of 4 experts, top-2 renormalized (block_sparse_moe.experts.<j>.w1/w3/w2), sliding window 8"),
    ("qwen2-moe", "qwen2_moe",
     dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
          norm_topk_prob=False, max_position_embeddings=128, tie_word_embeddings=False),
     "mixture of 4 experts, top-2 not renormalized, shared expert behind a sigmoid gate, q/k/v biases"),
    ("qwen3-moe", "qwen3_moe",
     dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
          max_position_embeddings=128),
     "mixture of 4 experts, top-2 renormalized (norm_topk_prob), q/k norms, head_dim 16"),
]


def randomize(model, seed, norm_offset):
    """Draws every parameter so that it matters: weights ~N(0, 0.15), norm
    factors 1 + U(-0.5, 0.5) (Gemma stores w for the factor 1 + w), biases
    ~N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 - norm_offset + (torch.rand(p.shape, generator=g) - 0.5))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data")
    args = ap.parse_args()
    root = os.path.join(args.out, "families")
    shutil.rmtree(root, ignore_errors=True)
    results = []
    for i, (case, model_type, overrides, features) in enumerate(CASES):
        cfg = dict(BASE)
        cfg.update(overrides)
        config = AutoConfig.for_model(model_type, **cfg)
        torch.manual_seed(1000 + i)
        attn = "eager" if model_type == "gemma2" else "sdpa"
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
        randomize(model, 2000 + i, 1.0 if model_type.startswith("gemma") else 0.0)
        model.eval()
        out_dir = os.path.join(root, case)
        model.save_pretrained(out_dir, safe_serialization=True)
        ids = torch.randint(3, VOCAB, (1, T), generator=torch.Generator().manual_seed(3000 + i))
        # Load back what was saved (the test reads the same files), in float64.
        # MoE experts through the eager loop (the grouped-mm path has no float64).
        extra = dict(experts_implementation="eager") if "experts" in features else {}
        loaded = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation=attn, dtype=torch.float64, **extra)
        loaded.eval()
        with torch.no_grad():
            out64 = loaded(ids, output_router_logits=True) if "experts" in features else loaded(ids)
            logits64 = out64.logits[0]
            model32 = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation=attn,
                                                           dtype=torch.float32, **extra).eval()
            logits32 = model32(ids).logits[0].double()
        routing = None
        if "experts" in features:
            # Per layer, each token's top-k experts (as the router orders
            # them); every expert must be chosen by some token.
            k = config.num_experts_per_tok
            routing = [torch.topk(torch.softmax(r.double(), -1), k, -1).indices.tolist()
                       for r in out64.router_logits]
            for layer in routing:
                used = {e for token in layer for e in token}
                n = getattr(config, "num_local_experts", None) or config.num_experts
                assert used == set(range(n)), f"{case}: experts {used} of {n} used"
        results.append({
            "case": case,
            "routing": routing,
            "model_type": model_type,
            "features": features,
            "ids": ids[0].tolist(),
            "first_position": FIRST,
            "logits": [[float("%.10g" % v) for v in row] for row in logits64[FIRST:].tolist()],
            "float32_max_rel_diff": float((logits32 - logits64).abs().max() / logits64.abs().max()),
        })
        print(f"{case}: logits span {logits64.min():.3f}..{logits64.max():.3f}, "
              f"float32 vs float64 max rel diff {results[-1]['float32_max_rel_diff']:.2e}")
    with open(os.path.join(args.out, "family_reference.json"), "w") as f:
        json.dump({"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                "python": platform.python_version()},
                   "T": T, "cases": results}, f, indent=None, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
