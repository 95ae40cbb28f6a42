#!/usr/bin/env bash
# qaas's compressed-tensors artifacts (quant_method "compressed-tensors", as
# llm-compressor writes them) checked with the compressed-tensors library and
# Transformers on CPU by verify_compressed_tensors.py: every quantized module
# decompressed by the library bit-identical to the weight the job evaluated,
# the Transformers load (default path, else dequantize=True), logits against a
# float32 reference holding our weights and our activation quantization, and
# the perplexity of the loaded model on the job's own evaluation windows
# against report.json.
#
# One artifact per format the writer emits (quant/export_compressed.cc):
#   pack-quantized        W4A16g128 (asym GPTQ), W4A16g4 (asym GPTQ), W4A16g4_sym (RTN), W8A16 (asym per channel)
#   int-quantized         W8A8_sym (dynamic per token), W8A8_sym_static (per tensor), SmoothQuant + GPTQ
#   float-quantized       Wfp8 (A16), Wfp8Afp8 (per-channel E4M3 weights, per-token activations)
#   mxfp4-pack-quantized  Wmxfp4 (A16), Wmxfp4Amxfp4
#   mxfp8-quantized       Wmxfp8 (A16), Wmxfp8Amxfp8
# on stories260k (hidden 64, intermediate 172: only per-channel schemes and
# groups of 2 or 4 divide its widths, and compressed-tensors has no ragged
# groups) and on "rand256", a random Llama made by qaas-make-model with
# widths 256 and 768 and stories260k's tokenizer, for groups of 128 and MX.
# Both are calibrated on wikitext-2 valid (16 x 256) and evaluated on
# wikitext-2 test (8 windows of 256); one rand256 artifact is written in
# shards of 400 kB with model.safetensors.index.json. One more case checks that stories260k
# at W4A16g128 is refused naming the width no group divides.
#
# Usage (repository root, after building; a Python environment with torch,
# transformers >= 5, compressed-tensors and sentencepiece):
#   scripts/verify/verify_compressed_tensors.sh [WORKDIR] [BUILD_DIR] [PYTHON]
# QAAS_CT_CASES (space-separated case names below) runs a subset. Prints one
# markdown table row per artifact (details in WORKDIR/<case>.log); exits 1 if
# any artifact fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:-/tmp/qaas-ct-verify}
BUILD=${2:-$ROOT/build}
PY=${3:-/tmp/refenv/bin/python}
SHARED=${QAAS_SHARED:-$ROOT/../shared}
WIKI=$SHARED/data/wikitext-2
mkdir -p "$WORK"

# case: model scheme recipe
declare -A CASE=(
  [w4g4-gptq]="stories260k W4A16g4 gptq"
  [w4g4sym-rtn]="stories260k W4A16g4_sym rtn"
  [w8-rtn]="stories260k W8A16 rtn"
  [w8a8sym-sq-gptq]="stories260k W8A8_sym smoothquant,gptq"
  [w8a8sym-static-sq-gptq]="stories260k W8A8_sym_static smoothquant,gptq"
  [fp8-rtn]="stories260k Wfp8 rtn"
  [fp8afp8-sq-rtn]="stories260k Wfp8Afp8 smoothquant,rtn"
  [r256-w4g128-gptq]="rand256 W4A16g128 gptq"
  [r256-w4g128sym-rtn]="rand256 W4A16g128_sym rtn"
  [r256-w4g128sym-rtn-shards]="rand256 W4A16g128_sym rtn --max_shard_bytes=400000"
  [r256-fp8afp8-rtn]="rand256 Wfp8Afp8 rtn"
  [r256-wmxfp4-rtn]="rand256 Wmxfp4 rtn"
  [r256-wmxfp4amxfp4-rtn]="rand256 Wmxfp4Amxfp4 rtn"
  [r256-wmxfp8-rtn]="rand256 Wmxfp8 rtn"
  [r256-wmxfp8amxfp8-rtn]="rand256 Wmxfp8Amxfp8 rtn"
)
CASES=${QAAS_CT_CASES:-w4g4-gptq w4g4sym-rtn w8-rtn w8a8sym-sq-gptq w8a8sym-static-sq-gptq fp8-rtn fp8afp8-sq-rtn \
r256-w4g128-gptq r256-w4g128sym-rtn r256-w4g128sym-rtn-shards r256-fp8afp8-rtn r256-wmxfp4-rtn r256-wmxfp4amxfp4-rtn r256-wmxfp8-rtn \
r256-wmxfp8amxfp8-rtn}

if [[ " $CASES " == *" r256-"* ]]; then
  rm -rf "$WORK/rand256"
  "$BUILD/cli/qaas-make-model" --output "$WORK/rand256" --hidden 256 --intermediate 768 --layers 4 --heads 4 \
      --kv_heads 2 --vocab 512 --tokenizer "$SHARED/models/stories260k/tokenizer.model" --seed 7 >/dev/null
fi

status=0
# stories260k's widths (64, 172) take no group of 128: refused before any work, naming the width.
if out=$("$BUILD/cli/qaas-quantize" --model "$SHARED/models/stories260k" --output "$WORK/refused" --scheme W4A16g128 \
    --format compressed-tensors --device cpu --quiet 2>&1); then
  echo "| W4A16g128 on stories260k | was not refused |"
  status=1
elif [[ "$out" != *"input features"* ]]; then
  echo "| W4A16g128 on stories260k | refused without naming the width: $out |"
  status=1
fi
header=--table-header
for c in $CASES; do
  read -r model scheme recipe extra <<<"${CASE[$c]}"
  out=$WORK/$c
  rm -rf "$out"
  mdir=$WORK/$model evaltext=$WIKI/test.txt
  [ "$model" = stories260k ] && mdir=$SHARED/models/stories260k
  args=(--calib "$WIKI/valid.txt" --num_samples 16 --calib_seq_len 256 --eval_seq_len 256 ${extra:-})
  if ! "$BUILD/cli/qaas-quantize" --model "$mdir" --output "$out" --scheme "$scheme" --recipe "$recipe" "${args[@]}" \
      --eval "$evaltext" --max_windows 8 --format compressed-tensors --device cpu --quiet >"$WORK/$c.quantize.log" 2>&1; then
    echo "| $scheme ($c) | qaas-quantize failed: $(tail -1 "$WORK/$c.quantize.log") |"
    status=1
    continue
  fi
  "$PY" "$ROOT/scripts/verify/verify_compressed_tensors.py" --out "$out" --model "$mdir" --eval-text "$evaltext" \
      --label "$c" --json "$WORK/$c.verify.json" $header 2>"$WORK/$c.log" || status=1
  header=
done
exit $status
