#!/usr/bin/env python3
"""The one evaluator of the peer benchmark: perplexity of a model directory on the benchmark's
evaluation windows (eval.npy), with Transformers' LlamaForCausalLM on the CPU in float32.

  evaluate.py --model DIR --tokens eval.npy --out RESULT.json [--label K=V ...]

How each kind of directory is loaded (the forward is Transformers' in every case):
  - no quantization_config (the unquantized model): from_pretrained in float32.
  - compressed-tensors (qaas's and llm-compressor's outputs): from_pretrained with
    CompressedTensorsConfig(dequantize=True), i.e. the compressed-tensors package
    decompresses the weights into float32 Linear weights on load. Where the checkpoint's
    scheme has input activations (W8A8), compressed-tensors fake-quantizes every quantized
    Linear's input on each forward: int8, per token, dynamic, symmetric, scale =
    absmax / 127.5, codes clamped to [-128, 127] (its convention; vLLM's kernels use
    absmax / 127). The same code runs for both tools' W8A8 outputs; the result file says how
    many Linears quantize their inputs and checks on the first one that its output changes
    when compressed-tensors' quantization is disabled.
  - GPTQ checkpoint layout (GPTQModel's output: qweight/qzeros/scales/g_idx, int32 words,
    checkpoint_format "gptq", whose stored zero points are one less than the real ones, or
    "gptq_v2"): dequantized here, W[:, i] = (q[:, i] - zero[g_idx[i]]) * scale[g_idx[i]] in
    float32 from the float16 scales the layout stores, into a plain LlamaForCausalLM.

Perplexity: exp(mean negative log-likelihood over every predicted position of every window)
(each window predicts its tokens 1..L-1 from the ones before; windows are independent).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def load_safetensors(model_dir):
    from safetensors.torch import load_file

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        out.update(load_file(os.path.join(model_dir, name)))
    return out


def unpack_int32(words, bits, dim):
    """Unpacks int32 words holding 32/bits codes each, lowest bits first, along `dim`."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    w = words.to(torch.int32)
    if dim == 0:
        codes = (w.unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)
        return codes.reshape(w.shape[0] * per, w.shape[1])
    codes = (w.unsqueeze(2) >> shifts.view(1, 1, per)) & ((1 << bits) - 1)
    return codes.reshape(w.shape[0], w.shape[1] * per)


def dequantize_gptq(tensors, qc):
    bits = int(qc["bits"])
    if 32 % bits:
        raise ValueError(f"GPTQ layout with {bits}-bit codes is not supported here")
    v1 = qc.get("checkpoint_format", "gptq") == "gptq"
    dense = {}
    prefixes = [k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")]
    for p in prefixes:
        q = unpack_int32(tensors.pop(p + ".qweight"), bits, 0)  # [in, out]
        zeros = unpack_int32(tensors.pop(p + ".qzeros"), bits, 1).to(torch.float32)  # [groups, out]
        if v1:
            zeros = zeros + 1
        scales = tensors.pop(p + ".scales").to(torch.float32)  # [groups, out]
        in_features = q.shape[0]
        g_idx = tensors.pop(p + ".g_idx", None)
        if g_idx is None:
            g_idx = torch.arange(in_features) // int(qc["group_size"])
        g_idx = g_idx.long()
        w = (q.to(torch.float32) - zeros[g_idx]) * scales[g_idx]  # [in, out]
        dense[p + ".weight"] = w.t().contiguous()
        if p + ".bias" in tensors:
            dense[p + ".bias"] = tensors.pop(p + ".bias").to(torch.float32)
    for k, v in tensors.items():
        dense[k] = v.to(torch.float32) if v.is_floating_point() else v
    return dense


def load_model(model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = read_config(model_dir)
    qc = cfg.get("quantization_config")
    info = {"format": "float", "act_quant": "none"}
    if qc is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    elif qc.get("quant_method") == "compressed-tensors":
        from transformers.utils.quantization_config import CompressedTensorsConfig

        info["format"] = "compressed-tensors " + str(qc.get("format"))
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, device_map="cpu",
            quantization_config=CompressedTensorsConfig(dequantize=True))
        info.update(check_act_quant(model))
    elif qc.get("quant_method") == "gptq":
        from transformers import LlamaForCausalLM

        info["format"] = f"gptq ({qc.get('checkpoint_format', 'gptq')}), dequantized to float32"
        config = AutoConfig.from_pretrained(model_dir)
        config.quantization_config = None
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = LlamaForCausalLM(config).to(torch.float32)
        state = dequantize_gptq(load_safetensors(model_dir), qc)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"{model_dir}: GPTQ checkpoint tensors do not match the model: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.tie_weights()
    else:
        raise ValueError(f"{model_dir}: unsupported quant_method {qc.get('quant_method')!r}")
    model.eval()
    return model, info


def check_act_quant(model):
    """Which Linears' inputs compressed-tensors quantizes, and proof on one that it does."""
    quantized = []
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if isinstance(module, torch.nn.Linear) and scheme is not None and scheme.input_activations is not None:
            quantized.append((name, module, scheme.input_activations))
    if not quantized:
        return {"act_quant": "none"}
    from compressed_tensors.quantization import disable_quantization, enable_quantization

    name, module, args = quantized[0]
    x = torch.randn(2, 7, module.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on = module(x)
        module.apply(disable_quantization)
        off = module(x)
        module.apply(enable_quantization)
        again = module(x)
    if not torch.equal(on, again) or torch.equal(on, off):
        raise RuntimeError(f"compressed-tensors does not quantize the inputs of {name} as its scheme says")
    kind = f"int{args.num_bits}" if str(args.type).endswith("int") else f"{args.type}{args.num_bits}"
    return {"act_quant": f"{kind} per {args.strategy.value if hasattr(args.strategy, 'value') else args.strategy}, "
                         f"{'dynamic' if args.dynamic else 'static'}, "
                         f"{'symmetric' if args.symmetric else 'asymmetric'} (compressed-tensors)",
            "act_quant_linears": len(quantized),
            "act_quant_check": f"{name}: output changes by {(on - off).abs().max().item():.3g} with it disabled"}


@torch.no_grad()
def perplexity(model, windows, batch_size):
    total_nll = 0.0
    total = 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i:i + batch_size]
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.double().item()
        total += ids[:, 1:].numel()
    return math.exp(total_nll / total), total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--label", action="append", default=[])
    args = p.parse_args()

    t0 = time.perf_counter()
    model, info = load_model(args.model)
    t1 = time.perf_counter()
    windows = torch.from_numpy(np.load(args.tokens)).long()
    ppl, tokens = perplexity(model, windows, args.batch_size)
    t2 = time.perf_counter()
    result = {"model": args.model, "perplexity": ppl, "predicted_tokens": tokens,
              "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
              "load_s": t1 - t0, "eval_s": t2 - t1, **info}
    for kv in args.label:
        k, _, v = kv.partition("=")
        result[k] = v
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    extra = f", activations: {info['act_quant']}" if info["act_quant"] != "none" else ""
    print(f"perplexity {ppl:.4f} over {tokens} tokens ({info['format']}{extra}): {args.model}")


if __name__ == "__main__":
    sys.exit(main())
