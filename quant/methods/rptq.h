// RPTQ (Yuan et al. 2023, "RPTQ: Reorder-based Post-training Quantization for
// Large Language Models"): activation channels with similar ranges share
// quantization parameters. For each reorder point, the (min, max) of every
// channel over the calibration data is a 2-D point; k-means groups them into
// clusters; each cluster gets static asymmetric parameters from its range;
// channels are reordered so each cluster is contiguous, and the reorder is
// folded into the weights so no permute runs at inference:
//
//   R1 attention input   the attention norm reads its input in the new order
//                        (its weight permuted); q/k/v columns permuted
//   R3 attention output  v_proj's rows permuted within each KV head, o_proj's
//                        columns of every head reading it alike (attention
//                        mixes tokens, not channels, so o_proj's input channel
//                        (h, c) is a convex combination of V's channel (g, c);
//                        clusters come from v_proj's output ranges)
//   R4 MLP input         as R1, with the MLP norm; gate/up (fc1) columns
//   R5 MLP hidden        gate and up (fc1) rows permuted, down (fc2) columns
//
// The paper's R2 (q/k outputs, for a statically quantized K cache) is not a
// reorder point here: RoPE pairs channel i with i + head_dim/2, and our KV
// cache is quantized per token and head dynamically (formats/act_quant.h),
// which needs no reorder. Cluster counts are given per paper point
// R1..R5 (defaults 32/4/4/32/32); R2's is accepted and unused.
#ifndef QAAS_QUANT_METHODS_RPTQ_H_
#define QAAS_QUANT_METHODS_RPTQ_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "quant/formats/act_quant.h"
#include "quant/method_table.h"
#include "quant/model/decoder.h"

namespace qaas::quant {

struct RptqOptions {
  std::vector<int> clusters = {32, 4, 4, 32, 32};  // R1..R5
  uint64_t seed = 0;
  int max_iterations = 100;  // Lloyd iterations of k-means
};

// The options of an "rptq" recipe step (method_table.h, whose defaults equal
// these: a test checks); the seed is the job's.
inline RptqOptions RptqOptionsOf(const RecipeStep& step) {
  RptqOptions o;
  o.clusters = step.Get("clusters", o.clusters);
  return o;
}

// k-means of n 2-D points (xs[i], ys[i]) into at most k clusters: k-means++
// seeding from `seed`, then Lloyd iterations until no label changes. Returns
// labels [n] numbered 0.. by increasing centroid x + y, without gaps
// (duplicate points can leave fewer than k clusters). Deterministic.
std::vector<int> KMeans2D(const std::vector<float>& xs, const std::vector<float>& ys, int k, uint64_t seed,
                          int max_iterations = 100);

// Per-channel ranges over the calibration data, in the layer's current order.
struct ChannelRange {
  at::Tensor min;  // [channels] float32
  at::Tensor max;
  void Add(const at::Tensor& x);  // x: [tokens, channels]
};
struct RptqStats {
  ChannelRange attn_in, v_out, attn_out, mlp_in, mlp_hidden;
};

// Reorders `layer` (a float layer, not yet reordered) in place and fills
// `act`'s four input quantizers with per-cluster static parameters for the
// integer activation spec `act_spec`. `details` receives the cluster counts.
// FailedPrecondition when act_spec is not integer or a norm has no weight.
absl::Status ApplyRptq(const DecoderModel& model, const RptqStats& stats, const RptqOptions& options,
                       const TensorQuant& act_spec, DecoderLayer* layer, LayerActQuant* act,
                       nlohmann::json* details);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_RPTQ_H_
