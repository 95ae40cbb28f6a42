// Writes random-initialised Hugging Face LLaMA (or Mixtral) checkpoints of any shape, for
// tests and for the demo when no real model is at hand. Deterministic for a
// seed. The tokenizer is copied from a given file or trained on given text.
#ifndef QAAS_QUANT_MODEL_RANDOM_MODEL_H_
#define QAAS_QUANT_MODEL_RANDOM_MODEL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace qaas::quant {

struct RandomModelOptions {
  int hidden_size = 64;
  int intermediate_size = 172;
  int num_layers = 2;
  int num_heads = 4;
  int num_kv_heads = 2;
  int vocab_size = 512;
  int max_position_embeddings = 512;
  bool tie_word_embeddings = true;
  std::string dtype = "float32";  // float32, float16, bfloat16
  int shards = 1;                 // > 1 writes model.safetensors.index.json
  uint64_t seed = 0;
  double init_std = 0.02;
  // > 0: a Mixtral (MixtralForCausalLM layout): each layer's MLP is this
  // many experts of intermediate_size, experts_per_token routed per token
  // by block_sparse_moe.gate.
  int num_experts = 0;
  int experts_per_token = 2;
  std::string tokenizer_model;  // path of a tokenizer.model to copy, or
  std::string tokenizer_text;   // text to train a SentencePiece BPE tokenizer on
};

// Creates `dir` with config.json, weights, tokenizer.model, tokenizer_config.json.
absl::Status WriteRandomLlama(const RandomModelOptions& options, const std::string& dir);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_RANDOM_MODEL_H_
