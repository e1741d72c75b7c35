// The CPU kernels' row loops, one table per instruction set (as ATen's DispatchStub).
//
// csrc/cpu/per_capability/kce_cpu_rows.cpp is compiled once per instruction set by setup.py:
//   DEFAULT  no vector flags beyond the compiler's baseline (any x86-64, and every other CPU)
//   AVX2     -mavx2 -mfma -mf16c                              (x86-64 only)
//   AVX512   -mavx512f -mavx512bw -mavx512vl -mavx512dq plus the AVX2 flags (x86-64 only)
// each into its own namespace kpod::cpu::<CAPABILITY>, which defines kRowKernels. The torch glue
// (kce_cpu.cpp, compiled with the default flags) checks arguments, allocates outputs and calls the
// table chosen at run time (kce_cpu.cpp: the variant torch itself runs, KPOD_CPU_CAPABILITY to force one).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kpod {
namespace cpu {

struct RowKernels {
  const char* name;  // "default", "avx2" or "avx512"
  // per-row nll and lse of the rows whose target is not -1 (nll/lse: zeros on entry)
  void (*forward)(const at::Tensor& logits, const int64_t* tgt, at::Tensor& nll, at::Tensor& lse, double eps);
  // kce_backward's gradient into `out` ([B, T, V] contiguous), or over the logits when `out` is null;
  // `out_zeroed`: skipped rows are already zero and are not written
  void (*backward)(const at::Tensor& logits, at::Tensor* out, bool out_zeroed, const int64_t* tgt,
                   const at::Tensor& lse, const at::Tensor& grad_nll, const at::Tensor& grad_lse, double eps);
  // kce_forward_backward: nll and row_scale·(softmax − …) into `out`, or over the logits when null
  void (*forward_backward)(const at::Tensor& logits, at::Tensor* out, bool out_zeroed, const int64_t* tgt,
                           const at::Tensor& row_scale, at::Tensor& nll, double eps);
  // x *= s for contiguous bfloat16/float16 x, the product taken in fp32 and rounded once
  void (*scale_reduced)(at::Tensor& x, float s);
};

namespace DEFAULT {
extern const RowKernels kRowKernels;
}
#ifdef KPOD_CPU_X86_VARIANTS
namespace AVX2 {
extern const RowKernels kRowKernels;
}
namespace AVX512 {
extern const RowKernels kRowKernels;
}
#endif

}  // namespace cpu
}  // namespace kpod
