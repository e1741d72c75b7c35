// CUDA kernels of the keypoint cross-entropy ops (launchers declared in kce_kernels.h).
// Only CUDA and project headers: plain `nvcc -c` compiles this file.
//
// Layout: one row group per row of V logits; a warp per row (8 rows per block) for V <= 2048,
// else a whole block per row. Each row is split into a scalar head (up to the first 16-byte
// boundary), 128-bit vectors and a scalar tail, so any row stride and odd V stay vectorised.
// Softmax statistics are accumulated online in the accumulation type (fp32, fp64 for fp64 logits)
// with exp2 and log2(e) folded into an FMA, and -inf guards so (-inf) - (-inf) is never formed.
// Passes over the N x V logits (reads R, writes W):
//   kce_forward            1R
//   kce_backward           1R + 1W
//   kce_forward_backward   2R + 1W in one launch; the first part of each row is kept in shared
//                          memory (up to the row-cache size), the rest is re-read, most recently
//                          read first so that it still sits in L2. Rows that fit: 1R + 1W.
// Skipped rows (target -1; row_scale 0; zero upstream gradients) are never read: zeros are stored.
#include "cuda/kce_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

namespace kpod {
namespace cuda {
namespace {

constexpr int kFwd = 0, kBwd = 1, kFwdBwd = 2;

// ---- element types ---------------------------------------------------------------------------
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

__device__ __forceinline__ float ex2(float v) { return exp2f(v); }
__device__ __forceinline__ double ex2(double v) { return exp2(v); }
__device__ __forceinline__ float lg2(float v) { return log2f(v); }
__device__ __forceinline__ double lg2(double v) { return log2(v); }
__device__ __forceinline__ float vmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double vmax(double a, double b) { return fmax(a, b); }

template <typename A> __device__ __forceinline__ A log2e() { return A(1.4426950408889634074); }
template <typename A> __device__ __forceinline__ A ln2() { return A(0.6931471805599453094); }
template <typename A> __device__ __forceinline__ A neg_inf() { return -A(INFINITY); }
template <typename A> __device__ __forceinline__ A qnan() { return A(NAN); }

// 16 bytes of elements: the unit of every load and store of the row body.
template <typename T> struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// ---- online softmax state --------------------------------------------------------------------
// m: running max; s: sum of exp(z - m); z: sum of the logits (label smoothing). m is never NaN
// (fmax ignores NaN), NaN logits reach s through exp2 and propagate to the loss.
template <typename A> struct Stats {
  A m, s, z;
};

// factor exp(a - b) for rescaling a sum taken at max a to max b >= a; 0 when a == -inf (the sum
// is then 0, or NaN which the multiplication keeps).
template <typename A> __device__ __forceinline__ A rescale(A a, A b) {
  return a == neg_inf<A>() ? A(0) : ex2((a - b) * log2e<A>());
}

// fold K values (already in A) into the state: one rescale per call
template <typename A, int K> __device__ __forceinline__ void fold(Stats<A>& st, const A (&x)[K]) {
  A mx = st.m;
#pragma unroll
  for (int k = 0; k < K; ++k) mx = vmax(mx, x[k]);
  if (mx != st.m) {
    st.s *= rescale(st.m, mx);
    st.m = mx;
  }
  const A off = mx == neg_inf<A>() ? A(0) : mx * log2e<A>();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    st.s += ex2(fma(x[k], log2e<A>(), -off));
    st.z += x[k];
  }
}

template <typename A> __device__ __forceinline__ void merge(Stats<A>& st, A m, A s, A z) {
  const A mx = vmax(st.m, m);
  st.s = st.s * rescale(st.m, mx) + s * rescale(m, mx);
  st.m = mx;
  st.z += z;
}

template <typename A> __device__ __forceinline__ void warp_reduce(Stats<A>& st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A m = __shfl_xor_sync(0xffffffffu, st.m, o);
    const A s = __shfl_xor_sync(0xffffffffu, st.s, o);
    const A z = __shfl_xor_sync(0xffffffffu, st.z, o);
    merge(st, m, s, z);
  }
}

// block-wide reduction; every thread gets the result. Acts as a barrier for the row's threads.
template <typename A, int NT> __device__ __forceinline__ void row_reduce(Stats<A>& st) {
  warp_reduce(st);
  if constexpr (NT == 32) {
    __syncwarp();
  } else {
    __shared__ A red[3][NT / 32];
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) {
      red[0][w] = st.m;
      red[1][w] = st.s;
      red[2][w] = st.z;
    }
    __syncthreads();
    Stats<A> t{neg_inf<A>(), A(0), A(0)};
    if (l < NT / 32) t = Stats<A>{red[0][l], red[1][l], red[2][l]};
    warp_reduce(t);
    st = t;
  }
}

// ---- kernel ----------------------------------------------------------------------------------
template <typename T> struct Params {
  using A = typename Acc<T>::type;
  const T* in;
  T* out;
  int64_t rows, T_, in_sb, in_st, out_sb, out_st;
  int V;
  const int64_t* target;
  A* nll;
  A* lse_out;
  const A* lse_in;
  const A* g_nll;
  const A* g_lse;
  const A* row_scale;
  A eps;
  int cache_vecs;  // body vectors of each row kept in dynamic shared memory (forward+backward)
};

// Split of a row at 16-byte boundaries: head scalars, nvec vectors, tail scalars.
struct Split {
  int head, nvec, tail;
};

template <typename T> __device__ __forceinline__ Split split_row(const T* p, int V) {
  constexpr int N = Vec<T>::N;
  const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
  int head = mis == 0 ? 0 : N - mis;
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) head = V;  // not element-aligned: all scalar
  head = head < V ? head : V;
  const int nvec = (V - head) / N;
  return Split{head, nvec, V - head - nvec * N};
}

template <typename T, int NT> __device__ __forceinline__ void zero_row(T* g, int V, int tid) {
  const Split sp = split_row(g, V);
  const T zero = from_acc<T>(typename Acc<T>::type(0));
  if (tid < sp.head) g[tid] = zero;
  Vec<T> z;
#pragma unroll
  for (int k = 0; k < Vec<T>::N; ++k) z.v[k] = zero;
  Vec<T>* gv = reinterpret_cast<Vec<T>*>(g + sp.head);
  for (int i = tid; i < sp.nvec; i += NT) __stcs(reinterpret_cast<uint4*>(gv + i), *reinterpret_cast<uint4*>(&z));
  if (tid < sp.tail) g[sp.head + sp.nvec * Vec<T>::N + tid] = zero;
}

// gradient of one element: a p - c, minus d at the target (p = softmax, all in A before rounding)
template <typename A> struct GradCoef {
  A lse2, a, c, cd;  // lse*log2e, scale of p, constant, constant + target term
  int64_t y;
};

template <typename T, int K>
__device__ __forceinline__ void grad_vec(const GradCoef<typename Acc<T>::type>& gc, const T* x, T* g, int v0) {
  using A = typename Acc<T>::type;
  const bool has_y = gc.y >= v0 && gc.y < v0 + K;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const A p = ex2(fma(to_acc(x[k]), log2e<A>(), -gc.lse2));
    const A c = (has_y && v0 + k == gc.y) ? gc.cd : gc.c;
    g[k] = from_acc<T>(fma(gc.a, p, -c));
  }
}

template <typename T, int MODE, int NT, int ROWS>
__global__ void __launch_bounds__(NT* ROWS, (NT == 512 ? 2 : 4)) kce_kernel(const Params<T> p) {
  using A = typename Acc<T>::type;
  using V_ = Vec<T>;
  constexpr int N = V_::N;
  constexpr int U = N == 4 ? 4 : 2;  // vectors in flight per thread: 16 elements per fold (8 for fp64)
  extern __shared__ uint4 row_cache[];

  const int tid = ROWS == 1 ? threadIdx.x : threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * ROWS + (ROWS == 1 ? 0 : threadIdx.x / 32);
  if (row >= p.rows) return;  // ROWS > 1 only: a whole warp leaves, no block barrier follows
  const int64_t b = row / p.T_, t = row - b * p.T_;
  const int V = p.V;
  const T* x = p.in + b * p.in_sb + t * p.in_st;
  T* g = MODE == kFwd ? nullptr : p.out + b * p.out_sb + t * p.out_st;
  const int64_t y = p.target[row];

  if (y == -1) {  // skipped row: never read
    if (MODE != kBwd && tid == 0) p.nll[row] = A(0);
    if (MODE == kFwd && tid == 0) p.lse_out[row] = A(0);
    if (MODE != kFwd) zero_row<T, NT>(g, V, tid);
    return;
  }
  const bool y_ok = y >= 0 && y < V;  // out of range: NaN loss and gradient, no access at y
  const Split sp = split_row(x, V);
  const V_* xv = reinterpret_cast<const V_*>(x + sp.head);
  const A inv_v = A(1) / A(V);

  GradCoef<A> gc;
  gc.y = y_ok ? y : -1;
  if constexpr (MODE == kBwd) {
    const A gn = p.g_nll[row], gl = p.g_lse[row];
    if (gn == A(0) && gl == A(0)) {
      zero_row<T, NT>(g, V, tid);
      return;
    }
    gc.lse2 = p.lse_in[row] * log2e<A>();
    gc.a = y_ok ? gn + gl : qnan<A>();
    gc.c = gn * p.eps * inv_v;
    gc.cd = gn * (p.eps * inv_v + (A(1) - p.eps));
  } else {
    // ---- pass 1: online softmax statistics (and the row cache) ----
    A zy = A(0);
    if (tid == 0 && y_ok) zy = to_acc(x[y]);  // read before any write of the row (in place)
    Stats<A> st{neg_inf<A>(), A(0), A(0)};
    if (tid < sp.head) {
      const A v[1] = {to_acc(x[tid])};
      fold(st, v);
    }
    int i = tid;
    for (; i + (U - 1) * NT < sp.nvec; i += U * NT) {
      V_ r[U];
#pragma unroll
      for (int u = 0; u < U; ++u) r[u] = xv[i + u * NT];
      A v[U * N];
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int k = 0; k < N; ++k) v[u * N + k] = to_acc(r[u].v[k]);
        if (MODE == kFwdBwd && i + u * NT < p.cache_vecs) row_cache[i + u * NT] = *reinterpret_cast<uint4*>(&r[u]);
      }
      fold(st, v);
    }
    for (; i < sp.nvec; i += NT) {
      V_ r = xv[i];
      A v[N];
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = to_acc(r.v[k]);
      if (MODE == kFwdBwd && i < p.cache_vecs) row_cache[i] = *reinterpret_cast<uint4*>(&r);
      fold(st, v);
    }
    if (tid < sp.tail) {
      const A v[1] = {to_acc(x[sp.head + sp.nvec * N + tid])};
      fold(st, v);
    }
    row_reduce<A, NT>(st);
    const A lse = st.m + lg2(st.s) * ln2<A>();
    if (tid == 0) {
      // eps == 0: no smoothing term at all (0 * inf from a -inf logit would be NaN)
      const A smooth = p.eps == A(0) ? A(0) : p.eps * inv_v * st.z;
      p.nll[row] = y_ok ? lse - (A(1) - p.eps) * zy - smooth : qnan<A>();
      if (MODE == kFwd) p.lse_out[row] = lse;
    }
    if constexpr (MODE == kFwd) return;
    const A s = p.row_scale[row];
    if (s == A(0)) {
      zero_row<T, NT>(g, V, tid);
      return;
    }
    gc.lse2 = lse * log2e<A>();
    gc.a = y_ok ? s : qnan<A>();
    gc.c = s * p.eps * inv_v;
    gc.cd = s * (p.eps * inv_v + (A(1) - p.eps));
  }

  // ---- gradient pass ----
  // Output vectors line up with the input's when both rows share their 16-byte phase.
  const Split so = split_row(g, V);
  const bool same = so.head == sp.head;
  V_* gv = reinterpret_cast<V_*>(g + sp.head);
  auto store = [&](int i, const V_& o) {
    if (same) {
      __stcs(reinterpret_cast<uint4*>(gv + i), *reinterpret_cast<const uint4*>(&o));
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) g[sp.head + i * N + k] = o.v[k];
    }
  };
  if (tid < sp.head) grad_vec<T, 1>(gc, x + tid, g + tid, tid);
  const int tail0 = sp.head + sp.nvec * N;
  if (tid < sp.tail) grad_vec<T, 1>(gc, x + tail0 + tid, g + tail0 + tid, tail0 + tid);
  // the uncached part first (most recently read, so still in L2), then the cached part
  const int cached = MODE == kFwdBwd ? (p.cache_vecs < sp.nvec ? p.cache_vecs : sp.nvec) : 0;
  int i = cached <= tid ? tid : tid + ((cached - tid + NT - 1) / NT) * NT;
  for (; i + (U - 1) * NT < sp.nvec; i += U * NT) {
    V_ r[U], o[U];
#pragma unroll
    for (int u = 0; u < U; ++u) *reinterpret_cast<uint4*>(&r[u]) = __ldcs(reinterpret_cast<const uint4*>(xv + i + u * NT));
#pragma unroll
    for (int u = 0; u < U; ++u) {
      grad_vec<T, N>(gc, r[u].v, o[u].v, sp.head + (i + u * NT) * N);
      store(i + u * NT, o[u]);
    }
  }
  for (; i < sp.nvec; i += NT) {
    V_ r, o;
    *reinterpret_cast<uint4*>(&r) = __ldcs(reinterpret_cast<const uint4*>(xv + i));
    grad_vec<T, N>(gc, r.v, o.v, sp.head + i * N);
    store(i, o);
  }
  for (i = tid; i < cached; i += NT) {  // same thread-to-vector map as pass 1: no barrier needed
    V_ r, o;
    *reinterpret_cast<uint4*>(&r) = row_cache[i];
    grad_vec<T, N>(gc, r.v, o.v, sp.head + i * N);
    store(i, o);
  }
}

// ---- scale_ ----------------------------------------------------------------------------------
template <typename T>
__global__ void scale_flat_kernel(T* x, int64_t n, const float* scale) {
  using A = typename Acc<T>::type;
  const float sf = *scale;
  if (sf == 1.0f) return;
  const A s = A(sf);
  constexpr int N = Vec<T>::N;
  const Split sp = split_row(x, n < INT32_MAX ? static_cast<int>(n) : N);  // head only matters
  const int64_t head = sp.head;
  const int64_t nvec = (n - head) / N;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (tid < head) x[tid] = from_acc<T>(to_acc(x[tid]) * s);
  Vec<T>* xv = reinterpret_cast<Vec<T>*>(x + head);
  for (int64_t i = tid; i < nvec; i += stride) {
    Vec<T> r = xv[i];
#pragma unroll
    for (int k = 0; k < N; ++k) r.v[k] = from_acc<T>(to_acc(r.v[k]) * s);
    xv[i] = r;
  }
  const int64_t t0 = head + nvec * N;
  if (tid < n - t0) x[t0 + tid] = from_acc<T>(to_acc(x[t0 + tid]) * s);
}

template <typename T>
__global__ void scale_rows_kernel(T* x, int64_t rows, int64_t T_, int V, int64_t sb, int64_t st, const float* scale) {
  using A = typename Acc<T>::type;
  const float sf = *scale;
  if (sf == 1.0f) return;
  const A s = A(sf);
  constexpr int N = Vec<T>::N;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / T_, t = row - b * T_;
    T* g = x + b * sb + t * st;
    const Split sp = split_row(g, V);
    const int tid = threadIdx.x;
    if (tid < sp.head) g[tid] = from_acc<T>(to_acc(g[tid]) * s);
    Vec<T>* gv = reinterpret_cast<Vec<T>*>(g + sp.head);
    for (int i = tid; i < sp.nvec; i += blockDim.x) {
      Vec<T> r = gv[i];
#pragma unroll
      for (int k = 0; k < N; ++k) r.v[k] = from_acc<T>(to_acc(r.v[k]) * s);
      gv[i] = r;
    }
    const int t0 = sp.head + sp.nvec * N;
    if (tid < sp.tail) g[t0 + tid] = from_acc<T>(to_acc(g[t0 + tid]) * s);
  }
}

// ---- launch ----------------------------------------------------------------------------------
template <typename T, int MODE, int NT, int ROWS>
cudaError_t launch(const Params<T>& p, int smem_bytes, cudaStream_t stream) {
  auto kernel = kce_kernel<T, MODE, NT, ROWS>;
  if (smem_bytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (e != cudaSuccess) return e;
  }
  const int64_t blocks = (p.rows + ROWS - 1) / ROWS;
  kernel<<<static_cast<unsigned>(blocks), NT * ROWS, smem_bytes, stream>>>(p);
  return cudaSuccess;
}

// Default row cache: 96 KiB lets two 512-thread blocks share an SM (H100/H200: 228 KiB per SM).
constexpr int64_t kDefaultCacheBytes = 96 * 1024;

template <typename T, int MODE>
cudaError_t dispatch(Params<T> p, int64_t max_cache_bytes, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  p.cache_vecs = 0;
  if (p.V <= 2048) return launch<T, MODE, 32, 8>(p, 0, stream);
  int smem = 0;
  if (MODE == kFwdBwd) {
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    int64_t cap = max_cache_bytes < 0 ? kDefaultCacheBytes : max_cache_bytes;
    cap = cap < optin - 2048 ? cap : optin - 2048;  // room for the static reduction buffer
    const int64_t want = (static_cast<int64_t>(p.V) * static_cast<int64_t>(sizeof(T)) + 15) / 16;
    const int64_t vecs = want < cap / 16 ? want : (cap > 0 ? cap / 16 : 0);
    p.cache_vecs = static_cast<int>(vecs);
    smem = static_cast<int>(vecs * 16);
  }
  if (p.V <= 16384) return launch<T, MODE, 256, 1>(p, smem, stream);
  return launch<T, MODE, 512, 1>(p, smem, stream);
}

template <typename T>
Params<T> make_params(const RowsIn& in, const int64_t* target, double eps) {
  using A = typename Acc<T>::type;
  Params<T> p{};
  p.in = static_cast<const T*>(in.data);
  p.rows = in.B * in.T;
  p.T_ = in.T > 0 ? in.T : 1;
  p.in_sb = in.sb;
  p.in_st = in.st;
  p.V = static_cast<int>(in.V);
  p.target = target;
  p.eps = static_cast<A>(eps);
  return p;
}

template <typename T>
cudaError_t forward_t(const RowsIn& in, const int64_t* target, void* nll, void* lse, double eps, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  Params<T> p = make_params<T>(in, target, eps);
  p.nll = static_cast<A*>(nll);
  p.lse_out = static_cast<A*>(lse);
  return dispatch<T, kFwd>(p, 0, stream);
}

template <typename T>
cudaError_t backward_t(const RowsIn& in, const int64_t* target, const void* lse, const void* gn, const void* gl,
                       const RowsOut& out, double eps, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  Params<T> p = make_params<T>(in, target, eps);
  p.lse_in = static_cast<const A*>(lse);
  p.g_nll = static_cast<const A*>(gn);
  p.g_lse = static_cast<const A*>(gl);
  p.out = static_cast<T*>(out.data);
  p.out_sb = out.sb;
  p.out_st = out.st;
  return dispatch<T, kBwd>(p, 0, stream);
}

template <typename T>
cudaError_t fwdbwd_t(const RowsIn& in, const int64_t* target, const void* rs, void* nll, const RowsOut& out,
                     double eps, int64_t cache, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  Params<T> p = make_params<T>(in, target, eps);
  p.row_scale = static_cast<const A*>(rs);
  p.nll = static_cast<A*>(nll);
  p.out = static_cast<T*>(out.data);
  p.out_sb = out.sb;
  p.out_st = out.st;
  return dispatch<T, kFwdBwd>(p, cache, stream);
}

template <typename T>
cudaError_t scale_t(const RowsOut& x, int64_t B, int64_t T_, int64_t V, const float* scale, cudaStream_t stream) {
  const int64_t n = B * T_ * V;
  if (n == 0) return cudaSuccess;
  T* data = static_cast<T*>(x.data);
  if ((B == 1 || x.sb == T_ * V) && (T_ == 1 || x.st == V)) {  // contiguous
    int64_t blocks = (n / Vec<T>::N + 255) / 256 + 1;
    blocks = blocks < 8192 ? blocks : 8192;
    scale_flat_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(data, n, scale);
  } else {
    const int64_t rows = B * T_;
    const unsigned blocks = static_cast<unsigned>(rows < 65535 ? rows : 65535);
    scale_rows_kernel<T><<<blocks, 256, 0, stream>>>(data, rows, T_, static_cast<int>(V), x.sb, x.st, scale);
  }
  return cudaSuccess;
}

}  // namespace

#define KPOD_DISPATCH(dtype, FN, ...)                                                   \
  switch (dtype) {                                                                      \
    case DType::kFloat32: return FN<float>(__VA_ARGS__);                                \
    case DType::kFloat16: return FN<__half>(__VA_ARGS__);                               \
    case DType::kBFloat16: return FN<__nv_bfloat16>(__VA_ARGS__);                       \
    case DType::kFloat64: return FN<double>(__VA_ARGS__);                               \
  }                                                                                     \
  return cudaErrorInvalidValue;

cudaError_t kce_forward(DType dtype, RowsIn in, const int64_t* target, void* nll, void* lse, double eps,
                        cudaStream_t stream) {
  KPOD_DISPATCH(dtype, forward_t, in, target, nll, lse, eps, stream)
}

cudaError_t kce_backward(DType dtype, RowsIn in, const int64_t* target, const void* lse, const void* grad_nll,
                         const void* grad_lse, RowsOut out, double eps, cudaStream_t stream) {
  KPOD_DISPATCH(dtype, backward_t, in, target, lse, grad_nll, grad_lse, out, eps, stream)
}

cudaError_t kce_forward_backward(DType dtype, RowsIn in, const int64_t* target, const void* row_scale, void* nll,
                                 RowsOut out, double eps, int64_t max_row_cache_bytes, cudaStream_t stream) {
  KPOD_DISPATCH(dtype, fwdbwd_t, in, target, row_scale, nll, out, eps, max_row_cache_bytes, stream)
}

cudaError_t scale_inplace(DType dtype, RowsOut x, int64_t B, int64_t T, int64_t V, const float* scale,
                          cudaStream_t stream) {
  KPOD_DISPATCH(dtype, scale_t, x, B, T, V, scale, stream)
}

}  // namespace cuda
}  // namespace kpod
