#!/usr/bin/env python3
"""Verify a qaas compressed-tensors artifact with the compressed-tensors library and Transformers (CPU).

usage: verify_compressed_tensors.py --out OUTDIR [--model ORIGINAL_MODEL_DIR] [--eval-text FILE]
                                    [--logit-windows N] [--act-ppl-tol X] [--json FILE] [--table-header]
                                    [--label TEXT]

OUTDIR is a `qaas-quantize --format compressed-tensors` output directory: artifact/ (config.json,
model.safetensors, tokenizer), report.json, checkpoints/state-<i>.safetensors (layer i as the job
evaluated it: every linear's dequantized float32 weight, the norms, the activation quantizers).
--model and --eval-text default to what report.json names. Dense LLaMA-style decoders only
(q/k/v/o/gate/up/down, the order of quant/model/llama.cc's LlamaLinearNames).

 1. Library decompression. Every quantized module of artifact/ (a `weight_packed`, or a `weight`
    with a `weight_scale`) is decompressed by the compressed-tensors compressor of its config
    group's format, `BaseCompressor.get_value_from_registry(format).decompress(tensors, scheme)`,
    the call Transformers' loader makes (transformers/integrations/compressed_tensors.py), and
    compared in float32 with the job's evaluated weight: bit-identical modules n/N, max|d|.
    Where the library raises, an independent decoder written here from the format's definition
    (pack-quantized / int-quantized / float-quantized / mxfp4-pack-quantized / mxfp8-quantized)
    tells whether the stored bits are ours and only the config cannot express them.
    Also: the artifact's norms equal the evaluated ones, the embeddings / final norm the original.
 2. Transformers load: `AutoModelForCausalLM.from_pretrained(artifact, device_map="cpu")`, then
    one forward (the default path decompresses on the first forward). If the load or that forward
    raises, its first line is recorded and the model is loaded with
    `CompressedTensorsConfig(dequantize=True)` instead. The loaded weights (decompress_model where
    still compressed) must equal the library's decompression (or, where it raised, ours).
 3. Logits. Reference "ours" = the ORIGINAL model in float32 with every quantized linear's weight
    and every norm replaced by the evaluated ones, and qaas's activation quantization
    (quant/formats/act_quant.cc, number_format.cc: INT per token / static per tensor or channel,
    MX blocks of 32 with the OCP floor(log2(amax)) - emax shared exponent, FP8 per token)
    applied by forward pre-hooks at every quantized linear's input. Compared on the first
    --logit-windows evaluation windows (default 4) with (a) the loaded model as it loads (the
    default path runs compressed-tensors' own activation fake quant: int per token with scale
    absmax/127.5 and codes in [-128, 127] where ours is absmax/127 and +-127; dequantize=True runs
    none), (b) the dense load (dequantize=True) plus our activation hooks; and, for information,
    (c) the dense load plus the library's own activation fake quant (compute_dynamic_scales_and_zp
    + fake_quantize, or the stored input_scale) in float32: it equals (a) where the default path
    works and shows what the library computes where it does not (MX in a float32 model).
    Reported: max|d|, max|d|/max|ref|, top-1 agreement.
 4. Perplexity on the job's windows: [BOS] + SentencePiece(tokenizer.model).encode(whole file),
    consecutive windows of the report's seq_len, the report's window count, NLL summed in float64
    over positions 1..T-1 of each window (quant/eval/perplexity.cc). The original model's
    perplexity computed the same way must match report.json's perplexity_original (validates the
    replication); (a) and (b) are compared with perplexity_quantized.
 5. One markdown table row (--table-header prints the header first); details on stderr.

FAIL (exit 1): a module not bit-identical (or the library cannot decompress it); no load path
works; loaded weights differ from the library's; top-1 agreement of (a) < 0.95 (where (a) runs
activation quantization: the dequantize=True path drops it, so there (b) is judged), or of (b) <
0.95 for schemes with quantized activations; perplexity
relative difference of (a) > 1e-4 for weight-only schemes, or of (b) > --act-ppl-tol (5e-3) for
schemes with quantized activations: HF's and qaas's float32 forwards differ by rounding (weight-only
perplexities agree to ~1e-7), and that flips some activation codes, which moves the perplexity by
up to ~2e-3 on stories260k (an independent plain-torch replica of qaas's forward lands as far);
the original perplexity off by > 1e-4 (the replication of tokens and windows is broken).
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
# ActPoint (quant/formats/act_quant.h) whose quantizer feeds each linear.
ACT_POINT = {"self_attn.q_proj": 0, "self_attn.k_proj": 0, "self_attn.v_proj": 0, "self_attn.o_proj": 1,
             "mlp.gate_proj": 2, "mlp.up_proj": 2, "mlp.down_proj": 3}
WEIGHT_ONLY_PPL_TOL = 1e-4
ORIGINAL_PPL_TOL = 1e-4
TOP1_MIN = 0.95


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def read_safetensors(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def read_artifact_tensors(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(read_safetensors(os.path.join(d, f))[0])
    return out


@contextlib.contextmanager
def quiet(buf):
    """Transformers prints its load reports (and tracebacks of conversions) on stdout/stderr and
    through its logger: all of it goes to buf (searched for the cause of a failed load)."""
    import logging
    from transformers.utils import logging as hf_logging
    root = hf_logging.get_logger()
    saved, level = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(buf)]
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    finally:
        root.handlers, root.level = saved, level


def first_line(e, captured=""):
    msg = str(e).strip().splitlines()
    line = f"{type(e).__name__}: {msg[0] if msg else ''}"
    # The actionable cause is often only in the printed load report.
    cause = [ln.strip() for ln in captured.splitlines()
             if re.match(r"\s*(ValueError|RuntimeError|TypeError|KeyError|AssertionError):", ln)]
    mism = [ln.strip() for ln in captured.splitlines() if "MISMATCH" in ln and "|" in ln]
    if cause and cause[0] not in line:
        line += f" [cause: {cause[0][:160]}]"
    elif mism:
        line += f" [{re.sub(r' +', ' ', mism[0])[:160]}]"
    return line[:400]


# ---------------------------------------------------------------- qaas's number formats (float32 torch)
# name: (is_int, exponent_bits, mantissa_bits, bias, emax, max_value) as quant/formats/number_format.cc
ELEMENTS = {
    "int8": (True, 0, 6, 0, 0, 127.0 / 64.0),
    "int4": (True, 0, 2, 0, 0, 7.0 / 4.0),
    "fp8_e4m3": (False, 4, 3, 7, 8, 448.0),
    "fp8_e5m2": (False, 5, 2, 15, 15, 57344.0),
    "fp6_e3m2": (False, 3, 2, 3, 4, 28.0),
    "fp6_e2m3": (False, 2, 3, 1, 2, 7.5),
    "fp4_e2m1": (False, 2, 1, 1, 2, 6.0),
}
# NumberFormat enum (quant/scheme.h): kNone, kInt, kFp8E4M3, kFp8E5M2, kMxInt, kMxFp
FMT_NONE, FMT_INT, FMT_FP8E4M3, FMT_FP8E5M2, FMT_MXINT, FMT_MXFP = range(6)
# Granularity enum (quant/scheme.h): kDefault, kPerTensor, kPerChannel, kPerGroup, kPerToken, ...
GRAN_PER_TOKEN = 4


def element_of(spec):
    f, bits, eb = spec["format"], spec["bits"], spec.get("exponent_bits", 0)
    if f == FMT_MXINT:
        return {8: "int8", 4: "int4"}[bits]
    if f == FMT_FP8E4M3:
        return "fp8_e4m3"
    if f == FMT_FP8E5M2:
        return "fp8_e5m2"
    if f == FMT_MXFP:
        if bits == 8:
            return "fp8_e5m2" if eb == 5 else "fp8_e4m3"
        if bits == 6:
            return "fp6_e2m3" if eb == 2 else "fp6_e3m2"
        if bits == 4:
            return "fp4_e2m1"
    raise ValueError(f"no element format for {spec}")


def floor_log2(a):
    """floor(log2(a)) of non-negative float32 read off the exponent field (zero/subnormal: -127)."""
    return (a.contiguous().view(torch.int32) >> 23) - 127


def pow2(k):
    """2^k exactly in float32 for integer k in [-149, 127] (subnormals included)."""
    k = k.to(torch.int32)
    normal = (torch.clamp_min(k + 127, 1) << 23)
    sub = torch.ones_like(k) << torch.clamp(k + 149, 0, 22)
    return torch.where(k >= -126, normal, sub).view(torch.float32)


def round_to_element(x, name):
    is_int, _, m, bias, _, maxv = ELEMENTS[name]
    x = x.float()
    if is_int:
        s = float(2 ** m)
        q = torch.round(torch.clamp(x, -maxv, maxv) * s) * (1.0 / s)
        q = torch.where(q == 0, torch.zeros_like(q), q)
    else:
        a = torch.clamp_max(x.abs(), maxv)
        e = torch.clamp_min(floor_log2(a), 1 - bias)
        step = pow2(e - m)
        q = torch.copysign(torch.round(a / step) * step, x)
    return torch.where(torch.isnan(x), x, q)


def fake_quantize_mx(x, name):
    n = x.shape[-1]
    pad = (-n) % 32
    xb = torch.nn.functional.pad(x.float(), (0, pad)).reshape(*x.shape[:-1], (n + pad) // 32, 32)
    emax = ELEMENTS[name][4]
    e = torch.clamp(floor_log2(xb.abs().amax(-1)) - emax, -127, 127)
    el = round_to_element(xb * pow2(-e).unsqueeze(-1), name)
    return (el * pow2(e).unsqueeze(-1)).reshape(*x.shape[:-1], n + pad)[..., :n].contiguous()


class OurActQuant:
    """ActQuantizer::operator() of quant/formats/act_quant.cc."""

    def __init__(self, spec, scale=None, zero=None):
        self.spec, self.scale, self.zero = spec, scale, zero

    @property
    def enabled(self):
        return self.spec["format"] != FMT_NONE

    def describe(self):
        f = self.spec["format"]
        if f == FMT_INT:
            kind = ("static per-tensor" if self.scale.numel() == 1 else "static per-channel") \
                if self.scale is not None else "dynamic per-token"
            return f"int{self.spec['bits']} {'sym' if self.zero is None and self.spec['symmetric'] else 'asym'} {kind}"
        if f in (FMT_MXINT, FMT_MXFP):
            return f"mx {element_of(self.spec)} blocks of 32"
        per = "token" if self.spec.get("granularity") == GRAN_PER_TOKEN else "tensor"
        return f"{element_of(self.spec)} per {per}"

    def __call__(self, x):
        f, bits = self.spec["format"], self.spec["bits"]
        if f == FMT_NONE:
            return x
        if f == FMT_INT:
            if self.scale is not None:
                s = self.scale.to(x.dtype)
                if self.zero is None:
                    qmax = float(2 ** (bits - 1) - 1)
                    return torch.clamp(torch.round(x / s), -qmax, qmax) * s
                qmax = float(2 ** bits - 1)
                z = self.zero.to(x.dtype)
                return (torch.clamp(torch.round(x / s) + z, 0.0, qmax) - z) * s
            if self.spec["symmetric"]:
                qmax = float(2 ** (bits - 1) - 1)
                s = torch.clamp_min(x.abs().amax(-1, keepdim=True) / qmax, 1e-12)
                return torch.clamp(torch.round(x / s), -qmax, qmax) * s
            qmax = float(2 ** bits - 1)
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
            s = torch.clamp_min((hi - lo) / qmax, 1e-12)
            z = torch.round(-lo / s)
            return (torch.clamp(torch.round(x / s) + z, 0.0, qmax) - z) * s
        if f in (FMT_MXINT, FMT_MXFP):
            return fake_quantize_mx(x, element_of(self.spec)).to(x.dtype)
        # FP8: one dynamic scale per token (activations) or per tensor (the KV cache).
        name = element_of(self.spec)
        xf = x.float()
        amax = xf.abs().amax(-1, keepdim=True) if self.spec.get("granularity") == GRAN_PER_TOKEN else xf.abs().max()
        s = torch.clamp_min(amax / ELEMENTS[name][5], 1e-12)
        return (round_to_element(xf / s, name) * s).to(x.dtype)


class LibActQuant:
    """compressed-tensors' own activation fake quant for a config group's input_activations:
    dynamic scales from compute_dynamic_scales_and_zp (int per token: absmax / ((2^b - 1) / 2),
    i.e. 127.5 for 8 bits; MX: its own shared-exponent rule), static ones the stored input_scale;
    then its fake_quantize (int codes clamped to [-2^(b-1), 2^(b-1) - 1])."""

    def __init__(self, args, scale=None, zero=None):
        self.args, self.scale, self.zero = args, scale, zero

    def __call__(self, x):
        from compressed_tensors.quantization.lifecycle.forward import fake_quantize
        from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
        if self.args.dynamic:
            scale, zp = compute_dynamic_scales_and_zp(value=x, args=self.args, module=None)
        else:
            scale, zp = self.scale.to(x.dtype), self.zero
        return fake_quantize(x=x, scale=scale, zero_point=zp, args=self.args)


def library_act_quant(qcfg, art_t, roots):
    out = {}
    for r in roots:
        s = scheme_for(r, qcfg)
        if s is not None and s.input_activations is not None:
            out[r] = LibActQuant(s.input_activations, art_t.get(r + ".input_scale"), art_t.get(r + ".input_zero_point"))
    return out


def add_act_hooks(model, act_quant):
    """act_quant: {module_name: OurActQuant}. Returns the hook handles."""
    handles = []
    for name, q in act_quant.items():
        handles.append(model.get_submodule(name).register_forward_pre_hook(
            lambda mod, args, q=q: (q(args[0]),) + tuple(args[1:])))
    return handles


# ---------------------------------------------------------------- job state (checkpoints/state-<i>)
def load_states(out, num_layers):
    weights, norms, act = {}, {}, {}
    for i in range(num_layers):
        t, meta = read_safetensors(os.path.join(out, "checkpoints", f"state-{i}.safetensors"))
        layout = json.loads(meta["qaas_layer"])
        if len(layout["linears"]) != len(LINEARS):
            raise SystemExit(f"layer {i}: {len(layout['linears'])} linears; only dense LLaMA-style layers are handled")
        p = f"model.layers.{i}."
        for j, n in enumerate(LINEARS):
            weights[p + n] = t[f"linear.{j}.weight"]
        for k, n in enumerate(layout["norms"]):
            norms[p + n] = t[f"norm.{k}"]
        if "act" in layout:
            for n in LINEARS:
                pt = ACT_POINT[n]
                a = layout["act"][pt]
                q = OurActQuant(a["spec"], t.get(f"act.{pt}.scale") if a["scale"] else None,
                                t.get(f"act.{pt}.zero") if a["zero"] else None)
                if q.enabled:
                    act[p + n] = q
            if layout["act"][4]["spec"]["format"] != FMT_NONE:
                raise SystemExit("KV-cache quantization is not replicated here")
    return weights, norms, act


# ---------------------------------------------------------------- 1. library decompression
def scheme_for(module, qcfg):
    from compressed_tensors.utils.match import match_name
    groups = list(qcfg.config_groups.values())
    for s in groups:
        if any(t != "Linear" and match_name(module, t) for t in s.targets):
            return s
    for s in groups:
        if "Linear" in s.targets:
            return s
    return None


def quantized_roots(t):
    return sorted({k.rsplit(".", 1)[0] for k in t
                   if k.endswith(".weight_packed") or (k.endswith(".weight_scale") and k[:-6] in t)})


def unpack_lsb(words, bits, count, word_bits):
    """Elements of a little-endian bit stream along the last dim: words int -> [..., count] unsigned."""
    w = words.to(torch.int64) & ((1 << word_bits) - 1)
    pos = torch.arange(count) * bits
    lo_word, lo_bit = pos // word_bits, pos % word_bits
    v = (w[..., lo_word] >> lo_bit)
    spill = lo_bit + bits > word_bits  # straddles into the next word
    if spill.any():
        nxt = torch.clamp(lo_word + 1, max=w.shape[-1] - 1)
        v = torch.where(spill, v | (w[..., nxt] << (word_bits - lo_bit)), v)
    return v & ((1 << bits) - 1)


FP4_TABLE = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def own_decode(fmt, local, scheme):
    """Independent float32 decoder from the format's definition; ragged last groups allowed."""
    w = scheme.weights
    if fmt in ("mxfp4-pack-quantized", "mxfp8-quantized"):
        sc = local["weight_scale"].to(torch.int32)
        if fmt == "mxfp4-pack-quantized":
            b = local["weight_packed"].to(torch.int64)
            nib = torch.stack([b & 0xF, b >> 4], -1).reshape(b.shape[0], -1)
            vals = FP4_TABLE[nib & 7] * torch.where(nib & 8 > 0, -1.0, 1.0)
        else:
            vals = local["weight"].float()
        scale = pow2(sc - 127).repeat_interleave(32, 1)[:, :vals.shape[1]]
        return vals * scale  # mxfp4 stores no width: an odd one leaves a padding column (cut by the caller)
    if fmt == "float-quantized":  # FP8 E4M3 codes times one scale per channel
        return local["weight"].float() * local["weight_scale"].float()
    out_, in_ = (int(v) for v in local["weight_shape"]) if "weight_shape" in local else local["weight"].shape
    bits = w.num_bits
    half = 1 << (bits - 1)
    if fmt == "pack-quantized":
        q = unpack_lsb(local["weight_packed"], bits, in_, 32) - half
    elif fmt in ("int-quantized", "naive-quantized"):
        q = local["weight"].to(torch.int64)
    else:
        raise ValueError(f"no own decoder for {fmt}")
    scale = local["weight_scale"].float()
    g = w.group_size if w.strategy == "group" else in_
    idx = torch.arange(in_) // g
    if "weight_zero_point" in local:
        zp = local["weight_zero_point"]
        if fmt == "pack-quantized":
            zp = unpack_lsb(zp.t().contiguous(), bits, out_, 32).t() - half
        zp = zp.to(torch.int64)
    else:
        zp = torch.zeros_like(scale, dtype=torch.int64)
    return (q - zp[:, idx]).float() * scale[:, idx]


def check_library(art, qc_raw, ours):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    qcfg = QuantizationConfig.model_validate(qc_raw)
    t = read_artifact_tensors(art)
    roots = quantized_roots(t)
    res = {"modules": len(roots), "identical": 0, "max_abs": 0.0, "errors": {}, "own_identical": 0,
           "own_max_abs": 0.0, "lib": {}, "formats": set(), "lib_dtype": set()}
    for mod in roots:
        s = scheme_for(mod, qcfg)
        fmt = s.format or (qcfg.format if qcfg.format != "mixed-precision" else None)
        res["formats"].add(fmt)
        local = {k[len(mod) + 1:]: v for k, v in t.items()
                 if k.startswith(mod + ".") and k[len(mod) + 1:].startswith("weight")}
        ref = ours[mod]
        try:
            od = own_decode(fmt, local, s)
            if od.shape[0] == ref.shape[0] and od.shape[1] >= ref.shape[1]:
                od = od[:, :ref.shape[1]]
            if od.shape == ref.shape:
                res["own_max_abs"] = max(res["own_max_abs"], (od - ref).abs().max().item())
                res["own_identical"] += int(torch.equal(od, ref))
        except Exception as e:  # noqa: BLE001
            log(f"  [own decode] {mod}: {type(e).__name__}: {e}")
        try:
            w = BaseCompressor.get_value_from_registry(fmt).decompress(dict(local), s)["weight"]
        except Exception as e:  # noqa: BLE001
            res["errors"][mod] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
            continue
        res["lib"][mod] = w
        res["lib_dtype"].add(str(w.dtype).replace("torch.", ""))
        wf = w.float()
        if wf.shape != ref.shape:
            res["errors"][mod] = f"shape {tuple(wf.shape)} != {tuple(ref.shape)}"
            continue
        res["max_abs"] = max(res["max_abs"], (wf - ref).abs().max().item())
        res["identical"] += int(torch.equal(wf, ref))
    return qcfg, t, res


# ---------------------------------------------------------------- 2. Transformers load
def hf_load(art, dequantize):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    buf = io.StringIO()
    try:
        with quiet(buf):
            m, info = AutoModelForCausalLM.from_pretrained(art, device_map="cpu", output_loading_info=True, **kw)
            bad = {k: sorted(v) for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys", "error_msgs")}
            unexpected = sorted(info.get("unexpected_keys") or [])
            m.eval()
            with torch.no_grad():
                m(torch.tensor([[m.config.bos_token_id or 1, 5, 6, 7]]))  # default path: decompresses here
    except Exception as e:  # noqa: BLE001
        return None, first_line(e, buf.getvalue()), None
    return m, bad, unexpected


def loaded_weights(m, roots):
    need = [r for r in roots if not isinstance(getattr(m.get_submodule(r), "weight", None), torch.Tensor)
            or m.get_submodule(r).weight.dtype not in (torch.float32, torch.float16, torch.bfloat16)]
    if need:
        m.hf_quantizer.compressor.decompress_model(m)
    return {r: m.get_submodule(r).weight.detach() for r in roots}


# ---------------------------------------------------------------- 3./4. reference, windows, perplexity
def build_reference(model_dir, art_cfg, states_w, norms, art_t):
    from transformers import AutoConfig, AutoModelForCausalLM
    if model_dir:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    else:
        cfg = dict(art_cfg)
        cfg.pop("quantization_config", None)
        cfg.pop("qaas_scheme", None)
        c = AutoConfig.for_model(**cfg)
        m = AutoModelForCausalLM.from_config(c, dtype=torch.float32)
    notes = []
    sd = m.state_dict()
    with torch.no_grad():
        for n, w in states_w.items():
            m.get_submodule(n).weight.copy_(w)
        for n, w in norms.items():
            a = art_t.get(n)
            if a is not None and not torch.equal(a.float(), w):
                notes.append(f"artifact {n} != evaluated norm (max|d| {(a.float() - w).abs().max().item():.3g})")
            m.get_parameter(n).copy_(w)
        for n, v in art_t.items():  # embeddings, final norm: from the artifact
            if ".layers." in n or n not in sd:
                continue
            if model_dir and not torch.equal(sd[n].float(), v.float()):
                notes.append(f"artifact {n} differs from the original model "
                             f"(max|d| {(sd[n].float() - v.float()).abs().max().item():.3g})")
            m.get_parameter(n).copy_(v.float())
    m.eval()
    return m, notes


def eval_windows(tokenizer_model, text_path, seq_len, max_windows):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    text = open(text_path, encoding="utf-8").read()
    ids = [sp.bos_id()] + sp.encode(text)
    n = len(ids) // seq_len
    if max_windows > 0:
        n = min(n, max_windows)
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def logits_of(m, windows):
    return [m(windows[i:i + 1]).logits[0].float() for i in range(windows.shape[0])]


def perplexity(logits, windows):
    nll, tokens = 0.0, 0
    for lg, ids in zip(logits, windows):
        lp = torch.log_softmax(lg[:-1].double(), -1)
        nll -= lp.gather(1, ids[1:].unsqueeze(1)).sum().item()
        tokens += ids.shape[0] - 1
    return math.exp(nll / tokens)


def compare_logits(ref, got, k):
    md = max((a - b).abs().max().item() for a, b in zip(ref[:k], got[:k]))
    mr = max(a.abs().max().item() for a in ref[:k])
    agree = sum((a.argmax(-1) == b.argmax(-1)).sum().item() for a, b in zip(ref[:k], got[:k]))
    total = sum(a.shape[0] for a in ref[:k])
    return md, md / mr, agree / total


def rel(a, b):
    return abs(a - b) / abs(b)


def mx_self_test(report, art_cfg, model_dir, states_w, fails):
    """The MX fake quant used for activations here, applied to the original weights, must give
    the job's MX weights bit for bit (RTN only: the weights are then FakeQuantizeMx(W))."""
    g = art_cfg["quantization_config"]["config_groups"]
    w = next(iter(g.values()))["weights"]
    if not (w.get("type") == "float" and w.get("group_size") == 32 and report.get("recipe") == ["rtn"] and model_dir):
        return
    el = "fp4_e2m1" if w["num_bits"] == 4 else "fp8_e4m3"
    orig = {}
    for f in sorted(os.listdir(model_dir)):
        if f.endswith(".safetensors"):
            orig.update(read_safetensors(os.path.join(model_dir, f))[0])
    n = sum(int(torch.equal(fake_quantize_mx(orig[k + ".weight"].float(), el), v)) for k, v in states_w.items())
    log(f"[self-test] this script's MX {el} fake quant of the original weights = the job's weights: "
        f"{n}/{len(states_w)} bit-identical")
    if n != len(states_w):
        fails.append("MX self-test: this script's MX rounding is not qaas's")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="original model directory (default: report.json's model)")
    ap.add_argument("--eval-text", help="evaluation text (default: report.json's first evaluation)")
    ap.add_argument("--logit-windows", type=int, default=4)
    ap.add_argument("--act-ppl-tol", type=float, default=5e-3)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--table-header", action="store_true")
    ap.add_argument("--label", help="shown after the scheme in the table row (e.g. the case's name)")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:  # compressed-tensors logs through loguru (one warning per ragged module); after its import
        import compressed_tensors  # noqa: F401
        import transformers.integrations.compressed_tensors  # noqa: F401
        from loguru import logger as _loguru
        _loguru.disable("compressed_tensors")
    except ImportError:
        pass

    out = a.out.rstrip("/")
    art = os.path.join(out, "artifact")
    report = json.load(open(os.path.join(out, "report.json")))
    art_cfg = json.load(open(os.path.join(art, "config.json")))
    qc_raw = art_cfg["quantization_config"]
    ev = report["evaluations"][0]
    model_dir = a.model or report.get("model")
    if model_dir and not os.path.isdir(model_dir):
        log(f"[setup] original model {model_dir} not found: reference from the artifact's config")
        model_dir = None
    text_path = a.eval_text or ev["dataset"]
    scheme = art_cfg.get("qaas_scheme", report.get("scheme", "?"))
    fails, quirks = [], []
    log(f"== {out}: scheme {scheme}, recipe {report.get('recipe')}")

    states_w, norms, act = load_states(out, art_cfg["num_hidden_layers"])
    act_only = bool(act)
    if act:
        log("[ours] activation quantizers: " + "; ".join(sorted({q.describe() for q in act.values()})))
    mx_self_test(report, art_cfg, model_dir, states_w, fails)

    # 1.
    qcfg, art_t, lib = check_library(art, qc_raw, states_w)
    fmt = "/".join(sorted(lib["formats"]))
    n_bad = lib["modules"] - lib["identical"]
    log(f"[1 library] format {fmt}: {lib['identical']}/{lib['modules']} modules bit-identical to the evaluated "
        f"weights, max|d| {lib['max_abs']:.3g}, library output dtype {','.join(sorted(lib['lib_dtype'])) or '-'}")
    if lib["errors"]:
        errs = sorted(set(lib["errors"].values()))
        log(f"[1 library] {len(lib['errors'])} modules not decompressed: " + " | ".join(errs[:3]))
        quirks.append(f"library cannot decompress {len(lib['errors'])}/{lib['modules']} modules: {errs[0]}")
    log(f"[1 own decoder] {lib['own_identical']}/{lib['modules']} bit-identical, max|d| {lib['own_max_abs']:.3g}")
    if n_bad:
        fails.append(f"{n_bad}/{lib['modules']} modules not bit-identical through the library")
    ignored = set(qcfg.ignore or [])
    float_linears = [n for n in states_w if n not in set(quantized_roots(art_t))]
    missing_ignore = [n for n in float_linears if n not in ignored]
    if missing_ignore:
        fails.append(f"float linears not in ignore: {missing_ignore[:3]}")

    # 2.
    roots = quantized_roots(art_t)
    m, bad, unexpected = hf_load(art, dequantize=False)
    path = "default"
    if m is None:
        path_err = bad
        log(f"[2 load] default path failed: {path_err}")
        m, bad, unexpected = hf_load(art, dequantize=True)
        path = "dequantize=True"
        if m is None:
            log(f"[2 load] dequantize=True failed too: {bad}")
            quirks.append(f"dequantize=True load failed: {bad}")
            path = "none"
        quirks.append(f"default load failed: {path_err}")
    loaded_ok = m is not None
    if loaded_ok:
        if bad:
            fails.append(f"load report ({path}): {json.dumps(bad)[:200]}")
        if unexpected:
            log(f"[2 load] {path}: unexpected keys ignored: {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
        lw = loaded_weights(m, roots)
        worst, n_eq = 0.0, 0
        for r in roots:
            want = lib["lib"].get(r)
            want = want.float() if want is not None else states_w[r]
            got = lw[r].float()
            if got.shape != want.shape:
                worst = float("inf")
                continue
            worst = max(worst, (got - want).abs().max().item())
            n_eq += int(torch.equal(got, want))
        log(f"[2 load] path {path}: {n_eq}/{len(roots)} loaded weights equal the library decompression "
            f"(ours where it raised), max|d| {worst:.3g}")
        if n_eq != len(roots):
            fails.append(f"loaded weights ({path}) differ from the library decompression: max|d| {worst:.3g}")
    else:
        fails.append("no Transformers load path works")

    # dense load + our hooks
    dense = None
    if path == "dequantize=True":
        dense = m
    elif path == "default":
        dense = hf_load(art, dequantize=True)[0]

    # 3./4.
    windows = eval_windows(os.path.join(art, "tokenizer.model") if os.path.exists(os.path.join(art, "tokenizer.model"))
                           else os.path.join(model_dir, "tokenizer.model"), text_path, ev["seq_len"], ev["windows"])
    if windows.shape[0] != ev["windows"] or windows.shape[0] * (windows.shape[1] - 1) != ev["tokens"]:
        fails.append(f"windows {tuple(windows.shape)} do not match the report's {ev['windows']} x {ev['seq_len']}")
    ppl_rep_o, ppl_rep_q = ev["perplexity_original"], ev["perplexity_quantized"]

    from transformers import AutoModelForCausalLM
    if model_dir:
        orig = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu").eval()
        ppl_o = perplexity(logits_of(orig, windows), windows)
        r_o = rel(ppl_o, ppl_rep_o)
        log(f"[4 replication] original model ppl {ppl_o:.8g} vs report {ppl_rep_o:.8g}: rel {r_o:.2e}")
        if r_o > ORIGINAL_PPL_TOL:
            fails.append(f"original ppl replication off by {r_o:.2e} (windows/tokenizer not as qaas)")
        del orig
    ref, notes = build_reference(model_dir, art_cfg, states_w, norms, art_t)
    for n in notes:
        log(f"[3 reference] note: {n}")
        if "evaluated norm" in n:
            fails.append(n)
    add_act_hooks(ref, act)
    ref_logits = logits_of(ref, windows)
    ppl_ref = perplexity(ref_logits, windows)
    log(f"[3 reference] ours (HF float32 + evaluated weights{' + our act quant' if act else ''}): ppl {ppl_ref:.8g} "
        f"vs report {ppl_rep_q:.8g}: rel {rel(ppl_ref, ppl_rep_q):.2e}")
    k = min(a.logit_windows, windows.shape[0])

    row = {"scheme": scheme, "format": fmt, "identical": f"{lib['identical']}/{lib['modules']}", "path": path,
           "ppl_report": ppl_rep_q, "ppl_ref": ppl_ref}
    if loaded_ok:
        got = got_loaded = logits_of(m, windows)
        md, mr, t1 = compare_logits(ref_logits, got, k)
        ppl_l = perplexity(got, windows)
        row.update(max_abs=md, rel=mr, top1=t1, ppl_loaded=ppl_l, ppl_rel=rel(ppl_l, ppl_rep_q))
        log(f"[3 logits] loaded ({path}) vs ours, {k} windows: max|d| {md:.3g}, rel {mr:.3g}, top-1 {t1:.4f}")
        log(f"[4 ppl] loaded ({path}): {ppl_l:.8g} vs report {ppl_rep_q:.8g}: rel {row['ppl_rel']:.2e}")
        if act and path == "dequantize=True":
            # The only path that loads (e.g. MX on a float32 model) drops activation quantization:
            # the loaded weights are judged with our activation quantization, (b) below.
            log(f"[3 note] dequantize=True runs no activation quantization: top-1 {t1:.4f} is weights only")
        elif t1 < TOP1_MIN:
            fails.append(f"top-1 agreement of the loaded model {t1:.4f} < {TOP1_MIN}")
        if not act_only and row["ppl_rel"] > WEIGHT_ONLY_PPL_TOL:
            fails.append(f"weight-only ppl rel diff {row['ppl_rel']:.2e} > {WEIGHT_ONLY_PPL_TOL}")
    if dense is not None:
        add_act_hooks(dense, act)
        got = logits_of(dense, windows)
        md, mr, t1 = compare_logits(ref_logits, got, k)
        ppl_d = perplexity(got, windows)
        row.update(hook_max_abs=md, hook_top1=t1, ppl_hooks=ppl_d, hook_ppl_rel=rel(ppl_d, ppl_rep_q))
        log(f"[3 logits] dense load + our act hooks vs ours: max|d| {md:.3g}, rel {mr:.3g}, top-1 {t1:.4f}")
        log(f"[4 ppl] dense + our act hooks: {ppl_d:.8g} vs report: rel {row['hook_ppl_rel']:.2e}")
        if act and t1 < TOP1_MIN:
            fails.append(f"top-1 agreement of the dense load with our activation quantization {t1:.4f} < {TOP1_MIN}")
        if act_only and row["hook_ppl_rel"] > a.act_ppl_tol:
            fails.append(f"dense+our-act ppl rel diff {row['hook_ppl_rel']:.2e} > {a.act_ppl_tol}")

    lib_act = library_act_quant(qcfg, art_t, roots)
    if lib_act and (path != "none" or not lib["errors"]):
        # What compressed-tensors' activation quantization computes in float32 on our weights: the
        # default load's forward where it works; its stand-in where the default path fails.
        try:
            dense2 = hf_load(art, dequantize=True)[0] if path != "none" else None
            if dense2 is None:
                raise RuntimeError("no dense load")
            add_act_hooks(dense2, lib_act)
            lib_logits = logits_of(dense2, windows)
            md, mr, t1 = compare_logits(ref_logits, lib_logits, k)
            ppl_lib = perplexity(lib_logits, windows)
            row.update(libact_max_abs=md, libact_top1=t1, ppl_libact=ppl_lib)
            log(f"[3 logits] dense load + compressed-tensors' own activation fake quant vs ours: max|d| {md:.3g}, "
                f"rel {mr:.3g}, top-1 {t1:.4f}; ppl {ppl_lib:.8g} (rel {rel(ppl_lib, ppl_rep_q):.2e} to the report)")
            if path == "default":
                md2 = compare_logits(got_loaded, lib_logits, k)[0]
                log(f"[3 logits] ... and vs the default load's own forward: max|d| {md2:.3g}")
        except Exception as e:  # noqa: BLE001
            log(f"[3 logits] compressed-tensors' activation fake quant on the dense load failed: "
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")

    row["fails"], row["quirks"] = fails, quirks
    log(f"RESULT: {'FAIL' if fails else 'PASS'}" + ("".join(f"\n  - {f}" for f in fails)))
    if a.json:
        json.dump(row, open(a.json, "w"), indent=1, default=str)

    def f(key, spec):
        return format(row[key], spec) if key in row else "n/a"
    if a.table_header:
        print("| scheme | format | bit-identical | load path | logits max\\|d\\| | rel | top-1 | ppl ours | ppl loaded "
              "| rel diff | dense+our act: top-1 | ppl | rel diff | result |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {scheme}{f' ({a.label})' if a.label else ''} | {fmt} | {row['identical']} | {path} | {f('max_abs', '.3g')} | {f('rel', '.2e')} | "
          f"{f('top1', '.4f')} | {ppl_rep_q:.6f} | {f('ppl_loaded', '.6f')} | {f('ppl_rel', '.2e')} | "
          f"{f('hook_top1', '.4f')} | {f('ppl_hooks', '.6f')} | {f('hook_ppl_rel', '.2e')} | "
          f"{'FAIL' if fails else 'PASS'} |", flush=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
