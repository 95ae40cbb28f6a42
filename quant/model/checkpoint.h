// A Hugging Face checkpoint directory: config.json plus model.safetensors, or
// shards listed by model.safetensors.index.json. Tensors are read one at a time
// (nothing is loaded up front), so one decoder layer can be resident alone.
#ifndef QAAS_QUANT_MODEL_CHECKPOINT_H_
#define QAAS_QUANT_MODEL_CHECKPOINT_H_

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/model/config.h"
#include "quant/model/safetensors.h"

namespace qaas::quant {

class Checkpoint {
 public:
  // Reads config.json and the safetensors headers. NotFound when the
  // directory, config.json or the weights are missing; InvalidArgument for
  // malformed files (each message names the file).
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  std::vector<std::string> TensorNames() const;
  // The stored entry (dtype, shape) of a tensor.
  absl::StatusOr<TensorEntry> Entry(const std::string& name) const;
  // Reads one tensor as float32 on the CPU. When `shape` is given the stored
  // shape must equal it (InvalidArgument naming both otherwise).
  absl::StatusOr<at::Tensor> Load(const std::string& name,
                                  const std::vector<int64_t>& shape = {}) const;
  // The stored bytes of one tensor, for copying unquantized tensors verbatim.
  absl::StatusOr<RawTensor> LoadRaw(const std::string& name) const;
  // Sum of the stored tensors' sizes.
  uint64_t total_bytes() const;
  // The safetensors files in the checkpoint, relative to dir.
  std::vector<std::string> WeightFiles() const;

 private:
  Checkpoint() = default;
  std::string dir_;
  ModelConfig config_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;  // by file name
  std::map<std::string, SafetensorsFile*> where_;                  // tensor -> file
};

at::ScalarType ToScalarType(DType dtype);

// Raw little-endian bytes <-> tensors.
at::Tensor RawToTensor(const RawTensor& raw);  // keeps the stored dtype
RawTensor TensorToRaw(const std::string& name, const at::Tensor& t);

// Tensors to write (WriteSafetensors) without copying their bytes: each is
// held as a contiguous CPU tensor (itself when it already is one) and viewed.
class TensorsToWrite {
 public:
  void Add(const std::string& name, const at::Tensor& t);
  const std::vector<RawTensorView>& views() const { return views_; }

 private:
  std::vector<at::Tensor> held_;
  std::vector<RawTensorView> views_;
};

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_CHECKPOINT_H_
