// The safetensors file format (https://huggingface.co/docs/safetensors):
//   8 bytes little-endian header length N | N bytes JSON header | data
// The header maps tensor names to {dtype, shape, data_offsets: [begin, end)}
// relative to the data section, plus an optional "__metadata__" string map.
//
// This file is torch-free: parsing is pure (and fuzzable), reading returns raw
// bytes. Every inconsistency (truncated file, offsets past the end, overlapping
// tensors, sizes that do not match dtype x shape) is InvalidArgument naming the
// file and the tensor.
#ifndef QAAS_QUANT_MODEL_SAFETENSORS_H_
#define QAAS_QUANT_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace qaas::quant {

// kF8E4M3 ("F8_E4M3"): OCP FP8 E4M3 codes, one byte each; libtorch 1.13 has
// no such type, so code that reads them takes the bytes (ToScalarType: uint8)
// and decodes them itself (formats/number_format.h).
enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3 };

absl::StatusOr<DType> ParseDType(absl::string_view name);
absl::string_view DTypeName(DType d);
size_t DTypeSize(DType d);

struct TensorEntry {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section
  uint64_t end = 0;
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::map<std::string, TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

// Parses and validates a header against a data section of `data_size` bytes.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json, uint64_t data_size);

// One tensor as stored: raw little-endian bytes of dtype x shape.
struct RawTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;
};

// A safetensors file opened for random access. Thread-compatible.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  // NotFound when the file has no tensor of that name.
  absl::StatusOr<const TensorEntry*> Find(absl::string_view name) const;
  // Reads a tensor's bytes.
  absl::StatusOr<std::string> ReadRaw(absl::string_view name) const;
  // Every tensor of the file, in header (name) order.
  absl::StatusOr<std::vector<RawTensor>> ReadAll() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  SafetensorsHeader header_;
};

// A tensor's stored bytes, owned elsewhere (e.g. a contiguous CPU tensor's
// memory): what a writer needs without copying them.
struct RawTensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  absl::string_view data;
};

// Writes a safetensors file atomically (temp file + rename). Tensors are laid
// out in the order given, 8-byte aligned header as the format recommends. The
// bytes go to the file tensor by tensor, never copied into one buffer.
absl::Status WriteSafetensors(const std::string& path, const std::vector<RawTensorView>& tensors,
                              const std::map<std::string, std::string>& metadata = {});
absl::Status WriteSafetensors(const std::string& path, const std::vector<RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A tensor whose bytes are produced when the writer reaches it, so a file of
// many tensors is written holding one at a time (an artifact's shards).
struct TensorSource {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::function<absl::StatusOr<std::string>()> read;  // must return bytes() bytes
  uint64_t bytes() const;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSource>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_SAFETENSORS_H_
