// Row kernels of the keypoint cross-entropy on the CPU (vectorised with at::vec, fp32 accumulation).
//
// One row = the V logits of one position. Every function works on one row so the glue can
// parallelise over rows (at::parallel_for). Passes over a row of V elements:
//   row_forward          max(+Σz) pass, Σexp pass                      -> 1 exp per element
//   row_forward_backward max(+Σz) pass, exp pass storing e=exp(z-m) in
//                        an fp32 buffer (L1/L2-resident), scale pass
//                        writing the gradient                          -> 1 exp per element
//   row_forward_backward_blocked_store  (rows whose logits + fp32 buffer exceed the L2 budget;
//                        fp32/fp64 into a fresh gradient) per block: max(+Σz), then e=exp(z-m_b)
//                        stored into the gradient while the block is cached, merged online;
//                        then one pass rescaling the stored e            -> 1 exp per element
//   row_forward_backward_blocked  (the same rows in bf16/fp16 or in place) per block: max(+Σz)
//                        then Σexp while the block is cached, merged online; then one pass
//                        exp(z-lse) scaled, written                    -> 2 exp per element
//   row_backward         one pass: exp(z-lse) scaled, written          -> 1 exp per element
// Short rows touch memory in their first pass only; long rows are read from memory at most twice.
// Every function may write `out` over `z` (in place): the target logit is read before any write.
//
// Included only by sources compiled once per instruction set (csrc/cpu/per_capability/, with
// -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 as ATen's own kernels): everything here lives in the namespace
// kpod::cpu::CPU_CAPABILITY, so the copies built for different instruction sets never share a symbol.
#pragma once

#ifndef CPU_CAPABILITY
#error "kce_cpu_kernel.h is compiled once per instruction set: define CPU_CAPABILITY (setup.py does)"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace kpod {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename scalar_t>
constexpr bool kReduced = std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>;

// Elements per vector step and loading/storing them as accumulation-type vectors.
template <typename scalar_t>
struct Lanes {
  using acc_t = typename Acc<scalar_t>::type;
  using AVec = Vectorized<acc_t>;
  static constexpr int64_t kStep = kReduced<scalar_t> ? 2 * AVec::size() : AVec::size();

  static inline void load(const scalar_t* p, AVec& a, AVec& b) {
    if constexpr (kReduced<scalar_t>) {
      at::vec::load_to_float<scalar_t>(p, a, b);
    } else {
      a = AVec::loadu(p);
      b = AVec(acc_t(0));
    }
  }
  static inline void store(scalar_t* p, const AVec& a, const AVec& b) {
    if constexpr (kReduced<scalar_t>) {
      at::vec::convert_from_float<scalar_t>(a, b).store(p);
    } else {
      a.store(p);
    }
  }
};

template <typename acc_t>
inline Vectorized<acc_t> fast_exp(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return x.exp_u20();  // ~20 ulp; callers take the exact scalar path for non-finite rows
  } else {
    return x.exp();
  }
}

struct RowStats {
  double max;
  double sum_z;  // Σ z (only when label smoothing is on)
};

// Pass 1: the row's maximum (NaN-propagating) and, for label smoothing, Σ z.
template <typename scalar_t>
inline RowStats row_max_sum(const scalar_t* z, int64_t V, bool need_sum) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using AVec = typename L::AVec;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  AVec vmax(neg_inf), vsum(acc_t(0));
  int64_t i = 0;
  for (; i + L::kStep <= V; i += L::kStep) {
    AVec a, b;
    L::load(z + i, a, b);
    vmax = at::vec::maximum(vmax, a);
    if (need_sum) vsum = vsum + a;
    if constexpr (kReduced<scalar_t>) {
      vmax = at::vec::maximum(vmax, b);
      if (need_sum) vsum = vsum + b;
    }
  }
  acc_t m = at::vec::vec_reduce_all<acc_t>([](AVec& x, AVec& y) { return at::vec::maximum(x, y); }, vmax);
  acc_t s = need_sum ? at::vec::vec_reduce_all<acc_t>([](AVec& x, AVec& y) { return x + y; }, vsum) : acc_t(0);
  for (; i < V; ++i) {
    const acc_t x = static_cast<acc_t>(z[i]);
    m = (std::isnan(x) || x > m) ? x : m;
    s += x;
  }
  return {static_cast<double>(m), static_cast<double>(s)};
}

// Σ exp(z - m) over a row; if `store` is non-null, e = exp(z - m) is written there (acc_t).
template <typename scalar_t>
inline typename Acc<scalar_t>::type row_sum_exp(const scalar_t* z, int64_t V, typename Acc<scalar_t>::type m,
                                                typename Acc<scalar_t>::type* store) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using AVec = typename L::AVec;
  const AVec vm(m);
  AVec vs(acc_t(0));
  int64_t i = 0;
  for (; i + L::kStep <= V; i += L::kStep) {
    AVec a, b;
    L::load(z + i, a, b);
    a = fast_exp<acc_t>(a - vm);
    vs = vs + a;
    if (store) a.store(store + i);
    if constexpr (kReduced<scalar_t>) {
      b = fast_exp<acc_t>(b - vm);
      vs = vs + b;
      if (store) b.store(store + i + AVec::size());
    }
  }
  acc_t s = at::vec::vec_reduce_all<acc_t>([](AVec& x, AVec& y) { return x + y; }, vs);
  for (; i < V; ++i) {
    const acc_t e = std::exp(static_cast<acc_t>(z[i]) - m);
    s += e;
    if (store) store[i] = e;
  }
  return s;
}

// Exact scalar path for rows whose maximum is not finite (inf/NaN): matches log_softmax's IEEE
// behaviour, which the fast vector exp (it clamps its input) would not.
template <typename scalar_t>
inline double row_lse_exact(const scalar_t* z, int64_t V, double m) {
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(z[i]) - m);
  return m + std::log(s);
}

// Loss and log-sum-exp of a row (target y in [0, V)).
template <typename scalar_t>
inline void row_forward(const scalar_t* z, int64_t V, int64_t y, double eps, typename Acc<scalar_t>::type* nll,
                        typename Acc<scalar_t>::type* lse) {
  using acc_t = typename Acc<scalar_t>::type;
  const RowStats st = row_max_sum(z, V, eps != 0.0);
  double l;
  if (std::isfinite(st.max)) {
    const acc_t m = static_cast<acc_t>(st.max);
    l = static_cast<double>(m) + std::log(static_cast<double>(row_sum_exp<scalar_t>(z, V, m, nullptr)));
  } else {
    l = row_lse_exact(z, V, st.max);
  }
  const double zy = static_cast<double>(z[y]);
  double loss = l - (1.0 - eps) * zy;
  if (eps != 0.0) loss -= eps / static_cast<double>(V) * st.sum_z;
  *nll = static_cast<acc_t>(loss);
  *lse = static_cast<acc_t>(l);
}

template <typename scalar_t>
inline void row_zero(scalar_t* out, int64_t V) {
  std::memset(static_cast<void*>(out), 0, sizeof(scalar_t) * V);
}

// grad = a * p - c  (p = e * inv_sum) over a row, e read from `e` (acc_t), written as scalar_t;
// then the target element is overwritten with a value computed in acc_t before rounding.
template <typename scalar_t>
inline void row_write_grad_from_e(const typename Acc<scalar_t>::type* e, scalar_t* out, int64_t V,
                                  typename Acc<scalar_t>::type a, typename Acc<scalar_t>::type c, int64_t y,
                                  typename Acc<scalar_t>::type grad_y) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using AVec = typename L::AVec;
  const AVec va(a), vc(c);
  int64_t i = 0;
  for (; i + L::kStep <= V; i += L::kStep) {
    AVec g0 = AVec::loadu(e + i) * va - vc;
    AVec g1 = kReduced<scalar_t> ? AVec::loadu(e + i + AVec::size()) * va - vc : AVec(acc_t(0));
    L::store(out + i, g0, g1);
  }
  for (; i < V; ++i) out[i] = static_cast<scalar_t>(e[i] * a - c);
  out[y] = static_cast<scalar_t>(grad_y);
}

// One row of kce_forward_backward: loss, lse and grad = s * (softmax - (1-eps) onehot - eps/V),
// written to `out` (which may alias `z` for the in-place mode). `buf` is V acc_t of scratch.
template <typename scalar_t>
inline void row_forward_backward(const scalar_t* z, scalar_t* out, int64_t V, int64_t y, double eps, double s,
                                 typename Acc<scalar_t>::type* buf, typename Acc<scalar_t>::type* nll) {
  using acc_t = typename Acc<scalar_t>::type;
  const RowStats st = row_max_sum(z, V, eps != 0.0);
  const double zy = static_cast<double>(z[y]);
  const double smooth = eps != 0.0 ? eps / static_cast<double>(V) * st.sum_z : 0.0;
  if (!std::isfinite(st.max)) {
    // exact path: inf/NaN propagate into loss and gradient as in F.cross_entropy
    const double l = row_lse_exact(z, V, st.max);
    *nll = static_cast<acc_t>(l - (1.0 - eps) * zy - smooth);
    for (int64_t i = 0; i < V; ++i) {
      const double p = std::exp(static_cast<double>(z[i]) - l);
      const double t = (i == y ? (1.0 - eps) : 0.0) + eps / static_cast<double>(V);
      out[i] = static_cast<scalar_t>(s * (p - t));
    }
    return;
  }
  const acc_t m = static_cast<acc_t>(st.max);
  const acc_t sum = row_sum_exp<scalar_t>(z, V, m, buf);
  const double l = static_cast<double>(m) + std::log(static_cast<double>(sum));
  *nll = static_cast<acc_t>(l - (1.0 - eps) * zy - smooth);
  const acc_t inv = acc_t(1) / sum;
  const double ey = static_cast<double>(buf[y]) * static_cast<double>(inv);
  const double grad_y = s * (ey - (1.0 - eps) - eps / static_cast<double>(V));
  row_write_grad_from_e<scalar_t>(buf, out, V, static_cast<acc_t>(s * inv), static_cast<acc_t>(s * eps / V), y,
                                  static_cast<acc_t>(grad_y));
}

// One row of kce_backward: grad = (g_nll + g_lse) * exp(z - lse) - g_nll * ((1-eps) onehot + eps/V).
// zy = z[y], read by the caller before `out` (which may alias z) is written.
template <typename scalar_t>
inline void row_backward(const scalar_t* z, scalar_t* out, int64_t V, int64_t y, double eps,
                         typename Acc<scalar_t>::type lse, typename Acc<scalar_t>::type g_nll,
                         typename Acc<scalar_t>::type g_lse, double zy) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using AVec = typename L::AVec;
  const acc_t a = g_nll + g_lse;
  const acc_t c = static_cast<acc_t>(static_cast<double>(g_nll) * eps / static_cast<double>(V));
  if (!std::isfinite(static_cast<double>(lse))) {
    for (int64_t i = 0; i < V; ++i) {
      const double p = std::exp(static_cast<double>(z[i]) - static_cast<double>(lse));
      out[i] = static_cast<scalar_t>(static_cast<double>(a) * p - static_cast<double>(c) -
                                     (i == y ? static_cast<double>(g_nll) * (1.0 - eps) : 0.0));
    }
    return;
  }
  const AVec vl(lse), va(a), vc(c);
  int64_t i = 0;
  for (; i + L::kStep <= V; i += L::kStep) {
    AVec x0, x1;
    L::load(z + i, x0, x1);
    const AVec g0 = fast_exp<acc_t>(x0 - vl) * va - vc;
    const AVec g1 = kReduced<scalar_t> ? fast_exp<acc_t>(x1 - vl) * va - vc : AVec(acc_t(0));
    L::store(out + i, g0, g1);
  }
  for (; i < V; ++i) out[i] = static_cast<scalar_t>(std::exp(static_cast<acc_t>(z[i]) - lse) * a - c);
  const double py = std::exp(zy - static_cast<double>(lse));
  out[y] = static_cast<scalar_t>(static_cast<double>(a) * py - static_cast<double>(c) -
                                 static_cast<double>(g_nll) * (1.0 - eps));
}


// kce_forward_backward for a row too long to stay in L2 between sweeps: the softmax statistics are
// gathered block by block (each block's max, then its Σexp while the block is still cached, merged
// online), then one sweep writes the gradient. The logits are read from memory twice, the
// gradient written once. `out` may alias `z`.
template <typename scalar_t>
inline void row_forward_backward_blocked(const scalar_t* z, scalar_t* out, int64_t V, int64_t y, double eps,
                                         double s, int64_t block, typename Acc<scalar_t>::type* nll) {
  using acc_t = typename Acc<scalar_t>::type;
  const double zy = static_cast<double>(z[y]);
  double m = -std::numeric_limits<double>::infinity(), sum = 0.0, sum_z = 0.0;
  for (int64_t b0 = 0; b0 < V; b0 += block) {
    const int64_t n = std::min(block, V - b0);
    const RowStats st = row_max_sum(z + b0, n, eps != 0.0);
    if (!std::isfinite(st.max)) {  // inf/NaN: the exact path, as for short rows (nothing written yet)
      const double l = row_lse_exact(z, V, row_max_sum(z, V, false).max);
      const double smooth = eps != 0.0 ? eps / static_cast<double>(V) * row_max_sum(z, V, true).sum_z : 0.0;
      *nll = static_cast<acc_t>(l - (1.0 - eps) * zy - smooth);
      for (int64_t i = 0; i < V; ++i) {
        const double p = std::exp(static_cast<double>(z[i]) - l);
        const double t = (i == y ? (1.0 - eps) : 0.0) + eps / static_cast<double>(V);
        out[i] = static_cast<scalar_t>(s * (p - t));
      }
      return;
    }
    const acc_t mb = static_cast<acc_t>(st.max);
    const double sb = static_cast<double>(row_sum_exp<scalar_t>(z + b0, n, mb, nullptr));
    const double mbd = static_cast<double>(mb);
    if (mbd > m) {
      sum = sum * std::exp(m - mbd) + sb;
      m = mbd;
    } else {
      sum += sb * std::exp(mbd - m);
    }
    sum_z += st.sum_z;
  }
  const double l = m + std::log(sum);
  const double smooth = eps != 0.0 ? eps / static_cast<double>(V) * sum_z : 0.0;
  *nll = static_cast<acc_t>(l - (1.0 - eps) * zy - smooth);
  row_backward<scalar_t>(z, out, V, y, eps, static_cast<acc_t>(l), static_cast<acc_t>(s), acc_t(0), zy);
}

// fp32/fp64 variant of the above with one exp per element: each block's e = exp(z - m_b) is
// stored into `out` while the block is cached, and the second sweep rescales it by
// s·exp(m_b - lse) in place (logits read once, gradient written twice and read once). `out` must
// not alias `z` (the functional op); `block_max` has room for one double per block.
template <typename scalar_t>
inline void row_forward_backward_blocked_store(const scalar_t* z, scalar_t* out, int64_t V, int64_t y, double eps,
                                               double s, int64_t block, scalar_t* nll, double* block_max) {
  static_assert(std::is_same_v<scalar_t, typename Acc<scalar_t>::type>, "fp32/fp64 only: e is stored unrounded");
  using AVec = Vectorized<scalar_t>;
  const double zy = static_cast<double>(z[y]);
  double m = -std::numeric_limits<double>::infinity(), sum = 0.0, sum_z = 0.0;
  const int64_t nblocks = (V + block - 1) / block;
  for (int64_t k = 0; k < nblocks; ++k) {
    const int64_t b0 = k * block, n = std::min(block, V - b0);
    const RowStats st = row_max_sum(z + b0, n, eps != 0.0);
    if (!std::isfinite(st.max)) {  // inf/NaN: the exact path (z is intact: out must not alias it)
      row_forward_backward_blocked<scalar_t>(z, out, V, y, eps, s, block, nll);
      return;
    }
    const scalar_t mb = static_cast<scalar_t>(st.max);
    const double sb = static_cast<double>(row_sum_exp<scalar_t>(z + b0, n, mb, out + b0));
    block_max[k] = static_cast<double>(mb);
    if (block_max[k] > m) {
      sum = sum * std::exp(m - block_max[k]) + sb;
      m = block_max[k];
    } else {
      sum += sb * std::exp(block_max[k] - m);
    }
    sum_z += st.sum_z;
  }
  const double l = m + std::log(sum);
  const double smooth = eps != 0.0 ? eps / static_cast<double>(V) * sum_z : 0.0;
  *nll = static_cast<scalar_t>(l - (1.0 - eps) * zy - smooth);
  const double c = s * eps / static_cast<double>(V);
  const AVec vc(static_cast<scalar_t>(c));
  for (int64_t k = 0; k < nblocks; ++k) {
    const int64_t b0 = k * block, n = std::min(block, V - b0);
    const AVec va(static_cast<scalar_t>(s * std::exp(block_max[k] - l)));
    scalar_t* o = out + b0;
    int64_t i = 0;
    for (; i + AVec::size() <= n; i += AVec::size()) (AVec::loadu(o + i) * va - vc).store(o + i);
    for (; i < n; ++i) o[i] = static_cast<scalar_t>(o[i] * static_cast<scalar_t>(s * std::exp(block_max[k] - l)) - c);
  }
  out[y] = static_cast<scalar_t>(s * (std::exp(zy - l) - (1.0 - eps)) - c);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace kpod
