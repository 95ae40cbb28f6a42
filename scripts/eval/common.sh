# Sourced by scripts/eval/*_table.sh: the evaluation protocol their tables
# share. Calibration: 32 windows of 512 tokens of the TinyStories sample
# (seed 0); evaluation: the whole sample, seq_len 512.

# eval_setup DEFAULT_OUT [BUILD_DIR] [OUT_DIR]: sets here, build, out, model
# (stories260k) and text (the TinyStories sample); exits 2 without ../shared.
eval_setup() {
  here="$(cd "$(dirname "$0")/../.." && pwd)"
  build="${2:-$here/build}"
  out="${3:-$1}"
  local shared="$here/../shared"
  model="$shared/models/stories260k"
  text="$shared/data/tinystories/valid-sample.txt"
  [[ -d "$model" ]] || { echo "needs $model (../shared)" >&2; exit 2; }
  mkdir -p "$out"
}

# quantize MODEL_DIR OUT_DIR SCHEME RECIPE: one qaas-quantize run under the protocol.
quantize() {
  "$build/cli/qaas-quantize" --quiet --model "$1" --output "$2" --scheme "$3" --recipe "$4" \
    --calib "$text" --calib_seq_len 512 --num_samples 32 --eval "$text" --eval_seq_len 512 >/dev/null
}

# perplexity REPORT_JSON FIELD: the first evaluation's perplexity_original or
# perplexity_quantized, to 4 decimals.
perplexity() {
  python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["evaluations"][0][sys.argv[2]])' "$1" "$2"
}
