// A finished decoder layer exactly as the pipeline evaluates it: norms after
// the recipe's transforms, linear weights as quantized then dequantized,
// biases as stored, and its activation / KV-cache quantizers. Written after
// each layer (checkpoints/state-<i>.safetensors) so that a resumed run can
// replay the layer's outputs bit for bit instead of quantizing it again.
#ifndef QAAS_QUANT_LAYER_STATE_H_
#define QAAS_QUANT_LAYER_STATE_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/model/decoder.h"

namespace qaas::quant {

struct LayerState {
  DecoderLayer layer;   // on the CPU
  nlohmann::json info;  // what the caller stored with it
};

// Writes `layer` (any device; copied to the CPU) and `info` atomically.
absl::Status WriteLayerState(const std::string& path, const DecoderLayer& layer, const nlohmann::json& info);
// NotFound when the file is missing; DataLoss naming the file when it is not
// a layer state.
absl::StatusOr<LayerState> ReadLayerState(const std::string& path);
// Only the `info` of a layer state, from the file's header (no tensor is
// read). Same errors as ReadLayerState.
absl::StatusOr<nlohmann::json> ReadLayerStateInfo(const std::string& path);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_LAYER_STATE_H_
