#!/usr/bin/env python3
"""One llm-compressor job of the peer benchmark, on the CPU: load the model, run `oneshot` with
the job's recipe on the benchmark's calibration windows (calib.npy, the token ids qaas draws),
save the compressed-tensors checkpoint.

  quantize_llmc.py --job {gptq,rtn,smoothquant} --model DIR --calib calib.npy --output DIR
                   [--w4 {sym,asym}] [--actorder {static,none}] [--alpha 0.5]

Jobs (what qaas runs is in run.sh beside each):
  gptq         GPTQModifier, scheme W4A16 (int4, groups of 128, symmetric) or W4A16_ASYM;
               block_size 128, dampening_frac 0.01, actorder as --actorder.
  rtn          QuantizationModifier, the same scheme; min-max, no calibration data.
  smoothquant  SmoothQuantModifier(smoothing_strength=alpha) with its default LLaMA mappings
               (q/k/v <- input_layernorm, gate/up <- post_attention_layernorm), then
               QuantizationModifier W8A8 (int8 weights per output channel, symmetric; int8
               activations per token, dynamic, symmetric).
lm_head stays in float everywhere (as in qaas).
The whole process is what run.sh times: imports, model load, oneshot and save.
"""

import argparse
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peers_data import write_timing  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, choices=["gptq", "rtn", "smoothquant"])
    p.add_argument("--model", required=True)
    p.add_argument("--calib", help="calib.npy: [samples, seq_len] int64 token ids")
    p.add_argument("--output", required=True)
    p.add_argument("--w4", choices=["sym", "asym"], default="sym")
    p.add_argument("--actorder", choices=["static", "none"], default="static")
    p.add_argument("--alpha", type=float, default=0.5)
    args = p.parse_args()

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_imports = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto", device_map="cpu")
    # llm-compressor needs a processor when a dataset is given (it only saves it here: the
    # dataset below is already tokenized, with qaas's tokenization).
    processor = AutoTokenizer.from_pretrained(args.model)
    t_loaded = time.perf_counter()

    w4 = "W4A16" if args.w4 == "sym" else "W4A16_ASYM"
    dataset = None
    samples = seq_len = None
    if args.job == "gptq":
        recipe = [GPTQModifier(targets="Linear", scheme=w4, ignore=["lm_head"], block_size=128,
                               dampening_frac=0.01, actorder=None if args.actorder == "none" else "static")]
    elif args.job == "rtn":
        recipe = [QuantizationModifier(targets="Linear", scheme=w4, ignore=["lm_head"])]
    else:
        recipe = [SmoothQuantModifier(smoothing_strength=args.alpha),
                  QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
    if args.job in ("gptq", "smoothquant"):
        calib = np.load(args.calib)
        samples, seq_len = calib.shape
        dataset = Dataset.from_dict({"input_ids": calib.tolist(),
                                     "attention_mask": np.ones_like(calib).tolist()})

    kwargs = {}
    if dataset is not None:
        kwargs = dict(dataset=dataset, num_calibration_samples=samples, max_seq_length=seq_len,
                      shuffle_calibration_samples=False, batch_size=1)
    oneshot(model=model, processor=processor, recipe=recipe, **kwargs)
    t_quantized = time.perf_counter()
    model.save_pretrained(args.output, save_compressed=True)
    processor.save_pretrained(args.output)
    t_saved = time.perf_counter()
    write_timing(args.output, T_START, t_imports, t_loaded, t_quantized, t_saved, torch.get_num_threads())
    print(f"llm-compressor {args.job}: load {t_loaded - t_imports:.1f} s, oneshot {t_quantized - t_loaded:.1f} s, "
          f"save {t_saved - t_quantized:.1f} s -> {args.output}")


if __name__ == "__main__":
    sys.exit(main())
