// The CPU micro-GEMM that the convolution and attention families reduce their tile work to:
//   C[m][n] {=, +=} sum_{s < ntaps} sum_{k < K} a_s[m*am + k*ak] * b_s[k*bk + n]
// a register block of C (6 rows x 4 vectors, or 8 x 3, 12 x 2, 24 x 1 for the last columns)
// stays in GCC vector registers; each a element is broadcast into the FMAs. The vectors are
// 64 bytes: AVX-512 in the x86-64-v4 clone of the caller (PFA_CPU_CLONES), pairs of AVX2 or
// SSE registers in the others. Call gemm_body from inside such a cloned function.
#pragma once
#include <cstdint>
#include <cstring>
#include <utility>

namespace pfa::cpu {

template <class A> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  static constexpr int L = 8;
};
template <class A> constexpr int kLanes = Vec<A>::L;

template <class A>
struct Gemm {
  int64_t M = 0, NP = 0, K = 0;  // NP: a multiple of kLanes<A>
  int ntaps = 1;
  const A* const* a = nullptr;   // per tap
  const A* const* b = nullptr;
  int64_t am = 0, ak = 0, bk = 0;
  A* c = nullptr;
  int64_t cm = 0;
  bool accumulate = false;
};

// One MR x (NV vectors) tile of C: acc = sum_s sum_k a_s[m*am + k*ak] * b_s[k*bk + n],
// kept in registers.
template <class A, int MR, int NV>
__attribute__((always_inline)) inline void micro_tile(const Gemm<A>& g, int64_t m0, int64_t n0) {
  using V = typename Vec<A>::type;
  constexpr int L = kLanes<A>;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = V{};
  for (int s = 0; s < g.ntaps; ++s) {
    const A* ap = g.a[s] + m0 * g.am;
    const A* bp = g.b[s] + n0;
    for (int64_t k = 0; k < g.K; ++k) {
      V bv[NV];
      for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], bp + k * g.bk + j * L, sizeof(V));
      const A* ak = ap + k * g.ak;
      for (int i = 0; i < MR; ++i) {
        const A av = ak[i * g.am];  // broadcast into the FMA
        for (int j = 0; j < NV; ++j) acc[i][j] += bv[j] * av;
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    A* cp = g.c + (m0 + i) * g.cm + n0;
    for (int j = 0; j < NV; ++j) {
      V v = acc[i][j];
      if (g.accumulate) {
        V old;
        std::memcpy(&old, cp + j * L, sizeof(V));
        v += old;
      }
      std::memcpy(cp + j * L, &v, sizeof(V));
    }
  }
}

// The r < MR rows left after the full tiles: one tile of exactly r rows (no row past M is
// read or computed).
template <class A, int NV, int... R>
__attribute__((always_inline)) inline void micro_rest(const Gemm<A>& g, int64_t m0, int64_t n0, int r,
                                                      std::integer_sequence<int, R...>) {
  ((r == R + 1 ? micro_tile<A, R + 1, NV>(g, m0, n0) : void()), ...);
}

template <class A, int MR, int NV>
__attribute__((always_inline)) inline void micro_column(const Gemm<A>& g, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + MR <= g.M; m0 += MR) micro_tile<A, MR, NV>(g, m0, n0);
  micro_rest<A, NV>(g, m0, n0, int(g.M - m0), std::make_integer_sequence<int, MR - 1>{});
}

// Column blocks of 4 vectors (6 rows), the rest with 3/2/1 vectors (8/12/24 rows): at
// most 24 accumulators plus the B vectors, within the 32 AVX-512 registers.
template <class A>
__attribute__((always_inline)) inline void gemm_body(const Gemm<A>& g) {
  constexpr int L = kLanes<A>;
  int64_t n0 = 0;
  for (; n0 + 4 * L <= g.NP; n0 += 4 * L) micro_column<A, 6, 4>(g, n0);
  switch ((g.NP - n0) / L) {
    case 3: micro_column<A, 8, 3>(g, n0); break;
    case 2: micro_column<A, 12, 2>(g, n0); break;
    case 1: micro_column<A, 24, 1>(g, n0); break;
    default: break;
  }
}

}  // namespace pfa::cpu
