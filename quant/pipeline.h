// The layer-wise sequential pipeline:
//
//   for each decoder layer i:
//     load layer i's weights (only this layer is resident)
//     run the original layer on the evaluation streams (original model)
//     apply the recipe's transforms (SmoothQuant, RPTQ) from statistics of
//       the calibration stream; set up activation / KV-cache quantizers
//     run it on the calibration stream, observing each linear's inputs
//       (activation-quantized, as the quantized model computes)
//     a quantizer that learns the block (OmniQuant: clipping and equivalent
//       transforms) trains it against the float block's output (on the
//       float model's stream)
//     quantize each linear with the recipe's weight quantizer
//       (weight_quantizer.h), group by group as GPTQ's true sequential
//     run the quantized layer on the calibration stream (next layer's inputs)
//       and on the evaluation streams (quantized model)
//     pack the layer in the artifact's layout (export.h) and write its
//       checkpoints (layer_state.h), report progress, honour stop
//   perplexity of both models on each evaluation set, zero-shot task
//   accuracy of both (the task streams are carried like the evaluation ones)
//   assemble artifact/ and write report.json / report.md
//
// Runs any architecture of quant/model/decoder.h (LLaMA, OPT).
// Works on local directories only; the worker stages inputs and uploads
// outputs. Everything runs on `device`; no other device is touched.
#ifndef QAAS_QUANT_PIPELINE_H_
#define QAAS_QUANT_PIPELINE_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/method_table.h"
#include "quant/methods/gptq.h"
#include "quant/methods/omniquant.h"
#include "quant/methods/rptq.h"
#include "quant/methods/smoothquant.h"
#include "quant/report.h"
#include "quant/scheme.h"

namespace qaas::quant {

struct DatasetRef {
  std::string path;  // local file
  std::string name;  // what the report calls it (the job's uri)
  int seq_len = 0;   // 0 = min(2048, model context)
  int max_windows = 0;
};

// A zero-shot task's documents (eval/tasks.h).
struct TaskRef {
  std::string task;  // a KnownTasks() name (eval/task_table.h)
  std::string path;  // local JSONL file
  std::string name;  // what the report and errors call it (the job's uri)
};

struct PipelineProgress {
  int layer = 0;  // layers finished
  int num_layers = 0;
  // "loading", "transforming", "training", "quantizing", "calibrating", "evaluating", "exporting";
  // "restoring" for a layer a resumed run replays from its checkpoint
  std::string step;
  // "training" (OmniQuant) reports after each epoch of the layer: epoch of
  // epochs, and the epoch's mean block loss. epochs 0: not training.
  int epoch = 0;
  int epochs = 0;
  double loss = 0;
  // "quantizing" a mixture of experts' layer reports as each routed expert
  // starts: expert (1-based) of num_experts. num_experts 0: not an expert.
  int expert = 0;
  int num_experts = 0;
};

struct PipelineOptions {
  std::string model_dir;
  std::string output_dir;  // receives artifact/, checkpoints/, report.json, report.md
  Scheme scheme;
  // Applied in order: zero or more transforms (applied to each float layer),
  // then at most one weight quantizer (RTN when none is given). RecipeStep
  // and the methods with their options are method_table.h's.
  std::vector<RecipeStep> recipe = {{"rtn", {}}};
  std::optional<DatasetRef> calibration;     // seq_len 0 = min(2048, context)
  int num_samples = 128;
  uint64_t seed = 0;
  std::vector<DatasetRef> evaluations;
  // Zero-shot tasks, scored before and after quantization as
  // lm-evaluation-harness's default task configs score them (0-shot),
  // carried through the layers like the evaluation streams. Part of the
  // fingerprint.
  std::vector<TaskRef> tasks;
  int64_t task_limit = 0;   // the first N documents of each task; 0: all
  int task_max_length = 0;  // the model input's longest length; 0: the model's context, as the harness
  int task_bootstrap_iters = 100000;  // LAMBADA's perplexity stderr (the harness's default)
  std::string device = "cpu";
  int batch_size = 8;            // windows per forward call
  // GPTQ-like quantizers gather each sequential group's inputs with the
  // earlier groups quantized. Up to this many bytes of calibration
  // activations are held so that each batch's layer forward pauses between
  // groups and runs once (model/staged_forward.h); the batches beyond it are
  // recomputed up to each group. The results are the same bit for bit; 0
  // recomputes every batch (the least memory). Dense models only.
  uint64_t staged_forward_bytes = 2ull << 30;
  // A recipe that needs no calibration (RTN with dynamic activations) runs
  // no calibration pass (the calibration data is still read and checked).
  // With this set it runs the pass anyway, to report each block's output
  // error on the calibration data (the report's "blocks", which compare
  // methods): two forwards of the calibration windows per layer.
  bool block_errors = false;
  // A linear whose calibration saw fewer tokens than this (a mixture of
  // experts' rarely routed expert) is quantized with RTN instead of the
  // recipe's calibrating quantizer, whose statistics (a Hessian of a few
  // tokens) would be ill-conditioned; the report says so. Part of the
  // fingerprint.
  int min_calibration_tokens = 16;
  // A mixture of experts' calibration statistics: "routed" (each expert's
  // from the tokens routed to it) or "all_tokens" (every calibration token
  // through every expert, for statistics only: routing is unchanged). Part
  // of the fingerprint.
  std::string expert_calibration = "routed";
  nlohmann::json manifest_extra;  // recorded in qaas_manifest.json (e.g. the job spec)
  // How artifact/ stores the quantized layers: "gptq", "compressed-tensors"
  // or "auto" (artifact_format.h's ResolveArtifactFormat, resolved against
  // the model's linear widths; a compressed-tensors job whose widths the
  // format cannot store is InvalidArgument before anything is quantized).
  std::string artifact_layout = "gptq";
  // The artifact's weights go to one model.safetensors up to this size, to
  // shards with an index above it (export.h's WriteArtifact).
  uint64_t max_shard_bytes = 5'000'000'000ull;
  // Called from the pipeline's thread; must not block for long.
  std::function<void(const PipelineProgress&)> on_progress;
  // Polled at layer boundaries (and between OmniQuant's epochs); true stops
  // the run with CANCELLED.
  std::function<bool()> should_stop;
  // Resume: layers whose checkpoints an earlier run of the same inputs left
  // in output_dir/checkpoints (layer-<i>, state-<i>, AdaDim's
  // dequantized-layer-<i>) are not quantized again: their inputs are replayed
  // through the stored layers, and the run continues from the first layer
  // without a checkpoint made from these inputs (same model, scheme, recipe,
  // data, seed and device). The artifact is then byte-identical to an
  // uninterrupted run's on the same kind of machine.
  bool resume = false;
  // Identifies the staged inputs' content beyond what the pipeline checks
  // itself (config, tensor layout, data texts); part of the fingerprint.
  std::string inputs_fingerprint;
  // Called after layer i's checkpoint files are written (paths relative to
  // output_dir, state-<i> last: it marks the layer complete); an error stops
  // the run with it. The worker uploads them here.
  std::function<absl::Status(int layer, const std::vector<std::string>& files)> on_layer_saved;
};

// Runs the job and returns its report (also written as report.json and
// report.md). Errors: InvalidArgument for
// bad inputs (naming the file, tensor or field), Cancelled when should_stop
// said so, ResourceExhausted when the disk is full, Internal for libtorch
// failures (with libtorch's message).
absl::StatusOr<Report> RunPipeline(const PipelineOptions& options);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_PIPELINE_H_
