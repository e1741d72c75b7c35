// Torch glue of the CUDA kernels: checks tensors, allocates outputs, launches on the current
// stream (never synchronises) and registers TORCH_LIBRARY_IMPL(kpod, CUDA). Schemas: csrc/kpod.cpp;
// semantics: kpod_ops/losses/registration.py; kernels: csrc/cuda/kce_kernels.cu.
#ifdef KPOD_WITH_CUDA

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <tuple>

#include "cuda/kce_kernels.h"

namespace kpod {
namespace {

using cuda::DType;

DType dtype_of(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, bfloat16, float16 or float64, got ", t.scalar_type());
  }
}

at::ScalarType acc_type(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// logits [B, T, V] on CUDA with the vocabulary dimension contiguous
cuda::RowsIn check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.is_cuda(), op, ": logits must be a CUDA tensor, got device ", logits.device());
  TORCH_CHECK(logits.dim() == 3, op, ": logits must be [B, T, V], got ", logits.dim(), " dimensions ", logits.sizes());
  TORCH_CHECK(logits.size(2) <= 1 || logits.stride(2) == 1, op,
              ": logits must have the vocabulary dimension contiguous (stride(2) == 1), got strides ", logits.strides());
  TORCH_CHECK(logits.size(2) < std::numeric_limits<int32_t>::max(), op, ": vocabulary size ", logits.size(2),
              " must be below 2^31");
  dtype_of(logits, op, "logits");
  return cuda::RowsIn{logits.data_ptr(), logits.size(0), logits.size(1), logits.size(2), logits.stride(0),
                      logits.stride(1)};
}

void check_target(const at::Tensor& target, const at::Tensor& logits, const char* op) {
  TORCH_CHECK(target.device() == logits.device(), op, ": target must be on ", logits.device(), ", got ",
              target.device());
  TORCH_CHECK(target.scalar_type() == at::kLong, op, ": target must be int64, got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 2 && target.size(0) == logits.size(0) && target.size(1) == logits.size(1), op,
              ": target must have shape [B, T] = [", logits.size(0), ", ", logits.size(1), "], got ", target.sizes());
  TORCH_CHECK(target.is_contiguous(), op, ": target must be contiguous");
}

// per-row tensors: [B, T], contiguous, accumulation dtype, same device
void check_rows(const at::Tensor& t, const at::Tensor& logits, const char* op, const char* name) {
  TORCH_CHECK(t.device() == logits.device(), op, ": ", name, " must be on ", logits.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == acc_type(logits), op, ": ", name, " must be ", acc_type(logits), " for ",
              logits.scalar_type(), " logits, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2 && t.size(0) == logits.size(0) && t.size(1) == logits.size(1), op, ": ", name,
              " must have shape [B, T] = [", logits.size(0), ", ", logits.size(1), "], got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// KPOD_CUDA_ROW_CACHE_KB: shared-memory row cache of the forward+backward kernel (tuning; -1 default)
int64_t row_cache_bytes() {
  const char* v = std::getenv("KPOD_CUDA_ROW_CACHE_KB");
  if (v == nullptr || *v == '\0') return cuda::kDefaultRowCache;
  return static_cast<int64_t>(std::atoll(v)) * 1024;
}

std::tuple<at::Tensor, at::Tensor> kce_forward_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                    double label_smoothing) {
  const char* op = "kpod::kce_forward";
  const cuda::RowsIn in = check_logits(logits, op);
  check_target(target, logits, op);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto opts = logits.options().dtype(acc_type(logits));
  at::Tensor nll = at::empty({in.B, in.T}, opts), lse = at::empty({in.B, in.T}, opts);
  if (nll.numel() == 0) return {nll, lse};
  C10_CUDA_CHECK(cuda::kce_forward(dtype_of(logits, op, "logits"), in, target.data_ptr<int64_t>(), nll.data_ptr(),
                                   lse.data_ptr(), label_smoothing, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {nll, lse};
}

void backward_into(const char* op, const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad_nll, const at::Tensor& grad_lse, const at::Tensor& grad,
                   double label_smoothing) {
  const cuda::RowsIn in = check_logits(logits, op);
  check_target(target, logits, op);
  check_rows(lse, logits, op, "lse");
  check_rows(grad_nll, logits, op, "grad_nll");
  check_rows(grad_lse, logits, op, "grad_lse");
  const c10::cuda::CUDAGuard guard(logits.device());
  if (logits.numel() == 0) return;
  const cuda::RowsOut out{grad.data_ptr(), grad.stride(0), grad.stride(1)};
  C10_CUDA_CHECK(cuda::kce_backward(dtype_of(logits, op, "logits"), in, target.data_ptr<int64_t>(), lse.data_ptr(),
                                    grad_nll.data_ptr(), grad_lse.data_ptr(), out, label_smoothing,
                                    at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor kce_backward_cuda(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                             const at::Tensor& grad_nll, const at::Tensor& grad_lse, double label_smoothing) {
  at::Tensor grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  backward_into("kpod::kce_backward", logits, target, lse, grad_nll, grad_lse, grad, label_smoothing);
  return grad;
}

void kce_backward_inplace_cuda(at::Tensor logits, const at::Tensor& target, const at::Tensor& lse,
                               const at::Tensor& grad_nll, const at::Tensor& grad_lse, double label_smoothing) {
  // each element is read and then overwritten by the same thread (same strides in and out)
  backward_into("kpod::kce_backward_inplace", logits, target, lse, grad_nll, grad_lse, logits, label_smoothing);
}

at::Tensor fwd_bwd_into(const char* op, const at::Tensor& logits, const at::Tensor& target,
                        const at::Tensor& row_scale, const at::Tensor& grad, double label_smoothing) {
  const cuda::RowsIn in = check_logits(logits, op);
  check_target(target, logits, op);
  check_rows(row_scale, logits, op, "row_scale");
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor nll = at::empty({in.B, in.T}, logits.options().dtype(acc_type(logits)));
  if (nll.numel() == 0) return nll;
  const cuda::RowsOut out{grad.data_ptr(), grad.stride(0), grad.stride(1)};
  C10_CUDA_CHECK(cuda::kce_forward_backward(dtype_of(logits, op, "logits"), in, target.data_ptr<int64_t>(),
                                            row_scale.data_ptr(), nll.data_ptr(), out, label_smoothing,
                                            row_cache_bytes(), at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return nll;
}

std::tuple<at::Tensor, at::Tensor> kce_forward_backward_cuda(const at::Tensor& logits, const at::Tensor& target,
                                                             const at::Tensor& row_scale, double label_smoothing) {
  at::Tensor grad = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor nll = fwd_bwd_into("kpod::kce_forward_backward", logits, target, row_scale, grad, label_smoothing);
  return {nll, grad};
}

at::Tensor kce_forward_backward_inplace_cuda(at::Tensor logits, const at::Tensor& target,
                                             const at::Tensor& row_scale, double label_smoothing) {
  // the gradient row of each logits row is written over it (same strides)
  return fwd_bwd_into("kpod::kce_forward_backward_inplace", logits, target, row_scale, logits, label_smoothing);
}

void scale_cuda(at::Tensor x, const at::Tensor& scale) {
  const char* op = "kpod::scale_";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(scale.device() == x.device(), op, ": scale must be on ", x.device(), ", got ", scale.device());
  TORCH_CHECK(scale.numel() == 1, op, ": scale must hold one element, got shape ", scale.sizes());
  const DType dt = dtype_of(x, op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.numel() == 0) return;
  const at::Tensor s = scale.scalar_type() == at::kFloat ? scale.contiguous() : scale.to(at::kFloat);  // no sync
  const float* sp = s.data_ptr<float>();
  cuda::RowsOut rows{x.data_ptr(), 0, 0};
  int64_t B = 1, T = 1, V = x.numel();
  if (x.is_contiguous()) {
  } else if (x.dim() == 3 && x.stride(2) == 1 && x.size(2) < std::numeric_limits<int32_t>::max()) {
    B = x.size(0), T = x.size(1), V = x.size(2);
    rows.sb = x.stride(0), rows.st = x.stride(1);
  } else if (x.dim() == 2 && x.stride(1) == 1 && x.size(1) < std::numeric_limits<int32_t>::max()) {
    T = x.size(0), V = x.size(1);
    rows.st = x.stride(0);
  } else {
    // other layouts: a device multiply in fp32, rounded once (no host sync; the scale is never
    // rounded to x's dtype first)
    x.copy_(x.to(at::kFloat).mul_(s));
    return;
  }
  C10_CUDA_CHECK(cuda::scale_inplace(dt, rows, B, T, V, sp, at::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace kpod

TORCH_LIBRARY_IMPL(kpod, CUDA, m) {
  m.impl("kce_forward", &kpod::kce_forward_cuda);
  m.impl("kce_backward", &kpod::kce_backward_cuda);
  m.impl("kce_forward_backward", &kpod::kce_forward_backward_cuda);
  m.impl("kce_forward_backward_inplace", &kpod::kce_forward_backward_inplace_cuda);
  m.impl("kce_backward_inplace", &kpod::kce_backward_inplace_cuda);
  m.impl("scale_", &kpod::scale_cuda);
}

#endif  // KPOD_WITH_CUDA
