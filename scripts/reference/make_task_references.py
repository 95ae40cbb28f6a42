#!/usr/bin/env python3
"""Reference results of lm-evaluation-harness's zero-shot tasks, for qaas's task scorer tests.

What it makes:

  tests/data/task_reference/stories260k.json   (../shared/models/stories260k)
  tests/data/task_reference/tiny-opt.json      (tests/data/tiny-opt)

For each of piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq and
lambada_openai, lm-evaluation-harness (PyPI `lm_eval`) is run on the model with
its HFLM backend exactly as `lm_eval --model hf` would run it: device cpu,
dtype float32, batch_size 1, num_fewshot 0, bootstrap_iters 100000, the task's
YAML as shipped.  Only the data source is changed (see "Data" below).
stories260k (context 512): the first 200 docs of every task, all 299 docs of
arc_challenge.  tiny-opt (128 positions): the first 200 docs of every task,
except that the harness aborts (AssertionError) on a request whose continuation
has more tokens than max_length; such a task keeps the docs before the first
offending one, and the JSON's "notes" say which doc and why.

JSON layout (compact, one file per model):

  {"lm_eval_version", "transformers_version", "torch_version", "python_version",
   "generator", "model", "max_length", "settings": {...},
   "tasks": {<task>: {
       "limit": N or null (null = all docs), "num_docs": n,
       "metrics": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                   "perplexity", "perplexity_stderr"}   (those the harness
                   reports for the task, the harness's values unchanged),
       "docs": [{"doc_id": i, "gold": g (multiple choice only),
                 "ll": [...], "greedy": [...], "ctx_tokens": [...],
                 "cont_tokens": [...], "ids_hash": [...], "truncated": [...],
                 "acc": 0/1, "acc_norm": 0/1 (piqa, arc_*, hellaswag)}]}},
   "notes": [...]}

Per doc, the lists have one entry per loglikelihood request, in the task's
request order for the doc (the choices in order; winogrande: option1, option2;
lambada: one request):
  ll          the harness's log-likelihood of the continuation (float32 sum,
              as a Python float);
  greedy      the harness's is_greedy;
  ctx_tokens  len(context_enc), cont_tokens len(continuation_enc): the token ids
              HFLM._encode_pair produced (BOS included in context_enc where the
              tokenizer adds one);
  ids_hash    FNV-1a 64 over the ids context_enc followed by continuation_enc,
              each id as 4 bytes, little-endian two's-complement int32:
                  h = 0xcbf29ce484222325
                  for each byte b: h = ((h ^ b) * 0x100000001b3) mod 2^64
              written as 16 lowercase hex digits, no "0x" (see `ids_hash`);
  truncated   len(context_enc) + len(continuation_enc) > max_length + 1, i.e.
              the harness cut the input from the left.
gold, acc, acc_norm: the harness's gold index and per-doc metrics (as 0/1).

Checks made before writing: acc and acc_norm of every doc are recomputed from
the logged lls (pred = first index of the maximum ll; acc_norm divides each ll
by the length in Unicode code points of the choice string, without the
target-delimiter space; lambada acc = greedy) and must equal the harness's;
every aggregated metric must equal the mean of the per-doc values (lambada
perplexity = exp(-mean ll)), mean stderrs the closed form
sqrt(sum((x - mean)^2) / (n - 1) / n), and the perplexity stderr an independent
re-run of the harness's bootstrap (chunks of 1000 resamples, chunk i drawn from
random.Random(i) with choices(lls, k=n); sample std, ddof 1, of the 100000
exp(-mean) replicates).

Data: the task YAMLs are loaded through lm_eval's TaskManager and only their
dataset fields are overridden to read <shared>/data/tasks/<task>.<split>.jsonl:
dataset_path "json", dataset_name None, data_files {split: file},
training_split None (no few-shot pool is needed at 0 shots).  ARC is scored on
its validation file (the harness default is the test split; test_split None).
lambada_openai uses the test file (validation_split None).  The local boolq file
has `answer` (bool) instead of super_glue's `label` (int): a process_docs adds
label = int(answer).  Nothing touches the network (HF_*_OFFLINE=1).

How to run (from the repository root, CPU only, about 3 minutes; one thread):

    /tmp/refenv/bin/pip install lm_eval==0.4.13 torch transformers sentencepiece
    /tmp/refenv/bin/python scripts/reference/make_task_references.py \
        [--shared ../shared] [--out tests/data/task_reference]

Package versions it was last run with are recorded in each JSON.
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE",
                      os.path.join(tempfile.gettempdir(), "qaas_task_reference_datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The harness bootstraps in a multiprocessing pool unless this is set; the
# single-process path draws the very same resamples (chunk i <- Random(i)).
os.environ.setdefault("DISABLE_MULTIPROC", "1")

TASKS = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq",
         "lambada_openai"]

# task -> (local file, split name of the override, other overrides)
LOCAL = {
    "piqa": ("piqa.validation.jsonl", "validation", {}),
    "arc_easy": ("arc_easy.validation.jsonl", "validation", {"test_split": None}),
    "arc_challenge": ("arc_challenge.validation.jsonl", "validation", {"test_split": None}),
    "hellaswag": ("hellaswag.validation.jsonl", "validation", {}),
    "winogrande": ("winogrande.validation.jsonl", "validation", {}),
    "boolq": ("boolq.validation.jsonl", "validation", {}),
    "lambada_openai": ("lambada_openai.test.jsonl", "test", {"validation_split": None}),
}

BOOTSTRAP_ITERS = 100000
METRICS = ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "perplexity",
           "perplexity_stderr"]


def ids_hash(ids):
    """FNV-1a 64 over int32 little-endian bytes of ids; 16 lowercase hex digits."""
    h = 0xCBF29CE484222325
    for t in ids:
        for b in int(t).to_bytes(4, "little", signed=True):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def _boolq_docs(ds):
    # super_glue/boolq has label (0 = False = "no", 1 = True = "yes"); the local file has answer
    if "label" in ds.column_names:
        return ds
    return ds.map(lambda d: {"label": int(bool(d["answer"]))})


class TaskBuilder:
    """Builds a fresh lm_eval task object from its shipped YAML, reading local data."""

    def __init__(self, data_dir):
        from lm_eval.tasks import TaskManager
        self.data_dir = data_dir
        self.tm = TaskManager()

    def build(self, name):
        fname, split, extra = LOCAL[name]
        ov = {
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: os.path.join(self.data_dir, fname)}},
            "training_split": None,
        }
        ov.update(extra)
        if name == "boolq":
            ov["process_docs"] = _boolq_docs
        # private API of lm_eval 0.4.1x (no public way to pass overrides to a shipped YAML)
        entry = self.tm._entry(name)
        return self.tm._factory.build(entry, overrides=ov, registry=self.tm._index)


def first_too_long_doc(lm, task, limit):
    """First doc id (within limit) with a request the harness would assert on, and why."""
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    for inst in sorted(task.instances, key=lambda x: (x.doc_id, x.idx)):
        ctx, cont = inst.args[:2]
        ce, ne = lm._encode_pair(ctx, cont)
        if len(ne) == 0 or len(ne) > lm.max_length:
            return inst.doc_id, (
                "doc %d, request %d: len(continuation_enc) = %d, the harness asserts "
                "0 < len(continuation_enc) <= max_length = %d"
                % (inst.doc_id, inst.idx, len(ne), lm.max_length))
    return None, None


def gold_index(task, doc, choices):
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else -100
    elif gold >= len(choices):
        gold = -100
    return int(gold)


def argmax_first(xs):
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def mean_stderr(xs):
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def bootstrap_ppl_stderr(lls, iters=BOOTSTRAP_ITERS, chunk=1000):
    reps = []
    n = len(lls)
    for i in range(iters // chunk):
        rnd = random.Random(i)
        for _ in range(chunk):
            s = rnd.choices(lls, k=n)
            reps.append(math.exp(-(sum(s) / n)))
    mu = sum(reps) / len(reps)
    return math.sqrt(sum((r - mu) ** 2 for r in reps) / (len(reps) - 1))


def run_task(lm, token_log, builder, name, limit):
    import lm_eval

    task = builder.build(name)
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit,
                                  bootstrap_iters=BOOTSTRAP_ITERS, log_samples=True,
                                  num_fewshot=0)
    harness = res["results"][name]
    metrics = {}
    for key, val in harness.items():
        m = key.split(",")[0]
        if m in METRICS:
            metrics[m] = val
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    mc = task.OUTPUT_TYPE == "multiple_choice"
    has_norm = "acc_norm" in metrics
    max_len = lm.max_length
    docs = []
    for s in samples:
        resp = [r[0] if isinstance(r, list) else r for r in s["filtered_resps"]]
        d = {"doc_id": s["doc_id"]}
        if mc:
            choices = task.doc_to_choice(s["doc"])
            d["gold"] = gold_index(task, s["doc"], choices)
        lls = [float(r[0]) for r in resp]
        greedy = [bool(r[1]) for r in resp]
        d["ll"] = lls
        d["greedy"] = greedy
        encs = [token_log[(a[0], a[1])] for a in s["arguments"]]
        d["ctx_tokens"] = [len(ce) for ce, _ in encs]
        d["cont_tokens"] = [len(ne) for _, ne in encs]
        d["ids_hash"] = [ids_hash(list(ce) + list(ne)) for ce, ne in encs]
        d["truncated"] = [len(ce) + len(ne) > max_len + 1 for ce, ne in encs]
        # recompute the per-doc metrics from the logged lls and compare
        if mc:
            assert len(lls) == len(choices), (name, s["doc_id"])
            acc = int(argmax_first(lls) == d["gold"])
            assert float(acc) == s["acc"], (name, s["doc_id"], "acc", lls, s["acc"])
            d["acc"] = acc
            if has_norm:
                normed = [ll / float(len(c)) for ll, c in zip(lls, choices)]
                acc_norm = int(argmax_first(normed) == d["gold"])
                assert float(acc_norm) == s["acc_norm"], (name, s["doc_id"], "acc_norm")
                d["acc_norm"] = acc_norm
        else:
            assert len(lls) == 1
            acc = int(greedy[0])
            assert acc == s["acc"], (name, s["doc_id"], "acc")
            assert lls[0] == s["perplexity"], (name, s["doc_id"], "perplexity item")
            d["acc"] = acc
        docs.append(d)

    n = len(docs)
    expect_n = n if limit is None else min(limit, n)
    assert n == expect_n and [d["doc_id"] for d in docs] == list(range(n)), name
    # aggregated metrics = mean of the per-doc values
    for m in ("acc", "acc_norm"):
        if m in metrics:
            xs = [float(d[m]) for d in docs]
            assert metrics[m] == sum(xs) / n, (name, m, metrics[m], sum(xs) / n)
            assert math.isclose(metrics[m + "_stderr"], mean_stderr(xs),
                                rel_tol=1e-12, abs_tol=1e-15), (name, m + "_stderr")
    if "perplexity" in metrics:
        lls = [d["ll"][0] for d in docs]
        assert math.isclose(metrics["perplexity"], math.exp(-(sum(lls) / n)), rel_tol=1e-13), name
        bs = bootstrap_ppl_stderr(lls)
        assert math.isclose(metrics["perplexity_stderr"], bs, rel_tol=1e-12), (
            name, metrics["perplexity_stderr"], bs)
    return {"limit": limit, "num_docs": n, "metrics": metrics, "docs": docs}


def run_model(label, model_dir, limits, builder, out_dir):
    import lm_eval
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, device="cpu", dtype="float32", batch_size=1)
    # Record the exact token ids of every loglikelihood request.
    token_log = {}
    orig = lm._loglikelihood_tokens

    def logged(requests, *a, **k):
        for (ctx_cont, ctx_enc, cont_enc) in requests:
            if ctx_cont is not None:
                token_log[tuple(ctx_cont)] = (list(ctx_enc), list(cont_enc))
        return orig(requests, *a, **k)

    lm._loglikelihood_tokens = logged

    out = {
        "lm_eval_version": lm_eval.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "generator": "scripts/reference/make_task_references.py",
        "model": label,
        "max_length": lm.max_length,
        "settings": {"backend": "HFLM", "device": "cpu", "dtype": "float32",
                     "batch_size": 1, "num_fewshot": 0,
                     "bootstrap_iters": BOOTSTRAP_ITERS,
                     "torch_threads": torch.get_num_threads()},
        "tasks": {},
        "notes": [
            "Task data: the local JSONL files of shared/data/tasks (ARC: validation "
            "split, not the harness default test split; boolq: label = int(answer)).",
            "ids_hash: FNV-1a 64 (basis 0xcbf29ce484222325, prime 0x100000001b3) over "
            "context_enc then continuation_enc, each id as 4 little-endian int32 bytes; "
            "16 lowercase hex digits.",
            "truncated: len(context_enc) + len(continuation_enc) > max_length + 1 (the "
            "harness keeps the last max_length + 1 tokens and feeds all but the last).",
        ],
    }
    timing = {}
    for name in TASKS:
        limit = limits.get(name, 200)
        doc, why = first_too_long_doc(lm, builder.build(name), limit)
        if doc is not None:
            out["notes"].append(
                "%s: limited to %d docs (docs 0..%d): %s, which would abort the run."
                % (name, doc, doc - 1, why))
            limit = doc
        t0 = time.time()
        out["tasks"][name] = run_task(lm, token_log, builder, name, limit)
        timing[name] = time.time() - t0
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, label + ".json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    return out, timing, path


def summary(out, timing, path):
    lines = ["%s (max_length %d): %s, %d bytes" % (out["model"], out["max_length"], path,
                                                   os.path.getsize(path)),
             "%-15s %5s %9s %9s %14s %6s %7s" % ("task", "n", "acc", "acc_norm", "ppl",
                                               "trunc", "sec")]
    for name, t in out["tasks"].items():
        m = t["metrics"]
        trunc = sum(sum(d["truncated"]) for d in t["docs"])

        def f(k, fmt):
            return fmt % m[k] if k in m else "-"

        lines.append("%-15s %5d %9s %9s %14s %6d %7.1f" % (
            name, t["num_docs"], f("acc", "%.4f"), f("acc_norm", "%.4f"),
            f("perplexity", "%.6g"), trunc, timing[name]))
    for note in out["notes"][3:]:
        lines.append("note: " + note)
    return "\n".join(lines)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.abspath(os.path.join(here, "..", ".."))
    default_shared = os.path.join(repo, "..", "shared")
    if not os.path.isdir(default_shared):
        default_shared = "/work/shared"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=default_shared)
    ap.add_argument("--out", default=os.path.join(repo, "tests", "data", "task_reference"))
    ap.add_argument("--models", default="stories260k,tiny-opt",
                    help="comma-separated subset of stories260k,tiny-opt")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    ap.add_argument("--smoke-limit", type=int, default=None,
                    help="quick check only: this many docs per task instead of the "
                         "reference limits (do not check the result in)")
    args = ap.parse_args()
    shared = os.path.abspath(args.shared)
    TASKS[:] = [t for t in TASKS if t in args.tasks.split(",")]

    import torch
    torch.set_num_threads(1)

    builder = TaskBuilder(os.path.join(shared, "data", "tasks"))
    runs = [
        ("stories260k", os.path.join(shared, "models", "stories260k"),
         {"arc_challenge": None}),
        ("tiny-opt", os.path.join(repo, "tests", "data", "tiny-opt"), {}),
    ]
    runs = [r for r in runs if r[0] in args.models.split(",")]
    if args.smoke_limit is not None:
        runs = [(a, b, {t: args.smoke_limit for t in TASKS}) for a, b, _ in runs]
    reports = []
    for label, model_dir, limits in runs:
        out, timing, path = run_model(label, model_dir, limits, builder, args.out)
        reports.append(summary(out, timing, path))
        print(reports[-1], file=sys.stderr, flush=True)
    print("\n\n".join(reports))


if __name__ == "__main__":
    main()
