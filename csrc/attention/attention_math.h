// The per-element math of the attention family, shared verbatim by the CPU and CUDA kernels.
//
// Scores live in log2 units: s2 = (q . k) * scale * log2(e) + bias * log2(e), so the
// softmax uses exp2 (one instruction on the GPU) and the LSE is converted back to natural
// log only when stored. A = float for float32/float16/bfloat16 inputs, double for float64.
//
// Masking: a key that does not take part (bool mask false, causal j > i, outside a varlen
// sequence) gets the finite score kMaskedScore. Any score <= kMaskedScore (including a float
// bias of -inf or torch.finfo.min) is "masked" and contributes p = 0 explicitly, so
// max()/subtraction never meet inf - inf. The running max starts at kMaskedScore. A row with
// no key to attend to ends with l == 0: its output is 0 and its LSE is -inf, never NaN. In
// backward such a row has every score masked, so p = 0 and it contributes nothing.
#pragma once
#include <cmath>

#include "common/pfa.h"

namespace pfa::attention {

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;
// Finite, far below any real logit (log2 units), far above -FLT_MAX so differences stay finite.
constexpr float kMaskedScore = -1.0e30f;

template <class A>
PFA_HD A masked_score() {
  return A(kMaskedScore);
}

// s2 = qk * (scale * log2 e) + bias * log2 e   (scale_log2 = scale * log2 e, bias = 0 when absent)
template <class A>
PFA_HD A score_log2(A qk, A scale_log2, A bias) {
  return qk * scale_log2 + bias * A(kLog2e);
}

// Top-left causal alignment (torch's is_causal): query i sees key j iff j <= i.
PFA_HD bool causal_visible(int64_t i, int64_t j) { return j <= i; }

struct Exp2 {
  template <class A>
  PFA_HD A operator()(A x) const {
    return exp2(x);
  }
};

// p = exp2(s2 - m) for a key that takes part, exactly 0 for a masked one. The same
// function serves forward (m = running max) and backward (m = LSE in log2 units).
// E lets a device pass its fastest exp2 (the CPU's vectorizable polynomial, ex2.approx).
template <class A, class E = Exp2>
PFA_HD A masked_exp2(A s2, A m, E e = E()) {
  return s2 <= masked_score<A>() ? A(0) : e(s2 - m);
}

// Online softmax, per row, one key tile at a time:
//   m_new = max(m, rowmax(S)); alpha = exp2(m - m_new); l = l * alpha + rowsum(P); acc = acc * alpha + P V
// with P = masked_exp2(S, m_new). Start: m = kMaskedScore, l = 0, acc = 0.
//
// Lazy rescale: m only moves when rowmax(S) exceeds it by more than kRescaleSlack (log2
// units). Below that, P = exp2(S - m) <= 2^kRescaleSlack stays far from overflow, alpha is
// exactly 1 and the accumulator is left alone (the CUDA forward skips the rescale for the
// whole warp then). The result does not depend on which m the row ends with: out = acc / l
// and lse = m + log2 l are the same for any m that keeps P finite, and a stale (lower) m
// only makes P larger, never subnormal.
constexpr float kRescaleSlack = 8.f;
template <class A>
struct SoftmaxState {
  A m, l;
};

template <class A>
PFA_HD SoftmaxState<A> softmax_init() {
  return {masked_score<A>(), A(0)};
}

template <class A>
PFA_HD A softmax_new_max(const SoftmaxState<A>& st, A tile_max) {
  return tile_max > st.m + A(kRescaleSlack) ? tile_max : st.m;
}

// Moves the state to m_new (from softmax_new_max): l *= alpha. Returns alpha = exp2(m - m_new),
// the factor that rescales the output accumulator (exactly 1 when m stays). The caller then
// adds rowsum(P), computed against m_new, to l (softmax_update, or summed in place).
template <class A>
PFA_HD A softmax_rescale(SoftmaxState<A>& st, A m_new) {
  const A alpha = exp2(st.m - m_new);
  st.m = m_new;
  st.l *= alpha;
  return alpha;
}

// softmax_rescale, then l += rowsum(P) = tile_sum.
template <class A>
PFA_HD A softmax_update(SoftmaxState<A>& st, A m_new, A tile_sum) {
  const A alpha = softmax_rescale(st, m_new);
  st.l += tile_sum;
  return alpha;
}

// Final output scale: out = acc / l, or 0 for a row that saw no key.
template <class A>
PFA_HD A softmax_out_scale(const SoftmaxState<A>& st) {
  return st.l > A(0) ? A(1) / st.l : A(0);
}

// LSE in natural log: (m + log2 l) * ln 2, or -inf for a row that saw no key.
template <class A>
PFA_HD A softmax_lse(const SoftmaxState<A>& st) {
  return st.l > A(0) ? (st.m + log2(st.l)) * A(kLn2) : A(-INFINITY);
}

// Backward recomputes p = masked_exp2(s2, lse2) with lse2 = lse * log2 e; for a row with
// lse = -inf every score is masked, so lse2 = -inf is never subtracted from.
template <class A>
PFA_HD A lse_log2(A lse) {
  return lse * A(kLog2e);
}

// Softmax backward per element with D = rowsum(dO * O) (= rowsum(P * dP)):
//   dS = P * (dP - D)   where dP = dO . v, and dS is the gradient of the logit
//   scale * q.k + bias. Then dQ += scale * dS K, dK += scale * dS^T Q, dV += P^T dO,
//   dBias = dS.
template <class A>
PFA_HD A softmax_grad(A p, A dp, A delta) {
  return p * (dp - delta);
}

}  // namespace pfa::attention
