#include "quant/layer_state.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quant/model/checkpoint.h"
#include "quant/model/safetensors.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

nlohmann::json SpecToJson(const TensorQuant& t) {
  return {{"format", static_cast<int>(t.format)}, {"bits", t.bits}, {"granularity", static_cast<int>(t.granularity)},
          {"group_size", t.group_size}, {"symmetric", t.symmetric}, {"exponent_bits", t.exponent_bits}};
}

TensorQuant SpecFromJson(const nlohmann::json& j) {
  TensorQuant t;
  t.format = static_cast<NumberFormat>(j.at("format").get<int>());
  t.bits = j.at("bits").get<int>();
  t.granularity = static_cast<Granularity>(j.at("granularity").get<int>());
  t.group_size = j.at("group_size").get<int>();
  t.symmetric = j.at("symmetric").get<bool>();
  t.exponent_bits = j.at("exponent_bits").get<int>();
  return t;
}

void AddQuantizer(const std::string& stem, const ActQuantizer& q, TensorsToWrite* tensors, nlohmann::json* layout) {
  nlohmann::json j = {{"spec", SpecToJson(q.spec)}, {"scale", q.scale.defined()}, {"zero", q.zero.defined()}};
  if (q.scale.defined()) tensors->Add(stem + ".scale", q.scale);
  if (q.zero.defined()) tensors->Add(stem + ".zero", q.zero);
  layout->push_back(j);
}

}  // namespace

absl::Status WriteLayerState(const std::string& path, const DecoderLayer& layer, const nlohmann::json& info) {
  // The layer's tensors go to the file from their own memory: a mixture of
  // experts' layer is gigabytes, and a copy of it would double the peak.
  TensorsToWrite tensors;
  nlohmann::json layout = {{"norms", nlohmann::json::array()}, {"linears", nlohmann::json::array()}};
  for (size_t k = 0; k < layer.norms.size(); ++k) {
    layout["norms"].push_back(layer.norms[k].first);
    tensors.Add(absl::StrCat("norm.", k), layer.norms[k].second);
  }
  for (size_t j = 0; j < layer.linears.size(); ++j) {
    const Linear& l = layer.linears[j];
    tensors.Add(absl::StrCat("linear.", j, ".weight"), l.weight);
    if (l.bias.defined()) tensors.Add(absl::StrCat("linear.", j, ".bias"), l.bias);
    layout["linears"].push_back({{"bias", l.bias.defined()}});
  }
  if (layer.act) {
    nlohmann::json act = nlohmann::json::array();
    for (int p = 0; p < kNumActPoints; ++p) AddQuantizer(absl::StrCat("act.", p), layer.act->inputs[p], &tensors, &act);
    AddQuantizer("act.kv", layer.act->kv, &tensors, &act);
    layout["act"] = act;
  }
  return WriteSafetensors(path, tensors.views(), {{"qaas_layer", layout.dump()}, {"qaas_info", info.dump()}});
}

absl::StatusOr<nlohmann::json> ReadLayerStateInfo(const std::string& path) {
  auto f = SafetensorsFile::Open(path);  // reads the header only
  if (!f.ok()) return f.status();
  const auto& meta = (*f)->header().metadata;
  auto info = meta.find("qaas_info");
  if (info == meta.end() || meta.count("qaas_layer") == 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a layer state (no qaas_layer/qaas_info metadata)"));
  }
  nlohmann::json j = nlohmann::json::parse(info->second, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(path, ": malformed layer state info"));
  return j;
}

absl::StatusOr<LayerState> ReadLayerState(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  if (!f.ok()) return f.status();
  const auto& meta = (*f)->header().metadata;
  auto layout_it = meta.find("qaas_layer"), info_it = meta.find("qaas_info");
  if (layout_it == meta.end() || info_it == meta.end()) {
    return absl::DataLossError(absl::StrCat(path, ": not a layer state (no qaas_layer/qaas_info metadata)"));
  }
  auto tensor = [&](const std::string& name) -> absl::StatusOr<at::Tensor> {
    auto entry = (*f)->Find(name);
    if (!entry.ok()) return absl::DataLossError(absl::StrCat(path, ": missing tensor '", name, "'"));
    auto raw = (*f)->ReadRaw(name);
    if (!raw.ok()) return raw.status();
    RawTensor r;
    r.name = name;
    r.dtype = (*entry)->dtype;
    r.shape = (*entry)->shape;
    r.data = *std::move(raw);
    return RawToTensor(r);
  };
  LayerState state;
  try {
    const nlohmann::json layout = nlohmann::json::parse(layout_it->second);
    state.info = nlohmann::json::parse(info_it->second);
    const auto& norms = layout.at("norms");
    for (size_t k = 0; k < norms.size(); ++k) {
      auto t = tensor(absl::StrCat("norm.", k));
      if (!t.ok()) return t.status();
      state.layer.norms.emplace_back(norms[k].get<std::string>(), *t);
    }
    const auto& linears = layout.at("linears");
    for (size_t j = 0; j < linears.size(); ++j) {
      Linear l;
      auto w = tensor(absl::StrCat("linear.", j, ".weight"));
      if (!w.ok()) return w.status();
      l.weight = *w;
      if (linears[j].at("bias").get<bool>()) {
        auto b = tensor(absl::StrCat("linear.", j, ".bias"));
        if (!b.ok()) return b.status();
        l.bias = *b;
      }
      state.layer.linears.push_back(std::move(l));
    }
    if (layout.contains("act")) {
      const auto& act = layout.at("act");
      if (act.size() != kNumActPoints + 1) return absl::DataLossError(absl::StrCat(path, ": bad quantizer count"));
      LayerActQuant q;
      for (int p = 0; p <= kNumActPoints; ++p) {
        ActQuantizer& aq = p < kNumActPoints ? q.inputs[p] : q.kv;
        const std::string stem = p < kNumActPoints ? absl::StrCat("act.", p) : "act.kv";
        aq.spec = SpecFromJson(act[p].at("spec"));
        if (act[p].at("scale").get<bool>()) {
          auto t = tensor(stem + ".scale");
          if (!t.ok()) return t.status();
          aq.scale = *t;
        }
        if (act[p].at("zero").get<bool>()) {
          auto t = tensor(stem + ".zero");
          if (!t.ok()) return t.status();
          aq.zero = *t;
        }
      }
      state.layer.act = std::make_shared<const LayerActQuant>(std::move(q));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": malformed layer state: ", e.what()));
  }
  return state;
}

std::string CheckpointFile(const std::string& stem, int layer) {
  return absl::StrFormat("checkpoints/%s-%d.safetensors", stem, layer);
}

nlohmann::json ToJson(const LayerRecord& r) {
  nlohmann::json j = {{"fingerprint", r.fingerprint},
                      {"layer", r.layer},
                      {"layers", nlohmann::json::array()},
                      {"blocks", nlohmann::json::array()},
                      {"seconds", {r.seconds_calibration, r.seconds_quantization, r.seconds_evaluation}}};
  for (const LayerReport& l : r.linears) {
    j["layers"].push_back({l.name, l.method, l.seconds, l.relative_weight_error, l.details, l.group,
                           l.calibration_tokens});
  }
  for (const BlockReport& b : r.blocks) j["blocks"].push_back({b.index, b.output_relative_error, b.transforms});
  return j;
}

absl::StatusOr<LayerRecord> LayerRecordFromJson(const nlohmann::json& j) {
  try {
    LayerRecord r;
    r.fingerprint = j.at("fingerprint");
    r.layer = j.at("layer").get<int>();
    for (const auto& l : j.at("layers")) {
      r.linears.push_back({l.at(0).get<std::string>(), l.at(1).get<std::string>(), l.at(2).get<double>(),
                           l.at(3).get<double>(), l.at(4), l.size() > 5 ? l.at(5).get<std::string>() : "",
                           l.size() > 6 ? l.at(6).get<int64_t>() : -1});
    }
    for (const auto& b : j.at("blocks")) r.blocks.push_back({b.at(0).get<int>(), b.at(1).get<double>(), b.at(2)});
    const auto& seconds = j.at("seconds");
    r.seconds_calibration = seconds.at(0).get<double>();
    r.seconds_quantization = seconds.at(1).get<double>();
    r.seconds_evaluation = seconds.at(2).get<double>();
    return r;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("malformed layer record: ", e.what()));
  }
}

int ResumableLayers(const std::string& output_dir, int num_layers, const std::vector<std::string>& stems,
                    const nlohmann::json& fingerprint) {
  auto path = [&](const std::string& stem, int i) { return output_dir + "/" + CheckpointFile(stem, i); };
  int n = 0;
  for (; n < num_layers; ++n) {
    bool files = true;
    for (const std::string& stem : stems) files = files && FileExists(path(stem, n));
    if (!files) break;
    // The header is enough to decide; replaying the layer reads the tensors.
    auto info = ReadLayerStateInfo(path("state", n));
    if (!info.ok()) break;
    auto record = LayerRecordFromJson(*info);
    if (!record.ok() || record->fingerprint != fingerprint || record->layer != n) break;
  }
  for (int k = n; k < num_layers; ++k) {
    std::remove(path("state", k).c_str());
    for (const std::string& stem : stems) std::remove(path(stem, k).c_str());
  }
  return n;
}

}  // namespace qaas::quant
