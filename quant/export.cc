#include "quant/export.h"

#include <filesystem>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "quant/formats/act_quant.h"
#include "quant/formats/number_format.h"
#include "quant/formats/packing.h"
#include "quant/layer_state.h"
#include "quant/methods/gptq.h"
#include "quant/model/checkpoint.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

std::vector<RawTensor> PackGptqLinear(const std::string& prefix, const QuantizedLinear& q,
                                      const at::Tensor& bias) {
  const int bits = q.params.bits;
  const int64_t mask = (int64_t{1} << bits) - 1;
  std::vector<RawTensor> out;
  out.push_back(TensorToRaw(prefix + ".qweight", PackRows(q.codes.t().contiguous(), bits)));
  at::Tensor zeros = at::bitwise_and(q.params.zero.to(at::kLong) - 1, mask).to(at::kInt);  // [out, G]
  // qzeros packs along the output dimension: pack the transpose's rows, transpose back.
  at::Tensor qzeros = PackRows(zeros.contiguous(), bits).t().contiguous();  // [G, out*b/32]
  out.push_back(TensorToRaw(prefix + ".qzeros", qzeros));
  out.push_back(TensorToRaw(prefix + ".scales", q.params.scale.t().contiguous().to(at::kHalf)));
  out.push_back(TensorToRaw(prefix + ".g_idx", q.g_idx.to(at::kInt)));
  if (bias.defined()) out.push_back(TensorToRaw(prefix + ".bias", bias.to(at::kHalf)));
  return out;
}

absl::StatusOr<at::Tensor> UnpackGptqLinear(const std::map<std::string, RawTensor>& tensors,
                                            const std::string& prefix, int bits, int64_t in,
                                            int64_t out) {
  auto get = [&](const std::string& suffix, DType dtype) -> absl::StatusOr<at::Tensor> {
    auto it = tensors.find(prefix + suffix);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor '", prefix, suffix, "'"));
    }
    if (it->second.dtype != dtype) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, suffix, "' has dtype ",
                                                     DTypeName(it->second.dtype)));
    }
    return RawToTensor(it->second);
  };
  auto qweight = get(".qweight", DType::kI32);
  auto qzeros = get(".qzeros", DType::kI32);
  auto scales = get(".scales", DType::kF16);
  auto g_idx = get(".g_idx", DType::kI32);
  for (const auto* s : {&qweight, &qzeros, &scales, &g_idx}) {
    if (!s->ok()) return s->status();
  }
  // Every shape is checked before unpacking: UnpackRows trusts its row count.
  if (qweight->dim() != 2 || qzeros->dim() != 2 || scales->dim() != 2 || g_idx->dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("packed tensors of '", prefix,
                                                   "' have the wrong number of dimensions"));
  }
  const int64_t groups = scales->size(0);
  if (qweight->size(0) != (in * bits + 31) / 32 || qweight->size(1) != out ||
      scales->size(1) != out || g_idx->numel() != in || qzeros->size(0) != groups ||
      qzeros->size(1) != (out * bits + 31) / 32 || groups == 0) {
    return absl::InvalidArgumentError(absl::StrCat("packed tensors of '", prefix,
                                                   "' do not match a ", out, "x", in, " weight"));
  }
  const int64_t mask = (int64_t{1} << bits) - 1;
  at::Tensor codes = UnpackRows(*qweight, bits, in).t();  // [out, in]
  at::Tensor zeros = at::bitwise_and(UnpackRows(qzeros->t().contiguous(), bits, out).to(at::kLong) + 1, mask);  // [out, G]
  at::Tensor idx = g_idx->to(at::kLong);
  if (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= groups) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, ".g_idx' points past ", groups, " groups"));
  }
  at::Tensor scale = scales->to(at::kFloat).t().index_select(1, idx);  // [out, in]
  at::Tensor zero = zeros.to(at::kFloat).index_select(1, idx);
  return (codes.to(at::kFloat) - zero) * scale;
}

nlohmann::json GptqQuantizationConfig(const Scheme& scheme, bool desc_act, bool static_groups,
                                      double damp_percent) {
  const auto& w = scheme.weights;
  return {{"quant_method", "gptq"},
          {"bits", w.bits},
          {"group_size", w.granularity == Granularity::kPerGroup ? w.group_size : -1},
          {"desc_act", desc_act},
          {"static_groups", static_groups},
          {"damp_percent", damp_percent},
          {"sym", w.symmetric},
          {"true_sequential", true},
          {"checkpoint_format", "gptq"}};
}

namespace {

// A tensor kind's quantization as config.json records it.
nlohmann::json SpecJson(const TensorQuant& q) {
  nlohmann::json j = {{"format", NumberFormatName(q.format)}, {"bits", q.bits},
                      {"granularity", GranularityName(q.granularity)}, {"symmetric", q.symmetric}};
  if (auto element = ElementFormatOf(q); element.ok()) j["element"] = Traits(*element).name;
  if (q.is_mx()) j["block_size"] = kMxBlockSize;
  return j;
}

// artifact/: GPTQ's packed integers (docs/artifact-format.md); MX weights as
// element codes and E8M0 scales; float linears and norms as they are.
class GptqLayout : public ArtifactLayout {
 public:
  std::string name() const override { return "gptq"; }
  std::string directory() const override { return "artifact"; }
  std::string checkpoint_stem() const override { return "layer"; }
  // GPTQ stores biases in float16 (it matters where a method changed them,
  // e.g. OmniQuant's shifts); MX keeps them as they are.
  at::Tensor StoredBias(const QuantizedLinear& q, const at::Tensor& bias) const override {
    return !bias.defined() || q.mx ? bias : bias.to(at::kHalf).to(at::kFloat);
  }

  absl::StatusOr<std::vector<RawTensor>> PackLayer(const LayerToPack& layer) const override {
    std::vector<RawTensor> packed;
    const DecoderLayer& t = *layer.transformed;
    for (const auto& [name, norm] : t.norms) packed.push_back(TensorToRaw(layer.prefix + name, norm.cpu()));
    if (t.act) {
      for (int p = 0; p < kNumActPoints; ++p) {
        const ActQuantizer& q = t.act->inputs[p];
        const std::string stem = absl::StrCat(layer.prefix, "act_quant.", ActPointName(static_cast<ActPoint>(p)));
        if (q.scale.defined()) packed.push_back(TensorToRaw(stem + ".scale", q.scale.cpu()));
        if (q.zero.defined()) packed.push_back(TensorToRaw(stem + ".zero", q.zero.cpu()));
      }
    }
    for (size_t j = 0; j < layer.linear_names->size(); ++j) {
      const std::string name = layer.prefix + (*layer.linear_names)[j];
      const at::Tensor& bias = t.linears[j].bias;
      const std::optional<QuantizedLinear>& q = (*layer.linears)[j];
      if (!q) {
        packed.push_back(TensorToRaw(name + ".weight", t.linears[j].weight.cpu()));
        if (bias.defined()) packed.push_back(TensorToRaw(name + ".bias", bias.cpu()));
      } else if (q->fp8) {
        return absl::InvalidArgumentError(absl::StrCat(name, ": the GPTQ layout has no FP8 weights "
                                                       "(format compressed-tensors stores them)"));
      } else if (q->mx) {
        // Unpacking must give the evaluated weights back exactly.
        MxPacked mx = PackMx(q->dequantized, q->element);
        if (!at::equal(UnpackMx(mx), q->dequantized.cpu())) {
          return absl::InternalError(absl::StrCat(name, ": MX packing does not reproduce the quantized weights"));
        }
        packed.push_back(TensorToRaw(name + ".mx_codes", mx.codes));
        packed.push_back(TensorToRaw(name + ".mx_scales", mx.scales));
        if (bias.defined()) packed.push_back(TensorToRaw(name + ".bias", bias.cpu()));
      } else {
        // Per-IC weights are packed as their transpose, under "<name>.ic"; the
        // bias is not transposed and stays "<name>.bias" (float16, as GPTQ's).
        const bool per_ic = q->per_input_channel;
        const at::Tensor packed_bias = per_ic || !bias.defined() ? at::Tensor() : bias.cpu();
        for (auto& r : PackGptqLinear(per_ic ? name + ".ic" : name, *q, packed_bias)) {
          packed.push_back(std::move(r));
        }
        if (per_ic && bias.defined()) packed.push_back(TensorToRaw(name + ".bias", bias.cpu().to(at::kHalf)));
      }
    }
    return packed;
  }

  std::pair<nlohmann::json, std::string> Config(const nlohmann::json& original,
                                                const ArtifactSummary& s) const override {
    nlohmann::json config = original;
    std::string format = "gptq";
    nlohmann::json& qc = config["quantization_config"];
    if (s.scheme.weights.is_mx()) {
      format = "mx";
      qc = {{"quant_method", "qaas"}, {"format", "mx"}, {"weights", SpecJson(s.scheme.weights)}};
    } else if (s.scheme.weights.enabled()) {
      const std::string& m = s.weight_step.method;
      const bool gptq = m == "gptq" || (m == "adadim" && s.weight_step.Get("base", "") == "gptq");
      const GptqOptions g = GptqOptionsOf(s.weight_step);
      qc = GptqQuantizationConfig(s.scheme, gptq && g.act_order, gptq && g.static_groups, g.percdamp);
      if (!s.modules_in_block.empty()) qc["modules_in_block_to_quantize"] = s.modules_in_block;
      if (!s.per_input_channel_layers.empty()) {
        // Not loadable as GPTQ: some layers hold per-IC groups.
        qc["quant_method"] = "qaas";
        qc["format"] = format = "adadim";
        qc["per_input_channel_layers"] = s.per_input_channel_layers;
      }
    } else if (!s.scheme.weight_only()) {
      format = "qaas";
      qc = {{"quant_method", "qaas"}, {"format", "float-weights"}};
    }
    if (s.reordered) {
      // Reordered norms (reorder_index tensors) and permuted weights: only a
      // runtime that applies the reorder can load it.
      qc["quant_method"] = "qaas";
      qc["format"] = format = "rptq";
    }
    if (s.scheme.activations.enabled()) qc["activations"] = SpecJson(s.scheme.activations);
    if (s.scheme.kv_cache.enabled()) qc["kv_cache"] = SpecJson(s.scheme.kv_cache);
    if (qc.is_null()) config.erase("quantization_config");
    config["qaas_scheme"] = s.scheme.ToString();
    return {config, format};
  }
};

// artifact-dequantized/: the weights exactly as evaluated, in the input's
// dtypes (tensors the input lacks, as RPTQ's reorder indices, as they are),
// with the input's config.json.
class DequantizedLayout : public ArtifactLayout {
 public:
  std::string name() const override { return "dequantized"; }
  std::string directory() const override { return "artifact-dequantized"; }
  std::string checkpoint_stem() const override { return "dequantized-layer"; }
  bool PacksQuantized() const override { return false; }

  absl::StatusOr<std::vector<RawTensor>> PackLayer(const LayerToPack& layer) const override {
    std::vector<RawTensor> plain;
    auto add = [&](const std::string& name, const at::Tensor& t) {
      auto entry = layer.checkpoint->Entry(name);
      plain.push_back(TensorToRaw(name, entry.ok() ? t.cpu().to(ToScalarType(entry->dtype)) : t.cpu()));
    };
    for (const auto& [name, t] : layer.transformed->norms) add(layer.prefix + name, t);
    const DecoderLayer& q = *layer.quantized;
    for (size_t j = 0; j < layer.linear_names->size(); ++j) {
      const std::string name = layer.prefix + (*layer.linear_names)[j];
      add(name + ".weight", q.linears[j].weight);
      if (q.linears[j].bias.defined()) add(name + ".bias", q.linears[j].bias);
    }
    return plain;
  }

  std::pair<nlohmann::json, std::string> Config(const nlohmann::json& original,
                                                const ArtifactSummary&) const override {
    return {original, "dequantized"};
  }
};

}  // namespace

namespace {

// The parts' quantizations as one, concatenated by rows; nullopt when they
// cannot be one stored tensor (see CheckpointFormLayer).
std::optional<QuantizedLinear> FuseQuantized(const std::vector<const QuantizedLinear*>& parts) {
  const QuantizedLinear& first = *parts.front();
  std::vector<at::Tensor> codes, scales, zeros, dequantized;
  for (const QuantizedLinear* q : parts) {
    if (q->per_input_channel || q->mx != first.mx || q->fp8 != first.fp8 ||
        ((q->mx || q->fp8) && q->element != first.element)) {
      return std::nullopt;
    }
    if (!q->mx && (q->params.bits != first.params.bits || q->params.symmetric != first.params.symmetric ||
                   q->params.group_size != first.params.group_size || !at::equal(q->g_idx, first.g_idx))) {
      return std::nullopt;
    }
    dequantized.push_back(q->dequantized);
    if (!q->mx) {
      codes.push_back(q->codes);
      scales.push_back(q->params.scale);
      zeros.push_back(q->params.zero);
    }
  }
  QuantizedLinear fused = first;
  fused.dequantized = at::cat(dequantized, 0);
  if (!first.mx) {  // integers and FP8: codes and per-row scales by rows
    fused.codes = at::cat(codes, 0);
    fused.params.scale = at::cat(scales, 0);
    fused.params.zero = at::cat(zeros, 0);
  }
  return fused;
}

}  // namespace

absl::StatusOr<CheckpointFormLayer> ToCheckpointForm(const DecoderModel& model, const LayerToPack& layer,
                                                     bool packed) {
  CheckpointFormLayer out;
  out.transformed.index = out.quantized.index = layer.transformed->index;
  out.transformed.act = layer.transformed->act;
  out.quantized.act = layer.quantized->act;
  // A norm whose factor is still the one loaded is written as the checkpoint
  // stores it: (1 + w) - 1 gives back the factor exactly, but not always w's
  // last bits.
  const double offset = model.config().norm_weight_offset;
  auto stored = [&](const std::string& name, const at::Tensor& t) {
    if (offset != 0 && layer.checkpoint != nullptr && at::is_floating_point(t) && t.dim() == 1) {
      auto original = layer.checkpoint->Load(layer.prefix + name, {t.size(0)});
      if (original.ok() && at::equal(*original + offset, t.cpu())) return *original;
    }
    return model.StoredNorm(name, t);
  };
  for (const auto& [name, t] : layer.transformed->norms) out.transformed.norms.emplace_back(name, stored(name, t));
  for (const auto& [name, t] : layer.quantized->norms) out.quantized.norms.emplace_back(name, stored(name, t));
  const std::vector<std::string>& names = *layer.linear_names;
  std::vector<int> fused_into(names.size(), -1);
  for (size_t f = 0; f < model.Fusions().size(); ++f) {
    for (int j : model.Fusions()[f].parts) fused_into[j] = static_cast<int>(f);
  }
  std::vector<int> point_of(names.size(), -1);
  for (int p = 0; p < kNumActPoints; ++p) {
    for (int j : model.ConsumersOf(static_cast<ActPoint>(p))) point_of[j] = p;
  }
  auto add_split = [&](int j) {
    out.input_points.push_back(point_of[j]);
    out.linear_names.push_back(names[j]);
    out.transformed.linears.push_back(layer.transformed->linears[j]);
    out.quantized.linears.push_back(layer.quantized->linears[j]);
    out.linears.push_back((*layer.linears)[j]);
  };
  std::vector<bool> done(model.Fusions().size(), false);
  for (size_t j = 0; j < names.size(); ++j) {
    const int f = fused_into[j];
    if (f < 0) {
      add_split(static_cast<int>(j));
      continue;
    }
    if (done[f]) continue;
    done[f] = true;
    const FusedLinear& fusion = model.Fusions()[f];
    std::vector<const QuantizedLinear*> parts;
    for (int p : fusion.parts) {
      if ((*layer.linears)[p]) parts.push_back(&*(*layer.linears)[p]);
    }
    std::optional<QuantizedLinear> fused;
    if (packed && !parts.empty()) {
      fused = parts.size() == fusion.parts.size() ? FuseQuantized(parts) : std::nullopt;
      if (!fused) {  // parts quantized differently: they stay split
        for (int p : fusion.parts) add_split(p);
        continue;
      }
    }
    auto cat = [&](const DecoderLayer& l, bool bias) {
      std::vector<at::Tensor> ts;
      for (int p : fusion.parts) ts.push_back(bias ? l.linears[p].bias : l.linears[p].weight);
      return ts.front().defined() ? at::cat(ts, 0) : at::Tensor();
    };
    out.input_points.push_back(point_of[fusion.parts.front()]);
    out.linear_names.push_back(fusion.name);
    out.transformed.linears.push_back({cat(*layer.transformed, false), cat(*layer.transformed, true)});
    out.quantized.linears.push_back({cat(*layer.quantized, false), cat(*layer.quantized, true)});
    out.linears.push_back(std::move(fused));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ArtifactLayout>> MakeArtifactLayout(const std::string& name) {
  if (name == "gptq") return std::make_unique<GptqLayout>();
  if (name == "dequantized") return std::make_unique<DequantizedLayout>();
  if (name == "compressed-tensors") return MakeCompressedTensorsLayout();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown artifact layout '", name, "' (known: gptq, compressed-tensors, dequantized)"));
}

std::vector<std::vector<int>> AssignShards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes) {
  std::vector<std::vector<int>> shards;
  uint64_t in_shard = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (shards.empty() || (in_shard > 0 && in_shard + bytes[i] > max_shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(static_cast<int>(i));
    in_shard += bytes[i];
  }
  return shards;
}

std::string ShardFileName(int k, int n) {
  return n == 1 ? "model.safetensors" : absl::StrFormat("model-%05d-of-%05d.safetensors", k + 1, n);
}

absl::StatusOr<uint64_t> WriteArtifact(const ArtifactLayout& layout, const Checkpoint& checkpoint,
                                       const std::vector<std::string>& head_tensor_names, int num_layers,
                                       const std::string& model_dir, const std::string& output_dir,
                                       const ArtifactSummary& summary, nlohmann::json manifest,
                                       uint64_t max_shard_bytes) {
  const std::string dir = output_dir + "/" + layout.directory();
  QAAS_RETURN_IF_ERROR(MakeDirs(dir));
  // Every tensor is read when its shard reaches it: the artifact is never
  // held in memory, only the tensor being copied.
  std::vector<TensorSource> sources;
  for (const std::string& name : head_tensor_names) {  // embeddings, final norm, lm_head
    QAAS_ASSIGN_OR_RETURN(const TensorEntry entry, checkpoint.Entry(name));
    sources.push_back({name, entry.dtype, entry.shape, [&checkpoint, name]() -> absl::StatusOr<std::string> {
                         QAAS_ASSIGN_OR_RETURN(RawTensor raw, checkpoint.LoadRaw(name));
                         return std::move(raw.data);
                       }});
  }
  std::vector<std::unique_ptr<SafetensorsFile>> layer_files;
  for (int i = 0; i < num_layers; ++i) {
    QAAS_ASSIGN_OR_RETURN(auto file,
                          SafetensorsFile::Open(output_dir + "/" + CheckpointFile(layout.checkpoint_stem(), i)));
    const SafetensorsFile* f = file.get();
    for (const auto& [name, entry] : f->header().tensors) {
      sources.push_back({name, entry.dtype, entry.shape, [f, name = name]() { return f->ReadRaw(name); }});
    }
    layer_files.push_back(std::move(file));
  }
  std::vector<uint64_t> sizes;
  uint64_t bytes = 0;
  for (const auto& t : sources) {
    sizes.push_back(t.bytes());
    bytes += t.bytes();
  }
  const std::vector<std::vector<int>> shards = AssignShards(sizes, max_shard_bytes);
  const int n = static_cast<int>(shards.size());
  std::set<std::string> written;
  nlohmann::json weight_map = nlohmann::json::object();
  for (int k = 0; k < n; ++k) {
    std::vector<TensorSource> shard;
    for (int i : shards[k]) {
      shard.push_back(sources[i]);
      weight_map[sources[i].name] = ShardFileName(k, n);
    }
    QAAS_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + ShardFileName(k, n), shard, {{"format", "pt"}}));
    written.insert(ShardFileName(k, n));
  }
  if (n > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", bytes}}}, {"weight_map", weight_map}};
    QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n"));
    written.insert("model.safetensors.index.json");
  }
  // Weights an earlier run left here in another sharding would be loaded
  // beside (or instead of) these.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const bool weights = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                         (absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors"));
    if (weights && !written.count(name)) std::filesystem::remove(e.path(), ec);
  }
  auto [config, format] = layout.Config(nlohmann::json::parse(checkpoint.config().raw_json), summary);
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", config.dump(2) + "\n"));
  for (const char* f : {"tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                        "special_tokens_map.json", "generation_config.json"}) {
    const std::string from = model_dir + "/" + f;
    if (FileExists(from)) QAAS_RETURN_IF_ERROR(CopyFile(from, dir + "/" + f));
  }
  if (manifest.is_null()) return bytes;
  manifest["qaas_version"] = QAAS_VERSION;
  manifest["format"] = format;
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/qaas_manifest.json", manifest.dump(2) + "\n"));
  return bytes;
}

}  // namespace qaas::quant
