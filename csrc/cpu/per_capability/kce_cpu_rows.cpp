// Row loops of the CPU kernels, compiled once per instruction set (setup.py: -DCPU_CAPABILITY=DEFAULT,
// AVX2 or AVX512 with the matching -m flags) into kpod::cpu::CPU_CAPABILITY::kRowKernels. The glue
// that checks arguments, allocates outputs and picks the variant at run time is csrc/cpu/kce_cpu.cpp;
// the row math is csrc/cpu/kce_cpu_kernel.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kce_cpu_dispatch.h"
#include "cpu/kce_cpu_kernel.h"

#define KPOD_STR2(x) #x
#define KPOD_STR(x) KPOD_STR2(x)

namespace kpod {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Rows per task: enough V-sized rows that a task is worth scheduling.
int64_t grain_for(int64_t V) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)); }

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

void forward(const at::Tensor& logits, const int64_t* tgt, at::Tensor& nll, at::Tensor& lse, double eps) {
  const int64_t V = logits.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_forward_cpu", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    acc_t* nll_p = nll.data_ptr<acc_t>();
    acc_t* lse_p = lse.data_ptr<acc_t>();
    for_each_row<scalar_t>(logits, [&](int64_t r, const scalar_t* z) {
      const int64_t y = tgt[r];
      if (y == -1) return;  // skipped: never read
      if (y < 0 || y >= V) {
        nll_p[r] = lse_p[r] = std::numeric_limits<acc_t>::quiet_NaN();
        return;
      }
      row_forward<scalar_t>(z, V, y, eps, nll_p + r, lse_p + r);
    });
  });
}

// Shared body of kce_backward and its in-place variant (out_base == nullptr: write over the logits).
template <typename scalar_t>
void backward_rows(const at::Tensor& logits, scalar_t* out_base, bool out_zeroed, const int64_t* tgt,
                   const at::Tensor& lse, const at::Tensor& grad_nll, const at::Tensor& grad_lse, double eps) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t V = logits.size(2);
  const acc_t* lse_p = lse.data_ptr<acc_t>();
  const acc_t* gn = grad_nll.data_ptr<acc_t>();
  const acc_t* gl = grad_lse.data_ptr<acc_t>();
  for_each_row<scalar_t>(logits, [&](int64_t r, const scalar_t* z) {
    scalar_t* o = out_base == nullptr ? const_cast<scalar_t*>(z) : out_base + r * V;
    const int64_t y = tgt[r];
    if (y == -1 || (gn[r] == acc_t(0) && gl[r] == acc_t(0))) {
      if (!out_zeroed) row_zero(o, V);  // nothing flows into this row: zeros without reading it
      return;
    }
    if (y < 0 || y >= V) { row_fill_nan(o, V); return; }
    row_backward<scalar_t>(z, o, V, y, eps, lse_p[r], gn[r], gl[r], static_cast<double>(z[y]));
  });
}

void backward(const at::Tensor& logits, at::Tensor* out, bool out_zeroed, const int64_t* tgt, const at::Tensor& lse,
              const at::Tensor& grad_nll, const at::Tensor& grad_lse, double eps) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_backward_cpu", [&] {
    backward_rows<scalar_t>(logits, out == nullptr ? nullptr : out->data_ptr<scalar_t>(), out_zeroed, tgt, lse, grad_nll,
                            grad_lse, eps);
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
                           const int64_t* tgt, const typename Acc<scalar_t>::type* scale,
                           typename Acc<scalar_t>::type* nll_p, double eps) {
  using acc_t = typename Acc<scalar_t>::type;
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
        if (!out_zeroed) row_zero(o, V);
        continue;
      }
      const acc_t s = scale[r];
      const bool y_ok = y >= 0 && y < V;
      if (s == acc_t(0)) {  // loss only (the weights' gradient needs it); a zero gradient row, as on CUDA
        acc_t lse_unused;
        if (y_ok) {
          row_forward<scalar_t>(z, V, y, eps, nll_p + r, &lse_unused);
        } else {
          nll_p[r] = std::numeric_limits<acc_t>::quiet_NaN();
        }
        if (!out_zeroed) row_zero(o, V);
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
            row_forward_backward_blocked_store<scalar_t>(z, o, V, y, eps, static_cast<double>(s), block, nll_p + r,
                                                         block_max.data());
            continue;
          }
        }
        row_forward_backward_blocked<scalar_t>(z, o, V, y, eps, static_cast<double>(s), block, nll_p + r);
      } else {
        row_forward_backward<scalar_t>(z, o, V, y, eps, static_cast<double>(s), buf.data(), nll_p + r);
      }
    }
  });
}

void forward_backward(const at::Tensor& logits, at::Tensor* out, bool out_zeroed, const int64_t* tgt,
                      const at::Tensor& row_scale, at::Tensor& nll, double eps) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "kce_forward_backward_cpu", [&] {
    using acc_t = typename Acc<scalar_t>::type;
    forward_backward_rows<scalar_t>(logits, out == nullptr ? nullptr : out->data_ptr<scalar_t>(), out == nullptr,
                                    out == nullptr ? false : out_zeroed, tgt, row_scale.data_ptr<acc_t>(),
                                    nll.data_ptr<acc_t>(), eps);
  });
}

void scale_reduced(at::Tensor& x, float s) {
  AT_DISPATCH_REDUCED_FLOATING_TYPES(x.scalar_type(), "kpod_scale_cpu", [&] {
    using L = Lanes<scalar_t>;
    using AVec = typename L::AVec;
    scalar_t* p = x.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
      const AVec vs(s);
      int64_t i = begin;
      for (; i + L::kStep <= end; i += L::kStep) {
        AVec a, b;
        L::load(p + i, a, b);
        L::store(p + i, a * vs, b * vs);
      }
      for (; i < end; ++i) p[i] = static_cast<scalar_t>(static_cast<float>(p[i]) * s);
    });
  });
}

// "AVX512" -> "avx512": the name users pass in KPOD_CPU_CAPABILITY
constexpr char kUpperName[] = KPOD_STR(CPU_CAPABILITY);
constexpr size_t kNameLen = sizeof(kUpperName);
struct LowerName {
  char s[kNameLen];
  constexpr LowerName() : s{} {
    for (size_t i = 0; i < kNameLen; ++i) {
      const char c = kUpperName[i];
      s[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
  }
};
constexpr LowerName kName{};

}  // namespace

extern const RowKernels kRowKernels;
const RowKernels kRowKernels = {kName.s, &forward, &backward, &forward_backward, &scale_reduced};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace kpod
