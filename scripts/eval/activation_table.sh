#!/usr/bin/env bash
# Perplexity of stories260k and its outlier variant under activation / KV-cache
# schemes and the transform recipes (the table of issue 4's closing note).
#
#   scripts/eval/activation_table.sh [BUILD_DIR] [OUT_DIR]
#
# Needs ../shared (stories260k, TinyStories sample) and a build with
# qaas-quantize and qaas-make-model. The protocol is scripts/eval/common.sh's.
# The two models' runs of a row go in parallel (ATen runs one thread each).
# Prints a markdown table; the reports stay under OUT_DIR.
set -euo pipefail
source "$(dirname "$0")/common.sh"
eval_setup /tmp/qaas-activation-table "$@"
"$build/cli/qaas-make-model" --outliers_from "$model" --output "$out/stories260k-outliers" >/dev/null

run() {  # model-name scheme recipe -> "original quantized"
  local name="$1" scheme="$2" recipe="$3" dir
  dir="$out/$name-$scheme-${recipe//,/+}"
  local m="$model"
  [[ "$name" == outliers ]] && m="$out/stories260k-outliers"
  quantize "$m" "$dir" "$scheme" "$recipe"
  echo "$(perplexity "$dir/report.json" perplexity_original) $(perplexity "$dir/report.json" perplexity_quantized)"
}

rows=(
  "W8A8 rtn" "W4A8 rtn" "W4A4 rtn" "W4A4KV4 rtn"
  "W8A8 smoothquant,rtn" "W4A8 smoothquant,rtn"
  "W4A8 rptq,rtn" "W4A4 rptq,rtn" "W4A4KV4 rptq,rtn" "W3A3KV3 rptq,rtn"
  "Wmxint4Amxint8 smoothquant,gptq" "Wmxfp4Amxfp4 smoothquant,gptq"
  "Wmxint8Amxint8 rtn" "Wmxfp8Amxfp8 rtn"
)
echo "| scheme | recipe | stories260k | outlier variant |"
echo "|---|---|---|---|"
first=1
for row in "${rows[@]}"; do
  read -r scheme recipe <<<"$row"
  run base "$scheme" "$recipe" >"$out/row-base" &
  run outliers "$scheme" "$recipe" >"$out/row-outliers"
  wait
  read -r o1 q1 <"$out/row-base"
  read -r o2 q2 <"$out/row-outliers"
  if [[ $first == 1 ]]; then
    echo "| original (float) | - | $o1 | $o2 |"
    first=0
  fi
  echo "| $scheme | ${recipe//,/ → } | $q1 | $q2 |"
done
