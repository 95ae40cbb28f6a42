#!/usr/bin/env bash
# Perplexity of stories260k under RTN, GPTQ and OmniQuant at the schemes of
# the OmniQuant paper's tables (the table of issue 5's closing note), with
# OmniQuant's seconds per block.
#
#   scripts/eval/omniquant_table.sh [BUILD_DIR] [OUT_DIR]
#
# Needs ../shared (stories260k, TinyStories sample) and a build with
# qaas-quantize. The protocol is scripts/eval/common.sh's. OmniQuant with
# the paper's defaults (20 epochs, 40 at W2; lwc_lr 1e-2, let_lr 5e-3). Two
# runs go in parallel (ATen runs one thread each). Prints a markdown table;
# the reports stay under OUT_DIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"
eval_setup /tmp/qaas-omniquant-table "$@"

run() {  # scheme recipe -> writes $out/<scheme>-<recipe>/report.json
  quantize "$model" "$out/$1-$2" "$1" "$2"
}
ppl() {
  perplexity "$out/$1-$2/report.json" perplexity_quantized
}
block_seconds() {  # OmniQuant's training seconds per block, mean over blocks
  python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["blocks"]; s=[x["transforms"]["omniquant"]["seconds"] for x in b]; print("%.1f" % (sum(s)/len(s)))' "$out/$1-omniquant/report.json"
}

schemes=(W4A16g128 W3A16g128 W2A16g64 W6A6 W4A4)
for scheme in "${schemes[@]}"; do
  run "$scheme" omniquant &
  run "$scheme" rtn
  run "$scheme" gptq
  wait
done
original=$(perplexity "$out/${schemes[0]}-rtn/report.json" perplexity_original)
echo "float: $original"
echo "| scheme | RTN | GPTQ | OmniQuant | OmniQuant s/block |"
echo "|---|---|---|---|---|"
for scheme in "${schemes[@]}"; do
  echo "| $scheme | $(ppl "$scheme" rtn) | $(ppl "$scheme" gptq) | $(ppl "$scheme" omniquant) | $(block_seconds "$scheme") |"
done
