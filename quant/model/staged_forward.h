// A layer's forward over calibration batches that pauses between sequential
// groups, so GPTQ's "true sequential" gathering runs the layer once instead of
// once per group plus once for the next layer's inputs.
//
// Each batch's `model.LayerForward(*layer, batch, hook)` runs on a thread of
// its own, one thread at a time (the caller waits while one runs). During
// Advance(g) a batch runs until its hook has seen the input of every linear
// of group g, and parks inside that last hook call, before the forward applies
// the group's linears. The caller then quantizes group g, updating `layer`'s
// weights in place (the forward holds the tensors, not the struct), and the
// next Advance (or Finish) resumes every batch where it parked. So each linear
// is applied once, with the weights it has after its own group is quantized:
// every batch's output, and every input a hook sees, is what the driver that
// recomputes the layer up to each group computes, bit for bit (same ops, same
// order, same thread counts).
//
// This needs a forward that hands every linear of a group to the hook before
// it applies any of them, and meets the groups in their order (LLaMA's and
// OPT's do: q/k/v, o, gate/up, down); a forward that does not is an error
// (std::logic_error from Advance), not a wrong result. A group of every
// linear (a non-sequential quantizer) does not qualify.
//
// The price is memory: every staged batch's live activations at once. The
// caller stages as many batches as its budget allows (StagedBytesPerToken)
// and gathers the rest by recomputing.
#ifndef QAAS_QUANT_MODEL_STAGED_FORWARD_H_
#define QAAS_QUANT_MODEL_STAGED_FORWARD_H_

#include <ATen/ThreadLocalState.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "quant/model/decoder.h"

namespace qaas::quant {

// An upper estimate of the peak memory a staged token adds (float32 live
// activations of a paused forward, its output, and the allocator's share).
int64_t StagedBytesPerToken(const ModelConfig& config);

class StagedLayerForward {
 public:
  // Stages the first `num_batches` batches of `batch` windows of `hidden`.
  // `groups`: the sequential groups of `model`'s linears (indices into its
  // LinearNames()), in the forward's order; a linear in none is not waited
  // for. `layer` must outlive this object; its linears' tensors are read
  // when each batch applies them.
  StagedLayerForward(const DecoderModel& model, const DecoderLayer* layer, const at::Tensor& hidden, int batch,
                     int64_t num_batches, const std::vector<LinearGroup>& groups);
  // Stops parked batches (their forwards unwind) and joins every thread.
  ~StagedLayerForward();
  StagedLayerForward(const StagedLayerForward&) = delete;
  StagedLayerForward& operator=(const StagedLayerForward&) = delete;

  // Runs every staged batch, in order, until it has handed `hook` (on the
  // thread running it) the inputs of all of group `group`'s linears, after
  // applying the linears of the groups before it. Call it for 0, 1, 2, ...
  // in turn. A libtorch error in a forward is rethrown here.
  void Advance(int group, const LinearInputHook& hook);
  // After the last group's Advance: runs every staged batch to its end; their
  // outputs, concatenated.
  at::Tensor Finish();

  int64_t num_batches() const { return static_cast<int64_t>(slots_.size()); }
  int64_t windows() const { return staged_windows_; }  // the windows the staged batches hold

 private:
  struct Slot {
    std::thread thread;
    bool started = false;
    bool parked = false;  // waiting inside the hook of its group's last linear
    bool done = false;
    int group = -1;       // the group whose linears the forward is meeting
    std::set<std::string> seen;  // of that group
    at::Tensor out;
    std::exception_ptr error;
  };
  void Run(int64_t b);
  void OnLinear(int64_t b, const std::string& name, const at::Tensor& x);
  void Step(int64_t b, std::unique_lock<std::mutex>& lock);  // batch b runs until it parks or ends

  const DecoderModel& model_;
  const DecoderLayer* layer_;
  at::Tensor hidden_;
  int batch_;
  int64_t staged_windows_ = 0;
  std::map<std::string, int> group_of_;  // a linear's name -> its group
  std::vector<size_t> group_sizes_;
  std::vector<Slot> slots_;
  at::ThreadLocalState state_;  // the caller's (grad mode): each batch's thread runs under it

  std::mutex mu_;
  std::condition_variable cv_;
  int64_t turn_ = -1;   // the batch allowed to run; -1: none
  int group_ = -1;      // the group being gathered; past the last: Finish
  bool abort_ = false;  // parked forwards unwind
  const LinearInputHook* hook_ = nullptr;
};

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_STAGED_FORWARD_H_
