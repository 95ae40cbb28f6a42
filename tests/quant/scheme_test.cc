#include "quant/scheme.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

TensorQuant Int(int bits, Granularity g, bool symmetric, int group_size = 0) {
  TensorQuant q;
  q.format = NumberFormat::kInt;
  q.bits = bits;
  q.granularity = g;
  q.symmetric = symmetric;
  q.group_size = group_size;
  return q;
}

TensorQuant Mx(NumberFormat f, int bits) {
  TensorQuant q;
  q.format = f;
  q.bits = bits;
  q.granularity = Granularity::kBlock;
  q.symmetric = true;
  return q;
}

const TensorQuant kNone{};

void ExpectSchemeEq(const Scheme& got, const Scheme& want) {
  EXPECT_TRUE(got.weights == want.weights) << "weights differ: " << got.ToString();
  EXPECT_TRUE(got.activations == want.activations) << "activations differ: " << got.ToString();
  EXPECT_TRUE(got.kv_cache == want.kv_cache) << "kv cache differs: " << got.ToString();
}

struct Case {
  std::string shorthand;
  Scheme want;
  std::string canonical;
};

std::vector<Case> ValidCases() {
  std::vector<Case> cases;
  cases.push_back({"W4A16g128", {Int(4, Granularity::kPerGroup, false, 128), kNone, kNone}, "W4A16g128"});
  cases.push_back({"W8A16", {Int(8, Granularity::kPerChannel, false), kNone, kNone}, "W8A16"});
  cases.push_back({"W4A16", {Int(4, Granularity::kPerChannel, false), kNone, kNone}, "W4A16"});
  cases.push_back({"W3A16g128", {Int(3, Granularity::kPerGroup, false, 128), kNone, kNone}, "W3A16g128"});
  cases.push_back({"W4A8",
                   {Int(4, Granularity::kPerChannel, false), Int(8, Granularity::kPerToken, true), kNone},
                   "W4A8"});
  cases.push_back({"W4A4KV4",
                   {Int(4, Granularity::kPerChannel, false), Int(4, Granularity::kPerToken, true),
                    Int(4, Granularity::kPerToken, false)},
                   "W4A4KV4"});
  cases.push_back({"W4A8KV4",
                   {Int(4, Granularity::kPerChannel, false), Int(8, Granularity::kPerToken, true),
                    Int(4, Granularity::kPerToken, false)},
                   "W4A8KV4"});
  cases.push_back({"Wmxint4Amxint8",
                   {Mx(NumberFormat::kMxInt, 4), Mx(NumberFormat::kMxInt, 8), kNone},
                   "Wmxint4Amxint8"});
  cases.push_back({"Wmxfp4Amxfp4",
                   {Mx(NumberFormat::kMxFp, 4), Mx(NumberFormat::kMxFp, 4), kNone},
                   "Wmxfp4Amxfp4"});
  cases.push_back({"W4A16g128_sym", {Int(4, Granularity::kPerGroup, true, 128), kNone, kNone},
                   "W4A16g128_sym"});
  // The group size may also follow the weights' bits; the canonical form puts it after A.
  cases.push_back({"W4g128A16", {Int(4, Granularity::kPerGroup, false, 128), kNone, kNone}, "W4A16g128"});
  // Case-insensitive.
  cases.push_back({"w4a16g128", {Int(4, Granularity::kPerGroup, false, 128), kNone, kNone}, "W4A16g128"});
  // A missing "A" means A16.
  cases.push_back({"W4", {Int(4, Granularity::kPerChannel, false), kNone, kNone}, "W4A16"});
  // The MX elements other than the defaults, spelled out; the defaults spelled out are canonicalised.
  TensorQuant e2m3 = Mx(NumberFormat::kMxFp, 6), e5m2 = Mx(NumberFormat::kMxFp, 8);
  e2m3.exponent_bits = 2;
  e5m2.exponent_bits = 5;
  cases.push_back({"Wmxfp6e2m3Amxfp8e5m2", {e2m3, e5m2, kNone}, "Wmxfp6e2m3Amxfp8e5m2"});
  cases.push_back({"Wmxfp8e4m3Amxfp6e3m2", {Mx(NumberFormat::kMxFp, 8), Mx(NumberFormat::kMxFp, 6), kNone},
                   "Wmxfp8Amxfp6"});
  // Static (calibrated, per-tensor) integer activations.
  cases.push_back({"W8A8_static",
                   {Int(8, Granularity::kPerChannel, false), Int(8, Granularity::kPerTensor, true), kNone},
                   "W8A8_static"});
  return cases;
}

TEST(ParseSchemeTest, ParsesEachShorthandIntoItsFields) {
  for (const Case& c : ValidCases()) {
    SCOPED_TRACE(c.shorthand);
    auto s = ParseScheme(c.shorthand);
    QAAS_ASSERT_OK(s);
    ExpectSchemeEq(*s, c.want);
  }
}

TEST(ParseSchemeTest, ToStringIsCanonicalAndRoundTrips) {
  for (const Case& c : ValidCases()) {
    SCOPED_TRACE(c.shorthand);
    auto s = ParseScheme(c.shorthand);
    QAAS_ASSERT_OK(s);
    EXPECT_EQ(s->ToString(), c.canonical);
    auto again = ParseScheme(s->ToString());
    QAAS_ASSERT_OK(again);
    ExpectSchemeEq(*again, *s);
  }
}

TEST(ParseSchemeTest, GroupAfterWeightsEqualsGroupAfterActivations) {
  auto a = ParseScheme("W4g128A16");
  auto b = ParseScheme("W4A16g128");
  QAAS_ASSERT_OK(a);
  QAAS_ASSERT_OK(b);
  ExpectSchemeEq(*a, *b);
  EXPECT_EQ(a->ToString(), b->ToString());
}

TEST(ParseSchemeTest, WeightOnlyOnlyWithoutActivationsAndKvCache) {
  EXPECT_TRUE(ParseScheme("W4A16g128")->weight_only());
  EXPECT_FALSE(ParseScheme("W4A8")->weight_only());
  EXPECT_FALSE(ParseScheme("W4A16KV4")->weight_only());
}

TEST(ParseSchemeTest, AsymOptionAndFp8Formats) {
  auto asym = ParseScheme("W4A16_asym");
  QAAS_ASSERT_OK(asym);
  EXPECT_FALSE(asym->weights.symmetric);
  auto fp8 = ParseScheme("Wfp8Afp8e5m2");
  QAAS_ASSERT_OK(fp8);
  EXPECT_EQ(fp8->weights.format, NumberFormat::kFp8E4M3);
  EXPECT_EQ(fp8->activations.format, NumberFormat::kFp8E5M2);
  auto again = ParseScheme(fp8->ToString());
  QAAS_ASSERT_OK(again);
  ExpectSchemeEq(*again, *fp8);
}

struct ErrorCase {
  std::string shorthand;
  std::string token;  // what the message must name
};

TEST(ParseSchemeTest, RejectsMalformedShorthandNamingTheToken) {
  const std::vector<ErrorCase> cases = {
      {"W4Z8", "Z8"},          {"X4A16", "X4A16"},        {"W9A16", "9"},
      {"W4A16g", "'g'"},       {"Wmxfp5A16", "mxfp5"},    {"W4A16_foo", "foo"},
      {"", "empty"},           {"W4A16g128g64", "g64"},   {"Wmxint4A16g128", "g128"},
      {"W4A16_symx", "symx"},  {"W1A16", "1"},           {"Wmxint6A16", "mxint6"},
      {"Wmxfp6e5m2A16", "mxfp6e5m2"}, {"Wmxfp4e3m0A16", "mxfp4e3m0"}, {"W4A16_static", "static"},
      {"Wmxfp8exA16", "ex"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.shorthand);
    auto s = ParseScheme(c.shorthand);
    QAAS_EXPECT_CODE(s, kInvalidArgument);
    EXPECT_TRUE(MessageHas(s, c.token));
  }
}

TEST(ParseSchemeTest, ErrorGivesThePosition) {
  auto s = ParseScheme("W4Z8");
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(MessageHas(s, "position 2"));
}

TEST(NormalizeSchemeTest, FillsDefaultGranularities) {
  Scheme s;
  s.weights.format = NumberFormat::kInt;
  s.weights.bits = 4;
  s.activations.format = NumberFormat::kInt;
  s.activations.bits = 8;
  auto n = NormalizeScheme(s);
  QAAS_ASSERT_OK(n);
  EXPECT_EQ(n->weights.granularity, Granularity::kPerChannel);
  EXPECT_EQ(n->activations.granularity, Granularity::kPerToken);

  s.weights.group_size = 64;
  n = NormalizeScheme(s);
  QAAS_ASSERT_OK(n);
  EXPECT_EQ(n->weights.granularity, Granularity::kPerGroup);
}

TEST(NormalizeSchemeTest, RejectsInconsistentFieldsNamingThem) {
  Scheme bits;
  bits.weights = Int(9, Granularity::kPerChannel, false);
  auto s = NormalizeScheme(bits);
  QAAS_EXPECT_CODE(s, kInvalidArgument);
  EXPECT_TRUE(MessageHas(s, "weights.bits"));

  Scheme group;
  group.weights = Int(4, Granularity::kPerGroup, false, 0);
  s = NormalizeScheme(group);
  QAAS_EXPECT_CODE(s, kInvalidArgument);
  EXPECT_TRUE(MessageHas(s, "group_size"));

  Scheme per_token_weights;
  per_token_weights.weights = Int(4, Granularity::kPerToken, false);
  QAAS_EXPECT_CODE(NormalizeScheme(per_token_weights), kInvalidArgument);

  Scheme grouped_activations;
  grouped_activations.weights = Int(4, Granularity::kPerChannel, false);
  grouped_activations.activations = Int(8, Granularity::kPerGroup, true, 128);
  s = NormalizeScheme(grouped_activations);
  QAAS_EXPECT_CODE(s, kInvalidArgument);
  EXPECT_TRUE(MessageHas(s, "activations"));
}

}  // namespace
}  // namespace qaas::quant
