// The compressed-tensors artifact layout (quant_method "compressed-tensors",
// what llm-compressor writes and vLLM and Transformers load). Written from
// the format's definitions in the compressed-tensors package (0.20) and
// checked against it by scripts/verify/verify_compressed_tensors.py; see
// docs/artifact-format.md.
#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "quant/artifact_format.h"
#include "quant/export.h"
#include "quant/formats/act_quant.h"
#include "quant/formats/number_format.h"
#include "quant/formats/packing.h"
#include "quant/methods/gptq.h"
#include "quant/model/checkpoint.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

bool IsCtMxElement(ElementFormat e) { return e == ElementFormat::kFp4E2M1 || e == ElementFormat::kFp8E4M3; }

// The group format a fitting scheme's linears are stored in.
std::string GroupFormat(const Scheme& s) {
  if (s.weights.format == NumberFormat::kFp8E4M3) return "float-quantized";
  if (s.weights.is_mx()) {
    return *ElementFormatOf(s.weights) == ElementFormat::kFp4E2M1 ? "mxfp4-pack-quantized" : "mxfp8-quantized";
  }
  return s.activations.enabled() ? "int-quantized" : "pack-quantized";
}

nlohmann::json MxArgs(ElementFormat e, bool dynamic) {
  return {{"num_bits", e == ElementFormat::kFp4E2M1 ? 4 : 8},
          {"type", "float"},
          {"symmetric", true},
          {"strategy", "group"},
          {"group_size", kMxBlockSize},
          {"dynamic", dynamic},
          {"scale_dtype", "torch.uint8"}};
}

nlohmann::json WeightArgs(const Scheme& s, const RecipeStep& weight_step) {
  const TensorQuant& w = s.weights;
  if (w.is_mx()) return MxArgs(*ElementFormatOf(w), false);
  if (w.format == NumberFormat::kFp8E4M3) {
    return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "channel"}, {"dynamic", false}};
  }
  nlohmann::json j = {{"num_bits", w.bits}, {"type", "int"}, {"symmetric", w.symmetric}, {"dynamic", false}};
  if (w.granularity == Granularity::kPerGroup) {
    j["strategy"] = "group";
    j["group_size"] = w.group_size;
  } else {
    j["strategy"] = "channel";
  }
  // GPTQ's act_order with static groups: columns were quantized in Hessian
  // order, groups stay contiguous (nothing to store but the provenance).
  if (weight_step.Get("act_order", false)) j["actorder"] = "weight";
  return j;
}

nlohmann::json ActivationArgs(const TensorQuant& a) {
  if (!a.enabled()) return nullptr;
  if (a.is_mx()) return MxArgs(*ElementFormatOf(a), true);
  if (a.format == NumberFormat::kFp8E4M3) {
    return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "token"}, {"dynamic", true}};
  }
  const bool dynamic = !a.is_static_int();
  return {{"num_bits", a.bits},
          {"type", "int"},
          {"symmetric", a.symmetric},
          {"strategy", dynamic ? "token" : "tensor"},
          {"dynamic", dynamic}};
}

nlohmann::json KvCacheArgs(const TensorQuant& kv, int head_dim) {
  if (!kv.enabled()) return nullptr;
  if (kv.is_mx()) return MxArgs(*ElementFormatOf(kv), true);
  if (kv.format == NumberFormat::kFp8E4M3 || kv.format == NumberFormat::kFp8E5M2) {
    return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "tensor"}, {"dynamic", true}};
  }
  // Integers per token and head: groups of head_dim along K's and V's rows.
  return {{"num_bits", kv.bits},       {"type", "int"},           {"symmetric", kv.symmetric},
          {"strategy", "group"},       {"group_size", head_dim},  {"dynamic", true}};
}

// The stored dtype of the model's linear `name` (the model dtype scales are
// stored in, as the loaders create them); float32 when unknown.
DType ModelDType(const LayerToPack& layer, const std::string& name) {
  if (layer.checkpoint != nullptr) {
    auto entry = layer.checkpoint->Entry(name + ".weight");
    if (entry.ok() && (entry->dtype == DType::kF16 || entry->dtype == DType::kBF16 || entry->dtype == DType::kF32)) {
      return entry->dtype;
    }
  }
  return DType::kF32;
}

// `t` in `dtype`, which must hold its values exactly: the loader computes
// with the scale in the model dtype, and the artifact must decode to the
// weights that were evaluated.
absl::StatusOr<RawTensor> ExactIn(const std::string& name, const at::Tensor& t, DType dtype) {
  at::Tensor c = t.detach().cpu().to(at::kFloat).contiguous();
  at::Tensor stored = c.to(ToScalarType(dtype));
  if (!at::equal(stored.to(at::kFloat), c)) {
    return absl::InternalError(absl::StrCat(name, ": values are not exactly representable in ", DTypeName(dtype),
                                            ", the model's dtype the loaders compute scales in"));
  }
  return TensorToRaw(name, stored);
}

class CompressedTensorsLayout : public ArtifactLayout {
 public:
  std::string name() const override { return "compressed-tensors"; }
  std::string directory() const override { return "artifact"; }
  std::string checkpoint_stem() const override { return "ct-layer"; }

  absl::StatusOr<std::vector<RawTensor>> PackLayer(const LayerToPack& layer) const override {
    std::vector<RawTensor> packed;
    const DecoderLayer& t = *layer.transformed;
    for (const auto& [name, norm] : t.norms) {
      if (absl::EndsWith(name, ".reorder_index")) {
        return absl::InvalidArgumentError("compressed-tensors has no form for RPTQ's reordered channels");
      }
      packed.push_back(TensorToRaw(layer.prefix + name, norm.cpu()));
    }
    for (size_t j = 0; j < layer.linear_names->size(); ++j) {
      const std::string name = layer.prefix + (*layer.linear_names)[j];
      const at::Tensor& bias = t.linears[j].bias;
      const std::optional<QuantizedLinear>& q = (*layer.linears)[j];
      const DType dtype = ModelDType(layer, name);
      if (!q) {
        packed.push_back(TensorToRaw(name + ".weight", t.linears[j].weight.cpu()));
      } else if (q->mx) {
        if (!IsCtMxElement(q->element)) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": compressed-tensors stores MXFP4 and MXFP8 (E4M3), not ",
                                                         Traits(q->element).name));
        }
        MxPacked mx = PackMx(q->dequantized, q->element);
        if (!at::equal(UnpackMx(mx), q->dequantized.cpu())) {
          return absl::InternalError(absl::StrCat(name, ": MX packing does not reproduce the quantized weights"));
        }
        if (q->element == ElementFormat::kFp4E2M1) {
          packed.push_back(TensorToRaw(name + ".weight_packed", mx.codes));
        } else {
          RawTensor w = TensorToRaw(name + ".weight", mx.codes);
          w.dtype = DType::kF8E4M3;  // E4M3 codes, byte for byte
          packed.push_back(std::move(w));
        }
        packed.push_back(TensorToRaw(name + ".weight_scale", mx.scales));
      } else if (q->fp8) {
        if (q->element != ElementFormat::kFp8E4M3) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": compressed-tensors stores FP8 E4M3 weights"));
        }
        // float-quantized: the E4M3 codes byte for byte, one scale per channel.
        RawTensor w = TensorToRaw(name + ".weight", q->codes.to(at::kByte));
        w.dtype = DType::kF8E4M3;
        packed.push_back(std::move(w));
        QAAS_ASSIGN_OR_RETURN(RawTensor scale, ExactIn(name + ".weight_scale", q->params.scale, dtype));
        packed.push_back(std::move(scale));
      } else {
        if (q->per_input_channel) {
          return absl::InvalidArgumentError(
              absl::StrCat(name, ": compressed-tensors has no form for AdaDim's per-input-channel groups"));
        }
        const int bits = q->params.bits;
        const int64_t half = int64_t{1} << (bits - 1);
        QAAS_ASSIGN_OR_RETURN(RawTensor scale, ExactIn(name + ".weight_scale", q->params.scale, dtype));
        const int point = layer.input_points != nullptr && j < layer.input_points->size() ? (*layer.input_points)[j] : -1;
        const bool activations = t.act && point >= 0 && t.act->inputs[point].enabled();
        if (activations) {
          // int-quantized: signed 8-bit codes, one scale per channel.
          if (!q->params.symmetric || bits != 8 || q->params.scale.size(1) != 1) {
            return absl::InternalError(absl::StrCat(name, ": int-quantized needs symmetric 8-bit weights per channel"));
          }
          packed.push_back(TensorToRaw(name + ".weight", (q->codes.to(at::kLong) - half).to(at::kChar)));
          packed.push_back(std::move(scale));
          const ActQuantizer& in = t.act->inputs[point];
          if (in.is_static()) {
            if (in.zero.defined() || in.scale.numel() != 1) {
              return absl::InternalError(absl::StrCat(name, ": static activations must be symmetric per tensor"));
            }
            QAAS_ASSIGN_OR_RETURN(RawTensor s, ExactIn(name + ".input_scale", in.scale.reshape({1}), dtype));
            packed.push_back(std::move(s));
          }
        } else {
          // pack-quantized: codes (q + 2^(b-1), which are qaas's codes) as a
          // little-endian bit stream along each row; zero points likewise
          // down each group's column of output channels.
          packed.push_back(TensorToRaw(name + ".weight_packed", PackRows(q->codes.t().contiguous(), bits).t().contiguous()));
          packed.push_back(std::move(scale));
          packed.push_back(TensorToRaw(name + ".weight_shape", at::tensor(std::vector<int64_t>{q->codes.size(0), q->codes.size(1)})));
          if (!q->params.symmetric) {
            packed.push_back(TensorToRaw(name + ".weight_zero_point",
                                         PackRows(q->params.zero.to(at::kInt).contiguous(), bits)));
          }
        }
      }
      if (bias.defined()) packed.push_back(TensorToRaw(name + ".bias", bias.cpu()));
    }
    return packed;
  }

  std::pair<nlohmann::json, std::string> Config(const nlohmann::json& original,
                                                const ArtifactSummary& s) const override {
    nlohmann::json config = original;
    const std::string format = GroupFormat(s.scheme);
    nlohmann::json ignore = {"lm_head"};
    for (const std::string& m : s.float_modules) ignore.push_back(m);
    config["quantization_config"] = {
        {"quant_method", "compressed-tensors"},
        {"format", format},
        {"quantization_status", "compressed"},
        {"config_groups",
         {{"group_0",
           {{"targets", {"Linear"}},
            {"weights", WeightArgs(s.scheme, s.weight_step)},
            {"input_activations", ActivationArgs(s.scheme.activations)},
            {"output_activations", nullptr},
            {"format", format}}}}},
        {"ignore", ignore},
        {"kv_cache_scheme", KvCacheArgs(s.scheme.kv_cache, s.head_dim)},
        {"global_compression_ratio", nullptr},
        {"sparsity_config", nlohmann::json::object()},
        {"transform_config", nlohmann::json::object()}};
    config["qaas_scheme"] = s.scheme.ToString();
    return {config, "compressed-tensors"};
  }
};

}  // namespace

std::unique_ptr<ArtifactLayout> MakeCompressedTensorsLayout() { return std::make_unique<CompressedTensorsLayout>(); }

absl::StatusOr<CompressedLinear> ReadCompressedTensorsLinear(const std::map<std::string, RawTensor>& tensors,
                                                             const std::string& prefix,
                                                             const nlohmann::json& qc, int64_t out, int64_t in) {
  auto get = [&](const std::string& suffix, std::vector<DType> dtypes,
                 std::vector<int64_t> shape) -> absl::StatusOr<const RawTensor*> {
    auto it = tensors.find(prefix + suffix);
    if (it == tensors.end()) return absl::InvalidArgumentError(absl::StrCat("missing tensor '", prefix, suffix, "'"));
    if (std::find(dtypes.begin(), dtypes.end(), it->second.dtype) == dtypes.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", prefix, suffix, "' has dtype ", DTypeName(it->second.dtype)));
    }
    if (it->second.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, suffix, "' does not match a ", out, "x", in,
                                                     " weight"));
    }
    return &it->second;
  };
  const nlohmann::json& group = qc.at("config_groups").begin().value();
  const std::string format = group.value("format", qc.value("format", ""));
  const nlohmann::json& w = group.at("weights");
  const int bits = w.at("num_bits").get<int>();
  CompressedLinear r;
  if (format == "mxfp4-pack-quantized" || format == "mxfp8-quantized") {
    const bool fp4 = format == "mxfp4-pack-quantized";
    MxPacked mx;
    mx.format = fp4 ? ElementFormat::kFp4E2M1 : ElementFormat::kFp8E4M3;
    mx.rows = out;
    mx.cols = in;
    const int64_t blocks = (in + kMxBlockSize - 1) / kMxBlockSize;
    QAAS_ASSIGN_OR_RETURN(const RawTensor* codes, fp4 ? get(".weight_packed", {DType::kU8}, {out, (in + 1) / 2})
                                                       : get(".weight", {DType::kF8E4M3}, {out, in}));
    QAAS_ASSIGN_OR_RETURN(const RawTensor* scales, get(".weight_scale", {DType::kU8}, {out, blocks}));
    RawTensor c = *codes;
    c.dtype = DType::kU8;
    mx.codes = RawToTensor(c);
    mx.scales = RawToTensor(*scales);
    r.codes = mx.codes;
    r.scale = mx.scales;
    r.weight = UnpackMx(mx);
    return r;
  }
  if (format == "float-quantized") {
    QAAS_ASSIGN_OR_RETURN(const RawTensor* codes, get(".weight", {DType::kF8E4M3}, {out, in}));
    QAAS_ASSIGN_OR_RETURN(const RawTensor* scale, get(".weight_scale", {DType::kF32, DType::kF16, DType::kBF16}, {out, 1}));
    RawTensor c = *codes;
    c.dtype = DType::kU8;
    r.codes = RawToTensor(c).to(at::kLong);
    std::vector<float> lut(256);
    for (uint32_t k = 0; k < 256; ++k) lut[k] = DecodeElement(ElementFormat::kFp8E4M3, k);
    const at::Tensor table = at::tensor(lut);
    r.scale = RawToTensor(*scale).to(at::kFloat);
    r.weight = table.index_select(0, r.codes.reshape({-1})).reshape({out, in}) * r.scale;
    return r;
  }
  const bool symmetric = w.at("symmetric").get<bool>();
  const int64_t g = w.value("strategy", "") == "group" ? w.at("group_size").get<int64_t>() : in;
  const int64_t groups = (in + g - 1) / g;
  const std::vector<DType> floats = {DType::kF32, DType::kF16, DType::kBF16};
  QAAS_ASSIGN_OR_RETURN(const RawTensor* scale_raw, get(".weight_scale", floats, {out, groups}));
  r.scale = RawToTensor(*scale_raw).to(at::kFloat);
  const int64_t half = int64_t{1} << (bits - 1);
  if (format == "int-quantized") {
    QAAS_ASSIGN_OR_RETURN(const RawTensor* weight, get(".weight", {DType::kI8}, {out, in}));
    r.codes = RawToTensor(*weight).to(at::kInt) + half;
    r.zero = at::full_like(r.scale, static_cast<double>(half));
  } else if (format == "pack-quantized") {
    QAAS_ASSIGN_OR_RETURN(const RawTensor* packed, get(".weight_packed", {DType::kI32}, {out, (in * bits + 31) / 32}));
    QAAS_ASSIGN_OR_RETURN(const RawTensor* shape, get(".weight_shape", {DType::kI64, DType::kI32}, {2}));
    at::Tensor stored_shape = RawToTensor(*shape).to(at::kLong);
    if (stored_shape[0].item<int64_t>() != out || stored_shape[1].item<int64_t>() != in) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", prefix, ".weight_shape' does not say ", out, "x", in));
    }
    r.codes = UnpackRows(RawToTensor(*packed).t().contiguous(), bits, in).t().contiguous();
    if (symmetric) {
      r.zero = at::full_like(r.scale, static_cast<double>(half));
    } else {
      QAAS_ASSIGN_OR_RETURN(const RawTensor* zp, get(".weight_zero_point", {DType::kI32}, {(out * bits + 31) / 32, groups}));
      r.zero = UnpackRows(RawToTensor(*zp), bits, out).to(at::kFloat);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("compressed-tensors format '", format, "' is not read here"));
  }
  at::Tensor idx = at::div(at::arange(in, at::TensorOptions().dtype(at::kLong)), g, "floor");
  r.weight = (r.codes.to(at::kFloat) - r.zero.index_select(1, idx)) * r.scale.index_select(1, idx);
  return r;
}

}  // namespace qaas::quant
