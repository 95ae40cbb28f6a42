#include "quant/model/outliers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::StatusOr<nlohmann::json> MakeOutlierModel(const std::string& model_dir, const std::string& out_dir,
                                                const OutlierOptions& o) {
  if (!(o.min_factor >= 1 && o.max_factor >= o.min_factor)) {
    return absl::InvalidArgumentError(absl::StrCat("outlier factors must satisfy 1 <= min <= max, got [",
                                                   o.min_factor, ", ", o.max_factor, "]"));
  }
  QAAS_ASSIGN_OR_RETURN(auto ck, Checkpoint::Open(model_dir));
  const ModelConfig& c = ck->config();
  if (o.channels < 1 || o.channels > c.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("outlier channels must be 1..hidden_size (", c.hidden_size, "), got ", o.channels));
  }
  QAAS_ASSIGN_OR_RETURN(auto model, DecoderModel::Create(*ck, at::kCPU, 1));

  // The same channels in every layer; one factor per channel.
  std::mt19937_64 rng(o.seed);
  std::vector<int64_t> all(c.hidden_size);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int64_t> channels(all.begin(), all.begin() + o.channels);
  std::sort(channels.begin(), channels.end());
  std::uniform_real_distribution<double> factor(o.min_factor, o.max_factor);
  std::vector<double> factors;
  for (size_t i = 0; i < channels.size(); ++i) factors.push_back(factor(rng));
  at::Tensor scale = at::ones({c.hidden_size}, at::kDouble);
  for (size_t i = 0; i < channels.size(); ++i) scale[channels[i]] = factors[i];

  // Float64 updates of the affected tensors, stored back in their dtype.
  std::map<std::string, at::Tensor> changed;
  auto update = [&](const std::string& name, const std::function<at::Tensor(const at::Tensor&)>& f) -> absl::Status {
    QAAS_ASSIGN_OR_RETURN(auto raw, ck->LoadRaw(name));
    at::Tensor t = RawToTensor(raw);
    changed[name] = f(t.to(at::kDouble)).to(t.scalar_type());
    return absl::OkStatus();
  };
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string prefix = model->LayerPrefix(i);
    for (ActPoint p : {ActPoint::kAttnIn, ActPoint::kMlpIn}) {
      const BlockNorm norm = model->NormOf(p);
      if (norm.weight.empty()) {
        return absl::FailedPreconditionError("outliers: the model's norms have no affine weight to scale");
      }
      QAAS_RETURN_IF_ERROR(update(prefix + norm.weight, [&](const at::Tensor& t) { return t * scale; }));
      if (!norm.bias.empty() && ck->Has(prefix + norm.bias)) {
        QAAS_RETURN_IF_ERROR(update(prefix + norm.bias, [&](const at::Tensor& t) { return t * scale; }));
      }
      for (int j : model->ConsumersOf(p)) {
        QAAS_RETURN_IF_ERROR(update(prefix + model->LinearNames()[j] + ".weight",
                                    [&](const at::Tensor& t) { return t / scale; }));
      }
    }
  }
  std::vector<RawTensor> tensors;
  for (const std::string& name : ck->TensorNames()) {
    auto it = changed.find(name);
    if (it != changed.end()) {
      tensors.push_back(TensorToRaw(name, it->second));
    } else {
      QAAS_ASSIGN_OR_RETURN(auto raw, ck->LoadRaw(name));
      tensors.push_back(std::move(raw));
    }
  }
  QAAS_RETURN_IF_ERROR(MakeDirs(out_dir));
  QAAS_RETURN_IF_ERROR(WriteSafetensors(out_dir + "/model.safetensors", tensors, {{"format", "pt"}}));
  for (const char* f : {"config.json", "tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt",
                        "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
    const std::string from = model_dir + "/" + f;
    if (FileExists(from)) QAAS_RETURN_IF_ERROR(CopyFile(from, out_dir + "/" + f));
  }
  nlohmann::json record = {{"source", model_dir}, {"channels", channels}, {"factors", factors},
                           {"seed", o.seed}};
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(out_dir + "/qaas_outliers.json", record.dump(2) + "\n"));
  return record;
}

}  // namespace qaas::quant
