#!/usr/bin/env python3
"""The peer benchmark's table: <work>/runs/*.json (measure.py), <work>/evals/*.json (evaluate.py)
and <work>/calib-check.json (check_calib.py) -> Markdown on stdout and in <work>/results.md,
everything in <work>/results.json.

  report.py --work DIR --venv DIR --settings TEXT --model_args TEXT
"""

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
from importlib import metadata

TOOLS = [("qaas", "qaas"), ("llmc", "llm-compressor"), ("gptqmodel", "GPTQModel")]
JOBS = ["gptq", "rtn", "smoothquant"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def job_title(job, settings):
    s = dict(kv.split("=", 1) for kv in settings.split() if "=" in kv)
    if job == "gptq":
        return f"GPTQ W4A16g128 ({s.get('w4', 'sym')}, actorder {s.get('actorder', 'static')})"
    if job == "rtn":
        return f"RTN W4A16g128 ({s.get('w4', 'sym')})"
    return f"SmoothQuant α={s.get('alpha', '0.5')} + RTN W8A8"


def versions():
    out = {}
    for name in ("torch", "transformers", "compressed-tensors", "llmcompressor", "GPTQModel", "sentencepiece"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def qaas_version(root):
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def binary_time(path):
    try:
        return datetime.datetime.fromtimestamp(os.path.getmtime(path)).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    except OSError:
        return "?"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def quantizing_seconds(work, tool, job):
    """The part of the process spent calibrating and quantizing, as the tool itself timed it:
    qaas's report.json seconds.calibration + seconds.quantization; for the Python tools the
    oneshot()/quantize() call (peers_timing.json)."""
    out = os.path.join(work, "out", f"{tool}-{job}")
    if tool == "qaas":
        r = load(os.path.join(out, "report.json")) or {}
        s = r.get("seconds", {})
        if "calibration" in s or "quantization" in s:
            return s.get("calibration", 0.0) + s.get("quantization", 0.0)
        return None
    r = load(os.path.join(out, "peers_timing.json")) or {}
    return r.get("quantize_s")


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--venv", default="")
    p.add_argument("--settings", default="")
    p.add_argument("--model_args", default="")
    p.add_argument("--qaas_binary", default="")
    args = p.parse_args()
    work = args.work
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    runs = {}
    for path in glob.glob(os.path.join(work, "runs", "*.json")):
        r = load(path)
        if r:
            runs[(r["tool"], r["job"])] = r
    evals = {os.path.basename(p)[:-5]: load(p) for p in glob.glob(os.path.join(work, "evals", "*.json"))}
    check = load(os.path.join(work, "calib-check.json")) or {}
    tokens = load(os.path.join(work, "tokens", "tokens.json")) or {}
    size = os.path.getsize(os.path.join(work, "model", "model.safetensors")) if os.path.exists(
        os.path.join(work, "model", "model.safetensors")) else None

    lines = ["| job | tool | time s | of which quantizing s | peak RSS GB | perplexity | time qaas / llm-compressor "
             "| notes |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    base = evals.get("unquantized")
    lines.append(f"| unquantized (float32) | — | — | — | — | {fmt(base and base.get('perplexity'), '.4f')} | | |")
    rows = []
    for job in JOBS:
        title = job_title(job, args.settings)
        for tool, tool_name in TOOLS:
            r = runs.get((tool, job))
            if r is None:
                continue
            ev = evals.get(f"{tool}-{job}")
            notes = []
            time_s = rss = ppl = inner = None
            ratio = ""
            if "skipped" in r:
                notes.append(f"skipped: {r['skipped']}")
            elif r.get("returncode") != 0:
                notes.append(f"failed (exit {r.get('returncode')}), see {r.get('log')}")
            else:
                time_s, rss = r["wall_s"], r["peak_rss_bytes"] / 1e9
                inner = quantizing_seconds(work, tool, job)
                if ev is None:
                    notes.append("evaluation failed, see logs/eval-%s-%s.log" % (tool, job))
                else:
                    ppl = ev["perplexity"]
                    if ev.get("act_quant", "none") != "none":
                        notes.append("activations int8 per token at eval (%d linears)" % ev.get("act_quant_linears", 0))
                other = runs.get(("llmc", job))
                if tool == "qaas" and other and other.get("returncode") == 0:
                    ratio = f"{time_s / other['wall_s']:.2f}"
                q = runs.get(("qaas", job))
                if tool == "gptqmodel" and q and q.get("returncode") == 0:
                    notes.append(f"qaas / GPTQModel time {q['wall_s'] / time_s:.2f}")
            lines.append(f"| {title} | {tool_name} | {fmt(time_s, '.1f')} | {fmt(inner, '.1f')} | {fmt(rss, '.2f')} "
                         f"| {fmt(ppl, '.4f')} | {ratio} | {'; '.join(notes)} |")
            rows.append({"job": job, "title": title, "tool": tool_name, "time_s": time_s, "quantizing_s": inner,
                         "peak_rss_gb": rss, "perplexity": ppl, "run": r, "eval": ev})

    v = versions()
    header = [
        f"# qaas peer benchmark ({datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')})",
        "",
        f"- model: random LLaMA from qaas-make-model {args.model_args}"
        + (f", {size / 1e6:.0f} MB of weights" if size else ""),
        f"- settings: {args.settings}",
    ]
    if tokens:
        c, e = tokens["calibration"], tokens["evaluation"]
        header.append(f"- tokens ({tokens['tokenizer']}): calibration {c['num_samples']} windows x {c['seq_len']} "
                      f"drawn as qaas-quantize draws them (seed {c['seed']}) from {c['tokens_in_file']} tokens of "
                      f"{os.path.basename(c['file'])}; evaluation {e['windows']} windows x {e['seq_len']} of "
                      f"[BOS] + {os.path.basename(e['file'])}")
    for tool, name in (("qaas", "qaas"), ("llmc", "llm-compressor")):
        if tool in check:
            header.append(f"- calibration check ({name}): layer-0 SmoothQuant scales match calib.npy to "
                          f"{check[tool]['max_rel_error']:.2g} relative"
                          + ("" if check[tool]["same_windows"] else " — NOT the same calibration data"))
    header += [
        f"- machine: {cpu_name()}, {os.cpu_count()} CPUs; time = wall time of the whole process (start, "
        "imports, load, calibrate, quantize, save); of which quantizing = calibration and quantization as the "
        "tool timed it; peak RSS of the process tree",
        f"- versions: qaas {qaas_version(root)}"
        + (f" (binary {args.qaas_binary}, built {binary_time(args.qaas_binary)})" if args.qaas_binary else "")
        + "; " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print()
    print(text)
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump({"settings": args.settings, "model_args": args.model_args, "versions": v,
                   "qaas": qaas_version(root), "calibration_check": check, "tokens": tokens,
                   "unquantized": base, "rows": rows}, f, indent=1)
    print(f"results: {os.path.join(work, 'results.md')}")


if __name__ == "__main__":
    sys.exit(main())
