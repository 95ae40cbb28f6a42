// A finished decoder layer exactly as the pipeline evaluates it: norms after
// the recipe's transforms, linear weights as quantized then dequantized,
// biases as stored, and its activation / KV-cache quantizers. Written after
// each layer (checkpoints/state-<i>.safetensors) so that a resumed run can
// replay the layer's outputs bit for bit instead of quantizing it again.
#ifndef QAAS_QUANT_LAYER_STATE_H_
#define QAAS_QUANT_LAYER_STATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/model/decoder.h"
#include "quant/report.h"

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

// Resume. A finished layer i leaves, under the job's output directory,
// checkpoints/<stem>-<i>.safetensors for each artifact layout's stem (the
// packed layer) and, last, checkpoints/state-<i>.safetensors: the layer state
// with a LayerRecord as its info. A later run of the same inputs (same
// fingerprint) replays such layers instead of quantizing them again.

// "checkpoints/<stem>-<i>.safetensors", relative to the output directory.
std::string CheckpointFile(const std::string& stem, int layer);

// What a resumed run restores of a layer besides its tensors: its report
// entries and the seconds the first run spent on it.
struct LayerRecord {
  nlohmann::json fingerprint;  // the inputs the layer was made from
  int layer = 0;
  std::vector<LayerReport> linears;
  std::vector<BlockReport> blocks;
  double seconds_calibration = 0, seconds_quantization = 0, seconds_evaluation = 0;
};

nlohmann::json ToJson(const LayerRecord& r);
// DataLoss naming what is missing or mistyped.
absl::StatusOr<LayerRecord> LayerRecordFromJson(const nlohmann::json& j);

// How many leading layers of `output_dir` can be resumed: every stem's file
// and a state whose record was made from `fingerprint` for that layer. The
// checkpoints of later layers are removed: after a gap they are of no use
// and must not be mixed in.
int ResumableLayers(const std::string& output_dir, int num_layers, const std::vector<std::string>& stems,
                    const nlohmann::json& fingerprint);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_LAYER_STATE_H_
