#!/usr/bin/env bash
# Peer benchmark: qaas against llm-compressor (and GPTQModel) on the CPU, same model, same
# calibration tokens, one evaluator. See bench/peers/README.md.
#
# Usage: bench/peers/run.sh [--smoke] [options]
#
#   --smoke                 a tiny model and few windows (every path runs in a few minutes)
#   --work DIR              work dir: model, tokens, outputs, logs, results   [$QAAS_PEERS_WORK or /tmp/qaas-peers]
#   --venv DIR              the pinned Python environment (created if missing) [$QAAS_PEERS_VENV or ~/.cache/qaas/peers-venv]
#   --build DIR             qaas build dir with cli/qaas-quantize, cli/qaas-make-model [$QAAS_PEERS_BUILD, $QAAS_BUILD or <repo>/build]
#   --jobs LIST             of gptq,rtn,smoothquant                              [$QAAS_PEERS_JOBS or all three]
#   --tools LIST            of qaas,llmc,gptqmodel (gptqmodel runs the gptq job only) [$QAAS_PEERS_TOOLS or all three]
#   --hidden N --intermediate N --layers N --heads N --kv_heads N --vocab N --context N --dtype T --seed N
#                           the random LLaMA [768 2048 8 12 12 32000 2048 float32 0; env QAAS_PEERS_HIDDEN, ...]
#   --tokenizer auto|train|FILE  auto: ../shared's Llama 2 tokenizer.model when vocab is 32000, else a BPE
#                           tokenizer that qaas-make-model trains on the calibration text [$QAAS_PEERS_TOKENIZER]
#   --calib FILE --num_samples N --calib_seq_len N
#                           calibration text and windows [WikiText-2 valid.txt, 128, 512]
#   --eval FILE --eval_seq_len N --eval_windows N
#                           evaluation text and windows [WikiText-2 test.txt, 512, 40]
#   --w4 sym|asym           the 4-bit jobs' weights: symmetric (llm-compressor's W4A16) or asymmetric [sym]
#   --actorder static|none  GPTQ's column order (see README) [static]
#   --alpha X               SmoothQuant's migration strength [0.5]
#   --setup-only            create/update the Python environment and stop
#
# Every option also reads an environment variable QAAS_PEERS_<NAME> (upper case, e.g.
# QAAS_PEERS_NUM_SAMPLES=64); a flag wins over it. Prints a Markdown table at the end and writes
# it to <work>/results.md (with <work>/results.json).
#
# Full run (the defaults):  bench/peers/run.sh
# Smoke run:                bench/peers/run.sh --smoke --work /tmp/qaas-peers-smoke
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=${QAAS_SHARED:-$root/../shared}

die() { echo "bench/peers: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# --smoke first: its sizes are defaults that the other flags and variables still override.
smoke=0
for a in "$@"; do [[ $a == --smoke ]] && smoke=1; done
if (( smoke )); then
  d_hidden=128 d_intermediate=256 d_layers=2 d_heads=4 d_kv_heads=4 d_vocab=512 d_context=512
  d_num_samples=8 d_calib_seq_len=128 d_eval_seq_len=128 d_eval_windows=4
  d_work=/tmp/qaas-peers-smoke
else
  d_hidden=768 d_intermediate=2048 d_layers=8 d_heads=12 d_kv_heads=12 d_vocab=32000 d_context=2048
  d_num_samples=128 d_calib_seq_len=512 d_eval_seq_len=512 d_eval_windows=40
  d_work=/tmp/qaas-peers
fi
work=${QAAS_PEERS_WORK:-$d_work}
venv=${QAAS_PEERS_VENV:-$HOME/.cache/qaas/peers-venv}
build=${QAAS_PEERS_BUILD:-${QAAS_BUILD:-$root/build}}
jobs=${QAAS_PEERS_JOBS:-gptq,rtn,smoothquant}
tools=${QAAS_PEERS_TOOLS:-qaas,llmc,gptqmodel}
hidden=${QAAS_PEERS_HIDDEN:-$d_hidden}
intermediate=${QAAS_PEERS_INTERMEDIATE:-$d_intermediate}
layers=${QAAS_PEERS_LAYERS:-$d_layers}
heads=${QAAS_PEERS_HEADS:-$d_heads}
kv_heads=${QAAS_PEERS_KV_HEADS:-$d_kv_heads}
vocab=${QAAS_PEERS_VOCAB:-$d_vocab}
context=${QAAS_PEERS_CONTEXT:-$d_context}
dtype=${QAAS_PEERS_DTYPE:-float32}
seed=${QAAS_PEERS_SEED:-0}
tokenizer=${QAAS_PEERS_TOKENIZER:-auto}
calib=${QAAS_PEERS_CALIB:-$shared/data/wikitext-2/valid.txt}
num_samples=${QAAS_PEERS_NUM_SAMPLES:-$d_num_samples}
calib_seq_len=${QAAS_PEERS_CALIB_SEQ_LEN:-$d_calib_seq_len}
eval_file=${QAAS_PEERS_EVAL:-$shared/data/wikitext-2/test.txt}
eval_seq_len=${QAAS_PEERS_EVAL_SEQ_LEN:-$d_eval_seq_len}
eval_windows=${QAAS_PEERS_EVAL_WINDOWS:-$d_eval_windows}
w4=${QAAS_PEERS_W4:-sym}
actorder=${QAAS_PEERS_ACTORDER:-static}
alpha=${QAAS_PEERS_ALPHA:-0.5}
setup_only=0

while (( $# )); do
  case $1 in
    --smoke) ;;
    --setup-only) setup_only=1 ;;
    -h|--help) usage; exit 0 ;;
    --work|--venv|--build|--jobs|--tools|--hidden|--intermediate|--layers|--heads|--kv_heads|--vocab|--context|\
    --dtype|--seed|--tokenizer|--calib|--num_samples|--calib_seq_len|--eval|--eval_seq_len|--eval_windows|--w4|\
    --actorder|--alpha)
      (( $# >= 2 )) || die "$1 needs a value"
      name=${1#--}; [[ $name == eval ]] && name=eval_file
      printf -v "$name" '%s' "$2"; shift ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
  shift
done
[[ $w4 == sym || $w4 == asym ]] || die "--w4 is sym or asym"
# Absolute paths: the jobs run in the work dir (GPTQModel writes logs/ into its current directory).
venv=$(realpath -m "$venv")
build=$(realpath -m "$build")
calib=$(realpath -m "$calib")
eval_file=$(realpath -m "$eval_file")
[[ $tokenizer == auto || $tokenizer == train ]] || tokenizer=$(realpath -m "$tokenizer")
[[ $actorder == static || $actorder == none ]] || die "--actorder is static or none"

# ---------------------------------------------------------------- Python environment
setup_venv() {
  local stamp="$venv/.qaas-peers-requirements" want
  want=$(cat "$here/requirements.txt" "$here/requirements-gptqmodel.txt" | sha256sum | cut -d' ' -f1)
  if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    [[ $(cat "$venv/.gptqmodel" 2>/dev/null) == ok ]] && return 0
  else
    echo "== Python environment: $venv (pinned in bench/peers/requirements*.txt; several GB, from PyPI)"
    if [[ ! -x $venv/bin/pip ]]; then
      if [[ -e $venv && ! -f $venv/pyvenv.cfg ]]; then
        die "$venv exists and is not a virtual environment"
      fi
      if ! python3 -m venv --clear "$venv"; then
        # Debian ships venv's pip bootstrap separately.
        local sudo=; (( EUID == 0 )) || sudo=sudo
        $sudo apt-get install -y -q python3-venv > /dev/null || die "python3 -m venv failed; apt-get install python3-venv"
        python3 -m venv --clear "$venv" || die "python3 -m venv failed"
      fi
    fi
    rm -f "$stamp" "$venv/.gptqmodel"
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$here/requirements.txt"
    echo "$want" > "$stamp"
  fi
  # GPTQModel is optional: if it does not install, its job is skipped with the reason (and the
  # install is tried again on the next run).
  if "$venv/bin/pip" install --disable-pip-version-check -q -r "$here/requirements.txt" \
       -r "$here/requirements-gptqmodel.txt" > "$venv/gptqmodel-install.log" 2>&1; then
    echo ok > "$venv/.gptqmodel"
  else
    echo "pip install of requirements-gptqmodel.txt failed; see $venv/gptqmodel-install.log" > "$venv/.gptqmodel"
    echo "   GPTQModel did not install (its job will be skipped): see $venv/gptqmodel-install.log"
  fi
}
setup_venv
py=$venv/bin/python
(( setup_only )) && { echo "Python environment ready: $venv"; exit 0; }

make_model=$build/cli/qaas-make-model
quantize=$build/cli/qaas-quantize
[[ -x $make_model && -x $quantize ]] || die "no qaas build at $build (scripts/setup then cmake, or --build DIR)"
[[ -f $calib ]] || die "calibration text $calib not found"
[[ -f $eval_file ]] || die "evaluation text $eval_file not found"

mkdir -p "$work"/{runs,logs,out,evals}
work=$(cd "$work" && pwd)
cd "$work"
has() { [[ ,$1, == *,$2,* ]]; }

# ---------------------------------------------------------------- the model
if [[ $tokenizer == auto ]]; then
  if [[ $vocab == 32000 && -f $shared/models/llama2-tokenizer/tokenizer.model ]]; then
    tokenizer=$shared/models/llama2-tokenizer/tokenizer.model
  else
    tokenizer=train
  fi
fi
model_args=(--hidden "$hidden" --intermediate "$intermediate" --layers "$layers" --heads "$heads"
            --kv_heads "$kv_heads" --vocab "$vocab" --context "$context" --dtype "$dtype" --seed "$seed")
if [[ $tokenizer == train ]]; then
  model_args+=(--tokenizer_text "$calib")
else
  model_args+=(--tokenizer "$tokenizer")
fi
model=$work/model
if [[ ! -f $model/.made-with || $(cat "$model/.made-with") != "${model_args[*]}" ]]; then
  echo "== model: qaas-make-model ${model_args[*]}"
  rm -rf "$model"
  "$make_model" --output "$model" "${model_args[@]}" > /dev/null
  echo "${model_args[*]}" > "$model/.made-with"
fi
echo "== model: $model ($(du -sh "$model/model.safetensors" | cut -f1)B of weights; ${model_args[*]})"

# ---------------------------------------------------------------- the tokens (once, for every tool)
"$py" "$here/peers_data.py" windows --model "$model" --calib "$calib" --num_samples "$num_samples" \
  --calib_seq_len "$calib_seq_len" --seed "$seed" --eval "$eval_file" --eval_seq_len "$eval_seq_len" \
  --max_windows "$eval_windows" --out "$work/tokens"

# ---------------------------------------------------------------- the jobs
# One untimed import of every Python tool first, so that no measured job pays for the
# environment's first use (bytecode compilation, caches).
"$py" -c 'import importlib, sys
for m in ("torch", "transformers", "compressed_tensors", "llmcompressor", "gptqmodel"):
    try: importlib.import_module(m)
    except Exception as e: print(f"warm-up: {m} does not import: {type(e).__name__}: {e}")' \
  > "$work/logs/warm-up.log" 2>&1 || true

# run_measured TOOL JOB -- COMMAND...: wall time and peak RSS of the whole process (measure.py).
run_measured() {
  local tool=$1 job=$2 rc=0; shift 3
  rm -f "$work/runs/$tool-$job.json"
  echo "== $job: $tool"
  "$py" "$here/measure.py" --out "$work/runs/$tool-$job.json" --log "$work/logs/$tool-$job.log" \
    --label tool="$tool" --label job="$job" -- "$@" || rc=$?
  if (( rc == 0 )); then
    "$py" -c 'import json,sys; r=json.load(open(sys.argv[1])); print("   %.1f s, peak RSS %.2f GB" % (r["wall_s"], r["peak_rss_bytes"] / 1e9))' \
      "$work/runs/$tool-$job.json"
  elif ! grep -q '^SKIP: ' "$work/logs/$tool-$job.log"; then
    echo "   FAILED (exit $rc): last lines of $work/logs/$tool-$job.log:"
    tail -n 5 "$work/logs/$tool-$job.log" | sed 's/^/   | /'
  fi
  return 0
}
skip() {  # skip TOOL JOB REASON
  echo "== $2: $1 skipped: $3"
  "$py" -c 'import json,sys; json.dump({"tool": sys.argv[1], "job": sys.argv[2], "skipped": sys.argv[3]}, open(sys.argv[4], "w"))' \
    "$1" "$2" "$3" "$work/runs/$1-$2.json"
}

w4_qaas=W4A16g128; [[ $w4 == sym ]] && w4_qaas=W4A16g128_sym
gptq_order=(--static_groups); [[ $actorder == static ]] && gptq_order=(--act_order --static_groups)
calib_qaas=(--calib "$calib" --calib_seq_len "$calib_seq_len" --num_samples "$num_samples" --seed "$seed")
qaas_common=(--model "$model" --device cpu --format compressed-tensors)
rm -f "$work"/runs/*.json "$work"/evals/*.json

for job in gptq rtn smoothquant; do
  has "$jobs" "$job" || continue
  out=$work/out
  if has "$tools" qaas; then
    rm -rf "$out/qaas-$job"
    case $job in
      gptq) args=(--recipe gptq "${gptq_order[@]}" --scheme "$w4_qaas" "${calib_qaas[@]}") ;;
      rtn) args=(--recipe rtn --scheme "$w4_qaas") ;;
      smoothquant) args=(--recipe smoothquant,rtn --alpha "$alpha" --scheme W8A8_sym "${calib_qaas[@]}") ;;
    esac
    run_measured qaas "$job" -- "$quantize" "${qaas_common[@]}" --output "$out/qaas-$job" "${args[@]}"
  fi
  if has "$tools" llmc; then
    rm -rf "$out/llmc-$job"
    run_measured llmc "$job" -- "$py" "$here/quantize_llmc.py" --job "$job" --model "$model" \
      --calib "$work/tokens/calib.npy" --output "$out/llmc-$job" --w4 "$w4" --actorder "$actorder" --alpha "$alpha"
  fi
  if [[ $job == gptq ]] && has "$tools" gptqmodel; then
    rm -rf "$out/gptqmodel-$job"
    if [[ $(cat "$venv/.gptqmodel" 2>/dev/null) != ok ]]; then
      skip gptqmodel "$job" "$(cat "$venv/.gptqmodel" 2>/dev/null || echo 'not installed')"
    else
      run_measured gptqmodel "$job" -- "$py" "$here/quantize_gptqmodel.py" --model "$model" \
        --calib "$work/tokens/calib.npy" --output "$out/gptqmodel-$job" --w4 "$w4" --actorder "$actorder"
      if grep -q '^SKIP: ' "$work/logs/gptqmodel-$job.log"; then
        skip gptqmodel "$job" "$(grep -m1 '^SKIP: ' "$work/logs/gptqmodel-$job.log" | cut -c7-)"
      fi
    fi
  fi
done

# ---------------------------------------------------------------- one evaluator for every output
evaluate() {  # evaluate NAME DIR
  local rc=0
  echo "== perplexity: $1"
  "$py" "$here/evaluate.py" --model "$2" --tokens "$work/tokens/eval.npy" --out "$work/evals/$1.json" \
    > "$work/logs/eval-$1.log" 2>&1 || rc=$?
  if (( rc == 0 )); then tail -n 1 "$work/logs/eval-$1.log" | sed 's/^/   /'
  else echo "   FAILED (exit $rc): see $work/logs/eval-$1.log"; tail -n 3 "$work/logs/eval-$1.log" | sed 's/^/   | /'; fi
}
evaluate unquantized "$model"
for run in "$work"/runs/*.json; do
  name=$(basename "$run" .json)
  tool=${name%%-*}
  dir=$work/out/$name; [[ $tool == qaas ]] && dir=$dir/artifact
  "$py" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("returncode") == 0 else 1)' "$run" \
    && evaluate "$name" "$dir"
done

# ---------------------------------------------------------------- same calibration windows?
if [[ -f $work/out/qaas-smoothquant/artifact/config.json || -f $work/out/llmc-smoothquant/config.json ]]; then
  check=(--model "$model" --calib "$work/tokens/calib.npy" --alpha "$alpha" --out "$work/calib-check.json")
  [[ -f $work/out/qaas-smoothquant/artifact/config.json ]] && check+=(--qaas "$work/out/qaas-smoothquant/artifact")
  [[ -f $work/out/llmc-smoothquant/config.json ]] && check+=(--llmc "$work/out/llmc-smoothquant")
  "$py" "$here/check_calib.py" "${check[@]}" || echo "   calibration check FAILED"
fi

# ---------------------------------------------------------------- the table
settings="w4=$w4 actorder=$actorder alpha=$alpha calib=$(basename "$calib") ${num_samples}x$calib_seq_len seed=$seed"
settings+=" eval=$(basename "$eval_file") ${eval_windows}x$eval_seq_len"
"$py" "$here/report.py" --work "$work" --venv "$venv" --settings "$settings" --model_args "${model_args[*]}" \
  --qaas_binary "$quantize"
