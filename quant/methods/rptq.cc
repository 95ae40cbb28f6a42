#include "quant/methods/rptq.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"

namespace qaas::quant {

std::vector<int> KMeans2D(const std::vector<float>& xs, const std::vector<float>& ys, int k, uint64_t seed,
                          int max_iterations) {
  const size_t n = xs.size();
  std::vector<int> labels(n, 0);
  if (n == 0) return labels;
  k = std::max(1, std::min<int>(k, static_cast<int>(n)));
  auto dist2 = [&](size_t i, double cx, double cy) {
    const double dx = xs[i] - cx, dy = ys[i] - cy;
    return dx * dx + dy * dy;
  };
  // k-means++: the first centre uniformly, each next one with probability
  // proportional to the squared distance to the nearest centre so far.
  std::mt19937_64 rng(seed);
  std::vector<double> cx, cy;
  const size_t first = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  cx.push_back(xs[first]);
  cy.push_back(ys[first]);
  std::vector<double> nearest(n);
  for (size_t i = 0; i < n; ++i) nearest[i] = dist2(i, cx[0], cy[0]);
  while (static_cast<int>(cx.size()) < k) {
    const double total = std::accumulate(nearest.begin(), nearest.end(), 0.0);
    if (total <= 0) break;  // every point sits on a centre
    double r = std::uniform_real_distribution<double>(0.0, total)(rng);
    size_t pick = n - 1;
    for (size_t i = 0; i < n; ++i) {
      r -= nearest[i];
      if (r < 0 && nearest[i] > 0) {
        pick = i;
        break;
      }
    }
    cx.push_back(xs[pick]);
    cy.push_back(ys[pick]);
    for (size_t i = 0; i < n; ++i) nearest[i] = std::min(nearest[i], dist2(i, cx.back(), cy.back()));
  }
  const size_t m = cx.size();
  // Lloyd iterations; a centre that loses all its points stays where it is.
  for (int it = 0; it < max_iterations; ++it) {
    bool changed = it == 0;
    for (size_t i = 0; i < n; ++i) {
      int best = 0;
      double best_d = std::numeric_limits<double>::infinity();
      for (size_t c = 0; c < m; ++c) {
        const double d = dist2(i, cx[c], cy[c]);
        if (d < best_d) {
          best_d = d;
          best = static_cast<int>(c);
        }
      }
      if (labels[i] != best) changed = true;
      labels[i] = best;
    }
    if (!changed) break;
    std::vector<double> sx(m, 0), sy(m, 0);
    std::vector<size_t> count(m, 0);
    for (size_t i = 0; i < n; ++i) {
      sx[labels[i]] += xs[i];
      sy[labels[i]] += ys[i];
      ++count[labels[i]];
    }
    for (size_t c = 0; c < m; ++c) {
      if (count[c] > 0) {
        cx[c] = sx[c] / static_cast<double>(count[c]);
        cy[c] = sy[c] / static_cast<double>(count[c]);
      }
    }
  }
  // Renumber the non-empty clusters by increasing centroid x + y.
  std::vector<size_t> used;
  for (size_t c = 0; c < m; ++c) {
    if (std::find(labels.begin(), labels.end(), static_cast<int>(c)) != labels.end()) used.push_back(c);
  }
  std::stable_sort(used.begin(), used.end(), [&](size_t a, size_t b) { return cx[a] + cy[a] < cx[b] + cy[b]; });
  std::vector<int> rename(m, -1);
  for (size_t r = 0; r < used.size(); ++r) rename[used[r]] = static_cast<int>(r);
  for (int& l : labels) l = rename[l];
  return labels;
}

void ChannelRange::Add(const at::Tensor& x_in) {
  at::Tensor x = x_in.reshape({-1, x_in.size(-1)}).to(at::kFloat);
  at::Tensor lo = std::get<0>(x.min(0)), hi = std::get<0>(x.max(0));
  min = min.defined() ? at::minimum(min, lo) : lo;
  max = max.defined() ? at::maximum(max, hi) : hi;
}

namespace {

std::vector<float> ToVector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

at::Tensor Index(const std::vector<int64_t>& v, const at::Device& device) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Labels of `range`'s channels into at most k clusters.
std::vector<int> Cluster(const ChannelRange& range, int k, uint64_t seed, int iterations) {
  return KMeans2D(ToVector(range.min), ToVector(range.max), k, seed, iterations);
}

// The channels in cluster order (stable within a cluster).
std::vector<int64_t> ClusterOrder(const std::vector<int>& labels) {
  std::vector<int64_t> perm(labels.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return labels[a] < labels[b]; });
  return perm;
}

// Per-channel static parameters for channels labelled `labels` (in the
// channels' final order), each channel taking its cluster's range in `range`
// (whose channels are in the same final order).
ActQuantizer ClusterQuantizer(const TensorQuant& spec, const std::vector<int>& labels, const at::Tensor& min,
                              const at::Tensor& max) {
  const int clusters = labels.empty() ? 0 : *std::max_element(labels.begin(), labels.end()) + 1;
  std::vector<float> lo = ToVector(min), hi = ToVector(max);
  std::vector<float> cmin(clusters, std::numeric_limits<float>::infinity());
  std::vector<float> cmax(clusters, -std::numeric_limits<float>::infinity());
  for (size_t i = 0; i < labels.size(); ++i) {
    cmin[labels[i]] = std::min(cmin[labels[i]], lo[i]);
    cmax[labels[i]] = std::max(cmax[labels[i]], hi[i]);
  }
  std::vector<float> chmin(labels.size()), chmax(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) {
    chmin[i] = cmin[labels[i]];
    chmax[i] = cmax[labels[i]];
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  return StaticPerChannelQuantizer(spec, at::tensor(chmin, opts).to(min.device()),
                                   at::tensor(chmax, opts).to(min.device()));
}

template <typename T>
std::vector<T> Permuted(const std::vector<T>& v, const std::vector<int64_t>& perm) {
  std::vector<T> out(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) out[i] = v[perm[i]];
  return out;
}

// Reorders a norm-fed point: the norm reads its input in `perm` order, and
// the consumers' columns follow.
void ReorderNormPoint(const DecoderModel& model, ActPoint p, const std::vector<int64_t>& perm, DecoderLayer* layer) {
  const BlockNorm norm = model.NormOf(p);
  const at::Device device = layer->linears[0].weight.device();
  const at::Tensor index = Index(perm, device);
  for (const std::string& name : {norm.weight, norm.bias}) {
    if (name.empty()) continue;
    at::Tensor t = layer->norm(name);
    if (t.defined()) layer->set_norm(name, t.index_select(0, index));
  }
  layer->set_norm(norm.reorder, index);
  for (int j : model.ConsumersOf(p)) layer->linears[j].weight = layer->linears[j].weight.index_select(1, index);
}

// Reorders a linear-fed point: the producers' output rows (and biases) in
// `rows` order, the consumers' input columns in `columns` order.
void ReorderLinearPoint(const DecoderModel& model, ActPoint p, const at::Tensor& rows, const at::Tensor& columns,
                        DecoderLayer* layer) {
  for (int j : model.ProducersOf(p)) {
    Linear& l = layer->linears[j];
    l.weight = l.weight.index_select(0, rows);
    if (l.bias.defined()) l.bias = l.bias.index_select(0, rows);
  }
  for (int j : model.ConsumersOf(p)) layer->linears[j].weight = layer->linears[j].weight.index_select(1, columns);
}

}  // namespace

absl::Status ApplyRptq(const DecoderModel& model, const RptqStats& stats, const RptqOptions& o,
                       const TensorQuant& act_spec, DecoderLayer* layer, LayerActQuant* act,
                       nlohmann::json* details) {
  if (act_spec.format != NumberFormat::kInt) {
    return absl::FailedPreconditionError(
        absl::StrCat("RPTQ quantizes activations to integers with static per-cluster parameters; the scheme's "
                     "activations are ", NumberFormatName(act_spec.format)));
  }
  if (model.ProducersOf(ActPoint::kMlpHidden).empty() || !model.FloatReadersOf(ActPoint::kMlpIn).empty()) {
    // A mixture of experts: each expert has its own hidden channels (no one
    // reorder of the MLP's hidden state) and the router reads the MLP input.
    return absl::UnimplementedError(absl::StrCat("RPTQ on a mixture-of-experts model (", model.config().model_type,
                                                 ") is not supported: its reorder of the MLP's hidden channels "
                                                 "would be one per expert"));
  }
  if (o.clusters.size() != 5) {
    return absl::InvalidArgumentError(
        absl::StrCat("RPTQ needs 5 cluster counts (R1..R5), got ", o.clusters.size()));
  }
  for (int c : o.clusters) {
    if (c < 1) return absl::InvalidArgumentError(absl::StrCat("RPTQ cluster counts must be >= 1, got ", c));
  }
  const at::Device device = layer->linears[0].weight.device();
  nlohmann::json counts = nlohmann::json::object();
  auto count = [](const std::vector<int>& labels) {
    return labels.empty() ? 0 : *std::max_element(labels.begin(), labels.end()) + 1;
  };

  // R1 and R4: the norm-fed points.
  for (auto [p, range, k] : {std::make_tuple(ActPoint::kAttnIn, &stats.attn_in, o.clusters[0]),
                             std::make_tuple(ActPoint::kMlpIn, &stats.mlp_in, o.clusters[3])}) {
    std::vector<int> labels = Cluster(*range, k, o.seed, o.max_iterations);
    std::vector<int64_t> perm = ClusterOrder(labels);
    ReorderNormPoint(model, p, perm, layer);
    const at::Tensor index = Index(perm, range->min.device());
    act->at(p) = ClusterQuantizer(act_spec, Permuted(labels, perm), range->min.index_select(0, index),
                                  range->max.index_select(0, index));
    counts[ActPointName(p)] = count(labels);
  }

  // R3: V's channels, permuted within each KV head; o_proj's input follows.
  {
    const ModelConfig& c = model.config();
    const int64_t hd = c.head_dim, nkv = c.num_kv_heads, nh = c.num_heads;
    std::vector<int> labels = Cluster(stats.v_out, o.clusters[2], o.seed, o.max_iterations);
    std::vector<int64_t> v_perm(nkv * hd), o_perm(nh * hd);
    for (int64_t g = 0; g < nkv; ++g) {
      std::vector<int> head(labels.begin() + g * hd, labels.begin() + (g + 1) * hd);
      std::vector<int64_t> order = ClusterOrder(head);
      for (int64_t i = 0; i < hd; ++i) v_perm[g * hd + i] = g * hd + order[i];
    }
    const int64_t group = nh / nkv;
    std::vector<int> o_labels(nh * hd);  // the cluster of each o_proj input channel, new order
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t g = h / group;
      for (int64_t i = 0; i < hd; ++i) {
        const int64_t v_channel = v_perm[g * hd + i];  // old V channel now at (g, i)
        o_perm[h * hd + i] = h * hd + (v_channel - g * hd);
        o_labels[h * hd + i] = labels[v_channel];
      }
    }
    ReorderLinearPoint(model, ActPoint::kAttnOut, Index(v_perm, device), Index(o_perm, device), layer);
    const at::Tensor oi_stats = Index(o_perm, stats.attn_out.min.device());
    act->at(ActPoint::kAttnOut) = ClusterQuantizer(act_spec, o_labels, stats.attn_out.min.index_select(0, oi_stats),
                                                   stats.attn_out.max.index_select(0, oi_stats));
    counts[ActPointName(ActPoint::kAttnOut)] = count(labels);
  }

  // R5: the MLP's hidden channels: producer rows and consumer columns.
  {
    std::vector<int> labels = Cluster(stats.mlp_hidden, o.clusters[4], o.seed, o.max_iterations);
    std::vector<int64_t> perm = ClusterOrder(labels);
    const at::Tensor index = Index(perm, device);
    ReorderLinearPoint(model, ActPoint::kMlpHidden, index, index, layer);
    const at::Tensor si = Index(perm, stats.mlp_hidden.min.device());
    act->at(ActPoint::kMlpHidden) = ClusterQuantizer(act_spec, Permuted(labels, perm),
                                                     stats.mlp_hidden.min.index_select(0, si),
                                                     stats.mlp_hidden.max.index_select(0, si));
    counts[ActPointName(ActPoint::kMlpHidden)] = count(labels);
  }
  if (details) *details = {{"clusters", counts}};
  return absl::OkStatus();
}

}  // namespace qaas::quant
