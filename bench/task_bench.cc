// Zero-shot task throughput: the evaluator's packing (a document's choices
// share their context in one sequence) against the same requests one
// sequence each (what a request-by-request harness computes), both batched
// by length under the same token budget, through every layer of a model's
// float forward. Prints tokens computed, seconds, request tokens per second
// and the ratio, all from this one run, and the largest log-likelihood
// difference between the two (float rounding only).
//
// --hidden N runs a random LLaMA of that width instead (2 layers, the
// model's tokenizer.model, its context), where the linears rather than
// stories260k's tiny attention heads dominate, as in real models.
//
//   task_bench [--model ../shared/models/stories260k --task_data ../shared/data/tasks
//               --tasks hellaswag,arc_easy,boolq --limit 300 --budget 4096 --device cpu
//               --hidden 0]
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "quant/eval/task_eval.h"
#include "quant/eval/tasks.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/random_model.h"
#include "quant/model/tokenizer.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"

ABSL_FLAG(std::string, model, "../shared/models/stories260k", "Hugging Face model directory");
ABSL_FLAG(std::string, task_data, "../shared/data/tasks", "directory of the task files");
ABSL_FLAG(std::string, tasks, "hellaswag,arc_easy,boolq", "comma-separated tasks");
ABSL_FLAG(int, limit, 300, "documents per task (0 = all)");
ABSL_FLAG(int, budget, 4096, "tokens per batch (padding included)");
ABSL_FLAG(int, max_length, 0, "longest model input (0 = the model's context)");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(int, hidden, 0, "> 0: a random 2-layer LLaMA of this width with --model's tokenizer");
ABSL_FLAG(std::string, work_dir, "/tmp/qaas-task-bench", "where --hidden's model is written");

namespace q = qaas::quant;

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "task_bench: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  q::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::ParseCommandLine(argc, argv);
  q::KeepTensorBuffersInTheHeap();
  q::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  c10::NoGradGuard no_grad;
  std::string model_dir = absl::GetFlag(FLAGS_model);
  if (absl::GetFlag(FLAGS_hidden) > 0) {
    q::RandomModelOptions m;
    m.num_layers = 2;
    m.hidden_size = absl::GetFlag(FLAGS_hidden);
    m.intermediate_size = m.hidden_size * 11 / 4;
    m.num_heads = std::max(1, m.hidden_size / 64);
    m.num_kv_heads = m.num_heads;
    m.tokenizer_model = model_dir + "/tokenizer.model";
    model_dir = absl::GetFlag(FLAGS_work_dir) + "/model";
    if (auto st = q::WriteRandomLlama(m, model_dir); !st.ok()) return Fail(st);
  }
  auto device = q::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return Fail(device.status());
  auto ck = q::Checkpoint::Open(model_dir);
  if (!ck.ok()) return Fail(ck.status());
  auto tokenizer = q::Tokenizer::Load(model_dir);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  const int64_t max_length =
      absl::GetFlag(FLAGS_max_length) > 0 ? absl::GetFlag(FLAGS_max_length) : (*ck)->config().max_position_embeddings;
  std::vector<q::TaskInput> packed, single;
  for (const auto& name : absl::StrSplit(absl::GetFlag(FLAGS_tasks), ',', absl::SkipEmpty())) {
    const q::TaskInfo* task = q::FindTask(name);
    if (!task) return Fail(absl::InvalidArgumentError("unknown task " + std::string(name)));
    auto docs = q::LoadTaskDocs(*task, q::TaskFileUri(absl::GetFlag(FLAGS_task_data), *task), task->name,
                                absl::GetFlag(FLAGS_limit));
    if (!docs.ok()) return Fail(docs.status());
    // The same requests, a document each: nothing shared.
    std::vector<q::TaskDoc> alone;
    for (const q::TaskDoc& d : *docs) {
      for (size_t r = 0; r < d.requests.size(); ++r) {
        q::TaskDoc one = d;
        one.requests = {d.requests[r]};
        one.choice_chars = {d.choice_chars.empty() ? 1 : d.choice_chars[r]};
        one.gold = 0;
        alone.push_back(std::move(one));
      }
    }
    packed.push_back(q::EncodeTask(*task, task->name, *docs, **tokenizer));
    single.push_back(q::EncodeTask(*task, task->name, std::move(alone), **tokenizer));
  }
  auto model = q::DecoderModel::Create(**ck, *device, max_length);
  if (!model.ok()) return Fail(model.status());
  std::vector<q::DecoderLayer> layers;
  for (int i = 0; i < (*ck)->config().num_layers; ++i) {
    auto layer = (*model)->LoadLayer(i);
    if (!layer.ok()) return Fail(layer.status());
    layers.push_back(layer->To(*device));
  }
  std::printf("model %s: %d layers, hidden %d; max_length %lld, batch budget %d tokens, %s\n",
              model_dir.c_str(), (*ck)->config().num_layers, (*ck)->config().hidden_size,
              static_cast<long long>(max_length), absl::GetFlag(FLAGS_budget), device->str().c_str());
  std::printf("%-22s %12s %12s %10s %16s\n", "variant", "requests", "tokens", "seconds", "request tok/s");
  std::vector<std::vector<double>> lls(2);
  double seconds[2] = {0, 0};
  for (int v = 0; v < 2; ++v) {
    auto ev = q::TaskEvaluator::Create(v == 0 ? packed : single, max_length, absl::GetFlag(FLAGS_budget), *device);
    if (!ev.ok()) return Fail(ev.status());
    int64_t requests = 0, tokens = 0, request_tokens = 0;
    for (const q::TaskPackStats& s : ev->stats()) {
      requests += s.requests;
      tokens += s.tokens;
      request_tokens += s.request_tokens;
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<at::Tensor> hidden = ev->Embed(**model);
    for (const q::DecoderLayer& layer : layers) ev->Forward(**model, layer, &hidden);
    auto scores = ev->Score(**model, hidden);
    q::Synchronize(*device);
    seconds[v] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!scores.ok()) return Fail(scores.status());
    for (const auto& task : *scores) {
      for (const auto& doc : task) {
        for (const q::RequestScore& s : doc) lls[v].push_back(s.ll);
      }
    }
    std::printf("%-22s %12lld %12lld %10.2f %16.0f\n", v == 0 ? "packed (shared ctx)" : "one request each",
                static_cast<long long>(requests), static_cast<long long>(tokens), seconds[v],
                request_tokens / seconds[v]);
  }
  double worst = 0;
  for (size_t k = 0; k < lls[0].size() && k < lls[1].size(); ++k) {
    worst = std::max(worst, std::abs(lls[0][k] - lls[1][k]) / std::max(1.0, std::abs(lls[1][k])));
  }
  std::printf("speedup of packing: %.2fx; largest log-likelihood difference %.2g (relative above 1)\n",
              seconds[1] / seconds[0], worst);
  return 0;
}
