#!/usr/bin/env python3
"""BPE tokenizers with Llama 3's, Qwen2's and the SentencePiece conversions' exact pipelines, and their ids.

What it makes:

  tests/data/tokenizers/<family>/tokenizer.json, tokenizer_config.json
      A BPE tokenizer trained with the `tokenizers` package (1024 ids) on the
      TinyStories sample and the torture texts below, with the family's own
      normalizer / pre-tokenizer / decoder settings as its released
      tokenizer.json has them:
        llama3: no normalizer; Sequence[Split(Llama 3's regex, Isolated),
                ByteLevel(add_prefix_space=False, use_regex=False)];
                BPE ignore_merges=True; <|begin_of_text|> prepended.
        qwen2:  NFC normalizer; Sequence[Split(Qwen2's regex, Isolated),
                ByteLevel(add_prefix_space=False, use_regex=False)];
                no BOS.
      Both have the special tokens <|begin_of_text|>/<|endoftext|>,
      <|end_of_text|>/<|im_end|> and <|special|>.
      SentencePiece-style tokenizer.json files, as Transformers converts a
      SentencePiece BPE model (merges learnt within words, then the words'
      split removed; an alphabet of the 120 commonest characters, so that
      CJK, emoji and the rarer letters go through byte fallback to the 256
      <0xXX> tokens; fuse_unk):
        llama2:    normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no
                   pre-tokenizer (Llama 2's legacy conversion); <s> prepended.
        gemma:     normalizer Replace(" ", "▁"), pre-tokenizer Split(" ",
                   MergedWithPrevious) (Transformers' GemmaConverter);
                   <bos> prepended.
        metaspace: no normalizer; Metaspace("▁", prepend_scheme="first",
                   split=False) (the non-legacy conversion); <s> prepended.
        spacesplit: gemma's Split(" ", MergedWithPrevious) without its
                   normalizer, so that the split acts (spaces fall back to
                   <0x20>).
      The trainer breaks some ties differently from run to run, so the
      SentencePiece-style vocabularies can change when this is re-run; the
      reference ids are always made from the files written with them.

  tests/data/family_tokenizer_reference.json
      Per family: for each torture text, `tokenizers`' ids
      (encode(text, add_special_tokens=False)); for each whole file of
      ../shared/data (read as UTF-8 exactly as stored; hellaswag's 12 MB left
      out for test time), the number of ids, the first and last 50 and their
      FNV-1a 64 hash (make_references.py's formula).

How to run (from the repository root, a few seconds):

    /tmp/refenv/bin/pip install tokenizers
    /tmp/refenv/bin/python scripts/reference/make_family_tokenizers.py [--shared ../shared] [--out tests/data]
"""

import argparse
import json
import os
import shutil

import tokenizers
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, decoders, trainers

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

TORTURE = [
    "Hello world",
    "DON'T stop; it'S HERE, you'Re 'll 'VE 'd 'm",
    "digits 1234567 and 12, 3.14159, ٣٤٥ and ½ Ⅷ",
    "中文测试：你好，世界！日本語のテキスト。한국어 텍스트",
    "emoji 👩‍👩‍👧‍👦 family, flags 🇫🇷🇯🇵, skin 👍🏽 and ❤️",
    "combining: e\u0301 vs \u00e9, A\u030a vs \u00c5, n\u0303o, Cafe\u0301",
    "Arabic: مرحبا بالعالم، كيف حالك؟",
    "CRLF line\r\nnext line\r\n\r\nand tabs\there\t\tand   runs    of     spaces   ",
    "  leading spaces and trailing  \n\n\n",
    "a <|special|> token inside text<|special|>and again <|special|>",
    "mixed\u00a0nbsp\u3000ideographic space\u2003em space",
    "URL https://example.com/a?b=c&d=e#f and e-mail a.b@c.de",
    "code: def f(x):\n    return x**2  # square\n",
    "   ",
    "",
]

FAMILIES = {
    "llama3": dict(pattern=LLAMA3, nfc=False, ignore_merges=True, bos="<|begin_of_text|>", eos="<|end_of_text|>",
                   add_bos=True),
    "qwen2": dict(pattern=QWEN2, nfc=True, ignore_merges=False, bos="<|endoftext|>", eos="<|im_end|>",
                  add_bos=False),
    "llama2": dict(spm="legacy", bos="<s>", eos="</s>", add_bos=True),
    "gemma": dict(spm="gemma", bos="<bos>", eos="<eos>", add_bos=True),
    "metaspace": dict(spm="metaspace", bos="<s>", eos="</s>", add_bos=True),
    "spacesplit": dict(spm="spacesplit", bos="<bos>", eos="<eos>", add_bos=True),
}


def fnv1a64_ids(ids):
    h = 0xCBF29CE484222325
    for t in ids:
        for b in int(t).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "0x%016x" % h


def build_spm(spec, corpus):
    """A SentencePiece-style BPE: trained on "▁"-joined words, then given the
    conversion's normalizer / pre-tokenizer and the 256 byte-fallback tokens."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    specials = ["<unk>", spec["bos"], spec["eos"], "<|special|>"]
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    for b in range(256):
        vocab.setdefault("<0x%02X>" % b, len(vocab))
    if spec["spm"] == "legacy":
        j["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        j["pre_tokenizer"] = None
    elif spec["spm"] == "gemma":
        # Transformers' GemmaConverter: the Split on " " after the normalizer
        # replaced every space.
        j["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
        j["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                              "invert": False}
    elif spec["spm"] == "spacesplit":
        # The same Split without the normalizer, so that it really splits
        # (spaces then fall back to <0x20>): exercises the split itself.
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                              "invert": False}
    else:
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                              "split": False}
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return Tokenizer.from_str(json.dumps(j))


def build(family, spec, corpus):
    if "spm" in spec:
        return build_spm(spec, corpus)
    tok = Tokenizer(models.BPE(ignore_merges=spec["ignore_merges"]))
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [spec["bos"], spec["eos"], "<|special|>"]
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="tests/data")
    args = ap.parse_args()
    data = os.path.join(args.shared, "data")
    files = ["tinystories/valid-sample.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt",
             "tasks/arc_challenge.validation.jsonl", "tasks/arc_easy.validation.jsonl",
             "tasks/piqa.validation.jsonl", "tasks/winogrande.validation.jsonl",
             "tasks/boolq.validation.jsonl", "tasks/lambada_openai.test.jsonl"]
    texts = {f: open(os.path.join(data, f), encoding="utf-8", newline="").read() for f in files}
    corpus = [texts["tinystories/valid-sample.txt"]] + TORTURE
    reference = {"versions": {"tokenizers": tokenizers.__version__}, "texts": TORTURE, "families": {}}
    root = os.path.join(args.out, "tokenizers")
    shutil.rmtree(root, ignore_errors=True)
    for family, spec in FAMILIES.items():
        tok = build(family, spec, corpus)
        out_dir = os.path.join(root, family)
        os.makedirs(out_dir)
        tok.save(os.path.join(out_dir, "tokenizer.json"))
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": spec["bos"], "eos_token": spec["eos"], "add_bos_token": spec["add_bos"],
                       "add_eos_token": False}, f, indent=2)
        fam = {"bos_id": tok.token_to_id(spec["bos"]), "special_id": tok.token_to_id("<|special|>"),
               "texts": [tok.encode(t, add_special_tokens=False).ids for t in TORTURE], "files": {}}
        for name, text in texts.items():
            ids = tok.encode(text, add_special_tokens=False).ids
            fam["files"][name] = {"count": len(ids), "first": ids[:50], "last": ids[-50:],
                                  "fnv1a64": fnv1a64_ids(ids)}
        reference["families"][family] = fam
        print(family, {n: v["count"] for n, v in fam["files"].items()})
    with open(os.path.join(args.out, "family_tokenizer_reference.json"), "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
