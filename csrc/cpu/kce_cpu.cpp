// Torch glue of the CPU kernels: argument checks, output allocation, parallelism over rows.
// Row math lives in kce_cpu_kernel.h. Semantics: kpod_ops/losses/registration.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kce_cpu_kernel.h"

namespace kpod {
namespace {

// Rows per task: enough V-sized rows that a task is worth scheduling.
int64_t grain_for(int64_t V) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)); }

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

// Calls f(row, pointer to the row's logits) for every row in parallel; rows are (b, t) pairs.
template <typename scalar_t, typename F>
void for_each_row(const at::Tensor& logits, F&& f) {
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  const int64_t sB = logits.stride(0), sT = logits.stride(1);
  scalar_t* base = logits.data_ptr<scalar_t>();
  at::parallel_for(0, B * T, grain_for(V), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T, t = r - b * T;
      f(r, base + b * sB + t * sT);
    }
  });
}

// A target outside [0, V) that is not -1 (possible only with validate=False) makes the row's loss
// and gradient NaN, as on CUDA: loud, without reading out of bounds and without throwing from a kernel.
template <typename scalar_t>
void row_fill_nan(scalar_t* out, int64_t V) {
  const scalar_t nan = static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN());
  for (int64_t i = 0; i < V; ++i) out[i] = nan;
}

std::tuple<at::Tensor, at::Tensor> kce_forward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                   double label_smoothing) {
  const char* op = "kpod::kce_forward";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  const int64_t V = logits.size(2);
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  auto lse = at::zeros_like(nll);
  const int64_t* tgt = target.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_forward_cpu", [&] {
    using acc_t = typename cpu::Acc<scalar_t>::type;
    acc_t* nll_p = nll.data_ptr<acc_t>();
    acc_t* lse_p = lse.data_ptr<acc_t>();
    for_each_row<scalar_t>(logits, [&](int64_t r, const scalar_t* z) {
      const int64_t y = tgt[r];
      if (y == -1) return;  // skipped: never read
      if (y < 0 || y >= V) {
        nll_p[r] = lse_p[r] = std::numeric_limits<acc_t>::quiet_NaN();
        return;
      }
      cpu::row_forward<scalar_t>(z, V, y, label_smoothing, nll_p + r, lse_p + r);
    });
  });
  return {nll, lse};
}

// Shared body of kce_backward and its in-place variant (out_base == nullptr: write over the logits).
template <typename scalar_t>
void backward_rows(const at::Tensor& logits, scalar_t* out_base, bool out_zeroed, const int64_t* tgt,
                   const at::Tensor& lse, const at::Tensor& grad_nll, const at::Tensor& grad_lse, double eps) {
  using acc_t = typename cpu::Acc<scalar_t>::type;
  const int64_t V = logits.size(2);
  const acc_t* lse_p = lse.data_ptr<acc_t>();
  const acc_t* gn = grad_nll.data_ptr<acc_t>();
  const acc_t* gl = grad_lse.data_ptr<acc_t>();
  for_each_row<scalar_t>(logits, [&](int64_t r, const scalar_t* z) {
    scalar_t* o = out_base == nullptr ? const_cast<scalar_t*>(z) : out_base + r * V;
    const int64_t y = tgt[r];
    if (y == -1 || (gn[r] == acc_t(0) && gl[r] == acc_t(0))) {
      if (!out_zeroed) cpu::row_zero(o, V);  // nothing flows into this row: zeros without reading it
      return;
    }
    if (y < 0 || y >= V) { row_fill_nan(o, V); return; }
    cpu::row_backward<scalar_t>(z, o, V, y, eps, lse_p[r], gn[r], gl[r], static_cast<double>(z[y]));
  });
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
  const int64_t* tgt = target.data_ptr<int64_t>();
  GradBuffer buffer = empty_gradient(logits, tgt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_backward_cpu", [&] {
    backward_rows<scalar_t>(logits, buffer.tensor.data_ptr<scalar_t>(), buffer.zeroed, tgt, lse, grad_nll, grad_lse,
                            label_smoothing);
  });
  return buffer.tensor;
}

void kce_backward_inplace_cpu(at::Tensor logits, const at::Tensor& target, const at::Tensor& lse,
                              const at::Tensor& grad_nll, const at::Tensor& grad_lse, double label_smoothing) {
  check_backward_args(logits, target, lse, grad_nll, grad_lse, "kpod::kce_backward_inplace");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_backward_inplace_cpu", [&] {
    backward_rows<scalar_t>(logits, nullptr, false, target.data_ptr<int64_t>(), lse, grad_nll, grad_lse,
                            label_smoothing);
  });
}

// A row is processed in one piece when its logits plus its fp32 exp buffer fit in this budget: one
// core's L2 (sysconf, read once), 256 KiB where unknown; KPOD_CPU_ROW_BUDGET_KB overrides it (read
// every call: tests and tuning). Longer rows go block by block (kBlockBytes of logits per block,
// an L1/L2-sized piece). fp32/fp64 rows into a fresh gradient store each block's exp values there
// (one exp per element; KPOD_CPU_BLOCKED_STORE=0 turns that off), the others read the logits twice.
constexpr int64_t kBlockBytes = 32 * 1024;

int64_t l2_budget_bytes() {
  const char* v = std::getenv("KPOD_CPU_ROW_BUDGET_KB");
  if (v != nullptr && *v != '\0') return static_cast<int64_t>(std::atoll(v)) * 1024;
  static const int64_t detected = [] {
    long l2 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return l2 > 0 ? static_cast<int64_t>(l2) : int64_t(256) * 1024;
  }();
  return detected;
}

// Shared body of the two forward+backward variants (out == logits for the in-place one).
template <typename scalar_t>
void forward_backward_rows(const at::Tensor& logits, scalar_t* out_base, bool out_is_logits, bool out_zeroed,
                           const int64_t* tgt,
                           const typename cpu::Acc<scalar_t>::type* scale,
                           typename cpu::Acc<scalar_t>::type* nll_p, double eps) {
  using acc_t = typename cpu::Acc<scalar_t>::type;
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  const int64_t sB = logits.stride(0), sT = logits.stride(1);
  scalar_t* base = logits.data_ptr<scalar_t>();
  const bool blocked = V * static_cast<int64_t>(sizeof(scalar_t) + sizeof(acc_t)) > l2_budget_bytes();
  const char* store_env = std::getenv("KPOD_CPU_BLOCKED_STORE");  // tuning: 0 = always two reads
  const bool store_exp = store_env == nullptr || std::strcmp(store_env, "0") != 0;
  const int64_t block = std::max<int64_t>(1024, kBlockBytes / static_cast<int64_t>(sizeof(scalar_t)));
  at::parallel_for(0, B * T, grain_for(V), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(blocked ? 0 : static_cast<size_t>(V));  // the row's exp values, cache-resident
    std::vector<double> block_max(blocked ? static_cast<size_t>((V + block - 1) / block) : 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / T, t = r - b * T;
      scalar_t* z = base + b * sB + t * sT;
      scalar_t* o = out_is_logits ? z : out_base + r * V;
      const int64_t y = tgt[r];
      if (y == -1) {
        if (!out_zeroed) cpu::row_zero(o, V);
        continue;
      }
      const acc_t s = scale[r];
      const bool y_ok = y >= 0 && y < V;
      if (s == acc_t(0)) {  // loss only (the weights' gradient needs it); a zero gradient row, as on CUDA
        acc_t lse_unused;
        if (y_ok) {
          cpu::row_forward<scalar_t>(z, V, y, eps, nll_p + r, &lse_unused);
        } else {
          nll_p[r] = std::numeric_limits<acc_t>::quiet_NaN();
        }
        if (!out_zeroed) cpu::row_zero(o, V);
        continue;
      }
      if (!y_ok) {
        nll_p[r] = std::numeric_limits<acc_t>::quiet_NaN();
        row_fill_nan(o, V);
        continue;
      }
      if (blocked) {
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (!out_is_logits && store_exp) {  // fp32/fp64 into a fresh buffer: one exp per element
            cpu::row_forward_backward_blocked_store<scalar_t>(z, o, V, y, eps, static_cast<double>(s), block,
                                                              nll_p + r, block_max.data());
            continue;
          }
        }
        cpu::row_forward_backward_blocked<scalar_t>(z, o, V, y, eps, static_cast<double>(s), block, nll_p + r);
      } else {
        cpu::row_forward_backward<scalar_t>(z, o, V, y, eps, static_cast<double>(s), buf.data(), nll_p + r);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> kce_forward_backward_cpu(const at::Tensor& logits, const at::Tensor& target,
                                                            const at::Tensor& row_scale, double label_smoothing) {
  const char* op = "kpod::kce_forward_backward";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  check_rowwise(row_scale, logits, op, "row_scale", acc_type(logits));
  const int64_t B = logits.size(0), T = logits.size(1), V = logits.size(2);
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  GradBuffer buffer = empty_gradient(logits, target.data_ptr<int64_t>());
  auto grad = buffer.tensor;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_forward_backward_cpu", [&] {
    using acc_t = typename cpu::Acc<scalar_t>::type;
    forward_backward_rows<scalar_t>(logits, grad.data_ptr<scalar_t>(), false, buffer.zeroed, target.data_ptr<int64_t>(),
                                    row_scale.data_ptr<acc_t>(), nll.data_ptr<acc_t>(), label_smoothing);
  });
  return {nll, grad};
}

at::Tensor kce_forward_backward_inplace_cpu(at::Tensor logits, const at::Tensor& target, const at::Tensor& row_scale,
                                            double label_smoothing) {
  const char* op = "kpod::kce_forward_backward_inplace";
  check_logits(logits, op);
  check_rowwise(target, logits, op, "target", at::kLong);
  check_rowwise(row_scale, logits, op, "row_scale", acc_type(logits));
  auto nll = at::zeros(target.sizes(), logits.options().dtype(acc_type(logits)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_fb_inplace_cpu", [&] {
    using acc_t = typename cpu::Acc<scalar_t>::type;
    forward_backward_rows<scalar_t>(logits, nullptr, true, false, target.data_ptr<int64_t>(), row_scale.data_ptr<acc_t>(),
                                    nll.data_ptr<acc_t>(), label_smoothing);
  });
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
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "kpod_scale_cpu", [&] {
    using L = cpu::Lanes<scalar_t>;
    using AVec = typename L::AVec;
    scalar_t* p = x.data_ptr<scalar_t>();
    const float sf = static_cast<float>(s);
    at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      const AVec vs(sf);
      int64_t i = begin;
      for (; i + L::kStep <= end; i += L::kStep) {
        AVec a, b;
        L::load(p + i, a, b);
        L::store(p + i, a * vs, b * vs);
      }
      for (; i < end; ++i) p[i] = static_cast<scalar_t>(static_cast<float>(p[i]) * sf);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(kpod, CPU, m) {
  m.impl("kce_forward", &kce_forward_cpu);
  m.impl("kce_backward", &kce_backward_cpu);
  m.impl("kce_forward_backward", &kce_forward_backward_cpu);
  m.impl("kce_forward_backward_inplace", &kce_forward_backward_inplace_cpu);
  m.impl("kce_backward_inplace", &kce_backward_inplace_cpu);
  m.impl("scale_", &scale_cpu);
}

}  // namespace kpod
