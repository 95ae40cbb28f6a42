#!/usr/bin/env bash
# Each LLaMA-like family's GPTQ artifact, loaded by Transformers (GPTQ
# integration, GPT-QModel kernels) on CPU, against a float32 Transformers
# model of the same family holding our weights dequantized by NumPy
# (verify_gptq_export.py): zero points and dequantized weights bit-exact,
# logits within the reduced-precision bound.
#
# The models are tests/data/families (tiny, made by Transformers with every
# feature on); each gets a 320-piece SentencePiece tokenizer trained here so
# that qaas-quantize can calibrate on TinyStories, and the logits are taken
# on random ids (the models' vocabulary is 320).
#
# Usage (repository root, after building; a Python environment with
# transformers, gptqmodel, optimum and sentencepiece, see
# verify_gptq_export.py):
#   scripts/verify/verify_family_exports.sh [PYTHON] [WORKDIR]
# Mixtures of experts (mixtral, qwen2-moe, qwen3-moe): every expert's zero
# points and dequantized weights bit-exact, the float router / shared-expert
# gate equal to ours, logits within the bound on the positions that route as
# the reference does (flips at near-ties counted, see verify_gptq_export.py).
# Transformers 5 fuses experts into 3-D parameters; the GPTQ load builds one
# nn.Linear per expert with `defuser` (a dependency of gptqmodel 7).  Mixtral's
# w2 and Qwen2-MoE's shared-expert down_proj read 48 channels: groups of 16,
# gptq_torch only, as llama3.  Our MoE configs list the quantized linears in
# modules_in_block_to_quantize, so optimum leaves the float shared_expert_gate
# (Qwen2-MoE) alone; verify_gptq_export.py --modules-in-block-override adds
# that list to a copy of an older artifact that lacks it.
# Only Transformers' loader runs: GPTQModel.load refuses sym=False v1
# checkpoints (see verify_gptq_export.py), expects Phi-3's MLP as separate
# gate_proj / up_proj (its own Phi-3 definition un-fuses gate_up_proj), and
# cannot build the tiny Qwen3 (pad_token_id null).
set -euo pipefail
PY=${1:-/tmp/refenv/bin/python}
WORK=${2:-/tmp/qaas-family-verify}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${QAAS_SHARED:-$ROOT/../shared}
TEXT=$SHARED/data/tinystories/valid-sample.txt
mkdir -p "$WORK"
"$PY" - "$TEXT" "$WORK/sp320" <<'EOF'
import sys
import sentencepiece as spm
spm.SentencePieceTrainer.train(input=sys.argv[1], model_prefix=sys.argv[2], vocab_size=320, model_type="bpe",
                               byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                               normalization_rule_name="identity", minloglevel=2)
EOF
status=0
# QAAS_FAMILIES (space-separated) runs a subset, e.g. "mixtral qwen2-moe qwen3-moe"
for family in ${QAAS_FAMILIES:-llama3 mistral qwen2 qwen3 gemma2 gemma3 phi3 phi3-mini mixtral qwen2-moe qwen3-moe}; do
  model=$WORK/$family
  rm -rf "$model" "$WORK/out-$family"
  cp -r "$ROOT/tests/data/families/$family" "$model"
  cp "$WORK/sp320.model" "$model/tokenizer.model"
  scheme=W4A16g32
  runs=transformers:gptq_torch:float16,transformers:auto:float16,transformers:auto:bfloat16
  if [ "$family" = llama3 ] || [ "$family" = mixtral ] || [ "$family" = qwen2-moe ]; then
    # hidden 48: groups of 16, which GPT-QModel's fused CPU kernel (picked by
    # "auto") cannot run (ATen's int4pack mm takes groups of 32..256 only).
    scheme=W4A16g16
    runs=transformers:gptq_torch:float16,transformers:gptq_torch:bfloat16
  fi
  "$ROOT/build/cli/qaas-quantize" --model "$model" --output "$WORK/out-$family" --recipe gptq --scheme $scheme \
      --calib "$TEXT" --num_samples 16 --calib_seq_len 64 --device cpu --quiet
  echo "== $family"
  "$PY" "$ROOT/scripts/verify/verify_gptq_export.py" --artifact "$WORK/out-$family/artifact" --model "$model" \
      --random-ids 0 --seqlen 32 \
      --runs "$runs" \
      --json "$WORK/out-$family/verify.json" \
      | grep -E "^\[layout\] scheme|^\[moe\]|^\[ref\] dense|^\[transformers|^    moe:|^RESULT" || status=1
done
exit $status
