// Torch glue of the CPU kernels: argument checks, output allocation, and the choice of the row
// loops' instruction-set variant (kce_cpu_dispatch.h). Row loops: per_capability/kce_cpu_rows.cpp;
// row math: kce_cpu_kernel.h. Semantics: kpod_ops/losses/registration.py.
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/kce_cpu_dispatch.h"

namespace kpod {
namespace cpu {
namespace {

void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.device().is_cpu(), op, ": logits must be a CPU tensor, got ", logits.device());
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be [B, T, V], got shape ", logits.sizes());
  TORCH_CHECK(logits.size(2) <= 1 || logits.stride(2) == 1, op,
              ": the vocabulary dimension of logits must be contiguous, got strides ", logits.strides());
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble, op,
              ": logits dtype must be float32, bfloat16, float16 or float64, got ", dt);
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_rowwise(const at::Tensor& t, const at::Tensor& logits, const char* op, const char* name,
                   c10::optional<at::ScalarType> dtype) {
  TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " must be on ", logits.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == logits.size(0) && t.size(1) == logits.size(1), op, ": ", name,
              " must have shape [", logits.size(0), ", ", logits.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  if (dtype) TORCH_CHECK(t.scalar_type() == *dtype, op, ": ", name, " must have dtype ", *dtype, ", got ", t.scalar_type());
}

// A gradient-sized output. When most rows will be written it comes from PyTorch's allocator (which
// honours THP_MEM_ALLOC_ENABLE) and skipped rows are written as zeros. When most rows are skipped
// (e.g. a curriculum that masks most of each sequence) a large buffer comes straight from the kernel
// as fresh anonymous pages, which are zero until written: skipped rows are then never touched at all
// (no page faults, no zero writes), and reading them later maps the kernel's shared zero page.
struct GradBuffer {
  at::Tensor tensor;
  bool zeroed;
};

// Rows that will be read (target != -1).
int64_t count_rows(const int64_t* tgt, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) k += tgt[i] != -1;
  return k;
}

GradBuffer empty_gradient(const at::Tensor& logits, const int64_t* tgt) {
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  const size_t bytes = static_cast<size_t>(B) * T * V * logits.element_size();
  constexpr size_t kMmapMin = size_t(32) << 20;
  const bool sparse = count_rows(tgt, B * T) * 2 < B * T;
  if (sparse && bytes >= kMmapMin) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      const char* thp = std::getenv("THP_MEM_ALLOC_ENABLE");  // follow PyTorch's own allocator setting
      if (thp != nullptr && std::strcmp(thp, "1") == 0) madvise(p, bytes, MADV_HUGEPAGE);
      auto t = at::from_blob(p, {B, T, V}, [bytes](void* q) { munmap(q, bytes); }, logits.options());
      return {t, true};
    }
  }
  return {at::empty({B, T, V}, logits.options().memory_format(at::MemoryFormat::Contiguous)), false};
}


// ---------------------------------------------------------------- the instruction-set variant
// Chosen as ATen chooses its own kernels: the variant torch runs (torch.backends.cpu.get_cpu_capability(),
// which follows ATEN_CPU_CAPABILITY), if this build has it and the CPU runs it. KPOD_CPU_CAPABILITY
// (read once, at the first query) forces one; a value that names no variant of this build, or one
// this CPU cannot run, is an error raised by every CPU kernel call (never a silent fallback).
// _set_cpu_capability forces one in-process (tests), "" returns to the environment's choice.

struct Variant {
  const RowKernels* kernels;
  const char* needs;  // what the CPU must support, for error messages
  bool (*runs)();
};

bool runs_default() { return true; }
#ifdef KPOD_CPU_X86_VARIANTS
bool runs_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool runs_avx512() {
  return runs_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// lowest first
const std::vector<Variant>& variants() {
  static const std::vector<Variant> all = {
      {&DEFAULT::kRowKernels, "nothing beyond the baseline", &runs_default},
#ifdef KPOD_CPU_X86_VARIANTS
      {&AVX2::kRowKernels, "AVX2, FMA and F16C", &runs_avx2},
      {&AVX512::kRowKernels, "AVX-512 F, BW, VL and DQ (and AVX2, FMA, F16C)", &runs_avx512},
#endif
  };
  return all;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string built_names() {
  std::string out;
  for (const auto& v : variants()) out += (out.empty() ? "" : ", ") + std::string(v.kernels->name);
  return out;
}

std::string runnable_names() {
  std::string out;
  for (const auto& v : variants())
    if (v.runs()) out += (out.empty() ? "" : ", ") + std::string(v.kernels->name);
  return out;
}

// The variant `name` forces, or an error message (`source` says where the name came from).
const RowKernels* resolve(const std::string& name, const char* source, std::string* error) {
  const std::string want = lower(name);
  for (const auto& v : variants()) {
    if (want != v.kernels->name) continue;
    if (!v.runs()) {
      *error = std::string(source) + "='" + name + "': this CPU cannot run the " + v.kernels->name +
               " variant of kpod_ops' CPU kernels (it needs " + v.needs + "); variants this CPU runs: " +
               runnable_names();
      return nullptr;
    }
    return v.kernels;
  }
  *error = std::string(source) + ": expected one of " + built_names() + " (the CPU kernel variants of this build), got '" +
           name + "'";
  return nullptr;
}

// The variant torch's own kernels use, capped by what this build has and this CPU runs.
const RowKernels* automatic() {
  const std::string torch_cap = lower(at::get_cpu_capability());
  const RowKernels* best = &DEFAULT::kRowKernels;
  for (const auto& v : variants()) {
    if (!v.runs()) break;
    best = v.kernels;
    if (torch_cap == v.kernels->name) break;  // not above torch's own choice
  }
  return best;
}

struct Selection {
  const RowKernels* kernels = nullptr;  // null: `error` says why
  std::string error;
  std::string source;  // "automatic (torch runs X)", "KPOD_CPU_CAPABILITY", "_set_cpu_capability"
};

Selection from_environment() {
  Selection sel;
  const char* env = std::getenv("KPOD_CPU_CAPABILITY");
  if (env != nullptr && *env != '\0') {
    sel.kernels = resolve(env, "KPOD_CPU_CAPABILITY", &sel.error);
    sel.source = "KPOD_CPU_CAPABILITY";
  } else {
    sel.kernels = automatic();
    sel.source = "automatic (torch's own CPU capability: " + at::get_cpu_capability() + ")";
  }
  return sel;
}

std::mutex g_selection_mutex;
Selection g_selection;  // guarded by g_selection_mutex
bool g_selected = false;
std::atomic<const RowKernels*> g_kernels{nullptr};  // the fast path once a valid variant is chosen

const Selection& selection_locked() {
  if (!g_selected) {
    g_selection = from_environment();
    g_selected = true;
    g_kernels.store(g_selection.kernels);
  }
  return g_selection;
}

// The row loops every CPU kernel call uses.
const RowKernels& row_kernels() {
  const RowKernels* k = g_kernels.load(std::memory_order_acquire);
  if (k != nullptr) return *k;
  std::lock_guard<std::mutex> lock(g_selection_mutex);
  const Selection& sel = selection_locked();
  TORCH_CHECK(sel.kernels != nullptr, "kpod_ops CPU kernels: ", sel.error);
  return *sel.kernels;
}

std::string cpu_capability_op() {
  std::lock_guard<std::mutex> lock(g_selection_mutex);
  const Selection& sel = selection_locked();
  TORCH_CHECK(sel.kernels != nullptr, "kpod_ops CPU kernels: ", sel.error);
  return sel.kernels->name;
}

std::string cpu_capability_source_op() {
  std::lock_guard<std::mutex> lock(g_selection_mutex);
  return selection_locked().source;
}

std::vector<std::string> cpu_capabilities_op() {
  std::vector<std::string> out;
  for (const auto& v : variants())
    if (v.runs()) out.emplace_back(v.kernels->name);
  return out;
}

std::string set_cpu_capability_op(c10::string_view name) {
  std::lock_guard<std::mutex> lock(g_selection_mutex);
  Selection sel;
  if (name.empty()) {
    sel = from_environment();
  } else {
    sel.kernels = resolve(std::string(name), "_set_cpu_capability", &sel.error);
    sel.source = "_set_cpu_capability";
    TORCH_CHECK(sel.kernels != nullptr, "kpod_ops CPU kernels: ", sel.error);  // the previous choice stays
  }
  g_selection = sel;
  g_selected = true;
  g_kernels.store(sel.kernels);
  TORCH_CHECK(sel.kernels != nullptr, "kpod_ops CPU kernels: ", sel.error);
  return sel.kernels->name;
}

// ---------------------------------------------------------------- the ops

std::tuple<at::Tensor, at::Tensor> kce_forward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                   double label_smoothing) {
  const char* op = "kpod::kce_forward";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  const RowKernels& k = row_kernels();
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  auto lse = at::zeros_like(nll);
  k.forward(logits, target.data_ptr<int64_t>(), nll, lse, label_smoothing);
  return {nll, lse};
}

void check_backward_args(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                         const at::Tensor& grad_nll, const at::Tensor& grad_lse, const char* op) {
  check_logits(logits, op);
  const auto acc = acc_type(logits);
  check_rowwise(target, logits, op, "target", at::kLong);
  check_rowwise(lse, logits, op, "lse", acc);
  check_rowwise(grad_nll, logits, op, "grad_nll", acc);
  check_rowwise(grad_lse, logits, op, "grad_lse", acc);
}

at::Tensor kce_backward_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                            const at::Tensor& grad_nll, const at::Tensor& grad_lse, double label_smoothing) {
  check_backward_args(logits, target, lse, grad_nll, grad_lse, "kpod::kce_backward");
  const RowKernels& k = row_kernels();
  const int64_t* tgt = target.data_ptr<int64_t>();
  GradBuffer buffer = empty_gradient(logits, tgt);
  k.backward(logits, &buffer.tensor, buffer.zeroed, tgt, lse, grad_nll, grad_lse, label_smoothing);
  return buffer.tensor;
}

void kce_backward_inplace_cpu(at::Tensor logits, const at::Tensor& target, const at::Tensor& lse,
                              const at::Tensor& grad_nll, const at::Tensor& grad_lse, double label_smoothing) {
  check_backward_args(logits, target, lse, grad_nll, grad_lse, "kpod::kce_backward_inplace");
  row_kernels().backward(logits, nullptr, false, target.data_ptr<int64_t>(), lse, grad_nll, grad_lse, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor> kce_forward_backward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                            const at::Tensor& row_scale, double label_smoothing) {
  const char* op = "kpod::kce_forward_backward";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  check_rowwise(row_scale, logits, op, "row_scale", acc_type(logits));
  const RowKernels& k = row_kernels();
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  GradBuffer buffer = empty_gradient(logits, target.data_ptr<int64_t>());
  k.forward_backward(logits, &buffer.tensor, buffer.zeroed, target.data_ptr<int64_t>(), row_scale, nll, label_smoothing);
  return {nll, buffer.tensor};
}

at::Tensor kce_forward_backward_inplace_cpu(at::Tensor logits, const at::Tensor& target, const at::Tensor& row_scale,
                                            double label_smoothing) {
  const char* op = "kpod::kce_forward_backward_inplace";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  check_rowwise(row_scale, logits, op, "row_scale", acc_type(logits));
  const RowKernels& k = row_kernels();
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  k.forward_backward(logits, nullptr, false, target.data_ptr<int64_t>(), row_scale, nll, label_smoothing);
  return nll;
}

// x *= scale, the product taken in fp32 (fp64 for fp64) and rounded once: the scale is never
// rounded to x's dtype (a GradScaler scale of 65536 is inf in fp16; 1/3 in bf16 is biased).
void scale_cpu(at::Tensor x, const at::Tensor& scale) {
  TORCH_CHECK(scale.numel() == 1, "kpod::scale_: scale must have one element, got shape ", scale.sizes());
  TORCH_CHECK(scale.device().is_cpu(), "kpod::scale_: scale must be a CPU tensor, got ", scale.device());
  const double s = scale.item<double>();  // a CPU read: no device synchronisation involved
  if (s == 1.0 || x.numel() == 0) return;
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) {
    x.mul_(s);
    return;
  }
  if (!x.is_contiguous()) {
    x.copy_(x.to(at::kFloat).mul_(s));
    return;
  }
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "kpod::scale_: x must be float32, float64, bfloat16 or float16, got ", x.scalar_type());
  row_kernels().scale_reduced(x, static_cast<float>(s));
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(kpod, CPU, m) {
  using namespace cpu;
  m.impl("kce_forward", &kce_forward_cpu);
  m.impl("kce_backward", &kce_backward_cpu);
  m.impl("kce_forward_backward", &kce_forward_backward_cpu);
  m.impl("kce_forward_backward_inplace", &kce_forward_backward_inplace_cpu);
  m.impl("kce_backward_inplace", &kce_backward_inplace_cpu);
  m.impl("scale_", &scale_cpu);
}

// Ops without tensor arguments: one kernel for every dispatch key (the schemas are in csrc/kpod.cpp).
TORCH_LIBRARY_IMPL(kpod, CompositeImplicitAutograd, m) {
  using namespace cpu;
  m.impl("cpu_capability", &cpu_capability_op);
  m.impl("cpu_capability_source", &cpu_capability_source_op);
  m.impl("cpu_capabilities", &cpu_capabilities_op);
  m.impl("_set_cpu_capability", &set_cpu_capability_op);
}

}  // namespace kpod
