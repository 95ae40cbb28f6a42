// libFuzzer target: the safetensors header parser. Input: 8 bytes of data
// section size, then the header JSON. Beyond not crashing, a header it
// accepts must describe tensors that lie inside the data section, each
// exactly dtype size x elements long.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "quant/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size = 0;
  std::memcpy(&data_size, data, 8);
  data_size %= uint64_t{1} << 40;
  const absl::string_view json(reinterpret_cast<const char*>(data) + 8, size - 8);
  auto header = qaas::quant::ParseSafetensorsHeader(json, data_size);
  if (!header.ok()) return 0;
  for (const auto& [name, t] : header->tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * qaas::quant::DTypeSize(t.dtype);
    if (t.begin > t.end || t.end > data_size || t.end - t.begin != bytes) {
      std::fprintf(stderr, "accepted tensor '%s' with bad extent [%llu, %llu)\n", name.c_str(),
                   static_cast<unsigned long long>(t.begin), static_cast<unsigned long long>(t.end));
      std::abort();
    }
  }
  return 0;
}
