#!/usr/bin/env python3
"""The GPTQModel job of the peer benchmark, on the CPU: GPTQ W4A16, groups of 128, on the
benchmark's calibration windows (calib.npy, the token ids qaas draws); saved in GPTQ's
checkpoint layout (qweight/qzeros/scales/g_idx), which evaluate.py dequantizes.

  quantize_gptqmodel.py --model DIR --calib calib.npy --output DIR [--w4 {sym,asym}]
                        [--actorder {static,none}]

Settings: bits 4, group_size 128, damp_percent 0.01, true_sequential (GPTQModel's default, and
qaas's), no MSE clipping; --actorder static = desc_act with static_groups (llm-compressor's
"static" and qaas's --act_order --static_groups), none = neither act-order nor GPTQModel's
act_group_aware reordering (static_groups stays on, as in llm-compressor, whose GPTQ always
takes group parameters from the unmodified weights).
Exit status 3 with a line "SKIP: reason" when GPTQModel cannot run here.
"""

import argparse
import os
import sys
import time

T_START = time.perf_counter()

from peers_data import write_timing  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--w4", choices=["sym", "asym"], default="sym")
    p.add_argument("--actorder", choices=["static", "none"], default="static")
    args = p.parse_args()

    # GPTQModel 7.6 sizes its CPU worker pool as (cores + 1) // 2 but asks for 2 loader workers
    # inside it, which fails on a machine with 1 or 2 cores ("Virtual pool 'model_loader:cpu'
    # requests 2 workers but parent 'cpu' only has 1"): give the pool at least 2.
    if "GPTQMODEL_CPU_WORKERS" not in os.environ and ((os.cpu_count() or 1) + 1) // 2 < 2:
        os.environ["GPTQMODEL_CPU_WORKERS"] = "2"
    # Its CPU packing otherwise JIT-compiles a C++ extension (pack_block_cpu, ~30 s with a
    # compiler, on the first run only); its pure-torch fallback packs the same bits.
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    try:
        import numpy as np
        import torch
        from gptqmodel import GPTQModel, QuantizeConfig
    except Exception as e:  # noqa: BLE001 - any import failure means: skip, saying why
        print(f"SKIP: GPTQModel does not import: {type(e).__name__}: {e}")
        return 3
    t_imports = time.perf_counter()

    calib = np.load(args.calib)
    dataset = [{"input_ids": torch.from_numpy(row).unsqueeze(0),
                "attention_mask": torch.ones(1, row.shape[0], dtype=torch.long)} for row in calib]
    static = args.actorder == "static"
    qc = QuantizeConfig(bits=4, group_size=128, sym=args.w4 == "sym", desc_act=static, static_groups=True,
                        act_group_aware=False, damp_percent=0.01, true_sequential=True, mse=0.0)
    model = GPTQModel.load(args.model, qc, device="cpu", dtype=torch.float32)
    t_loaded = time.perf_counter()
    # calibration_sort=None keeps the windows in qaas's order (all have the same length).
    model.quantize(dataset, batch_size=1, calibration_sort=None)
    t_quantized = time.perf_counter()
    model.save(args.output)
    t_saved = time.perf_counter()
    write_timing(args.output, T_START, t_imports, t_loaded, t_quantized, t_saved, torch.get_num_threads())
    print(f"GPTQModel gptq: load {t_loaded - t_imports:.1f} s, quantize {t_quantized - t_loaded:.1f} s, "
          f"save {t_saved - t_quantized:.1f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
