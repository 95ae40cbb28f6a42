// report.json / report.md of a job: what was done, how well, how long.
#ifndef QAAS_QUANT_REPORT_H_
#define QAAS_QUANT_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace qaas::quant {

struct LayerReport {
  std::string name;  // e.g. model.layers.0.self_attn.q_proj
  std::string method;
  double seconds = 0;
  double relative_weight_error = 0;  // ||W - Q(W)||_F / ||W||_F
  nlohmann::json details = nullptr;  // method specifics (GPTQ: damp, cholesky_retries, dead_columns)
  // The sequential group it was quantized in (DecoderModel::SequentialGroups:
  // "qkv", "o", "gate_up", "down"; "all" without true-sequential).
  std::string group;
  // Calibration tokens its statistics came from (a MoE expert: the tokens
  // routed to it); -1 when the quantizer calibrates nothing.
  int64_t calibration_tokens = -1;
};

// Windows of the calibration stream a block's output error is measured on
// (a diagnostic: the first ones, not a whole extra forward).
constexpr int kBlockErrorWindows = 16;

struct BlockReport {
  int index = 0;
  // ||L_q(X) - L(X)||_F / ||L(X)||_F on the calibration inputs X of the
  // block: its first kBlockErrorWindows windows.
  double output_relative_error = 0;
  // What the recipe's transforms did to the block (SmoothQuant's scale
  // range, RPTQ's cluster counts, static activation ranges), when any.
  nlohmann::json transforms = nullptr;
};

struct EvaluationReport {
  std::string dataset;
  int seq_len = 0;
  int64_t windows = 0;
  int64_t tokens = 0;  // predicted positions
  double perplexity_original = 0;
  double perplexity_quantized = 0;
};

// One metric of a zero-shot task before and after; stderr NaN where the
// harness reports N/A (one document).
struct TaskMetricReport {
  std::string metric;  // "acc", "acc_norm", "perplexity" (LAMBADA's, per word)
  double original = 0, original_stderr = 0;
  double quantized = 0, quantized_stderr = 0;
};

struct TaskReport {
  std::string task;  // "piqa"
  std::string data;  // the job's uri of its documents
  int64_t docs = 0;
  int64_t requests = 0;
  int64_t truncated_requests = 0;  // longer than max_length + 1 tokens: cut from the left
  int64_t truncated_docs = 0;
  int64_t tokens = 0;  // tokens one model's forward computed (shared contexts once)
  std::vector<TaskMetricReport> metrics;
  // Documents whose prediction (acc's) is right for one model only.
  int64_t changed_docs = 0;
};

// The zero-shot tasks of a job (JobSpec.tasks).
struct TasksReport {
  int64_t max_length = 0;  // the model input's longest length (the harness's max_length)
  int64_t limit = 0;       // documents per task (0: all)
  std::vector<TaskReport> tasks;
  double seconds = 0;    // forwards of both models and scoring
  int64_t tokens = 0;    // tokens forwarded by both models (padding excluded)
  double tokens_per_second = 0;
};

struct Report {
  std::string model;
  std::string scheme;
  std::vector<std::string> recipe;
  int num_layers = 0;
  std::string device;
  nlohmann::json calibration = nullptr;
  std::vector<EvaluationReport> evaluations;
  std::optional<TasksReport> tasks;
  std::vector<LayerReport> layers;
  std::vector<BlockReport> blocks;
  uint64_t original_bytes = 0;
  uint64_t quantized_bytes = 0;
  std::string artifact_format;  // "gptq", "compressed-tensors" (resolved), empty when unknown
  double seconds_calibration = 0;
  double seconds_quantization = 0;
  double seconds_evaluation = 0;
  double seconds_total = 0;
  // Layers restored from an interrupted run's checkpoints instead of being
  // quantized again (their per-layer entries and seconds are the first run's).
  int resumed_layers = 0;
  // Peak memory of this run (quant/util/device.h): the process's resident
  // set, and on CUDA the caching allocator's peak of live tensors and of
  // memory reserved from the driver. Absent where not measured.
  std::optional<uint64_t> peak_host_memory_bytes;
  std::optional<uint64_t> peak_device_allocated_bytes;
  std::optional<uint64_t> peak_device_reserved_bytes;
  // What fixes the float summation order of the run (quant/util/device.h's
  // ComputeEnvironment): resume and reruns are bit-identical only where these
  // match.
  std::string torch_version;
  std::string cpu_capability;
  std::string blas;
};

nlohmann::json ToJson(const Report& r);
std::string ToMarkdown(const Report& r);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_REPORT_H_
