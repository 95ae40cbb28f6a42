#include "quant/model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF64, "F64", 8},  {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},  {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1},
};

}  // namespace

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (const auto& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", name, "'"));
}

absl::string_view DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

int64_t TensorEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json_text,
                                                         uint64_t data_size) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("header is not a JSON object");
  }
  SafetensorsHeader h;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return absl::InvalidArgumentError("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat("__metadata__.", m.key(), " is not a string"));
        }
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", why));
    };
    if (!v.is_object()) return bad("entry is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) return bad("missing dtype");
    if (!v.contains("shape") || !v["shape"].is_array()) return bad("missing shape");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2) {
      return bad("data_offsets must be [begin, end]");
    }
    TensorEntry e;
    auto dtype = ParseDType(v["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(dtype.status().message());
    e.dtype = *dtype;
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return bad("shape has a bad dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / 16 / dim) {
        return bad("shape is too large");
      }
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    for (const auto& o : v["data_offsets"]) {
      if (!o.is_number_unsigned()) return bad("data_offsets must be non-negative integers");
    }
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.begin > e.end) return bad("data_offsets begin > end");
    if (e.end > data_size) {
      return bad(absl::StrCat("data_offsets end ", e.end, " is past the data section (", data_size,
                              " bytes): file truncated or header lying"));
    }
    if (e.end - e.begin != numel * DTypeSize(e.dtype)) {
      return bad(absl::StrCat("holds ", e.end - e.begin, " bytes but ", DTypeName(e.dtype),
                              " x shape needs ", numel * DTypeSize(e.dtype)));
    }
    ranges.emplace_back(e.begin, e.end);
    h.tensors.emplace(name, std::move(e));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return absl::InvalidArgumentError("tensors' data_offsets overlap");
    }
  }
  return h;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->fd_ = fd;
  f->path_ = path;
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::InternalError(absl::StrCat(path, ": fstat failed"));
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  if (file_size < 8) return fail("too short for a safetensors header (truncated?)");
  unsigned char len_bytes[8];
  if (::pread(fd, len_bytes, 8, 0) != 8) return fail("cannot read the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxHeaderBytes) return fail(absl::StrCat("header length ", n, " exceeds 100 MB"));
  if (n > file_size - 8) {
    return fail(absl::StrCat("header length ", n, " is past the end of the file (", file_size,
                             " bytes): truncated"));
  }
  std::string json(n, '\0');
  if (n > 0 && ::pread(fd, json.data(), n, 8) != static_cast<ssize_t>(n)) {
    return fail("cannot read the header");
  }
  auto header = ParseSafetensorsHeader(json, file_size - 8 - n);
  if (!header.ok()) return fail(header.status().message());
  f->header_ = *std::move(header);
  f->data_start_ = 8 + n;
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<const TensorEntry*> SafetensorsFile::Find(absl::string_view name) const {
  auto it = header_.tensors.find(std::string(name));
  if (it == header_.tensors.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  }
  return &it->second;
}

absl::StatusOr<std::string> SafetensorsFile::ReadRaw(absl::string_view name) const {
  QAAS_ASSIGN_OR_RETURN(auto e, Find(name));
  std::string out(e->end - e->begin, '\0');
  uint64_t done = 0;
  while (done < out.size()) {
    ssize_t r = ::pread(fd_, out.data() + done, out.size() - done, data_start_ + e->begin + done);
    if (r <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor '", name, "': short read (file truncated?)"));
    }
    done += static_cast<uint64_t>(r);
  }
  return out;
}

absl::StatusOr<std::vector<RawTensor>> SafetensorsFile::ReadAll() const {
  std::vector<RawTensor> out;
  for (const auto& [name, entry] : header_.tensors) {
    QAAS_ASSIGN_OR_RETURN(auto bytes, ReadRaw(name));
    out.push_back({name, entry.dtype, entry.shape, std::move(bytes)});
  }
  return out;
}

namespace {

// The 8-byte length and the JSON header (padded to 8 bytes) of tensors laid
// out in the order given.
struct HeaderTensor {
  const std::string* name;
  DType dtype;
  const std::vector<int64_t>* shape;
  uint64_t bytes;
};
std::string SafetensorsHead(const std::vector<HeaderTensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[*t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", *t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string json = header.dump();
  while ((json.size() + 8) % 8 != 0) json.push_back(' ');
  std::string head;
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) head.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return head + json;
}

uint64_t ShapeBytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<uint64_t>(d);
  return numel * DTypeSize(dtype);
}

}  // namespace

uint64_t TensorSource::bytes() const { return ShapeBytes(dtype, shape); }

absl::Status WriteSafetensors(const std::string& path, const std::vector<RawTensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<HeaderTensor> entries;
  for (const auto& t : tensors) {
    if (t.data.size() != ShapeBytes(t.dtype, t.shape)) {
      return absl::InternalError(absl::StrCat("tensor '", t.name, "': ", t.data.size(),
                                              " bytes do not match its shape"));
    }
    entries.push_back({&t.name, t.dtype, &t.shape, t.data.size()});
  }
  const std::string head = SafetensorsHead(entries, metadata);
  std::vector<absl::string_view> pieces = {head};
  for (const auto& t : tensors) pieces.push_back(t.data);
  return WriteFileAtomic(path, pieces);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorSource>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<HeaderTensor> entries;
  for (const auto& t : tensors) entries.push_back({&t.name, t.dtype, &t.shape, t.bytes()});
  QAAS_ASSIGN_OR_RETURN(auto file, AtomicOutputFile::Create(path));
  QAAS_RETURN_IF_ERROR(file->Append(SafetensorsHead(entries, metadata)));
  for (const auto& t : tensors) {
    QAAS_ASSIGN_OR_RETURN(const std::string data, t.read());
    if (data.size() != t.bytes()) {
      return absl::InternalError(absl::StrCat(path, ": tensor '", t.name, "' gave ", data.size(),
                                              " bytes where its shape has ", t.bytes()));
    }
    QAAS_RETURN_IF_ERROR(file->Append(data));
  }
  return file->Commit();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<RawTensorView> views;
  views.reserve(tensors.size());
  for (const RawTensor& t : tensors) views.push_back({t.name, t.dtype, t.shape, t.data});
  return WriteSafetensors(path, views, metadata);
}

}  // namespace qaas::quant
