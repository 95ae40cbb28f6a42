#!/usr/bin/python3
"""Writes the fuzzers' seed corpus, fuzz/corpus/<target>/: small valid inputs
(and a few near misses) from which libFuzzer mutates. Run from the repository
root with Debian's python3 (python3-protobuf); the output is checked in."""

import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from qaas.v1 import job_pb2  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# safetensors: 8 bytes of data size, then the header.
def header(tensors, data_size, metadata=None):
    h = dict(tensors)
    if metadata:
        h["__metadata__"] = metadata
    return struct.pack("<Q", data_size) + json.dumps(h).encode()


write("safetensors_header", "two", header({
    "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}, 32, {"format": "pt"}))
write("safetensors_header", "scalar", header({"s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, 8))
write("safetensors_header", "overlap", header({
    "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, 6))

# config.json: the two architectures we run.
with open(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tiny-opt", "config.json")) as f:
    write("model_config", "opt", f.read())
write("model_config", "llama", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4,
    "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}))

for i, s in enumerate(["W4A16g128", "W4A4", "W4A8KV4", "W3A16", "W8A8_static", "W4A16g128_sym", "W2A16g64",
                       "Wmxint4Amxint8", "Wmxfp4Amxfp4", "Wmxfp6e2m3Amxfp8e5m2", "W16A8", "W8A8KVfp8e5m2",
                       "W4g128A16"]):
    write("scheme", "s%02d" % i, s)

specs = [
    job_pb2.JobSpec(model="file:///nonexistent-qaas-fuzz-root/m", preset="gptq",
                    scheme=job_pb2.QuantScheme(shorthand="W4A16g128"),
                    calibration=job_pb2.CalibrationSpec(dataset="file:///nonexistent-qaas-fuzz-root/c.txt",
                                                        num_samples=128, seq_len=2048, seed=1),
                    evaluation=[job_pb2.EvaluationSpec(dataset="file:///nonexistent-qaas-fuzz-root/e.txt",
                                                       seq_len=512, max_windows=4)],
                    priority=3, labels={"team": "a"}, idempotency_key="k"),
    job_pb2.JobSpec(model="s3://bucket/models/llama", recipe=[
        job_pb2.RecipeStep(method="smoothquant", smoothquant=job_pb2.SmoothQuantOptions(alpha=0.8)),
        job_pb2.RecipeStep(method="gptq", gptq=job_pb2.GptqOptions(damp=0.01, block_size=128, act_order=True))],
        scheme=job_pb2.QuantScheme(shorthand="W8A8"),
        calibration=job_pb2.CalibrationSpec(dataset="s3://bucket/c.jsonl")),
    job_pb2.JobSpec(model="s3://bucket/m", recipe=[job_pb2.RecipeStep(method="rtn")],
                    scheme=job_pb2.QuantScheme(shorthand="Wmxfp4Amxfp4"),
                    resources=job_pb2.Resources(device="cuda", min_gpu_memory_bytes=1 << 34)),
]
for i, spec in enumerate(specs):
    write("job_spec", "spec%d" % i, spec.SerializeToString())

# file_store: a mode byte (bit 0: the O_NOFOLLOW walk; bit 1: write, else
# delete) and a key into fuzz/file_store_fuzz.cc's tree.
for i, (mode, key) in enumerate([(0, "top"), (1, "a/b/file"), (0, "in/b/file"), (1, "up/outside/secret"),
                                 (0, "abs/secret"), (2, "a/rel/secret"), (3, "leak"), (2, "a/b/slash/tmp/x"),
                                 (0, "a/../../outside/secret"), (2, "in/new"), (0, "")]):
    write("file_store", "key%02d" % i, bytes([mode]) + key.encode())
