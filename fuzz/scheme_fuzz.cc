// libFuzzer target: the scheme shorthand grammar. An accepted scheme's
// canonical shorthand must parse back to the same scheme.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "quant/scheme.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto scheme = qaas::quant::ParseScheme(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!scheme.ok()) return 0;
  const std::string canonical = scheme->ToString();
  auto again = qaas::quant::ParseScheme(canonical);
  if (!again.ok() || again->ToString() != canonical) {
    std::fprintf(stderr, "'%s' does not parse back to itself\n", canonical.c_str());
    std::abort();
  }
  return 0;
}
