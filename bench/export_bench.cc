// Peak host memory while an artifact is assembled, against the model and
// one layer: quantizes a random LLaMA (default 16 layers of hidden 1024, so
// the model is many layers' worth), then writes its artifact again with the
// assembly in a fresh process (its peak resident set is the assembly's),
// once as one file and once in shards. Prints MiB and ratios from this one run.
//
//   export_bench [--layers 16 --hidden 1024 --format compressed-tensors --scheme W4A16g128]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "nlohmann/json.hpp"
#include "quant/export.h"
#include "quant/layer_state.h"
#include "quant/model/checkpoint.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "quant/scheme.h"
#include "quant/util/files.h"

ABSL_FLAG(std::string, work_dir, "/tmp/qaas-export-bench", "model and job output go here");
ABSL_FLAG(int, layers, 16, "decoder layers");
ABSL_FLAG(int, hidden, 1024, "hidden_size");
ABSL_FLAG(int, intermediate, 2816, "intermediate_size");
ABSL_FLAG(int, vocab, 512, "vocabulary");
ABSL_FLAG(std::string, dtype, "float32", "the checkpoint's dtype on disk");
ABSL_FLAG(std::string, scheme, "W4A16g128", "scheme");
ABSL_FLAG(std::string, format, "compressed-tensors", "artifact layout: gptq or compressed-tensors");
ABSL_FLAG(std::string, assemble, "", "internal: assemble the artifact of this output dir in this fresh process");
ABSL_FLAG(uint64_t, max_shard_bytes, 5000000000ull, "internal: with --assemble");

namespace q = qaas::quant;

namespace {

// VmHWM / VmRSS of this process in MiB.
double StatusMiB(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(std::string(key).size())) / 1024.0;
  }
  return -1;
}

double FileMiB(const std::string& path) {
  std::error_code ec;
  return static_cast<double>(std::filesystem::file_size(path, ec)) / (1 << 20);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  if (!absl::GetFlag(FLAGS_assemble).empty()) {
    // Prints the peak's rise over the resident set at start (MiB) and the bytes written.
    const double before = StatusMiB("VmRSS:");
    auto ck = q::Checkpoint::Open(work + "/model");
    auto layout = q::MakeArtifactLayout(absl::GetFlag(FLAGS_format));
    auto scheme = q::ParseScheme(absl::GetFlag(FLAGS_scheme));
    if (!ck.ok() || !layout.ok() || !scheme.ok()) return 1;
    q::ArtifactSummary summary;
    summary.scheme = *scheme;
    auto bytes = q::WriteArtifact(**layout, **ck, {"model.embed_tokens.weight", "model.norm.weight"},
                                  absl::GetFlag(FLAGS_layers), work + "/model", absl::GetFlag(FLAGS_assemble), summary,
                                  nullptr, absl::GetFlag(FLAGS_max_shard_bytes));
    if (!bytes.ok()) {
      std::fprintf(stderr, "export_bench: %s\n", std::string(bytes.status().message()).c_str());
      return 1;
    }
    std::printf("%.3f %llu\n", StatusMiB("VmHWM:") - before, static_cast<unsigned long long>(*bytes));
    return 0;
  }
  std::filesystem::remove_all(work);
  q::RandomModelOptions m;
  m.num_layers = absl::GetFlag(FLAGS_layers);
  m.hidden_size = absl::GetFlag(FLAGS_hidden);
  m.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  m.num_heads = m.hidden_size / 64;
  m.num_kv_heads = m.num_heads;
  m.vocab_size = absl::GetFlag(FLAGS_vocab);
  m.dtype = absl::GetFlag(FLAGS_dtype);
  m.tokenizer_text = "a small text to train the tokenizer of the synthetic model on, nothing more.";
  if (auto st = q::WriteRandomLlama(m, work + "/model"); !st.ok()) {
    std::fprintf(stderr, "export_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  q::PipelineOptions o;
  o.model_dir = work + "/model";
  o.output_dir = work + "/out";
  auto scheme = q::ParseScheme(absl::GetFlag(FLAGS_scheme));
  if (!scheme.ok()) {
    std::fprintf(stderr, "export_bench: %s\n", std::string(scheme.status().message()).c_str());
    return 2;
  }
  o.scheme = *scheme;
  o.artifact_layout = absl::GetFlag(FLAGS_format);
  auto report = q::RunPipeline(o);
  if (!report.ok()) {
    std::fprintf(stderr, "export_bench: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  auto ck = q::Checkpoint::Open(o.model_dir);
  auto layout = q::MakeArtifactLayout(o.artifact_layout);
  if (!ck.ok() || !layout.ok()) return 1;
  const double model_mib = static_cast<double>((*ck)->total_bytes()) / (1 << 20);
  double layer_mib = 0;
  for (int i = 0; i < m.num_layers; ++i) {
    layer_mib = std::max(layer_mib, FileMiB(o.output_dir + "/" + q::CheckpointFile((*layout)->checkpoint_stem(), i)));
  }
  std::printf("model %d layers x hidden %d (%s): %.1f MiB on disk; largest packed layer %.1f MiB\n", m.num_layers,
              m.hidden_size, m.dtype.c_str(), model_mib, layer_mib);
  std::printf("%-22s %10s %12s %14s %14s %8s\n", "artifact", "files", "artifact MiB", "peak rise MiB",
              "peak/layer", "peak/model");
  for (uint64_t shard : {q::kDefaultMaxShardBytes, static_cast<uint64_t>(layer_mib * 3 * (1 << 20))}) {
    const std::string out = work + "/again-" + std::to_string(shard);
    // The per-layer files the pipeline wrote, assembled again into `out` by
    // a fresh process, whose peak is the assembly's alone.
    std::filesystem::create_directories(out + "/checkpoints");
    for (int i = 0; i < m.num_layers; ++i) {
      const std::string f = q::CheckpointFile((*layout)->checkpoint_stem(), i);
      std::filesystem::create_hard_link(o.output_dir + "/" + f, out + "/" + f);
    }
    const std::string cmd = std::string(argv[0]) + " --assemble " + out + " --max_shard_bytes " + std::to_string(shard) +
                            " --work_dir " + work + " --layers " + std::to_string(m.num_layers) + " --format " +
                            o.artifact_layout + " --scheme " + o.scheme.ToString();
    FILE* child = ::popen(cmd.c_str(), "r");
    double rise = -1, bytes = 0;
    if (child == nullptr || std::fscanf(child, "%lf %lf", &rise, &bytes) != 2 || ::pclose(child) != 0) {
      std::fprintf(stderr, "export_bench: %s failed\n", cmd.c_str());
      return 1;
    }
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(out + "/" + (*layout)->directory())) {
      files += e.path().extension() == ".safetensors";
    }
    std::printf("%-22s %10d %12.1f %14.1f %14.2f %8.3f\n",
                shard == q::kDefaultMaxShardBytes ? "one file" : "shards of 3 layers", files, bytes / (1 << 20), rise,
                rise / layer_mib, rise / model_mib);
  }
  return 0;
}
