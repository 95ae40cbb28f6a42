#include "quant/model/checkpoint.h"

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

DType FromScalarType(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::kF64;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    case at::kLong: return DType::kI64;
    case at::kInt: return DType::kI32;
    case at::kShort: return DType::kI16;
    case at::kChar: return DType::kI8;
    case at::kByte: return DType::kU8;
    case at::kBool: return DType::kBool;
    default: return DType::kF32;
  }
}

std::string ShapeString(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

}  // namespace

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kF64: return at::kDouble;
    case DType::kF32: return at::kFloat;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
    case DType::kF8E4M3: return at::kByte;  // the codes; decoded by formats/number_format.h
  }
  return at::kFloat;
}

at::Tensor RawToTensor(const RawTensor& raw) {
  at::Tensor t = at::empty(raw.shape, at::TensorOptions().dtype(ToScalarType(raw.dtype)));
  if (!raw.data.empty()) std::memcpy(t.data_ptr(), raw.data.data(), raw.data.size());
  return t;
}

RawTensor TensorToRaw(const std::string& name, const at::Tensor& t) {
  at::Tensor c = t.contiguous().cpu();
  RawTensor raw;
  raw.name = name;
  raw.dtype = FromScalarType(c.scalar_type());
  raw.shape = c.sizes().vec();
  raw.data.assign(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  return raw;
}

void TensorsToWrite::Add(const std::string& name, const at::Tensor& t) {
  held_.push_back(t.contiguous().cpu());
  const at::Tensor& c = held_.back();
  views_.push_back({name, FromScalarType(c.scalar_type()), c.sizes().vec(),
                    absl::string_view(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size())});
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  if (!FileExists(dir)) return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  auto config_text = ReadFile(dir + "/config.json");
  if (!config_text.ok()) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " has no config.json"));
  }
  QAAS_ASSIGN_OR_RETURN(auto config, ParseModelConfig(*config_text));

  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;
  ck->config_ = std::move(config);

  std::vector<std::string> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (FileExists(dir + "/model.safetensors")) {
    files.push_back("model.safetensors");
  } else if (FileExists(index_path)) {
    QAAS_ASSIGN_OR_RETURN(auto text, ReadFile(index_path));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": no weight_map object"));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map['", it.key(), "'] is not a file name"));
      }
      std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": shard name '", f, "' is not a plain file name"));
      }
      if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
    }
  } else {
    return absl::NotFoundError(absl::StrCat("model directory ", dir,
                                            " has neither model.safetensors nor model.safetensors.index.json"));
  }
  for (const auto& f : files) {
    QAAS_ASSIGN_OR_RETURN(auto st, SafetensorsFile::Open(dir + "/" + f));
    SafetensorsFile* raw = st.get();
    for (const auto& [name, entry] : raw->header().tensors) {
      if (ck->where_.count(name)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' appears in two shards"));
      }
      ck->where_[name] = raw;
    }
    ck->files_[f] = std::move(st);
  }
  return ck;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [n, f] : where_) names.push_back(n);
  return names;
}

std::vector<std::string> Checkpoint::WeightFiles() const {
  std::vector<std::string> out;
  for (const auto& [n, f] : files_) out.push_back(n);
  return out;
}

absl::StatusOr<TensorEntry> Checkpoint::Entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("model ", dir_, ": missing tensor '", name, "'"));
  }
  QAAS_ASSIGN_OR_RETURN(auto e, it->second->Find(name));
  return *e;
}

absl::StatusOr<RawTensor> Checkpoint::LoadRaw(const std::string& name) const {
  QAAS_ASSIGN_OR_RETURN(auto entry, Entry(name));
  QAAS_ASSIGN_OR_RETURN(auto bytes, where_.at(name)->ReadRaw(name));
  RawTensor raw;
  raw.name = name;
  raw.dtype = entry.dtype;
  raw.shape = entry.shape;
  raw.data = std::move(bytes);
  return raw;
}

absl::StatusOr<at::Tensor> Checkpoint::Load(const std::string& name,
                                            const std::vector<int64_t>& shape) const {
  QAAS_ASSIGN_OR_RETURN(auto raw, LoadRaw(name));
  if (!shape.empty() && raw.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", ShapeString(raw.shape),
                                                   " but config.json implies ", ShapeString(shape)));
  }
  switch (raw.dtype) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kF64: break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has dtype ", DTypeName(raw.dtype),
                                                     "; expected a float type"));
  }
  return RawToTensor(raw).to(at::kFloat);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& [name, f] : where_) {
    const auto& e = f->header().tensors.at(name);
    n += e.end - e.begin;
  }
  return n;
}

}  // namespace qaas::quant
