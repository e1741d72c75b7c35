// Plain-C++ launchers of the CUDA cross-entropy kernels (csrc/cuda/kce_kernels.cu).
// No torch types here: the .cu files compile with plain nvcc; csrc/cuda/kce_cuda.cpp is the glue.
//
// Logits are [B, T, V] with the vocabulary dimension contiguous and element strides sb, st for
// the two leading dimensions (64-bit). target is [B, T] contiguous int64, -1 = skip the row.
// Per-row tensors (nll, lse, grad_nll, grad_lse, row_scale) are contiguous [B, T] in the
// accumulation type: float for fp32/bf16/fp16 logits, double for fp64.
// All launchers enqueue on `stream` and never synchronise. They return the error of the set-up
// calls (cudaFuncSetAttribute); launch errors are left for cudaGetLastError (the glue's check).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace kpod {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct RowsIn {
  const void* data;  // logits
  int64_t B, T, V;
  int64_t sb, st;  // element strides of dims 0 and 1
};

struct RowsOut {
  void* data;  // gradient rows ([B, T, V], vocab contiguous)
  int64_t sb, st;
};

// Largest row-cache (bytes of shared memory per row block) the kernels may use in the one-launch
// forward+backward; < 0 means the built-in default. Rows that fit are read from HBM once.
constexpr int64_t kDefaultRowCache = -1;

// nll[r] = lse - (1-eps) z_y - (eps/V) sum_v z_v, lse[r] = logsumexp(z); zeros where target == -1.
cudaError_t kce_forward(DType dtype, RowsIn in, const int64_t* target, void* nll, void* lse, double eps,
                        cudaStream_t stream);

// grad = (g_nll + g_lse) softmax - g_nll ((1-eps) onehot + eps/V) from the saved lse; zero rows
// (logits not read) where target == -1 or g_nll == g_lse == 0.
cudaError_t kce_backward(DType dtype, RowsIn in, const int64_t* target, const void* lse, const void* grad_nll,
                         const void* grad_lse, RowsOut out, double eps, cudaStream_t stream);

// One launch: nll and grad = s (softmax - (1-eps) onehot - eps/V), s = row_scale[r]; the gradient
// row is exactly zero where s == 0 or target == -1. out may alias in (in-place: same strides).
cudaError_t kce_forward_backward(DType dtype, RowsIn in, const int64_t* target, const void* row_scale, void* nll,
                                 RowsOut out, double eps, int64_t max_row_cache_bytes, cudaStream_t stream);

// x *= *scale (a device float) for x [B, T, V] (vocab contiguous, strides sb, st; a contiguous
// tensor of any shape is B = T = 1, V = numel); returns without writing when *scale == 1.
cudaError_t scale_inplace(DType dtype, RowsOut x, int64_t B, int64_t T, int64_t V, const float* scale,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace kpod
