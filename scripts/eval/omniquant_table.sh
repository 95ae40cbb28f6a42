#!/usr/bin/env bash
# Perplexity of stories260k under RTN, GPTQ and OmniQuant at the schemes of
# the OmniQuant paper's tables (the table of issue 5's closing note), with
# OmniQuant's seconds per block.
#
#   scripts/eval/omniquant_table.sh [BUILD_DIR] [OUT_DIR]
#
# Needs ../shared (stories260k, TinyStories sample) and a build with
# qaas-quantize. Calibration: 32 windows of 512 tokens of the TinyStories
# sample (seed 0); evaluation: the whole sample, seq_len 512. OmniQuant with
# the paper's defaults (20 epochs, 40 at W2; lwc_lr 1e-2, let_lr 5e-3). Two
# runs go in parallel (ATen runs one thread each). Prints a markdown table;
# the reports stay under OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$here/build}"
out="${2:-/tmp/qaas-omniquant-table}"
shared="$here/../shared"
model="$shared/models/stories260k"
text="$shared/data/tinystories/valid-sample.txt"
[[ -d "$model" ]] || { echo "needs $model (../shared)" >&2; exit 2; }
mkdir -p "$out"

run() {  # scheme recipe -> writes $out/<scheme>-<recipe>/report.json
  "$build/cli/qaas-quantize" --quiet --model "$model" --output "$out/$1-$2" --scheme "$1" --recipe "$2" \
    --calib "$text" --calib_seq_len 512 --num_samples 32 --eval "$text" --eval_seq_len 512 >/dev/null
}
ppl() {
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["evaluations"][0]; print("%.4f" % e["perplexity_quantized"])' "$out/$1-$2/report.json"
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
original=$(python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["evaluations"][0]["perplexity_original"])' "$out/${schemes[0]}-rtn/report.json")
echo "float: $original"
echo "| scheme | RTN | GPTQ | OmniQuant | OmniQuant s/block |"
echo "|---|---|---|---|---|"
for scheme in "${schemes[@]}"; do
  echo "| $scheme | $(ppl "$scheme" rtn) | $(ppl "$scheme" gptq) | $(ppl "$scheme" omniquant) | $(block_seconds "$scheme") |"
done
