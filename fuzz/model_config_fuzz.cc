// libFuzzer target: the config.json reader. A config it accepts must have the
// shape the model code divides by and allocates from.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "quant/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = qaas::quant::ParseModelConfig(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) return 0;
  const auto& c = *config;
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.vocab_size <= 0 ||
      c.intermediate_size <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    std::fprintf(stderr, "accepted a config with a non-positive dimension\n");
    std::abort();
  }
  return 0;
}
