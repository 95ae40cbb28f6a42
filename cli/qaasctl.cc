// qaasctl: the command-line client of qaas.v1.JobService.
//
//   qaasctl [--server HOST:PORT] submit --model URI --scheme W4A16g128 [--preset rtn]
//           [--recipe smoothquant,gptq --alpha 0.8 --act_order ...]
//           [--calib URI] [--eval URI,...] [--eval_seq_len N] [--wait] ...
//   qaasctl get ID | list [--state S,S] [--page_token T] | watch ID | cancel ID | report ID
//   qaasctl token tenant:NAME|worker[:NAME] --token_out FILE
//
// Credentials: --token_file (or $QAAS_TOKEN) sends a bearer token; --tls,
// --tls_ca connect with TLS. `token` makes a new random token, writes it to
// FILE (mode 0600) and prints the server's tokens-file line (its hash).
//
// The method options' flags are the method table's (cli/method_flags.h, the
// same as qaas-quantize's); --help lists them with their defaults and bounds.
// An option not given is left unset: the server's table default.
//
// Local paths are accepted wherever a uri is (they become file:// uris).
// Jobs print as JSON. `submit --wait` and `watch` exit 0 only when the job
// SUCCEEDED (1 when it FAILED or was CANCELLED, 2 for usage or RPC errors).
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/status/status.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/method_flags.h"
#include "proto/recipe_convert.h"
#include "qaas/v1/job_service.grpc.pb.h"
#include "server/auth.h"
#include "server/grpc_security.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "qaas-server address");
ABSL_FLAG(std::string, token_file, "", "file holding your bearer token (default: $QAAS_TOKEN, else none)");
ABSL_FLAG(bool, tls, false, "connect with TLS (system roots unless --tls_ca)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that signed the server's certificate (implies --tls)");
ABSL_FLAG(std::string, tls_server_name, "", "name to verify in the server's certificate (default: its host)");
ABSL_FLAG(std::string, token_out, "", "token: write the new token to this file (created with mode 0600)");
ABSL_FLAG(std::string, model, "", "submit: model directory uri (or local path)");
ABSL_FLAG(std::string, scheme, "W4A16g128", "submit: scheme shorthand");
ABSL_FLAG(std::string, preset, "", "submit: recipe preset, with the methods' defaults (default rtn when --recipe is "
          "empty; the presets above)");
ABSL_FLAG(std::string, recipe, "",
          "submit: comma-separated methods instead of a preset: transforms, then at most one weight quantizer "
          "(the methods above)");
ABSL_FLAG(std::string, calib, "", "submit: calibration text uri");
ABSL_FLAG(int32_t, num_samples, 0, "submit: calibration windows (0 = 128)");
ABSL_FLAG(int32_t, calib_seq_len, 0, "submit: calibration window length (0 = min(2048, context))");
ABSL_FLAG(uint64_t, seed, 0, "submit: calibration seed");
ABSL_FLAG(std::string, expert_calibration, "",
          "submit: mixture-of-experts statistics, routed (default) or all_tokens (every token through every expert)");
ABSL_FLAG(int32_t, min_calibration_tokens, 0,
          "submit: a linear that saw fewer calibration tokens is quantized with RTN (0 = 16)");
ABSL_FLAG(std::string, eval, "", "submit: comma-separated evaluation text uris");
ABSL_FLAG(int32_t, eval_seq_len, 0, "submit: evaluation window length (0 = min(2048, context))");
ABSL_FLAG(int32_t, max_windows, 0, "submit: evaluation windows per dataset (0 = all)");
ABSL_FLAG(std::string, tasks, "",
          "submit: comma-separated zero-shot tasks (piqa, arc_easy, arc_challenge, hellaswag, winogrande, boolq, "
          "lambada_openai), scored before and after as lm-evaluation-harness scores them");
ABSL_FLAG(std::string, task_data, "",
          "submit: uri (or directory) of the task files (piqa.validation.jsonl, ...); \"\" = the server's "
          "--task_data");
ABSL_FLAG(int32_t, task_limit, 0, "submit: the first N documents of each task (0 = all)");
ABSL_FLAG(int32_t, task_max_length, 0, "submit: longest model input for the tasks (0 = the model's context)");
ABSL_FLAG(std::string, output, "", "submit: output uri prefix (default: the server's store)");
ABSL_FLAG(int32_t, priority, 0, "submit: priority (higher first)");
ABSL_FLAG(std::string, labels, "", "submit: k=v,k=v labels; list: filter");
ABSL_FLAG(bool, overwrite, false, "submit: replace a non-empty --output (refused without it)");
ABSL_FLAG(std::string, format, "", "submit: artifact format: auto (default), gptq, compressed-tensors");
ABSL_FLAG(uint64_t, max_shard_bytes, 0, "submit: shard the weights above this size (0 = 5 GB)");
ABSL_FLAG(std::string, idempotency_key, "", "submit: returns the same job when repeated");
ABSL_FLAG(bool, wait, false, "submit: watch until the job ends");
ABSL_FLAG(std::string, state, "",
          "list: comma-separated states, any case: queued, running, succeeded, failed, cancelled (default all)");
ABSL_FLAG(int32_t, page_size, 50, "list: jobs per page (1..500)");
ABSL_FLAG(std::string, page_token, "", "list: the page after the one that printed this token");
ABSL_FLAG(std::string, reason, "", "cancel: why");

namespace {

namespace v1 = qaas::v1;

std::string ToUri(const std::string& s) {
  if (s.empty() || absl::StrContains(s, "://")) return s;
  return "file://" + std::filesystem::absolute(s).lexically_normal().string();
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

// --labels k=v,k=v into a label map.
void ParseLabels(google::protobuf::Map<std::string, std::string>* labels) {
  for (auto kv : absl::StrSplit(absl::GetFlag(FLAGS_labels), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    (*labels)[p.first] = p.second;
  }
}

int RpcError(const grpc::Status& s) {
  // The status by name (INVALID_ARGUMENT, NOT_FOUND, ...), as docs/api.md lists them.
  std::cerr << "qaasctl: " << absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())) << ": "
            << s.error_message() << "\n";
  return 2;
}

// --state "running,FAILED,job_state_queued" into the request's states: any
// case, with or without the JOB_STATE_ prefix. False (after saying why) on
// an unknown name.
bool ParseStates(const std::string& flag, google::protobuf::RepeatedField<int>* states) {
  for (absl::string_view name : absl::StrSplit(flag, ',', absl::SkipWhitespace())) {
    std::string upper = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(name));
    if (!absl::StartsWith(upper, "JOB_STATE_")) upper = "JOB_STATE_" + upper;
    v1::JobState st;
    if (!v1::JobState_Parse(upper, &st) || st == v1::JOB_STATE_UNSPECIFIED) {
      std::cerr << "qaasctl: unknown --state '" << name
                << "' (known: queued, running, succeeded, failed, cancelled)\n";
      return false;
    }
    states->Add(st);
  }
  return true;
}

bool Final(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// Streams events; prints progress to stderr (a bar on a terminal) and the final job.
int Watch(v1::JobService::Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  v1::WatchJobRequest req;
  req.set_id(id);
  auto reader = stub.WatchJob(&ctx, req);
  v1::JobEvent ev;
  v1::Job last;
  const bool tty = isatty(STDERR_FILENO);
  std::string shown;  // state, step, layer and percent of the last line printed
  while (reader->Read(&ev)) {
    last = ev.job();
    const auto& p = last.progress();
    std::string line = absl::StrCat(v1::JobState_Name(last.state()).substr(10), " ", p.step());
    if (p.num_layers() > 0) absl::StrAppend(&line, " layer ", p.layer(), "/", p.num_layers());
    absl::StrAppend(&line, " ", static_cast<int>(p.fraction() * 100), "%");
    // A line when something changed: a heartbeat that only moves the clock
    // prints nothing (a log of a long job stays readable).
    if (line == shown) continue;
    shown = line;
    if (p.elapsed_ms() > 0) absl::StrAppend(&line, " elapsed ", p.elapsed_ms() / 1000, "s");
    if (p.eta_ms() > 0) absl::StrAppend(&line, " eta ", p.eta_ms() / 1000, "s");
    if (tty) {
      const int width = 30, filled = static_cast<int>(p.fraction() * width);
      std::fprintf(stderr, "\r[%s%s] %-60s", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), line.c_str());
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  grpc::Status s = reader->Finish();
  if (!s.ok()) return RpcError(s);
  std::cout << Json(last) << "\n";
  if (last.state() == v1::JOB_STATE_SUCCEEDED) return 0;
  if (!last.error().empty()) std::cerr << "qaasctl: job " << v1::JobState_Name(last.state()) << ": " << last.error() << "\n";
  return Final(last.state()) ? 1 : 2;
}

int Submit(v1::JobService::Stub& stub, const qaas::cli::MethodFlags& method_flags) {
  v1::SubmitJobRequest req;
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_model(ToUri(absl::GetFlag(FLAGS_model)));
  spec->mutable_scheme()->set_shorthand(absl::GetFlag(FLAGS_scheme));
  const std::string recipe = absl::GetFlag(FLAGS_recipe), preset = absl::GetFlag(FLAGS_preset);
  if (!recipe.empty() && !preset.empty()) {
    std::cerr << "qaasctl: give --preset or --recipe, not both (--preset " << preset << " --recipe " << recipe
              << ")\n";
    return 2;
  }
  // A preset is recipe steps with defaults: method options given with it
  // apply to its steps, and the expanded recipe is what is submitted.
  absl::StatusOr<std::vector<qaas::quant::RecipeStep>> steps = std::vector<qaas::quant::RecipeStep>();
  if (!recipe.empty()) {
    steps = qaas::cli::RecipeFromFlags(recipe, method_flags);
  } else if (!method_flags.empty()) {
    steps = qaas::cli::RecipeFromPreset(preset.empty() ? "rtn" : preset, method_flags);
  }
  if (!steps.ok()) {
    std::cerr << "qaasctl: " << steps.status().message() << "\n";
    return 2;
  }
  for (const auto& s : *steps) {
    auto step = qaas::RecipeStepToProto(s);
    if (!step.ok()) {
      std::cerr << "qaasctl: " << step.status().message() << "\n";
      return 2;
    }
    *spec->add_recipe() = *std::move(step);
  }
  if (spec->recipe_size() == 0) spec->set_preset(preset.empty() ? "rtn" : preset);
  auto* calib = spec->mutable_calibration();
  calib->set_dataset(ToUri(absl::GetFlag(FLAGS_calib)));
  calib->set_num_samples(absl::GetFlag(FLAGS_num_samples));
  calib->set_seq_len(absl::GetFlag(FLAGS_calib_seq_len));
  calib->set_seed(absl::GetFlag(FLAGS_seed));
  calib->set_expert_calibration(absl::GetFlag(FLAGS_expert_calibration));
  calib->set_min_calibration_tokens(absl::GetFlag(FLAGS_min_calibration_tokens));
  for (auto d : absl::StrSplit(absl::GetFlag(FLAGS_eval), ',', absl::SkipEmpty())) {
    auto* e = spec->add_evaluation();
    e->set_dataset(ToUri(std::string(d)));
    e->set_seq_len(absl::GetFlag(FLAGS_eval_seq_len));
    e->set_max_windows(absl::GetFlag(FLAGS_max_windows));
  }
  for (auto t : absl::StrSplit(absl::GetFlag(FLAGS_tasks), ',', absl::SkipEmpty())) {
    spec->mutable_tasks()->add_names(std::string(t));
  }
  if (spec->tasks().names_size() > 0) {
    spec->mutable_tasks()->set_data(ToUri(absl::GetFlag(FLAGS_task_data)));
    spec->mutable_tasks()->set_limit(absl::GetFlag(FLAGS_task_limit));
    spec->mutable_tasks()->set_max_length(absl::GetFlag(FLAGS_task_max_length));
  }
  spec->set_output(ToUri(absl::GetFlag(FLAGS_output)));
  spec->set_priority(absl::GetFlag(FLAGS_priority));
  ParseLabels(spec->mutable_labels());
  spec->set_idempotency_key(absl::GetFlag(FLAGS_idempotency_key));
  spec->set_overwrite(absl::GetFlag(FLAGS_overwrite));
  spec->mutable_artifact()->set_format(absl::GetFlag(FLAGS_format));
  spec->mutable_artifact()->set_max_shard_bytes(absl::GetFlag(FLAGS_max_shard_bytes));
  grpc::ClientContext ctx;
  v1::Job job;
  grpc::Status s = stub.SubmitJob(&ctx, req, &job);
  if (!s.ok()) return RpcError(s);
  if (!absl::GetFlag(FLAGS_wait)) {
    std::cout << Json(job) << "\n";
    return 0;
  }
  std::cerr << "submitted " << job.id() << "\n";
  return Watch(stub, job.id());
}

// qaasctl token PRINCIPAL --token_out FILE
int MakeToken(const std::string& principal_text) {
  auto principal = qaas::server::ParsePrincipal(principal_text);
  if (!principal.ok()) {
    std::cerr << "qaasctl token: " << principal.status().message() << "\n";
    return 2;
  }
  const std::string out = absl::GetFlag(FLAGS_token_out);
  if (out.empty()) {
    std::cerr << "qaasctl token: --token_out FILE is required (the token is written there, never printed)\n";
    return 2;
  }
  auto token = qaas::server::NewToken();
  if (!token.ok()) {
    std::cerr << "qaasctl token: " << token.status() << "\n";
    return 2;
  }
  const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    std::cerr << "qaasctl token: cannot create " << out << ": " << std::strerror(errno) << "\n";
    return 2;
  }
  const std::string content = *token + "\n";
  const bool written = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  if (close(fd) != 0 || !written) {
    std::cerr << "qaasctl token: cannot write " << out << "\n";
    return 2;
  }
  std::cout << qaas::server::TokenLine(*token, *principal) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(absl::StrCat(
      "qaasctl [--server HOST:PORT] submit|get ID|list|watch ID|cancel ID|report ID|token PRINCIPAL [flags]\n\n"
      "submit: ",
      qaas::cli::MethodFlagsHelp()));
  auto method_flags = qaas::cli::TakeMethodFlags(&argc, argv);
  if (!method_flags.ok()) {
    std::cerr << "qaasctl: " << method_flags.status().message() << "\n";
    return 2;
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) {
    std::cerr << "usage: qaasctl submit|get ID|list|watch ID|cancel ID|report ID|token PRINCIPAL (see --help)\n";
    return 2;
  }
  const std::string cmd = args[1];
  const std::string id = args.size() > 2 ? args[2] : "";
  if (cmd == "token") return MakeToken(id);
  qaas::server::ClientSecurityOptions security;
  auto token = qaas::server::TokenFromFileOrEnvironment(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) {
    std::cerr << "qaasctl: " << token.status().message() << "\n";
    return 2;
  }
  security.token = *token;
  security.tls = absl::GetFlag(FLAGS_tls);
  security.ca_file = absl::GetFlag(FLAGS_tls_ca);
  security.server_name = absl::GetFlag(FLAGS_tls_server_name);
  auto channel = qaas::server::MakeChannel(absl::GetFlag(FLAGS_server), security);
  if (!channel.ok()) {
    std::cerr << "qaasctl: " << channel.status().message() << "\n";
    return 2;
  }
  auto stub = v1::JobService::NewStub(*channel);
  if (cmd == "submit") return Submit(*stub, *method_flags);
  if (cmd == "list") {
    v1::ListJobsRequest req;
    if (!ParseStates(absl::GetFlag(FLAGS_state), req.mutable_states())) return 2;
    ParseLabels(req.mutable_labels());
    req.set_page_size(absl::GetFlag(FLAGS_page_size));
    req.set_page_token(absl::GetFlag(FLAGS_page_token));
    grpc::ClientContext ctx;
    v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return RpcError(s);
    std::printf("%-36s  %-9s  %-12s  %-24s  %s\n", "ID", "STATE", "SCHEME", "METHODS", "MODEL");
    for (const auto& j : resp.jobs()) {
      std::vector<std::string> methods;
      for (const auto& step : j.spec().recipe()) methods.push_back(step.method());
      std::printf("%-36s  %-9s  %-12s  %-24s  %s\n", j.id().c_str(), v1::JobState_Name(j.state()).substr(10).c_str(),
                  j.spec().scheme().shorthand().c_str(), absl::StrJoin(methods, "+").c_str(),
                  j.spec().model().c_str());
    }
    if (!resp.next_page_token().empty()) {
      std::printf("(more: qaasctl list --page_token %s, with the same filters)\n", resp.next_page_token().c_str());
    }
    return 0;
  }
  if (id.empty()) {
    std::cerr << "qaasctl " << cmd << ": a job id is required\n";
    return 2;
  }
  grpc::ClientContext ctx;
  if (cmd == "get") {
    v1::GetJobRequest req;
    req.set_id(id);
    v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    if (!s.ok()) return RpcError(s);
    std::cout << Json(job) << "\n";
    return 0;
  }
  if (cmd == "watch") return Watch(*stub, id);
  if (cmd == "cancel") {
    v1::CancelJobRequest req;
    req.set_id(id);
    req.set_reason(absl::GetFlag(FLAGS_reason));
    v1::Job job;
    grpc::Status s = stub->CancelJob(&ctx, req, &job);
    if (!s.ok()) return RpcError(s);
    std::cout << Json(job) << "\n";
    return 0;
  }
  if (cmd == "report") {
    v1::GetReportRequest req;
    req.set_id(id);
    v1::GetReportResponse resp;
    grpc::Status s = stub->GetReport(&ctx, req, &resp);
    if (!s.ok()) return RpcError(s);
    std::cout << resp.report_json();
    return 0;
  }
  std::cerr << "qaasctl: unknown command '" << cmd << "'\n";
  return 2;
}
