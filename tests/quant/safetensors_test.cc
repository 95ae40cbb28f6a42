#include "quant/model/safetensors.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

std::string LittleEndian64(uint64_t n) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out;
}

// A safetensors file from a literal header and data section.
std::string FileBytes(const std::string& header, const std::string& data) {
  return LittleEndian64(header.size()) + header + data;
}

std::vector<RawTensor> SampleTensors() {
  return {
      {"a.weight", DType::kF32, {2, 3}, ::qaas::testing::PatternData(24, 1)},
      {"b.bias", DType::kF16, {5}, ::qaas::testing::PatternData(10, 2)},
      {"c.ids", DType::kI64, {1, 1, 2}, ::qaas::testing::PatternData(16, 3)},
      {"d.mask", DType::kBool, {3}, std::string("\x01\x00\x01", 3)},
      {"e.scalar", DType::kBF16, {}, ::qaas::testing::PatternData(2, 4)},
  };
}

TEST(SafetensorsTest, WriteThenOpenRoundTripsEveryTensorAndMetadata) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  const auto tensors = SampleTensors();
  QAAS_ASSERT_OK(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "x"}}));

  auto f = SafetensorsFile::Open(path);
  QAAS_ASSERT_OK(f);
  EXPECT_EQ((*f)->path(), path);
  EXPECT_EQ((*f)->header().tensors.size(), tensors.size());
  EXPECT_EQ((*f)->header().metadata.at("format"), "pt");
  EXPECT_EQ((*f)->header().metadata.at("note"), "x");
  for (const auto& t : tensors) {
    SCOPED_TRACE(t.name);
    auto entry = (*f)->Find(t.name);
    QAAS_ASSERT_OK(entry);
    EXPECT_EQ((*entry)->dtype, t.dtype);
    EXPECT_EQ((*entry)->shape, t.shape);
    EXPECT_EQ((*entry)->end - (*entry)->begin, t.data.size());
    auto bytes = (*f)->ReadRaw(t.name);
    QAAS_ASSERT_OK(bytes);
    EXPECT_EQ(*bytes, t.data);
  }
  QAAS_EXPECT_CODE((*f)->Find("nope"), kNotFound);
  QAAS_EXPECT_CODE((*f)->ReadRaw("nope"), kNotFound);
}

TEST(SafetensorsTest, WrittenHeaderIsEightByteAlignedJson) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  QAAS_ASSERT_OK(WriteSafetensors(path, SampleTensors()));
  const std::string bytes = ReadLocalFile(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  auto j = nlohmann::json::parse(bytes.substr(8, n), nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["a.weight"]["dtype"], "F32");
  EXPECT_EQ(j["a.weight"]["data_offsets"], nlohmann::json::array({0, 24}));
  EXPECT_EQ(j["b.bias"]["data_offsets"], nlohmann::json::array({24, 34}));
  EXPECT_FALSE(j.contains("__metadata__"));  // none given
  uint64_t data = 0;
  for (const auto& t : SampleTensors()) data += t.data.size();
  EXPECT_EQ(bytes.size(), 8 + n + data);
}

TEST(SafetensorsTest, WriteRejectsDataThatDoesNotMatchTheShape) {
  ScopedTempDir dir;
  std::vector<RawTensor> bad = {{"w", DType::kF32, {2, 2}, std::string(15, '\0')}};
  auto st = WriteSafetensors(dir.path() + "/t.safetensors", bad);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "'w'"));
  EXPECT_FALSE(::qaas::testing::LocalPathExists(dir.path() + "/t.safetensors"));
}

TEST(SafetensorsTest, TruncatedFileIsInvalidArgumentNamingTheTensor) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  QAAS_ASSERT_OK(WriteSafetensors(path, SampleTensors()));
  const std::string bytes = ReadLocalFile(path);
  // The last tensor in data order is e.scalar (2 bytes): cut one byte off it.
  WriteLocalFile(path, bytes.substr(0, bytes.size() - 1));
  auto f = SafetensorsFile::Open(path);
  QAAS_EXPECT_CODE(f, kInvalidArgument);
  EXPECT_TRUE(MessageHas(f, "e.scalar"));
  EXPECT_TRUE(MessageHas(f, "truncated"));
  EXPECT_TRUE(MessageHas(f, path));
}

TEST(SafetensorsTest, TooShortForTheLengthIsInvalidArgument) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  WriteLocalFile(path, "\x10\x00\x00");
  auto f = SafetensorsFile::Open(path);
  QAAS_EXPECT_CODE(f, kInvalidArgument);
  EXPECT_TRUE(MessageHas(f, "truncated"));
}

TEST(SafetensorsTest, HeaderLengthPastTheEndIsInvalidArgument) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/t.safetensors";
  WriteLocalFile(path, LittleEndian64(1000) + "{}");
  auto f = SafetensorsFile::Open(path);
  QAAS_EXPECT_CODE(f, kInvalidArgument);
  EXPECT_TRUE(MessageHas(f, "header length 1000"));

  WriteLocalFile(path, LittleEndian64(uint64_t{1} << 62) + "{}");
  QAAS_EXPECT_CODE(SafetensorsFile::Open(path), kInvalidArgument);
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  ScopedTempDir dir;
  QAAS_EXPECT_CODE(SafetensorsFile::Open(dir.path() + "/absent.safetensors"), kNotFound);
}

struct LyingHeader {
  const char* what;
  std::string header;
  std::string data;
  const char* needle;
};

TEST(SafetensorsTest, LyingHeadersAreInvalidArgument) {
  const std::vector<LyingHeader> cases = {
      {"size does not match dtype x shape",
       R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0'), "'w'"},
      {"offsets past the end", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       std::string(4, '\0'), "'w'"},
      {"overlapping ranges",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'), "overlap"},
      {"not JSON", "{\"w\": [", std::string(), "JSON"},
      {"unknown dtype", R"({"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,2]}})",
       std::string(2, '\0'), "Q7"},
      {"begin after end", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[3,2]}})",
       std::string(4, '\0'), "'w'"},
      {"negative dimension", R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})",
       std::string(1, '\0'), "'w'"},
  };
  ScopedTempDir dir;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string path = dir.path() + "/lying.safetensors";
    WriteLocalFile(path, FileBytes(c.header, c.data));
    auto f = SafetensorsFile::Open(path);
    QAAS_EXPECT_CODE(f, kInvalidArgument);
    EXPECT_TRUE(MessageHas(f, c.needle));
  }
}

TEST(ParseSafetensorsHeaderTest, ParsesEntriesAndMetadata) {
  auto h = ParseSafetensorsHeader(
      R"({"__metadata__":{"format":"pt"},)"
      R"("x":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("y":{"dtype":"I8","shape":[],"data_offsets":[12,13]}})",
      13);
  QAAS_ASSERT_OK(h);
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  const TensorEntry& x = h->tensors.at("x");
  EXPECT_EQ(x.dtype, DType::kF16);
  EXPECT_EQ(x.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(x.numel(), 6);
  EXPECT_EQ(x.begin, 0u);
  EXPECT_EQ(x.end, 12u);
  EXPECT_EQ(h->tensors.at("y").numel(), 1);  // a scalar
}

TEST(ParseSafetensorsHeaderTest, EmptyObjectHasNoTensors) {
  auto h = ParseSafetensorsHeader("{}", 0);
  QAAS_ASSERT_OK(h);
  EXPECT_TRUE(h->tensors.empty());
}

TEST(ParseSafetensorsHeaderTest, RejectsMalformedHeaders) {
  const std::vector<std::pair<std::string, const char*>> cases = {
      {"[]", "JSON object"},
      {"", "JSON object"},
      {R"({"__metadata__":{"n":1}})", "__metadata__.n"},
      {R"({"__metadata__":[]})", "__metadata__"},
      {R"({"w":3})", "'w'"},
      {R"({"w":{"shape":[1],"data_offsets":[0,1]}})", "dtype"},
      {R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", "shape"},
      {R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "'w'"},
      {R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "'w'"},
  };
  for (const auto& [header, needle] : cases) {
    SCOPED_TRACE(header);
    auto h = ParseSafetensorsHeader(header, 8);
    QAAS_EXPECT_CODE(h, kInvalidArgument);
    EXPECT_TRUE(MessageHas(h, needle));
  }
}

TEST(ParseSafetensorsHeaderTest, DataSizeBoundsTheOffsets) {
  const std::string header = R"({"w":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})";
  QAAS_EXPECT_OK(ParseSafetensorsHeader(header, 8));
  QAAS_EXPECT_OK(ParseSafetensorsHeader(header, 100));
  auto h = ParseSafetensorsHeader(header, 7);
  QAAS_EXPECT_CODE(h, kInvalidArgument);
  EXPECT_TRUE(MessageHas(h, "past the data section"));
}

TEST(DTypeTest, NamesAndSizesRoundTrip) {
  const std::vector<std::pair<DType, size_t>> all = {
      {DType::kF64, 8}, {DType::kF32, 4}, {DType::kF16, 2}, {DType::kBF16, 2}, {DType::kI64, 8},
      {DType::kI32, 4}, {DType::kI16, 2}, {DType::kI8, 1},  {DType::kU8, 1},   {DType::kBool, 1}};
  for (const auto& [d, size] : all) {
    auto parsed = ParseDType(DTypeName(d));
    QAAS_ASSERT_OK(parsed);
    EXPECT_EQ(*parsed, d);
    EXPECT_EQ(DTypeSize(d), size) << DTypeName(d);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "BF16");
  QAAS_EXPECT_CODE(ParseDType("f32"), kInvalidArgument);  // names are case-sensitive
}

}  // namespace
}  // namespace qaas::quant
