// CUDA attention, FlashAttention-2 structure.
//
// fp16/bf16 (tensor cores, sm_80+): a block owns a 64-row tile (4 warps x 16 rows); K/V (or
// Q/dO in the dK/dV pass) stream through double-buffered cp.async tiles; scores, softmax
// and the P / dS operands stay in registers (attention_mma.cuh).
//   forward: S = Q K^T -> online softmax -> O += P V; saves O and the LSE.
//   backward: delta = rowsum(dO * O); a key-block pass (rows = keys; 8 warps for 128-key
//     blocks at head dim 128) recomputes P^T = exp2(S^T - LSE) and accumulates
//     dV += P^T dO, dK += dS^T Q; a separate query-block pass (rows = queries) accumulates
//     dQ += dS K and writes dMask = dS, with no atomics (bitwise deterministic). Or one pass:
//     the key pass also adds dQ with float32 atomics and writes dMask (the caller's choice,
//     through dq_accum). GQA groups are summed inside the key-block pass in head order when
//     dk/dv have heads_kv heads.
// float32 (CUDA cores): the same passes with 16-row blocks (8 threads per row) and FFMA.
//
// Per-element math (scores, masking, softmax state, dS) comes from attention_math.h, the
// header the CPU kernels use.
#include <climits>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "attention/attention.h"
#include "attention/attention_math.h"
#include "attention/attention_mma.cuh"
#include "common/cuda_utils.cuh"
#include "common/wgmma.cuh"

namespace pfa::attention {
namespace {

constexpr float kLog2eF = float(kLog2e);
constexpr int kThreads = 128;

// One sequence of the batch: first token of q and k, and the lengths.
struct Seq {
  int64_t q_tok, k_tok;
  int lq, lk;
};

__device__ __forceinline__ Seq sequence_of(const ForwardParams& p, int b) {
  if (p.cu_seqlens_q) {
    const int q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    return {q0, k0, p.cu_seqlens_q[b + 1] - q0, p.cu_seqlens_k[b + 1] - k0};
  }
  return {0, 0, p.len_q, p.len_k};
}

// Element offset of token `tok` of head h in batch b (varlen tokens are global).
template <class S>
__device__ __forceinline__ int64_t token_offset(const S& t, const ForwardParams& p, int b, int h,
                                                int64_t tok) {
  return (p.cu_seqlens_q ? 0 : int64_t(b) * t.stride_b) + int64_t(h) * t.stride_h + tok * t.stride_l;
}

// Index of row i of (b, h) in lse / delta: (B, Hq, Lq), or (Hq, total_q) for varlen.
__device__ __forceinline__ int64_t stat_index(const ForwardParams& p, const Seq& s, int b, int h,
                                              int i) {
  if (p.cu_seqlens_q) return int64_t(h) * p.cu_seqlens_q[p.batch] + s.q_tok + i;
  return (int64_t(b) * p.heads_q + h) * p.len_q + i;
}

// The log2-unit score of query i / key j (sequence-relative) from q.k: kMaskedScore when the
// pair is outside the sequence, above the causal diagonal or off in a bool mask; else
// q.k * scale * log2 e plus the float mask in log2 units.
template <class T>
__device__ __forceinline__ float score_at(const ForwardParams& p, float qk, float scale_log2, int b,
                                          int h, int i, int j, const Seq& s) {
  if (i >= s.lq || j >= s.lk || (p.causal && !causal_visible(i, j))) return masked_score<float>();
  float bias = 0.f;
  if (p.mask_kind != MaskKind::None) {
    const int64_t off = int64_t(b) * p.mask_stride_b + int64_t(h) * p.mask_stride_h +
                        int64_t(i) * p.mask_stride_q + int64_t(j) * p.mask_stride_k;
    if (p.mask_kind == MaskKind::Bool) {
      if (!static_cast<const uint8_t*>(p.mask)[off]) return masked_score<float>();
    } else {
      bias = to_f32(static_cast<const T*>(p.mask)[off]);
    }
  }
  return score_log2(qk, scale_log2, bias);
}

// Element offset of dMask(b, h, i, j) (keys contiguous).
__device__ __forceinline__ int64_t dmask_offset(const BackwardParams& bp, int b, int h, int i, int j) {
  return int64_t(b) * bp.dmask_stride_b + int64_t(h) * bp.dmask_stride_h + int64_t(i) * bp.dmask_stride_q + j;
}

// dMask(b, h, i, j) = dS: float32 when the caller asks (the broadcast sums round once), else T.
template <class T>
__device__ __forceinline__ void store_dmask(const BackwardParams& bp, int b, int h, int i, int j, float ds) {
  const int64_t off = dmask_offset(bp, b, h, i, j);
  if (bp.dmask_f32)
    static_cast<float*>(bp.dmask)[off] = ds;
  else
    static_cast<T*>(bp.dmask)[off] = from_f32<T>(ds);
}

// dMask(b, h, i, j) and (b, h, i, j + 1) for an even j: one 8- or 4-byte store when `pairs`
// (the rows start at even elements), else element stores; nothing past the sequence.
template <class T>
__device__ __forceinline__ void store_dmask_pair(const BackwardParams& bp, int b, int h, int i, int j, const Seq& s,
                                                 float ds0, float ds1, bool pairs) {
  if (i >= s.lq || j >= s.lk) return;
  if (pairs && j + 1 < s.lk) {
    const int64_t off = dmask_offset(bp, b, h, i, j);
    if (bp.dmask_f32)
      *reinterpret_cast<float2*>(static_cast<float*>(bp.dmask) + off) = make_float2(ds0, ds1);
    else
      *reinterpret_cast<uint32_t*>(static_cast<T*>(bp.dmask) + off) = pack2<T>(ds0, ds1);
    return;
  }
  store_dmask<T>(bp, b, h, i, j, ds0);
  if (j + 1 < s.lk) store_dmask<T>(bp, b, h, i, j + 1, ds1);
}

// Query blocks run last first: under causal masking the last rows see the most keys, so the
// longest blocks start first and the short ones fill the tail of the grid.
__device__ __forceinline__ int query_block() { return int(gridDim.x - 1 - blockIdx.x); }

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---------------------------------------------------------------------------------------
// Scores of a warp's fragment tile (tensor-core kernels). Element (mt, j, e) of a tile
// sc[MT][NJ][4] sits in row slot r = 2 mt + (e >> 1) (tile row 16 mt + g + 8 (e >> 1)) and
// column 8 j + 2 t + (e & 1), g = lane / 4, t = lane % 4. Turning q.k into log2-unit scores
// is branch-free per element; what varies per tile is decided once per tile:
//   interior tile: s2 = q.k * scale log2 e, nothing can be masked;
//   bounded tile:  s2 = masked unless lo[r] <= col < hi[r] (sequence ends, causal diagonal);
//   masked kernel: the bool/float mask is read from a shared-memory tile as well.

// A (queries x keys) tile of the mask in shared memory: element (q, k) at byte
// q * pitch + k * es (es = 1 for bool, sizeof(T) for a float mask). The pitch is the row plus
// 16 bytes, which keeps rows 16-byte aligned for cp.async and spreads the fragment rows of one
// 4-byte read over distinct banks.
template <int MK>
__host__ __device__ constexpr int mask_pitch() {
  return 2 * MK + 16;
}
template <int MQ, int MK>
__host__ __device__ constexpr int mask_tile_bytes() {
  return MQ * mask_pitch<MK>();
}

// The mask's bytes per element.
template <class T>
__host__ __device__ __forceinline__ int mask_elem_bytes(const ForwardParams& p) {
  return p.mask_kind == MaskKind::Bool ? 1 : int(sizeof(T));
}

// Loads mask rows [q0, q0 + MQ) x columns [k0, k0 + MK) of (b, h) into a mask tile. `vec`
// (host-checked: contiguous keys, 16-byte aligned rows) uses 16-byte cp.async (the caller
// commits and waits), else element copies. Entries outside the sequence are zero; the row
// ranges mask them.
template <class T, int MQ, int MK, int NT = kThreads>
__device__ __forceinline__ void load_mask_tile(unsigned char* s, const ForwardParams& p, int b, int h,
                                               const Seq& sq, int q0, int k0, bool vec) {
  constexpr int pitch = mask_pitch<MK>();
  const int es = mask_elem_bytes<T>(p), per_chunk = 16 / es, chunks = MK / per_chunk;
  const unsigned char* base = static_cast<const unsigned char*>(p.mask);
  for (int idx = threadIdx.x; idx < MQ * chunks; idx += NT) {
    const int r = idx / chunks, c = (idx % chunks) * per_chunk;
    const int qi = q0 + r, kj = k0 + c;
    const int n = qi < sq.lq ? min(per_chunk, max(0, sq.lk - kj)) : 0;
    const int64_t off = int64_t(b) * p.mask_stride_b + int64_t(h) * p.mask_stride_h +
                        int64_t(qi) * p.mask_stride_q + int64_t(kj) * p.mask_stride_k;
    unsigned char* dst = s + r * pitch + c * es;
    if (vec) {
      cp_async16(dst, n > 0 ? static_cast<const void*>(base + off * es) : p.mask, n * es);
    } else if (es == 1) {
      for (int e = 0; e < per_chunk; ++e) dst[e] = e < n ? base[off + e * p.mask_stride_k] : 0;
    } else {
      const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + off;
      for (int e = 0; e < per_chunk; ++e)
        reinterpret_cast<uint16_t*>(dst)[e] = e < n ? src[e * p.mask_stride_k] : uint16_t(0);
    }
  }
}

// Host: can load_mask_tile use 16-byte cp.async for this mask?
template <class T>
bool mask_rows_aligned(const ForwardParams& p) {
  const int64_t per_chunk = 16 / mask_elem_bytes<T>(p);
  return p.mask_kind != MaskKind::None && reinterpret_cast<uintptr_t>(p.mask) % 16 == 0 &&
         p.mask_stride_k == 1 && p.mask_stride_b % per_chunk == 0 && p.mask_stride_h % per_chunk == 0 &&
         p.mask_stride_q % per_chunk == 0;
}

// Keys [0, end) that query i (sequence-relative) sees: all of them, or j <= i under causal
// masking (causal_visible); none for a row past the end of the queries.
__device__ __forceinline__ int query_key_end(const ForwardParams& p, const Seq& s, int i) {
  return i >= s.lq ? 0 : p.causal ? min(s.lk, i + 1) : s.lk;
}

// Interior tile: s2 = q.k * scale log2 e.
template <int MT, int NJ>
__device__ __forceinline__ void scale_scores(float (&sc)[MT][NJ][4], float scale_log2) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[mt][j][e] *= scale_log2;
}

// Backward: P = exp2(s2 - lse2) in place, lse2 = lse2_at(mt, j, e) (the row's LSE in log2
// units). An interior tile (no mask, nothing out of bounds or above the diagonal) still holds
// q.k: one FFMA and the exp per score, since every pair takes part. Any other tile holds s2 from
// bound_scores, where a masked score gives exactly 0 (masked_exp2).
template <int MT, int NJ, class L>
__device__ __forceinline__ void backward_probabilities(float (&sc)[MT][NJ][4], bool interior, float scale_log2,
                                                       L lse2_at) {
  // p = p_of(score, lse2) elementwise; one branch per tile, none per score
  auto each = [&](auto p_of) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[mt][j][e] = p_of(sc[mt][j][e], lse2_at(mt, j, e));
  };
  if (interior)
    each([&](float qk, float lse2) { return mma::Exp2Approx{}(fmaf(qk, scale_log2, -lse2)); });
  else
    each([](float s2, float lse2) { return masked_exp2(s2, lse2, mma::Exp2Approx{}); });
}

// Bounded or masked tile: s2 = score_log2(q.k, bias) where lo[r] <= col0 + col < hi[r] and the
// mask lets the pair take part, else kMaskedScore. `mask` is the mask tile, `row0` the warp's
// first tile row (KEYS_ARE_ROWS: tile rows are keys and columns queries, so the mask tile is
// read transposed; MK = keys per mask-tile row). KIND: None, Bool or Float (bias).
template <class T, MaskKind KIND, bool KEYS_ARE_ROWS, int MK, int MT, int NJ>
__device__ __forceinline__ void bound_scores_of(float (&sc)[MT][NJ][4], float scale_log2, const int (&lo)[2 * MT],
                                                const int (&hi)[2 * MT], int col0, const unsigned char* mask,
                                                int row0) {
  constexpr int pitch = mask_pitch<MK>(), es = KIND == MaskKind::Bool ? 1 : int(sizeof(T));
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = 2 * mt + (e >> 1), c = 8 * j + 2 * t + (e & 1);
        float x = sc[mt][j][e] * scale_log2;
        if constexpr (KIND != MaskKind::None) {
          const int row = row0 + 16 * mt + g + 8 * (e >> 1);
          const unsigned char* m = KEYS_ARE_ROWS ? mask + c * pitch + row * es : mask + row * pitch + c * es;
          if constexpr (KIND == MaskKind::Bool)
            x = *m ? x : masked_score<float>();
          else
            x = score_log2(sc[mt][j][e], scale_log2, to_f32(*reinterpret_cast<const T*>(m)));
        }
        const int col = col0 + c;
        sc[mt][j][e] = (col >= lo[r] && col < hi[r]) ? x : masked_score<float>();
      }
}

template <class T, bool MASKED, bool KEYS_ARE_ROWS, int MK, int MT, int NJ>
__device__ __forceinline__ void bound_scores(float (&sc)[MT][NJ][4], float scale_log2, const int (&lo)[2 * MT],
                                             const int (&hi)[2 * MT], int col0, MaskKind kind,
                                             const unsigned char* mask, int row0) {
  if (!MASKED)
    bound_scores_of<T, MaskKind::None, KEYS_ARE_ROWS, MK>(sc, scale_log2, lo, hi, col0, mask, row0);
  else if (kind == MaskKind::Bool)
    bound_scores_of<T, MaskKind::Bool, KEYS_ARE_ROWS, MK>(sc, scale_log2, lo, hi, col0, mask, row0);
  else
    bound_scores_of<T, MaskKind::Float, KEYS_ARE_ROWS, MK>(sc, scale_log2, lo, hi, col0, mask, row0);
}

// ---------------------------------------------------------------------------------------
// fp16 / bf16 tensor-core kernels. D: padded head dim (32, 64, 96, 128, 256); columns past
// head_dim are zero-filled on load and never stored. `aligned`: every operand's base and
// row strides are 16-byte aligned (cp.async and vector stores), otherwise scalar copies.

// Rows [kb BK, kb BK + BK) of K and / or V into shared tiles (the caller commits the cp.async
// group), each operand a KeyRows: its tile, its (batch, kv head) base and strides. Whole tiles
// without per-chunk bookkeeping (load_whole_tile) when `whole_rows` (aligned, head_dim == D; the
// masked kernels pass false: no registers to spare) and the tile lies inside the keys, else
// load_tile's bounds and zero fill; one test for all operands.
template <class T>
struct KeyRows {
  T* dst;
  const T* g;
  const Strided& t;
};
template <class T, int BK, int D, int NT = kThreads, class Layout = mma::PaddedRows<D>, class... Ops>
__device__ __forceinline__ void load_key_rows(const ForwardParams& p, const Seq& s, int kb, bool aligned,
                                              bool whole_rows, const Ops&... ops) {
  const int64_t r0 = int64_t(kb) * BK;
  if (whole_rows && r0 + BK <= s.lk) {
    (mma::load_whole_tile<T, BK, D, NT, Layout>(ops.dst, ops.g + r0 * ops.t.stride_l, ops.t.stride_l), ...);
  } else {
    (mma::load_tile<T, BK, D, NT, Layout>(ops.dst, ops.g + r0 * ops.t.stride_l, ops.t.stride_l, s.lk - kb * BK,
                                          p.head_dim, aligned, ops.t.ptr),
     ...);
  }
}
template <class T, int BK, int D>
__device__ __forceinline__ void load_key_tiles(T* kd, T* vd, const T* kg, const T* vg, const ForwardParams& p,
                                               const Seq& s, int kb, bool aligned, bool whole_rows) {
  load_key_rows<T, BK, D>(p, s, kb, aligned, whole_rows, KeyRows<T>{kd, kg, p.k}, KeyRows<T>{vd, vg, p.v});
}

// One key tile of the forward's online softmax for a warp's MT m-tiles: sc holds the tile's
// q.k (S = Q K^T, BK keys from k0), o the output accumulators; rows wrow .. wrow + 16 MT - 1,
// this thread's row + 8 r (r < 2 MT). Per row:
//   s2 = score(q.k); m_new = max(m, rowmax s2); alpha = exp2(m - m_new); l *= alpha; O *= alpha;
//   P = exp2(s2 - m_new) in place of the scores; l += rowsum P.
// `mask` / `mask_row0`: the MASKED kernel's mask tile and the warp's first row in it.
// load_state() runs just before the state is first read (fwd_mma keeps it in shared memory at
// MT = 2 and reloads it there; registers are short before). O is rescaled before P is formed,
// or with LATE_RESCALE after it, once o_ready() has returned (fwd_wgmma: the previous tile's
// O += P V runs on the tensor cores meanwhile).
template <class T, int D, bool MASKED, bool LATE_RESCALE = false, int MT, int NJ, class Load, class Ready>
__device__ __forceinline__ void softmax_tile(float (&sc)[MT][NJ][4], float (&o)[MT][D / 8][4],
                                             SoftmaxState<float> (&st)[2 * MT], const ForwardParams& p, const Seq& s,
                                             float scale_log2, int k0, int wrow, int row, const unsigned char* mask,
                                             int mask_row0, Load load_state, Ready o_ready) {
  constexpr int BK = 8 * NJ;
  // A bounded tile crosses the end of the keys or this warp's causal diagonal. An interior
  // tile with a positive scale (the usual case) keeps q.k unscaled: its row max scales after
  // the reduction and p = exp2(q.k * scale log2 e - m) is one FFMA (nothing can be masked).
  const bool bounded = k0 + BK > s.lk || (p.causal && k0 + BK - 1 > wrow);
  const bool fused_scale = !MASKED && !bounded && scale_log2 > 0.f;
  if (MASKED || bounded) {
    int lo[2 * MT], hi[2 * MT];
#pragma unroll
    for (int r = 0; r < 2 * MT; ++r) lo[r] = 0, hi[r] = query_key_end(p, s, row + 8 * r);
    bound_scores<T, MASKED, false, BK>(sc, scale_log2, lo, hi, k0, p.mask_kind, mask, mask_row0);
  } else if (!fused_scale) {
    scale_scores(sc, scale_log2);
  }
  float tmax[2 * MT];
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) tmax[r] = masked_score<float>();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < BK / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) tmax[2 * mt + (e >> 1)] = fmaxf(tmax[2 * mt + (e >> 1)], sc[mt][j][e]);
  // The state moves to the new max before P exists: l *= alpha, O *= alpha (with LATE_RESCALE
  // O after P); then l += rowsum(P) in place. (Moving first keeps neither m_new nor a tile sum live beside
  // the scores: 8 registers at MT = 2, which BK = 64 needs.) With the lazy max
  // (attention_math.h) alpha is 1 on most tiles, and the warp skips the rescale of its D / 2
  // accumulators per thread unless one of its rows moved. l stays a per-thread partial sum
  // (alpha is the same across the quad), summed at the end.
  load_state();
  const float max_scale = fused_scale ? scale_log2 : 1.f;  // a multiply, not a branch around the shuffles
  bool moved = false;
  float alpha[2 * MT];
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) {
    alpha[r] = softmax_rescale(st[r], softmax_new_max(st[r], quad_max(tmax[r]) * max_scale));
    moved |= alpha[r] != 1.f;
  }
  auto rescale_o = [&] {
    o_ready();
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int r = 0; r < 2 * MT; ++r)
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[r / 2][j][2 * (r % 2)] *= alpha[r];
          o[r / 2][j][2 * (r % 2) + 1] *= alpha[r];
        }
    }
  };
  if constexpr (!LATE_RESCALE) rescale_o();
  // P = p_of(score, m) elementwise; l += rowsum(P)
  auto exponentiate = [&](auto p_of) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BK / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          SoftmaxState<float>& row_state = st[2 * mt + (e >> 1)];
          sc[mt][j][e] = p_of(sc[mt][j][e], row_state.m);
          row_state.l += sc[mt][j][e];
        }
  };
  if (fused_scale)
    exponentiate([&](float qk, float m) { return mma::Exp2Approx{}(fmaf(qk, scale_log2, -m)); });
  else
    exponentiate([](float s2, float m) { return masked_exp2(s2, m, mma::Exp2Approx{}); });
  if constexpr (LATE_RESCALE) rescale_o();
}

// The forward's end for the BQ rows from q0 (NT threads; this warp's rows from wrow, this
// thread's row + 8 r): out = O / l (0 for a row that saw no key) and the LSE, O staged through
// `stage` (BQ padded rows, free by now) for 16-byte stores. The sequence is read again here,
// so that its offsets are not held in registers (or spilled) through the key loop.
template <class T, int D, int BQ, int NT, int MT>
__device__ __forceinline__ void store_output(const ForwardParams& p, int b, int h, int q0, int wrow, int row,
                                             const float (&o)[MT][D / 8][4], SoftmaxState<float> (&st)[2 * MT],
                                             T* stage, bool aligned) {
  const Seq se = sequence_of(p, b);
  float mul[2 * MT];
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) {
    st[r].l = quad_sum(st[r].l);
    mul[r] = softmax_out_scale(st[r]);
    const int i = row + 8 * r;
    if ((threadIdx.x & 3) == 0 && i < se.lq) p.lse[stat_index(p, se, b, h, i)] = softmax_lse(st[r]);
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    mma::fragment_to_smem<T, D, mma::PaddedRows<D>>(stage, wrow - q0 + 16 * mt, o[mt], mul[2 * mt], mul[2 * mt + 1]);
  __syncthreads();
  T* og = static_cast<T*>(p.out.ptr) + token_offset(p.out, p, b, h, se.q_tok + q0);
  mma::store_tile<T, BQ, D, NT>(og, p.out.stride_l, stage, se.lq - q0, p.head_dim, aligned);
}

// Where the forward keeps what lives across key tiles besides the output accumulators: each
// thread's 2 MT rows of softmax state (running max, partial sum) and the block's K / V base
// pointers. In shared memory for two m-tiles per warp, in registers for one. At MT = 2 the
// accumulators and the scores take 128 + 64 of 255 registers per thread with D = 128 and
// 64-key tiles; these 12 more made ptxas spill. The state is read once per tile after the
// scores and written back before P V; the pointers are read by the next tile's loads.
// D = 256 (MT = 1) keeps registers: its shared memory is exactly sm_86's 99 KB.
template <int MT>
constexpr bool kStateInSmem = MT == 2;
template <class T>
struct KeyBases {
  const T* k;
  const T* v;
};
template <class T, int MT>
constexpr size_t fwd_state_smem() {
  return kStateInSmem<MT> ? sizeof(KeyBases<T>) + kThreads * 2 * MT * sizeof(SoftmaxState<float>) : 0;
}

// A forward block of BQ rows from q0 of (b, h), in batch b's sequence s: its Q rows, the K / V
// of h's kv head, and the number of BK-key tiles it visits (all, or under causal masking
// those up to its last row).
template <class T>
struct ForwardBlock {
  const T* qg;
  const T* kg;
  const T* vg;
  int key_tiles;
};
template <class T, int BQ, int BK>
__device__ __forceinline__ ForwardBlock<T> forward_block(const ForwardParams& p, const Seq& s, int b, int h, int q0) {
  const int hk = h / (p.heads_q / p.heads_kv);
  const int kv_end = p.causal ? min(s.lk, min(q0 + BQ, s.lq)) : s.lk;
  return {static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, h, s.q_tok + q0),
          static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok),
          static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok), (kv_end + BK - 1) / BK};
}

// Forward: grid (q blocks of 64 MT, Hq, B); each warp owns MT m-tiles (16 MT consecutive rows),
// which reuse every K/V fragment MT times. Per tile of BK keys, for each row:
//   S = Q K^T; s2 = score_at(S); m_new = max(m, rowmax s2); P = exp2(s2 - m_new);
//   l = l alpha + rowsum P; O = O alpha + P V   (alpha = exp2(m - m_new))
template <class T, int D, int MT, int BK, bool MASKED>
__global__ void __launch_bounds__(kThreads) fwd_mma(const ForwardParams p, bool aligned, bool mask_vec) {
  constexpr int WR = 16 * MT, BQ = 4 * WR, LD = mma::padded_ld<D>(), kMaskBytes = mask_tile_bytes<BQ, BK>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* ks = qs + BQ * LD;      // [2][BK][LD]
  T* vs = ks + 2 * BK * LD;  // [2][BK][LD]
  unsigned char* ms = reinterpret_cast<unsigned char*>(vs + 2 * BK * LD);  // [2][kMaskBytes] if MASKED
  // if kStateInSmem<MT>: KeyBases, then [kThreads][2 MT] softmax states
  auto* bases_s = reinterpret_cast<KeyBases<T>*>(ms + (MASKED ? 2 * kMaskBytes : 0));
  auto* st_s = reinterpret_cast<SoftmaxState<float>*>(bases_s + 1) + threadIdx.x * 2 * MT;

  const int b = blockIdx.z, h = blockIdx.y, q0 = query_block() * BQ;
  const Seq s = sequence_of(p, b);
  if (q0 >= s.lq) return;
  const ForwardBlock<T> fb = forward_block<T, BQ, BK>(p, s, b, h, q0);
  const int nkb = fb.key_tiles;
  const bool whole_rows = !MASKED && aligned && p.head_dim == D;
  auto load_kv = [&](int kb, KeyBases<T> base) {
    load_key_tiles<T, BK, D>(ks + (kb & 1) * BK * LD, vs + (kb & 1) * BK * LD, base.k, base.v, p, s, kb, aligned,
                             whole_rows);
    if constexpr (MASKED) load_mask_tile<T, BQ, BK>(ms + (kb & 1) * kMaskBytes, p, b, h, s, q0, kb * BK, mask_vec);
  };
  mma::load_tile<T, BQ, D, kThreads>(qs, fb.qg, p.q.stride_l, s.lq - q0, p.head_dim, aligned, p.q.ptr);
  if (nkb > 0) load_kv(0, {fb.kg, fb.vg});
  cp_async_commit();
  if (kStateInSmem<MT> && threadIdx.x == 0) *bases_s = {fb.kg, fb.vg};  // read after the loop's first barrier

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wrow = q0 + warp * WR, row = wrow + (lane >> 2);  // rows row + 8 r, r < 2 MT
  const T* qw = qs + warp * WR * LD;
  const float scale_log2 = p.scale * kLog2eF;
  float o[MT][D / 8][4] = {};
  SoftmaxState<float> st[2 * MT];
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) st[r] = softmax_init<float>();
  auto state_to_smem = [&] {
    if constexpr (kStateInSmem<MT>)
#pragma unroll
      for (int r = 0; r < 2 * MT; ++r) st_s[r] = st[r];
  };
  auto state_from_smem = [&] {
    if constexpr (kStateInSmem<MT>)
#pragma unroll
      for (int r = 0; r < 2 * MT; ++r) st[r] = st_s[r];
  };
  state_to_smem();

  for (int kb = 0; kb < nkb; ++kb) {
    __syncthreads();  // every warp is done with tile kb - 1: its buffer takes tile kb + 1
    if (kb + 1 < nkb) load_kv(kb + 1, kStateInSmem<MT> ? *bases_s : KeyBases<T>{fb.kg, fb.vg});
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int k0 = kb * BK;
    if (p.causal && k0 > wrow + WR - 1) continue;  // the whole tile is above this warp's diagonal
    const T* kt = ks + (kb & 1) * BK * LD;
    const T* vt = vs + (kb & 1) * BK * LD;
    float sc[MT][BK / 8][4] = {};
    mma::warp_mma_abt<T, MT, BK, D, LD>(sc, qw, kt);

    softmax_tile<T, D, MASKED>(sc, o, st, p, s, scale_log2, k0, wrow, row, ms + (kb & 1) * kMaskBytes, warp * WR,
                               state_from_smem, [] {});
    state_to_smem();
    mma::warp_mma_rb<T, MT, D, BK, LD>(o, sc, vt);
  }
  cp_async_wait<0>();
  state_from_smem();

  store_output<T, D, BQ, kThreads>(p, b, h, q0, wrow, row, o, st, qs, aligned);
}

// ---------------------------------------------------------------------------------------
// sm_90a forward with warpgroup MMA (common/wgmma.cuh): grid (q blocks of 128, Hq, B), two
// warpgroups of 64 rows (a warp's 16 rows as in fwd_mma). Q and the double-buffered K/V
// tiles sit in 128-byte-swizzled shared memory (common/wgmma_layout.h), which the tensor
// cores read directly: no ldmatrix, and per warpgroup and tile S = Q K^T is D / 16
// instructions (m64 n BK k16) and O += P V is BK / 16 (m64 n D k16, P from the registers
// where the softmax leaves it, V read transposed). The per-row softmax and the output step are
// fwd_mma's (softmax_tile, store_output) on the same fragment layout. Unmasked, head dims 64
// and 128; launched only where the loaded binary is sm_90a code (fwd_wgmma_runs).
constexpr int kWgThreads = 256;
template <class T, int D, int BK, bool MASKED>
constexpr size_t fwd_wgmma_smem() {  // Q, two K, two V (and two mask) tiles, and slack to align them
  return size_t(128 + 4 * BK) * D * sizeof(T) + (MASKED ? 2 * mask_tile_bytes<128, BK>() : 0) +
         wgmma::kSwizzleBytes;
}

template <class T, int D, int BK, bool MASKED>
__global__ void __launch_bounds__(kWgThreads, 1) fwd_wgmma(const ForwardParams p, bool aligned, bool mask_vec) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // not sm_90a code: never launched (wgmma_available)
#else
  constexpr int BQ = 128, WR = 16, kMaskBytes = mask_tile_bytes<BQ, BK>();
  static_assert(D % wgmma::kPanelCols == 0 && (BK == 64 || BK == 128), "fwd_wgmma: head dim 64 or 128");
  static_assert(BQ * mma::padded_ld<D>() <= 4 * BK * D, "fwd_wgmma: the output is staged in the K/V tiles");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // the tiles start on the swizzle's 1024-byte period (the launch adds the slack)
  const uint32_t pad = (wgmma::kSwizzleBytes - smem_addr(smem_raw) % wgmma::kSwizzleBytes) % wgmma::kSwizzleBytes;
  T* qs = reinterpret_cast<T*>(smem_raw + pad);  // [BQ][D] swizzled
  T* ks = qs + BQ * D;                           // [2][BK][D] swizzled
  T* vs = ks + 2 * BK * D;                       // [2][BK][D] swizzled
  unsigned char* ms = reinterpret_cast<unsigned char*>(vs + 2 * BK * D);  // [2][kMaskBytes] if MASKED

  const int b = blockIdx.z, h = blockIdx.y, q0 = query_block() * BQ;
  const Seq s = sequence_of(p, b);
  if (q0 >= s.lq) return;
  const ForwardBlock<T> fb = forward_block<T, BQ, BK>(p, s, b, h, q0);
  const int nkb = fb.key_tiles;
  const bool whole_rows = aligned && p.head_dim == D;
  auto load_mask = [&](int kb) {
    if constexpr (MASKED) load_mask_tile<T, BQ, BK, kWgThreads>(ms + (kb & 1) * kMaskBytes, p, b, h, s, q0, kb * BK,
                                                                  mask_vec);
  };
  mma::load_tile<T, BQ, D, kWgThreads, mma::SwizzledRows>(qs, fb.qg, p.q.stride_l, s.lq - q0, p.head_dim, aligned,
                                                          p.q.ptr);
  if (nkb > 0) {
    load_key_rows<T, BK, D, kWgThreads, mma::SwizzledRows>(p, s, 0, aligned, whole_rows, KeyRows<T>{ks, fb.kg, p.k});
    load_mask(0);
  }
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wg = warp / 4;
  const int wrow = q0 + warp * WR, row = wrow + (lane >> 2);  // rows row, row + 8
  const uint32_t q_wg = smem_addr(qs) + uint32_t(64 * wg * 128);  // the warpgroup's rows of each panel
  const float scale_log2 = p.scale * kLog2eF;
  float o[1][D / 8][4] = {};
  SoftmaxState<float> st[2] = {softmax_init<float>(), softmax_init<float>()};
  // P of the previous tile, the A operand of its O += P V: that product is issued with the
  // next tile's S = Q K^T and runs during the next softmax. Every wgmma sits outside branches
  // (ptxas serializes wgmma on paths it cannot prove warpgroup-uniform), so tile 0 also adds
  // its "previous" P V: P = 0 times V buffer 1, zeroed here (garbage could hold NaN).
  uint32_t pf[BK / 16][4] = {};
  for (int i = threadIdx.x; i < BK * D / 8; i += kWgThreads) reinterpret_cast<uint4*>(vs + BK * D)[i] = uint4{};
  auto issue_pv = [&](int kb) {  // O += P V, V tile kb (buffer kb & 1)
    const uint32_t vt = smem_addr(vs + (kb & 1) * BK * D);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wgmma::mma_rs<T, D>(o[0], pf[kk], wgmma::mn_major_desc(vt, kk, BK), true);
    wgmma::commit_group();
  };
  // O and P are rewritten only once their O += P V has completed
  auto pv_done = [&] {
    wgmma::wait_group<0>();
    wgmma::fence_operand(o[0]);
    wgmma::fence_operand(pf);
  };

  // Tile kb loads K (and mask) tile kb + 1 and V tile kb: S = Q K^T runs a tile ahead of
  // O += P V. Both warpgroups take every tile: one wholly above a warpgroup's causal diagonal
  // (64-key tiles only) has every score masked and adds nothing, and skipping it would put the
  // wgmma on a branch.
  for (int kb = 0; kb < nkb; ++kb) {
    __syncthreads();  // K tile kb - 1 and V tile kb - 2 are read (waited for): their buffers are free
    if (kb + 1 < nkb) {
      load_key_rows<T, BK, D, kWgThreads, mma::SwizzledRows>(p, s, kb + 1, aligned, whole_rows,
                                                              KeyRows<T>{ks + ((kb + 1) & 1) * BK * D, fb.kg, p.k});
      load_mask(kb + 1);
    }
    load_key_rows<T, BK, D, kWgThreads, mma::SwizzledRows>(p, s, kb, aligned, whole_rows,
                                                            KeyRows<T>{vs + (kb & 1) * BK * D, fb.vg, p.v});
    cp_async_commit();
    cp_async_wait<1>();           // K (and mask) tile kb and V tile kb - 1 have landed
    wgmma::fence_async_shared();  // this thread's copies and stores, visible to the tensor cores
    __syncthreads();
    float sc[1][BK / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma::mma_ss<T, BK>(sc[0], wgmma::k_major_desc(q_wg, kk, BQ),
                           wgmma::k_major_desc(smem_addr(ks + (kb & 1) * BK * D), kk, BK), kk > 0);
    wgmma::commit_group();
    issue_pv(kb - 1);
    wgmma::wait_group<1>();  // S = Q K^T, not O += P V
    wgmma::fence_operand(sc[0]);
    softmax_tile<T, D, MASKED, true>(sc, o, st, p, s, scale_log2, kb * BK, wrow, row, ms + (kb & 1) * kMaskBytes,
                                     warp * WR, [] {}, pv_done);
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) mma::a_fragment<T>(pf[kk], sc[0], kk);
  }
  cp_async_wait<0>();  // V of the last tile
  wgmma::fence_async_shared();
  __syncthreads();
  wgmma::fence();
  issue_pv(nkb - 1);
  pv_done();
  store_output<T, D, BQ, kWgThreads>(p, b, h, q0, wrow, row, o, st, ks, aligned);
#endif
}

// Adds (a, b) to p[0], p[1] (p 8-byte aligned): one vector reduction on sm_90 and later, two
// scalar ones before.
__device__ __forceinline__ void atomic_add_pair(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// Adds a warp's dQ fragment (rows q0 + r0 + g (+ 8), columns c0 + 8 j + 2 t (+ 1) of query head
// hq) to bp.dq_accum (float32, one row of head_dim per query, laid out as the lse) with
// atomics, skipping rows past the sequence and padded columns.
template <int D, int NJ>
__device__ __forceinline__ void add_dq_fragment(const BackwardParams& bp, int b, int hq, const Seq& s, int q0, int r0,
                                                int c0, const float (&dq)[NJ][4]) {
  const ForwardParams& p = bp.fwd;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // dq_accum rows are consecutive along the sequence (stat_index); a head dim of D needs no
  // column test (a separate loop: ptxas wraps every conditional atomic in a branch) and adds
  // each fragment pair at once
  float* tile_rows = bp.dq_accum + stat_index(p, s, b, hq, q0) * p.head_dim;
  const bool whole_cols = p.head_dim == D;  // also: every row and pair 8-byte aligned
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const int r = r0 + g + 8 * hr;
    if (q0 + r >= s.lq) continue;
    float* row = tile_rows + int64_t(r) * p.head_dim;
    if (whole_cols) {
#pragma unroll
      for (int j = 0; j < NJ; ++j) atomic_add_pair(row + c0 + 8 * j + 2 * t, dq[j][2 * hr], dq[j][2 * hr + 1]);
    } else {
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = c0 + 8 * j + 2 * t + e;
          if (c < p.head_dim) atomicAdd(row + c, dq[j][2 * hr + e]);
        }
    }
  }
}

// The fused key pass's dQ contribution of one (key block, query tile) pair: dQ[q0 + i][c] +=
// sum over the block's keys of dS[i][key] K[key][c], from dS^T ([BKEY][LDS], every warp's rows
// written) and the block's K tile. The WARPS warps split the BQ x D product into BQ / 16 row
// m-tiles x the rest of WARPS column parts; each adds its fragment with add_dq_fragment.
// Barriers on both sides: every warp's dS^T rows are in before the product, and the product
// has read them before the next tile overwrites them. `with_dss()` runs between the barriers,
// while dS^T is complete (the dMask copy).
template <class T, int D, int BQ, int BKEY, int LD, int LDS, int WARPS, class F>
__device__ __forceinline__ void add_tile_dq(const BackwardParams& bp, int b, int hq, const Seq& s, int q0, const T* dss,
                                            const T* kst, F&& with_dss) {
  constexpr int kRowParts = BQ / 16, kCols = D / (WARPS / kRowParts);
  static_assert(WARPS % kRowParts == 0 && kCols % 16 == 0, "add_tile_dq: the warps split BQ x D in 16 x 16 blocks");
  const int warp = threadIdx.x >> 5;
  const int r0 = 16 * (warp % kRowParts), c0 = (warp / kRowParts) * kCols;
  __syncthreads();
  float dq[1][kCols / 8][4] = {};
  mma::warp_mma_tt<T, 1, kCols, BKEY, LDS, LD>(dq, dss + r0, kst + c0);
  with_dss();
  __syncthreads();
  add_dq_fragment<D>(bp, b, hq, s, q0, r0, c0, dq[0]);
}

// dMask[q0 + i][k0 + j] = dS^T[j][i] for the (query tile, key block) pair staged in dss
// (BKEY rows of BQ queries in Layout, rounded to T): the dMask tile is written along its keys.
// Each warp takes units of 8 queries x 32 keys; one ldmatrix.x4.trans gives lane (g, t) query
// g's keys 8 t .. 8 t + 7 (matrix m, row 2 t + e = key 8 t + 2 m + e), one 16-byte store when
// `vec` (dMask rows 16-byte aligned) and the 8 keys are inside the sequence, else element stores.
template <class T, int BQ, int BKEY, class Layout, int WARPS>
__device__ __forceinline__ void store_dmask_tile(const BackwardParams& bp, int b, int h, const Seq& s, int q0, int k0,
                                                 const T* dss, bool vec) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int m = lane >> 3, r = lane & 7;
  for (int u = warp; u < (BQ / 8) * (BKEY / 32); u += WARPS) {
    const int qb = 8 * (u % (BQ / 8)), kb = 32 * (u / (BQ / 8));
    uint32_t keys8[4];
    mma::ldmatrix_x4_trans(keys8, dss + Layout::at(kb + 8 * (r >> 1) + 2 * m + (r & 1), qb / 8, BKEY));
    const int i = q0 + qb + g, j = k0 + kb + 8 * t;
    if (i >= s.lq || j >= s.lk) continue;
    T* out = static_cast<T*>(bp.dmask) + dmask_offset(bp, b, h, i, j);
    if (vec && j + 8 <= s.lk) {
      *reinterpret_cast<uint4*>(out) = make_uint4(keys8[0], keys8[1], keys8[2], keys8[3]);
    } else {
#pragma unroll
      for (int x = 0; x < 8; ++x)  // element x: the low or high half of word x / 2 (as its bits)
        if (j + x < s.lk) reinterpret_cast<uint16_t*>(out)[x] = uint16_t(keys8[x / 2] >> (16 * (x % 2)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Pieces of the backward key passes (bwd_dkdv_mma, bwd_wgmma).

// The query tiles a key block [k0, k0 + BKEY) visits, in (head, tile) order: tiles of BQ rows
// from qb0 (causal: earlier queries see none of these keys) for each of the nh query heads
// from h_first (the GQA group summed here, or one head when dK/dV have Hq heads).
struct KeyBlockTiles {
  int h_first, nh, hk, qb0, tiles, total;
};
template <int BQ>
__device__ __forceinline__ KeyBlockTiles key_block_tiles(const BackwardParams& bp, const Seq& s, int hout, int k0) {
  const ForwardParams& p = bp.fwd;
  const int group = p.heads_q / p.heads_kv;
  const bool reduce = bp.dkv_heads == p.heads_kv;  // sum the group here, else one query head
  KeyBlockTiles kt;
  kt.h_first = reduce ? hout * group : hout;
  kt.nh = reduce ? group : 1;
  kt.hk = kt.h_first / group;
  kt.qb0 = p.causal ? k0 / BQ : 0;
  kt.tiles = max(0, (s.lq + BQ - 1) / BQ - kt.qb0);
  kt.total = kt.nh * kt.tiles;
  return kt;
}
// `hq` and `q0` step along without a division per tile.
struct QueryTile {
  int hq, q0;
};
template <int BQ>
__device__ __forceinline__ QueryTile next_query_tile(QueryTile c, const KeyBlockTiles& kt) {
  c.q0 += BQ;
  if (c.q0 >= (kt.qb0 + kt.tiles) * BQ) c.q0 = kt.qb0 * BQ, ++c.hq;
  return c;
}

// The key block's K (and V where `with_v`) rows into shared tiles laid out as Layout.
template <class T, int BKEY, int D, int NT, class Layout = mma::PaddedRows<D>>
__device__ __forceinline__ void load_key_block(const ForwardParams& p, const Seq& s, int b, int hk, int k0, T* kst,
                                               T* vst, bool with_v, bool aligned) {
  mma::load_tile<T, BKEY, D, NT, Layout>(kst, static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok + k0),
                                         p.k.stride_l, s.lk - k0, p.head_dim, aligned, p.k.ptr);
  if (with_v)
    mma::load_tile<T, BKEY, D, NT, Layout>(vst, static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok + k0),
                                           p.v.stride_l, s.lk - k0, p.head_dim, aligned, p.v.ptr);
}

// Query tile c of a key block into one buffer: Q and dO rows (Layout; whole tiles without
// per-chunk bounds when `whole_rows` and the tile lies inside the queries), the mask tile
// (MASKED), and the rows' lse (threads [0, BQ)) and delta (threads [BQ, 2 BQ)), one 4-byte
// cp.async each like the tiles (0 for rows past the end, which bound_scores masks; lse stays in
// natural log until it is used). Two warps share those: one alone delayed every tile's barrier
// by its loop. The caller commits.
template <class T, int BQ, int BKEY, int D, int NT, bool MASKED, class Layout = mma::PaddedRows<D>>
__device__ __forceinline__ void load_query_tile(const BackwardParams& bp, const Seq& s, int b, int k0, QueryTile c,
                                                T* q_dst, T* do_dst, float* lse_dst, float* dl_dst,
                                                unsigned char* mask_dst, bool whole_rows, bool aligned, bool mask_vec) {
  static_assert(NT >= 2 * BQ, "one thread per lse / delta element");
  const ForwardParams& p = bp.fwd;
  const int hq = c.hq, q0 = c.q0;
  const T* qg = static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, hq, s.q_tok + q0);
  const T* dog = static_cast<const T*>(bp.dout.ptr) + token_offset(bp.dout, p, b, hq, s.q_tok + q0);
  if (whole_rows && q0 + BQ <= s.lq) {
    mma::load_whole_tile<T, BQ, D, NT, Layout>(q_dst, qg, p.q.stride_l);
    mma::load_whole_tile<T, BQ, D, NT, Layout>(do_dst, dog, bp.dout.stride_l);
  } else {
    mma::load_tile<T, BQ, D, NT, Layout>(q_dst, qg, p.q.stride_l, s.lq - q0, p.head_dim, aligned, p.q.ptr);
    mma::load_tile<T, BQ, D, NT, Layout>(do_dst, dog, bp.dout.stride_l, s.lq - q0, p.head_dim, aligned, bp.dout.ptr);
  }
  if constexpr (MASKED) load_mask_tile<T, BQ, BKEY, NT>(mask_dst, p, b, hq, s, q0, k0, mask_vec);
  if (threadIdx.x < 2 * BQ) {
    const int i = threadIdx.x % BQ;
    const bool ok = q0 + i < s.lq, is_lse = threadIdx.x < BQ;
    const int64_t idx = ok ? stat_index(p, s, b, hq, q0 + i) : 0;
    cp_async4((is_lse ? lse_dst : dl_dst) + i, (is_lse ? p.lse : bp.delta) + idx, ok ? 4 : 0);
  }
}

// dMask = 0 for the query rows [0, qb0 BQ) that causal masking hides from the key block (the
// one-pass backward writes dMask; its tiles start at qb0).
template <class T, int BQ, int BKEY, int NT>
__device__ __forceinline__ void zero_hidden_dmask(const BackwardParams& bp, int b, const Seq& s, int k0,
                                                  const KeyBlockTiles& kt) {
  const int rows = min(kt.qb0 * BQ, s.lq);
  for (int hq = kt.h_first; hq < kt.h_first + kt.nh; ++hq)
    for (int idx = threadIdx.x; idx < rows * BKEY; idx += NT) {
      const int kj = k0 + idx % BKEY;
      if (kj < s.lk) store_dmask<T>(bp, b, hq, idx / BKEY, kj, 0.f);
    }
}

// The key block's dK (times the scale; DK) and dV (DV) from each warp's MT m-tiles of 16 keys
// from block row wk0, staged through `stage` (2 BKEY padded rows, free once the barrier here
// has passed) for coalesced stores.
template <class T, int D, int BKEY, int NT, int MT, bool DK, bool DV>
__device__ __forceinline__ void store_key_grads(const BackwardParams& bp, int b, int hout, const Seq& s, int k0,
                                                int wk0, T* stage, const float (&dk)[MT][D / 8][4],
                                                const float (&dv)[MT][D / 8][4], bool aligned) {
  const ForwardParams& p = bp.fwd;
  using Padded = mma::PaddedRows<D>;
  T* dk_stage = stage;
  T* dv_stage = stage + BKEY * mma::padded_ld<D>();
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (DK) mma::fragment_to_smem<T, D, Padded>(dk_stage, wk0 + 16 * mt, dk[mt], p.scale, p.scale);
    if (DV) mma::fragment_to_smem<T, D, Padded>(dv_stage, wk0 + 16 * mt, dv[mt], 1.f, 1.f);
  }
  __syncthreads();
  if (DK)
    mma::store_tile<T, BKEY, D, NT>(static_cast<T*>(bp.dk.ptr) + token_offset(bp.dk, p, b, hout, s.k_tok + k0),
                                    bp.dk.stride_l, dk_stage, s.lk - k0, p.head_dim, aligned);
  if (DV)
    mma::store_tile<T, BKEY, D, NT>(static_cast<T*>(bp.dv.ptr) + token_offset(bp.dv, p, b, hout, s.k_tok + k0),
                                    bp.dv.stride_l, dv_stage, s.lk - k0, p.head_dim, aligned);
}

// P^T = exp2(score(K Q^T) - lse2) in place of a warp's q.k tile sc (its MT m-tiles of keys from
// wkey, this thread's keys key + 8 r, against the query tile at q0 whose lse sits in lt). A
// bounded tile crosses the end of the queries or keys, or this warp's causal diagonal: key j is
// seen by queries [j or 0, lq) (causal: i >= j), by none past lk. `mask` is the tile's mask
// tile, `row0` the warp's first key in it.
template <class T, bool MASKED, int BKEY, int MT, int NJ>
__device__ __forceinline__ void key_pass_probabilities(float (&sc)[MT][NJ][4], const ForwardParams& p, const Seq& s,
                                                       float scale_log2, int q0, int wkey, int key, const float* lt,
                                                       const unsigned char* mask, int row0) {
  constexpr int BQ = 8 * NJ;
  const int t = threadIdx.x & 3;
  const bool bounded = q0 + BQ > s.lq || wkey + 16 * MT > s.lk || (p.causal && q0 < wkey + 16 * MT - 1);
  if (MASKED || bounded) {
    int lo[2 * MT], hi[2 * MT];
#pragma unroll
    for (int r = 0; r < 2 * MT; ++r) {
      const int j = key + 8 * r;
      lo[r] = p.causal ? j : 0;
      hi[r] = j < s.lk ? s.lq : 0;
    }
    bound_scores<T, MASKED, true, BKEY>(sc, scale_log2, lo, hi, q0, p.mask_kind, mask, row0);
  }
  backward_probabilities(sc, !MASKED && !bounded, scale_log2,
                         [&](int, int j, int e) { return lse_log2(lt[8 * j + 2 * t + (e & 1)]); });
}

// dS^T = P^T (dP^T - delta) in place of dP^T, delta of the tile's queries in dlt.
template <int MT, int NJ>
__device__ __forceinline__ void key_pass_ds(float (&dp)[MT][NJ][4], const float (&pt)[MT][NJ][4], const float* dlt) {
  const int t = threadIdx.x & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[mt][j][e] = softmax_grad(pt[mt][j][e], dp[mt][j][e], dlt[8 * j + 2 * t + (e & 1)]);
}

// Whether dMask rows start 16-byte aligned (store_dmask_tile's vector stores).
__device__ __forceinline__ bool dmask_rows_aligned(const BackwardParams& bp) {
  return ((bp.dmask_stride_b | bp.dmask_stride_h | bp.dmask_stride_q) % 8) == 0 &&
         reinterpret_cast<uintptr_t>(bp.dmask) % 16 == 0;
}

// Backward key-block pass: grid (key blocks of 16 MT WARPS, dkv_heads, B); rows = keys, each
// warp owns MT m-tiles (16 MT keys), which reuse every Q/dO fragment MT times; WARPS = 8 (head
// dim 128: 128-key blocks, FlashAttention-2's) halves the Q/dO tiles streamed per key and the
// atomic dQ traffic against 4 warps, at the same registers per thread. For each
// query head of the group and each query tile of BQ (double-buffered with its lse, delta):
//   P^T = exp2(score(K Q^T) - lse2);  dV += P^T dO;
//   dP^T = V dO^T;  dS^T = P^T (dP^T - delta);  dK += dS^T Q;   dK *= scale at the end.
// DK / DV select the accumulators (head dim 256 runs the pass twice, one each, to fit
// registers).
// FUSED_DQ (D <= 128): the pass also adds each tile's dQ = dS K to the float32 workspace
// bp.dq_accum with atomics, and the query pass is not run (bwd_dq_convert scales and rounds
// it): five matmuls per tile pair instead of seven, and a mask read once instead of twice, at
// the price of bitwise reproducibility of dQ (the order of the atomic adds varies). dS^T goes
// through shared memory; the warps then split the BQ x D product (add_tile_dq). With a
// requested dMask this pass writes it too: dS for every visited pair, zeros for the query
// tiles that causal masking skips.
template <class T, int D, int MT, int BQ, bool DK, bool DV, bool MASKED, bool FUSED_DQ = false, int WARPS = 4>
__global__ void __launch_bounds__(32 * WARPS, 1) bwd_dkdv_mma(const BackwardParams bp, bool aligned, bool mask_vec) {
  constexpr int NT = 32 * WARPS, WK = 16 * MT, BKEY = WARPS * WK, LD = mma::padded_ld<D>(), kMaskBytes = mask_tile_bytes<BQ, BKEY>();
  constexpr int LDS = mma::padded_ld<BQ>();
  static_assert(!FUSED_DQ || (DK && DV && (BQ == 32 || BQ == 64) && D % 32 == 0 && D <= 128),
                "fused dQ: dK and dV in one pass");
  const ForwardParams& p = bp.fwd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* kst = reinterpret_cast<T*>(smem_raw);
  T* vst = kst + BKEY * LD;
  T* qs = vst + BKEY * LD;      // [2][BQ][LD]
  T* dos = qs + 2 * BQ * LD;    // [2][BQ][LD]
  float* lse_s = reinterpret_cast<float*>(dos + 2 * BQ * LD);  // [2][BQ]
  float* dl_s = lse_s + 2 * BQ;                                // [2][BQ]
  unsigned char* ms = reinterpret_cast<unsigned char*>(dl_s + 2 * BQ);  // [2][kMaskBytes] if MASKED
  T* dss = reinterpret_cast<T*>(ms + (MASKED ? 2 * kMaskBytes : 0));  // [BKEY][LDS] dS^T if FUSED_DQ

  const int b = blockIdx.z, hout = blockIdx.y, k0 = blockIdx.x * BKEY;
  const Seq s = sequence_of(p, b);
  if (k0 >= s.lk) return;
  const KeyBlockTiles kt = key_block_tiles<BQ>(bp, s, hout, k0);
  const bool whole_rows = !MASKED && aligned && p.head_dim == D;
  // FUSED_DQ writes dMask (in T: the launch keeps float32 dMask on the two-pass path)
  const bool dmask_here = FUSED_DQ && MASKED && bp.dmask != nullptr;
  const bool dmask_vec = dmask_rows_aligned(bp);

  load_key_block<T, BKEY, D, NT>(p, s, b, kt.hk, k0, kst, vst, DK, aligned);
  auto load_q = [&](QueryTile c, int buf) {
    load_query_tile<T, BQ, BKEY, D, NT, MASKED>(bp, s, b, k0, c, qs + buf * BQ * LD, dos + buf * BQ * LD,
                                                lse_s + buf * BQ, dl_s + buf * BQ, ms + buf * kMaskBytes, whole_rows,
                                                aligned, mask_vec);
  };
  QueryTile tile{kt.h_first, kt.qb0 * BQ};
  if (kt.total > 0) load_q(tile, 0);
  cp_async_commit();
  if (dmask_here) zero_hidden_dmask<T, BQ, BKEY, NT>(bp, b, s, k0, kt);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wkey = k0 + warp * WK, key = wkey + (lane >> 2);  // keys key + 8 r, r < 2 MT
  const float scale_log2 = p.scale * kLog2eF;
  float dk[MT][D / 8][4] = {}, dv[MT][D / 8][4] = {};
  // FUSED_DQ: this warp's rows of dS^T (its keys x the tile's queries) into dss, rounded to T
  auto stage_ds = [&](const float (&ds)[MT][BQ / 8][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      mma::fragment_to_smem<T, BQ, mma::PaddedRows<BQ>>(dss, warp * WK + 16 * mt, ds[mt], 1.f, 1.f);
  };

  for (int it = 0; it < kt.total; ++it, tile = next_query_tile<BQ>(tile, kt)) {
    __syncthreads();
    if (it + 1 < kt.total) load_q(next_query_tile<BQ>(tile, kt), (it + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int q0 = tile.q0, buf = it & 1;
    // A warp whose keys all follow the tile's queries (causal) adds nothing: its dS^T rows are 0.
    const bool warp_skips = p.causal && q0 + BQ - 1 < wkey;
    if (!warp_skips) {
      const T* qt = qs + buf * BQ * LD;
      const T* dot = dos + buf * BQ * LD;
      const float* lt = lse_s + buf * BQ;
      const float* dlt = dl_s + buf * BQ;

      float sc[MT][BQ / 8][4] = {};
      mma::warp_mma_abt<T, MT, BQ, D, LD>(sc, kst + warp * WK * LD, qt);
      key_pass_probabilities<T, MASKED, BKEY>(sc, p, s, scale_log2, q0, wkey, key, lt, ms + buf * kMaskBytes,
                                              warp * WK);
      if (DV) mma::warp_mma_rb<T, MT, D, BQ, LD>(dv, sc, dot);
      if (DK) {
        float dp[MT][BQ / 8][4] = {};
        mma::warp_mma_abt<T, MT, BQ, D, LD>(dp, vst + warp * WK * LD, dot);
        key_pass_ds(dp, sc, dlt);
        mma::warp_mma_rb<T, MT, D, BQ, LD>(dk, dp, qt);
        if constexpr (FUSED_DQ) stage_ds(dp);
      }
    } else if constexpr (FUSED_DQ) {
      const float zeros[MT][BQ / 8][4] = {};
      stage_ds(zeros);
    }
    if constexpr (FUSED_DQ)  // every warp: barriers
      add_tile_dq<T, D, BQ, BKEY, LD, LDS, WARPS>(bp, b, tile.hq, s, q0, dss, kst, [&] {
        if (dmask_here) store_dmask_tile<T, BQ, BKEY, mma::PaddedRows<BQ>, WARPS>(bp, b, tile.hq, s, q0, k0, dss, dmask_vec);
      });
  }
  cp_async_wait<0>();
  store_key_grads<T, D, BKEY, NT, MT, DK, DV>(bp, b, hout, s, k0, warp * WK, kst, dk, dv, aligned);
}

// sm_90a backward in one pass with warpgroup MMA (common/wgmma.cuh), bwd_dkdv_mma<FUSED_DQ>'s
// algorithm: grid (key blocks of 128, dkv_heads, B), two warpgroups of 64 keys (a warp's 16
// keys as there at MT = 1). K, V and the double-buffered tiles of 64 queries (Q, dO) sit in
// 128-byte-swizzled shared memory. Per query tile, each warpgroup:
//   S^T = K Q^T; dP^T = V dO^T          m64 n64 k16, both operands from shared memory, two groups
//   P^T = exp2(score - lse2); dV += P^T dO        P^T from registers, dO read transposed
//   dS^T = P^T (dP^T - delta); dK += dS^T Q       likewise (P^T is exponentiated while dP^T runs)
//   dQ += dS K                           dS^T staged in shared memory and read transposed (A
//                                        MN-major); the warpgroup's D / 2 columns of the 64 x D
//                                        product, added to bp.dq_accum with atomics
// Score bounds, mask and dS math are bwd_dkdv_mma's on the same fragment layout; dMask (when
// asked) is copied from the staged dS^T. No wgmma sits on a branch: causal tiles are computed
// whole (masked scores give P = dS = 0). Head dims 64 and 128; launched only where
// wgmma_available().
template <class T, int D, bool MASKED>
constexpr size_t bwd_wgmma_smem() {  // K, V, two Q, two dO, dS^T, lse / delta, two mask tiles, alignment slack
  return size_t(2 * 128 * D + 4 * 64 * D + 128 * 64) * sizeof(T) + 4 * 64 * sizeof(float) +
         (MASKED ? 2 * mask_tile_bytes<64, 128>() : 0) + wgmma::kSwizzleBytes;
}

template <class T, int D, bool MASKED>
__global__ void __launch_bounds__(kWgThreads, 1) bwd_wgmma(const BackwardParams bp, bool aligned, bool mask_vec) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // not sm_90a code: never launched (wgmma_available)
#else
  constexpr int NT = kWgThreads, BKEY = 128, BQ = 64, DQC = D / 2, kMaskBytes = mask_tile_bytes<BQ, BKEY>();
  static_assert(D == 64 || D == 128, "bwd_wgmma: head dim 64 or 128");
  static_assert(2 * BKEY * mma::padded_ld<D>() <= 2 * BKEY * D + 4 * BQ * D, "bwd_wgmma: dK / dV staged in the tiles");
  const ForwardParams& p = bp.fwd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t pad = (wgmma::kSwizzleBytes - smem_addr(smem_raw) % wgmma::kSwizzleBytes) % wgmma::kSwizzleBytes;
  T* kst = reinterpret_cast<T*>(smem_raw + pad);  // [BKEY][D] swizzled, as every tile here
  T* vst = kst + BKEY * D;                         // [BKEY][D]
  T* qs = vst + BKEY * D;                          // [2][BQ][D]
  T* dos = qs + 2 * BQ * D;                        // [2][BQ][D]
  T* dss = dos + 2 * BQ * D;                       // [BKEY][BQ] dS^T
  float* lse_s = reinterpret_cast<float*>(dss + BKEY * BQ);             // [2][BQ]
  float* dl_s = lse_s + 2 * BQ;                                         // [2][BQ]
  unsigned char* ms = reinterpret_cast<unsigned char*>(dl_s + 2 * BQ);  // [2][kMaskBytes] if MASKED

  const int b = blockIdx.z, hout = blockIdx.y, k0 = blockIdx.x * BKEY;
  const Seq s = sequence_of(p, b);
  if (k0 >= s.lk) return;
  const KeyBlockTiles kt = key_block_tiles<BQ>(bp, s, hout, k0);
  const bool whole_rows = !MASKED && aligned && p.head_dim == D;
  const bool dmask_here = MASKED && bp.dmask != nullptr;
  const bool dmask_vec = dmask_rows_aligned(bp);

  load_key_block<T, BKEY, D, NT, mma::SwizzledRows>(p, s, b, kt.hk, k0, kst, vst, true, aligned);
  auto load_q = [&](QueryTile c, int buf) {
    load_query_tile<T, BQ, BKEY, D, NT, MASKED, mma::SwizzledRows>(bp, s, b, k0, c, qs + buf * BQ * D,
                                                                   dos + buf * BQ * D, lse_s + buf * BQ,
                                                                   dl_s + buf * BQ, ms + buf * kMaskBytes,
                                                                   whole_rows, aligned, mask_vec);
  };
  QueryTile tile{kt.h_first, kt.qb0 * BQ};
  if (kt.total > 0) load_q(tile, 0);
  cp_async_commit();
  if (dmask_here) zero_hidden_dmask<T, BQ, BKEY, NT>(bp, b, s, k0, kt);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wg = warp / 4;
  const int wkey = k0 + warp * 16, key = wkey + (lane >> 2);  // keys key, key + 8
  // the warpgroup's 64 key rows of each K / V panel, and its dQ columns [wg DQC, + DQC) of K
  const uint32_t k_wg = smem_addr(kst) + uint32_t(64 * wg * 128), v_wg = smem_addr(vst) + uint32_t(64 * wg * 128);
  const uint32_t k_cols = smem_addr(kst) + uint32_t((wg * DQC / 64) * BKEY * 128 + (wg * DQC % 64) * 2);
  const float scale_log2 = p.scale * kLog2eF;
  float dk[1][D / 8][4] = {}, dv[1][D / 8][4] = {};
  uint32_t pf[BQ / 16][4], dsf[BQ / 16][4];  // P^T and dS^T, the A operands of dV and dK
  // registers a wgmma reads or writes stay put until it has completed
  auto operands_done = [&](float (&dq)[1][DQC / 8][4]) {
    wgmma::fence_operand(dq[0]);
    wgmma::fence_operand(dk[0]);
    wgmma::fence_operand(dv[0]);
    wgmma::fence_operand(pf);
    wgmma::fence_operand(dsf);
  };

  for (int it = 0; it < kt.total; ++it, tile = next_query_tile<BQ>(tile, kt)) {
    __syncthreads();  // tile it - 1's wgmma are complete: its Q / dO buffer and dS^T are free
    if (it + 1 < kt.total) load_q(next_query_tile<BQ>(tile, kt), (it + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    wgmma::fence_async_shared();  // this thread's copies, visible to the tensor cores
    __syncthreads();
    const int q0 = tile.q0, buf = it & 1;
    const uint32_t qt = smem_addr(qs + buf * BQ * D), dot = smem_addr(dos + buf * BQ * D);
    const float* lt = lse_s + buf * BQ;
    const float* dlt = dl_s + buf * BQ;

    // S^T = K Q^T, then dP^T = V dO^T as a second group
    float sc[1][BQ / 8][4], dp[1][BQ / 8][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma::mma_ss<T, BQ>(sc[0], wgmma::k_major_desc(k_wg, kk, BKEY), wgmma::k_major_desc(qt, kk, BQ), kk > 0);
    wgmma::commit_group();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wgmma::mma_ss<T, BQ>(dp[0], wgmma::k_major_desc(v_wg, kk, BKEY), wgmma::k_major_desc(dot, kk, BQ), kk > 0);
    wgmma::commit_group();
    wgmma::wait_group<1>();  // S^T
    wgmma::fence_operand(sc[0]);

    key_pass_probabilities<T, MASKED, BKEY>(sc, p, s, scale_log2, q0, wkey, key, lt, ms + buf * kMaskBytes, warp * 16);
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) mma::a_fragment<T>(pf[kk], sc[0], kk);
    // dV += P^T dO
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) wgmma::mma_rs<T, D>(dv[0], pf[kk], wgmma::mn_major_desc(dot, kk, BQ), true);
    wgmma::commit_group();
    wgmma::wait_group<1>();  // dP^T (dV += P^T dO may still run)
    wgmma::fence_operand(dp[0]);

    // dS^T, into registers (dK's A) and shared memory (dQ's A, dMask)
    key_pass_ds(dp, sc, dlt);
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) mma::a_fragment<T>(dsf[kk], dp[0], kk);
    mma::fragment_to_smem<T, BQ, mma::SwizzledRows, BKEY>(dss, warp * 16, dp[0], 1.f, 1.f);
    // dK += dS^T Q
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) wgmma::mma_rs<T, D>(dk[0], dsf[kk], wgmma::mn_major_desc(qt, kk, BQ), true);
    wgmma::commit_group();

    // dQ = dS K over the block's 128 keys, once every warp's dS^T rows are in
    wgmma::fence_async_shared();
    __syncthreads();
    float dq[1][DQC / 8][4];
#pragma unroll
    for (int kk = 0; kk < BKEY / 16; ++kk)
      wgmma::mma_ss<T, DQC, true, true>(dq[0], wgmma::mn_major_desc(smem_addr(dss), kk, BKEY),
                                        wgmma::mn_major_desc(k_cols, kk, BKEY), kk > 0);
    wgmma::commit_group();
    if (dmask_here) store_dmask_tile<T, BQ, BKEY, mma::SwizzledRows, NT / 32>(bp, b, tile.hq, s, q0, k0, dss, dmask_vec);
    wgmma::wait_group<0>();
    operands_done(dq);
    add_dq_fragment<D>(bp, b, tile.hq, s, q0, 16 * (warp % 4), wg * DQC, dq[0]);
  }
  cp_async_wait<0>();
  store_key_grads<T, D, BKEY, NT, 1, true, true>(bp, b, hout, s, k0, warp * 16, kst, dk, dv, aligned);
#endif
}

// Backward query-block pass: grid (q blocks of 64 MT, Hq, B); rows = queries, MT m-tiles per
// warp as in forward. Per key tile:
//   P = exp2(score(Q K^T) - lse2); dP = dO V^T; dS = P (dP - delta); dQ += dS K; dMask = dS.
// dQ *= scale at the end. With dMask every key tile is visited (masked pairs give dS = 0),
// so the whole (Lq, Lk) gradient is written.
template <class T, int D, int MT, int BK, bool MASKED>
__global__ void __launch_bounds__(kThreads, 1) bwd_dq_mma(const BackwardParams bp, bool aligned, bool mask_vec) {
  constexpr int WR = 16 * MT, BQ = 4 * WR, LD = mma::padded_ld<D>(), kMaskBytes = mask_tile_bytes<BQ, BK>();
  const ForwardParams& p = bp.fwd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + BQ * LD;
  T* ks = dos + BQ * LD;     // [2][BK][LD]
  T* vs = ks + 2 * BK * LD;  // [2][BK][LD]
  unsigned char* ms = reinterpret_cast<unsigned char*>(vs + 2 * BK * LD);  // [2][kMaskBytes] if MASKED

  const int b = blockIdx.z, h = blockIdx.y, q0 = query_block() * BQ;
  const Seq s = sequence_of(p, b);
  if (q0 >= s.lq) return;
  const int hk = h / (p.heads_q / p.heads_kv);
  const bool full = MASKED && bp.dmask != nullptr;
  const bool dmask_pairs = ((bp.dmask_stride_b | bp.dmask_stride_h | bp.dmask_stride_q) & 1) == 0 &&
                           reinterpret_cast<uintptr_t>(bp.dmask) % (bp.dmask_f32 ? 8 : 4) == 0;
  const int kv_end = (p.causal && !full) ? min(s.lk, min(q0 + BQ, s.lq)) : s.lk;
  const int nkb = (kv_end + BK - 1) / BK;
  const T* kg = static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok);
  const T* vg = static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok);
  const bool whole_rows = !MASKED && aligned && p.head_dim == D;
  auto load_kv = [&](int kb) {
    load_key_tiles<T, BK, D>(ks + (kb & 1) * BK * LD, vs + (kb & 1) * BK * LD, kg, vg, p, s, kb, aligned, whole_rows);
    if constexpr (MASKED) load_mask_tile<T, BQ, BK>(ms + (kb & 1) * kMaskBytes, p, b, h, s, q0, kb * BK, mask_vec);
  };
  mma::load_tile<T, BQ, D, kThreads>(
      qs, static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, h, s.q_tok + q0), p.q.stride_l,
      s.lq - q0, p.head_dim, aligned, p.q.ptr);
  mma::load_tile<T, BQ, D, kThreads>(
      dos, static_cast<const T*>(bp.dout.ptr) + token_offset(bp.dout, p, b, h, s.q_tok + q0),
      bp.dout.stride_l, s.lq - q0, p.head_dim, aligned, bp.dout.ptr);
  if (nkb > 0) load_kv(0);
  cp_async_commit();

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
  const int wrow = q0 + warp * WR, row = wrow + (lane >> 2);  // rows row + 8 r, r < 2 MT
  const float scale_log2 = p.scale * kLog2eF;
  float lse2[2 * MT], dl[2 * MT];
#pragma unroll
  for (int r = 0; r < 2 * MT; ++r) {
    const bool ok = row + 8 * r < s.lq;  // rows past the end are masked by score_at
    const int64_t idx = ok ? stat_index(p, s, b, h, row + 8 * r) : 0;
    lse2[r] = ok ? lse_log2(p.lse[idx]) : 0.f;
    dl[r] = ok ? bp.delta[idx] : 0.f;
  }
  float dq[MT][D / 8][4] = {};

  for (int kb = 0; kb < nkb; ++kb) {
    __syncthreads();
    if (kb + 1 < nkb) load_kv(kb + 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int k0 = kb * BK;
    if (!full && p.causal && k0 > wrow + WR - 1) continue;
    const T* kt = ks + (kb & 1) * BK * LD;
    const T* vt = vs + (kb & 1) * BK * LD;
    float sc[MT][BK / 8][4] = {}, dp[MT][BK / 8][4] = {};
    mma::warp_mma_abt<T, MT, BK, D, LD>(sc, qs + warp * WR * LD, kt);
    mma::warp_mma_abt<T, MT, BK, D, LD>(dp, dos + warp * WR * LD, vt);
    // A bounded tile crosses the end of the keys or this warp's causal diagonal.
    const bool bounded = k0 + BK > s.lk || (p.causal && k0 + BK - 1 > wrow);
    if (MASKED || bounded) {
      int lo[2 * MT], hi[2 * MT];
#pragma unroll
      for (int r = 0; r < 2 * MT; ++r) lo[r] = 0, hi[r] = query_key_end(p, s, row + 8 * r);
      bound_scores<T, MASKED, false, BK>(sc, scale_log2, lo, hi, k0, p.mask_kind, ms + (kb & 1) * kMaskBytes, warp * WR);
    }
    backward_probabilities(sc, !MASKED && !bounded, scale_log2,
                           [&](int mt, int, int e) { return lse2[2 * mt + (e >> 1)]; });
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BK / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          dp[mt][j][e] = softmax_grad(sc[mt][j][e], dp[mt][j][e], dl[2 * mt + (e >> 1)]);
    if (full) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int j = 0; j < BK / 8; ++j)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr)
            store_dmask_pair<T>(bp, b, h, row + 8 * (2 * mt + hr), k0 + 8 * j + 2 * t, s, dp[mt][j][2 * hr],
                                dp[mt][j][2 * hr + 1], dmask_pairs);
    }
    mma::warp_mma_rb<T, MT, D, BK, LD>(dq, dp, kt);
  }
  cp_async_wait<0>();

  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
    mma::fragment_to_smem<T, D, mma::PaddedRows<D>>(qs, warp * WR + 16 * mt, dq[mt], p.scale, p.scale);
  __syncthreads();
  mma::store_tile<T, BQ, D, kThreads>(static_cast<T*>(bp.dq.ptr) + token_offset(bp.dq, p, b, h, s.q_tok + q0),
                                      bp.dq.stride_l, qs, s.lq - q0, p.head_dim, aligned);
}

// Warp-per-row kernels, grid (q blocks of kThreads / 32, Hq, B): f(b, h, s, i, lane) for the
// warp's row i of its sequence, if there is one.
template <class F>
__device__ __forceinline__ void with_warp_row(const ForwardParams& p, F&& f) {
  const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
  const int i = blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5);
  const Seq s = sequence_of(p, b);
  if (i < s.lq) f(b, h, s, i, lane);
}

// delta = rowsum(dO * O), one warp per row.
template <class T>
__global__ void __launch_bounds__(kThreads) bwd_delta(const BackwardParams bp) {
  const ForwardParams& p = bp.fwd;
  with_warp_row(p, [&](int b, int h, const Seq& s, int i, int lane) {
    const T* o = static_cast<const T*>(p.out.ptr) + token_offset(p.out, p, b, h, s.q_tok + i);
    const T* d = static_cast<const T*>(bp.dout.ptr) + token_offset(bp.dout, p, b, h, s.q_tok + i);
    float acc = 0.f;
    for (int c = lane; c < p.head_dim; c += 32) acc += to_f32(o[c]) * to_f32(d[c]);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
    if (lane == 0) bp.delta[stat_index(p, s, b, h, i)] = acc;
  });
}

// dq = dq_accum * scale, rounded to T (after the one-pass key pass), one warp per row.
template <class T>
__global__ void __launch_bounds__(kThreads) bwd_dq_convert(const BackwardParams bp) {
  const ForwardParams& p = bp.fwd;
  with_warp_row(p, [&](int b, int h, const Seq& s, int i, int lane) {
    const float* acc = bp.dq_accum + stat_index(p, s, b, h, i) * p.head_dim;
    T* dq = static_cast<T*>(bp.dq.ptr) + token_offset(bp.dq, p, b, h, s.q_tok + i);
    const float scale = float(p.scale);
    for (int c = lane; c < p.head_dim; c += 32) dq[c] = from_f32<T>(acc[c] * scale);
  });
}

// ---------------------------------------------------------------------------------------
// float32 CUDA-core kernels: 16 rows per block, 8 consecutive lanes per row; a thread owns
// 4 columns of each 32-wide score tile (sub + 8 i) and head-dim columns sub + 8 j of its
// row's accumulators. Tiles are float in smem with rows padded to D + 1 words.

// Rows [0, ROWS) of a (rows, dim) operand into smem as float, zero past valid_rows / dim.
template <class T, int ROWS, int D>
__device__ __forceinline__ void load_rows_f32(float* s, const T* g, int64_t ld_g, int valid_rows, int dim) {
  for (int idx = threadIdx.x; idx < ROWS * D; idx += kThreads) {
    const int r = idx / D, c = idx % D;
    s[r * (D + 1) + c] = (r < valid_rows && c < dim) ? to_f32(g[r * ld_g + c]) : 0.f;
  }
}

__device__ __forceinline__ float dot_f32(const float* a, const float* b, int dim) {
  float acc = 0.f;
#pragma unroll 8
  for (int d = 0; d < dim; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

__device__ __forceinline__ float row8_max(float x) {
#pragma unroll
  for (int m = 1; m < 8; m <<= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, m));
  return x;
}
__device__ __forceinline__ float row8_sum(float x) {
#pragma unroll
  for (int m = 1; m < 8; m <<= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

constexpr int kFRows = 16, kFCols = 32, kFPad = kFCols + 1;

// Forward, same recurrence as fwd_mma: grid (q blocks of 16, Hq, B).
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) fwd_ffma(const ForwardParams p) {
  constexpr int LDF = D + 1;
  extern __shared__ float smf[];
  float* qs = smf;
  float* ks = qs + kFRows * LDF;
  float* vs = ks + kFCols * LDF;
  float* ps = vs + kFCols * LDF;  // [kFRows][kFPad]

  const int b = blockIdx.z, h = blockIdx.y, q0 = query_block() * kFRows;
  const Seq s = sequence_of(p, b);
  if (q0 >= s.lq) return;
  const int hk = h / (p.heads_q / p.heads_kv);
  const int r = threadIdx.x >> 3, sub = threadIdx.x & 7, i = q0 + r;
  load_rows_f32<T, kFRows, D>(qs, static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, h, s.q_tok + q0),
                              p.q.stride_l, s.lq - q0, p.head_dim);
  const T* kg = static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok);
  const T* vg = static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok);
  const int kv_end = p.causal ? min(s.lk, min(q0 + kFRows, s.lq)) : s.lk;
  const float scale_log2 = p.scale * kLog2eF;
  float o[D / 8] = {};
  SoftmaxState<float> st = softmax_init<float>();

  for (int k0 = 0; k0 < kv_end; k0 += kFCols) {
    __syncthreads();
    load_rows_f32<T, kFCols, D>(ks, kg + int64_t(k0) * p.k.stride_l, p.k.stride_l, s.lk - k0, p.head_dim);
    load_rows_f32<T, kFCols, D>(vs, vg + int64_t(k0) * p.v.stride_l, p.v.stride_l, s.lk - k0, p.head_dim);
    __syncthreads();
    float x[4], tmax = masked_score<float>(), tsum = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int kl = sub + 8 * c;
      x[c] = score_at<T>(p, dot_f32(qs + r * LDF, ks + kl * LDF, p.head_dim), scale_log2, b, h, i, k0 + kl, s);
      tmax = fmaxf(tmax, x[c]);
    }
    const float m_new = softmax_new_max(st, row8_max(tmax));
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float pe = masked_exp2(x[c], m_new);
      ps[r * kFPad + sub + 8 * c] = pe;
      tsum += pe;
    }
    const float alpha = softmax_update(st, m_new, tsum);  // per-thread partial l
    __syncwarp();
#pragma unroll
    for (int jd = 0; jd < D / 8; ++jd) {
      float acc = o[jd] * alpha;
#pragma unroll 8
      for (int k = 0; k < kFCols; ++k) acc = fmaf(ps[r * kFPad + k], vs[k * LDF + sub + 8 * jd], acc);
      o[jd] = acc;
    }
  }
  st.l = row8_sum(st.l);
  if (i >= s.lq) return;
  const float mul = softmax_out_scale(st);
  T* og = static_cast<T*>(p.out.ptr) + token_offset(p.out, p, b, h, s.q_tok + i);
#pragma unroll
  for (int jd = 0; jd < D / 8; ++jd)
    if (sub + 8 * jd < p.head_dim) og[sub + 8 * jd] = from_f32<T>(o[jd] * mul);
  if (sub == 0) p.lse[stat_index(p, s, b, h, i)] = softmax_lse(st);
}

// Key-block pass, as bwd_dkdv_mma with 16 keys per block and 32-query tiles.
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) bwd_dkdv_ffma(const BackwardParams bp) {
  constexpr int LDF = D + 1;
  const ForwardParams& p = bp.fwd;
  extern __shared__ float smf[];
  float* kst = smf;
  float* vst = kst + kFRows * LDF;
  float* qs = vst + kFRows * LDF;
  float* dos = qs + kFCols * LDF;
  float* ps = dos + kFCols * LDF;   // [kFRows][kFPad]
  float* dss = ps + kFRows * kFPad;  // [kFRows][kFPad]
  float* lse_s = dss + kFRows * kFPad;
  float* dl_s = lse_s + kFCols;

  const int b = blockIdx.z, hout = blockIdx.y, k0 = blockIdx.x * kFRows;
  const Seq s = sequence_of(p, b);
  if (k0 >= s.lk) return;
  const int group = p.heads_q / p.heads_kv;
  const bool reduce = bp.dkv_heads == p.heads_kv;
  const int h_first = reduce ? hout * group : hout, nh = reduce ? group : 1;
  const int hk = h_first / group;
  const int r = threadIdx.x >> 3, sub = threadIdx.x & 7, key = k0 + r;
  load_rows_f32<T, kFRows, D>(kst, static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok + k0),
                              p.k.stride_l, s.lk - k0, p.head_dim);
  load_rows_f32<T, kFRows, D>(vst, static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok + k0),
                              p.v.stride_l, s.lk - k0, p.head_dim);
  const int q_first = p.causal ? k0 : 0;  // earlier queries see none of these keys
  const float scale_log2 = p.scale * kLog2eF;
  float dk[D / 8] = {}, dv[D / 8] = {};

  for (int hq = h_first; hq < h_first + nh; ++hq)
    for (int q0 = q_first - q_first % kFCols; q0 < s.lq; q0 += kFCols) {
      __syncthreads();
      load_rows_f32<T, kFCols, D>(qs, static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, hq, s.q_tok + q0),
                                  p.q.stride_l, s.lq - q0, p.head_dim);
      load_rows_f32<T, kFCols, D>(dos,
                                  static_cast<const T*>(bp.dout.ptr) + token_offset(bp.dout, p, b, hq, s.q_tok + q0),
                                  bp.dout.stride_l, s.lq - q0, p.head_dim);
      for (int c = threadIdx.x; c < kFCols; c += kThreads) {
        const bool ok = q0 + c < s.lq;
        const int64_t idx = ok ? stat_index(p, s, b, hq, q0 + c) : 0;
        lse_s[c] = ok ? lse_log2(p.lse[idx]) : 0.f;
        dl_s[c] = ok ? bp.delta[idx] : 0.f;
      }
      __syncthreads();
      // P^T = exp2(score - lse2); dS^T = P^T (V dO^T - delta)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int ql = sub + 8 * c;
        const float x = score_at<T>(p, dot_f32(kst + r * LDF, qs + ql * LDF, p.head_dim), scale_log2, b, hq,
                                    q0 + ql, key, s);
        const float pe = masked_exp2(x, lse_s[ql]);
        ps[r * kFPad + ql] = pe;
        dss[r * kFPad + ql] = softmax_grad(pe, dot_f32(vst + r * LDF, dos + ql * LDF, p.head_dim), dl_s[ql]);
      }
      __syncwarp();
      // dV += P^T dO; dK += dS^T Q
#pragma unroll
      for (int jd = 0; jd < D / 8; ++jd) {
        float av = dv[jd], ak = dk[jd];
#pragma unroll 8
        for (int q = 0; q < kFCols; ++q) {
          av = fmaf(ps[r * kFPad + q], dos[q * LDF + sub + 8 * jd], av);
          ak = fmaf(dss[r * kFPad + q], qs[q * LDF + sub + 8 * jd], ak);
        }
        dv[jd] = av;
        dk[jd] = ak;
      }
    }
  if (key >= s.lk) return;
  T* dkg = static_cast<T*>(bp.dk.ptr) + token_offset(bp.dk, p, b, hout, s.k_tok + key);
  T* dvg = static_cast<T*>(bp.dv.ptr) + token_offset(bp.dv, p, b, hout, s.k_tok + key);
#pragma unroll
  for (int jd = 0; jd < D / 8; ++jd)
    if (sub + 8 * jd < p.head_dim) {
      dkg[sub + 8 * jd] = from_f32<T>(dk[jd] * p.scale);
      dvg[sub + 8 * jd] = from_f32<T>(dv[jd]);
    }
}

// Query-block pass, as bwd_dq_mma with 16 queries per block and 32-key tiles.
template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1) bwd_dq_ffma(const BackwardParams bp) {
  constexpr int LDF = D + 1;
  const ForwardParams& p = bp.fwd;
  extern __shared__ float smf[];
  float* qs = smf;
  float* dos = qs + kFRows * LDF;
  float* ks = dos + kFRows * LDF;
  float* vs = ks + kFCols * LDF;
  float* dss = vs + kFCols * LDF;  // [kFRows][kFPad]

  const int b = blockIdx.z, h = blockIdx.y, q0 = query_block() * kFRows;
  const Seq s = sequence_of(p, b);
  if (q0 >= s.lq) return;
  const int hk = h / (p.heads_q / p.heads_kv);
  const int r = threadIdx.x >> 3, sub = threadIdx.x & 7, i = q0 + r;
  load_rows_f32<T, kFRows, D>(qs, static_cast<const T*>(p.q.ptr) + token_offset(p.q, p, b, h, s.q_tok + q0),
                              p.q.stride_l, s.lq - q0, p.head_dim);
  load_rows_f32<T, kFRows, D>(dos, static_cast<const T*>(bp.dout.ptr) + token_offset(bp.dout, p, b, h, s.q_tok + q0),
                              bp.dout.stride_l, s.lq - q0, p.head_dim);
  const bool ok = i < s.lq;  // rows past the end are masked by score_at
  const int64_t idx = ok ? stat_index(p, s, b, h, i) : 0;
  const float lse2 = ok ? lse_log2(p.lse[idx]) : 0.f, dl = ok ? bp.delta[idx] : 0.f;
  const bool full = bp.dmask != nullptr;
  const int kv_end = (p.causal && !full) ? min(s.lk, min(q0 + kFRows, s.lq)) : s.lk;
  const T* kg = static_cast<const T*>(p.k.ptr) + token_offset(p.k, p, b, hk, s.k_tok);
  const T* vg = static_cast<const T*>(p.v.ptr) + token_offset(p.v, p, b, hk, s.k_tok);
  const float scale_log2 = p.scale * kLog2eF;
  float dq[D / 8] = {};

  for (int k0 = 0; k0 < kv_end; k0 += kFCols) {
    __syncthreads();
    load_rows_f32<T, kFCols, D>(ks, kg + int64_t(k0) * p.k.stride_l, p.k.stride_l, s.lk - k0, p.head_dim);
    load_rows_f32<T, kFCols, D>(vs, vg + int64_t(k0) * p.v.stride_l, p.v.stride_l, s.lk - k0, p.head_dim);
    __syncthreads();
    // dS = P (dO V^T - delta), P = exp2(score - lse2)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int kl = sub + 8 * c, kj = k0 + kl;
      const float x = score_at<T>(p, dot_f32(qs + r * LDF, ks + kl * LDF, p.head_dim), scale_log2, b, h, i, kj, s);
      const float ds = softmax_grad(masked_exp2(x, lse2), dot_f32(dos + r * LDF, vs + kl * LDF, p.head_dim), dl);
      dss[r * kFPad + kl] = ds;
      if (full && ok && kj < s.lk) store_dmask<T>(bp, b, h, i, kj, ds);
    }
    __syncwarp();
    // dQ += dS K
#pragma unroll
    for (int jd = 0; jd < D / 8; ++jd) {
      float acc = dq[jd];
#pragma unroll 8
      for (int k = 0; k < kFCols; ++k) acc = fmaf(dss[r * kFPad + k], ks[k * LDF + sub + 8 * jd], acc);
      dq[jd] = acc;
    }
  }
  if (!ok) return;
  T* dqg = static_cast<T*>(bp.dq.ptr) + token_offset(bp.dq, p, b, h, s.q_tok + i);
#pragma unroll
  for (int jd = 0; jd < D / 8; ++jd)
    if (sub + 8 * jd < p.head_dim) dqg[sub + 8 * jd] = from_f32<T>(dq[jd] * p.scale);
}

// ---------------------------------------------------------------------------------------
// sm_90a self-test of the warpgroup-MMA operand forms (attention.h, kWgmmaSelftestCases), one
// warpgroup, one product: the descriptors, swizzled layouts, register fragments and transpose
// flags the kernels above rely on, one at a time, so that a failing kernel on a GPU can be
// traced to the form that fails.
template <class T, int I>
__global__ void __launch_bounds__(128, 1) wgmma_selftest(const T* a, const T* b, float* c) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // not sm_90a code: never launched (wgmma_available)
#else
  constexpr WgmmaSelftestCase cs = kWgmmaSelftestCases[I];
  constexpr int N = cs.n, K = cs.form == WgmmaForm::KMajor ? cs.a_cols : cs.b_rows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t pad = (wgmma::kSwizzleBytes - smem_addr(smem_raw) % wgmma::kSwizzleBytes) % wgmma::kSwizzleBytes;
  T* as = reinterpret_cast<T*>(smem_raw + pad);
  T* bs = as + cs.a_rows * cs.a_cols;  // both on 1024-byte boundaries
  if constexpr (cs.form != WgmmaForm::Registers)
    mma::load_tile<T, cs.a_rows, cs.a_cols, 128, mma::SwizzledRows>(as, a, cs.a_cols, cs.a_rows, cs.a_cols, false, a);
  mma::load_tile<T, cs.b_rows, cs.b_cols, 128, mma::SwizzledRows>(bs, b, cs.b_cols, cs.b_rows, cs.b_cols, false, b);
  wgmma::fence_async_shared();
  __syncthreads();
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  // element (j, e) of a warp's accumulator-layout fragment: row 16 w + g + 8 (e / 2), column 8 j + 2 t + e % 2
  auto at = [&](int j, int e, int cols) { return (16 * w + g + 8 * (e >> 1)) * cols + 8 * j + 2 * t + (e & 1); };
  uint32_t af[K / 16][4];
  if constexpr (cs.form == WgmmaForm::Registers) {  // A as the softmax leaves P: accumulator layout, then a_fragment
    float sc[K / 8][4];
#pragma unroll
    for (int j = 0; j < K / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[j][e] = to_f32(a[at(j, e, cs.a_cols)]);
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) mma::a_fragment<T>(af[kk], sc, kk);
  }
  const uint32_t a0 = smem_addr(as), b0 = smem_addr(bs);
  constexpr int c0 = cs.b_cols - N;  // MNMajor: the first column of B taken
  float d[N / 8][4];
  wgmma::fence();
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    if constexpr (cs.form == WgmmaForm::KMajor)
      wgmma::mma_ss<T, N>(d, wgmma::k_major_desc(a0 + uint32_t((cs.a_rows - 64) * 128), kk, cs.a_rows),
                          wgmma::k_major_desc(b0, kk, cs.b_rows), kk > 0);
    else if constexpr (cs.form == WgmmaForm::Registers)
      wgmma::mma_rs<T, N>(d, af[kk], wgmma::mn_major_desc(b0, kk, cs.b_rows), kk > 0);
    else
      wgmma::mma_ss<T, N, true, true>(d, wgmma::mn_major_desc(a0, kk, cs.a_rows),
                                      wgmma::mn_major_desc(b0 + uint32_t((c0 / 64) * cs.b_rows * 128 + (c0 % 64) * 2),
                                                           kk, cs.b_rows),
                                      kk > 0);
  }
  wgmma::commit_group();
  wgmma::wait_group<0>();
  wgmma::fence_operand(d);
#pragma unroll
  for (int j = 0; j < N / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) c[at(j, e, N)] = d[j][e];
#endif
}

// ---------------------------------------------------------------------------------------
// Host side.

template <int V>
using Int = std::integral_constant<int, V>;

// Tensor-core head dims: 32, 64, 96, 128, 256 (others pad up).
template <class F>
void with_mma_dim(int d, F&& f) {
  if (d <= 32) return f(Int<32>{});
  if (d <= 64) return f(Int<64>{});
  if (d <= 96) return f(Int<96>{});
  if (d <= 128) return f(Int<128>{});
  return f(Int<256>{});
}
// CUDA-core head dims bound the per-thread accumulators only: 64, 128, 256.
template <class F>
void with_ffma_dim(int d, F&& f) {
  if (d <= 64) return f(Int<64>{});
  if (d <= 128) return f(Int<128>{});
  return f(Int<256>{});
}

// cp.async and 16-byte stores need every row of the operand 16-byte aligned.
bool rows_aligned(const void* ptr, int64_t sb, int64_t sh, int64_t sl, bool varlen) {
  constexpr int64_t kElems = 8;  // 16 bytes of 16-bit elements
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (varlen || sb % kElems == 0) && sh % kElems == 0 &&
         sl % kElems == 0;
}
template <class S>
bool rows_aligned(const S& t, bool varlen) {
  return rows_aligned(t.ptr, t.stride_b, t.stride_h, t.stride_l, varlen);
}

dim3 grid_for(int64_t rows, int rows_per_block, int heads, int batch) {
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  check(blocks <= INT_MAX, "attention (CUDA): sequence too long for the grid");
  return dim3(unsigned(blocks), unsigned(heads), unsigned(batch));
}

template <int THREADS = kThreads, class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, size_t smem, cudaStream_t stream, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > 48 * 1024) {
    const size_t max_smem = smem_optin();
    if (smem > max_smem)
      throw std::runtime_error("attention (CUDA): this head dim needs " + std::to_string(smem) +
                               " bytes of shared memory per block; the device allows " +
                               std::to_string(max_smem));
    PFA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  kernel<<<grid, THREADS, smem, stream>>>(std::forward<Args>(args)...);
  PFA_CHECK_LAUNCH();
}

// Shared memory of fwd_mma without a mask tile: the Q tile, two K and two V tiles, and the
// loop state where it lives there.
template <class T, int D, int MT, int BK>
constexpr size_t fwd_mma_smem() {
  return size_t(64 * MT + 4 * BK) * mma::padded_ld<D>() * sizeof(T) + fwd_state_smem<T, MT>();
}

// Keys per tile of the unmasked forward at head dims 96 and 128: 64 (default) halves the
// per-tile overhead (row max, rescale test, loads, barriers) per MMA; static SASS of the bf16
// D = 128 key loop: 3.3 instructions per HMMA, against 4.5 with 32-key tiles before the loop
// state moved to shared memory (bench/attention_gpu_notes.md). PYFASTATTN_ATTN_FWD_KEY_TILE=32
// selects 32-key tiles, read at every launch so that bench/kernel_time.py compares both in one
// process.
int fwd_key_tile() {
  const char* v = std::getenv("PYFASTATTN_ATTN_FWD_KEY_TILE");
  return v && std::atoi(v) == 32 ? 32 : 64;
}

// The sm_90a forward (fwd_wgmma) is opt-in with PYFASTATTN_ATTN_FWD_WGMMA=1 until a GPU run has
// shown it correct and fast; read at every launch.
bool fwd_wgmma_requested() {
  const char* v = std::getenv("PYFASTATTN_ATTN_FWD_WGMMA");
  return v && std::atoi(v) == 1;
}
// The head dim the wgmma kernels run a tensor-core head dim D at: 64 and 128 as they are, 96
// padded to 128 (their swizzled tiles are whole 64-column panels); 0 (none) for 32 and 256.
template <int D>
constexpr int wgmma_dim() {
  return D == 64 || D == 128 ? D : D == 96 ? 128 : 0;
}
// Likewise the sm_90a one-pass backward (bwd_wgmma), PYFASTATTN_ATTN_BWD_WGMMA=1; it needs the
// dQ workspace of the one-pass backward, which the Python layer then allocates at head dims up
// to 128 (pyfastattn/attention.py, _one_pass_backward).
bool bwd_wgmma_requested() {
  const char* v = std::getenv("PYFASTATTN_ATTN_BWD_WGMMA");
  return v && std::atoi(v) == 1;
}

// Keys per block of the head-dim-128 backward key pass: 128 (default; 8 warps, where the
// device's shared memory allows) or 64 (4 warps) with PYFASTATTN_ATTN_BWD_KEY_BLOCK=64, read at
// every launch so that bench/kernel_time.py attention-tiles compares both in one process.
int bwd_key_block() {
  const char* v = std::getenv("PYFASTATTN_ATTN_BWD_KEY_BLOCK");
  return v && std::atoi(v) == 64 ? 64 : 128;
}

// Shared memory of bwd_dkdv_mma: K and V of the key block, two Q and two dO tiles with their
// lse and delta, two mask tiles (MASKED), the dS^T tile (FUSED_DQ).
template <class T, int D, int MT, int BQ, int WARPS, bool MASKED, bool FUSED_DQ>
constexpr size_t bwd_key_pass_smem() {
  constexpr int BKEY = 16 * MT * WARPS;
  return size_t(2 * BKEY + 4 * BQ) * mma::padded_ld<D>() * sizeof(T) + 4 * BQ * sizeof(float) +
         (MASKED ? 2 * mask_tile_bytes<BQ, BKEY>() : 0) +
         (FUSED_DQ ? size_t(BKEY) * mma::padded_ld<BQ>() * sizeof(T) : 0);
}

void check_params(const ForwardParams& p) {
  check(p.head_dim >= 1 && p.head_dim <= 256, "attention (CUDA): head_dim must be in [1, 256]");
  check(p.heads_kv > 0 && p.heads_q % p.heads_kv == 0,
        "attention (CUDA): heads_q must be a positive multiple of heads_kv");
  check((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr),
        "attention (CUDA): cu_seqlens_q and cu_seqlens_k must both be given or both be null");
  check(p.batch >= 0 && p.batch <= 65535 && p.heads_q <= 65535,
        "attention (CUDA): batch and heads must be at most 65535");
  check(p.len_q >= 0 && p.len_k >= 0, "attention (CUDA): negative length");
  check(p.dtype != DType::Float64, "attention (CUDA): float64 is not supported on CUDA");
}

}  // namespace

// Does the binary the driver loaded for fwd_wgmma (every wgmma kernel comes from the same
// one) hold its sm_90a body? Only sm_90 code built from sm_90a PTX does (binary and PTX
// version 90): code JIT-compiled from an older PTX holds the trap.
bool wgmma_available() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    (void)cudaGetLastError();  // no device or driver: clear the error, answer no
    return false;
  }
  cudaFuncAttributes a{};
  PFA_CUDA_CHECK(cudaFuncGetAttributes(&a, fwd_wgmma<__half, 128, 128, false>));
  return a.binaryVersion == 90 && a.ptxVersion == 90;
}

// f(Int<index>{}) for a run-time index below kWgmmaSelftestCount.
template <int I = 0, class F>
void with_selftest_index(int index, F&& f) {
  if constexpr (I < kWgmmaSelftestCount) {
    if (index == I) return f(Int<I>{});
    with_selftest_index<I + 1>(index, f);
  }
}

void wgmma_selftest_cuda(int index, DType dtype, const void* a, const void* b, float* c, uintptr_t stream_handle) {
  check(index >= 0 && index < kWgmmaSelftestCount, "wgmma_selftest: index out of range");
  check(dtype == DType::Float16 || dtype == DType::BFloat16, "wgmma_selftest: dtype must be float16 or bfloat16");
  check(wgmma_available(), "wgmma_selftest: needs an sm_90 GPU and a build with sm_90a code");
  const cudaStream_t stream = as_stream(stream_handle);
  auto run = [&](auto tag, auto ic) {
    using T = decltype(tag);
    constexpr WgmmaSelftestCase cs = kWgmmaSelftestCases[decltype(ic)::value];
    const size_t smem = size_t(cs.a_rows * cs.a_cols + cs.b_rows * cs.b_cols) * sizeof(T) + wgmma::kSwizzleBytes;
    launch<128>(wgmma_selftest<T, decltype(ic)::value>, dim3(1), smem, stream, static_cast<const T*>(a),
                static_cast<const T*>(b), c);
  };
  if (dtype == DType::Float16)
    with_selftest_index(index, [&](auto ic) { run(__half{}, ic); });
  else
    with_selftest_index(index, [&](auto ic) { run(__nv_bfloat16{}, ic); });
}

void forward_cuda(const ForwardParams& p, uintptr_t stream_handle) {
  check_params(p);
  if (p.batch == 0 || p.heads_q == 0 || p.len_q == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  const bool varlen = p.cu_seqlens_q != nullptr;
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float>) {
      with_ffma_dim(p.head_dim, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        const size_t smem = ((kFRows + 2 * kFCols) * (D + 1) + kFRows * kFPad) * sizeof(float);
        launch(fwd_ffma<T, D>, grid_for(p.len_q, kFRows, p.heads_q, p.batch), smem, stream, p);
      });
    } else {
      const bool aligned = rows_aligned(p.q, varlen) && rows_aligned(p.k, varlen) &&
                           rows_aligned(p.v, varlen) && rows_aligned(p.out, varlen);
      const bool mask_vec = mask_rows_aligned<T>(p);
      with_mma_dim(p.head_dim, [&](auto dc) {
        // 128-row Q tiles (two m-tiles per warp) halve the K/V shared-memory reads per row;
        // D = 256 keeps one m-tile so its 16 x 256 output accumulator fits in registers.
        constexpr int D = decltype(dc)::value, MT = D <= 128 ? 2 : 1;
        const dim3 grid = grid_for(p.len_q, 64 * MT, p.heads_q, p.batch);
        auto run = [&](auto key_tile, auto masked) {
          constexpr int BK = decltype(key_tile)::value;
          constexpr bool MASKED = decltype(masked)::value;
          const size_t smem = fwd_mma_smem<T, D, MT, BK>() + (MASKED ? 2 * mask_tile_bytes<64 * MT, BK>() : 0);
          launch(fwd_mma<T, D, MT, BK, MASKED>, grid, smem, stream, p, aligned, mask_vec);
        };
        // the sm_90a forward: 128-key tiles, or 64 with a mask (its tiles in shared memory)
        constexpr int DW = wgmma_dim<D>();
        auto run_wgmma = [&](auto key_tile, auto masked) {
          constexpr int BK = decltype(key_tile)::value;
          constexpr bool MASKED = decltype(masked)::value;
          launch<kWgThreads>(fwd_wgmma<T, DW, BK, MASKED>, grid_for(p.len_q, 128, p.heads_q, p.batch),
                             fwd_wgmma_smem<T, DW, BK, MASKED>(), stream, p, aligned, mask_vec);
        };
        if constexpr (DW != 0) {
          if (fwd_wgmma_requested() && wgmma_available()) {
            if (p.mask_kind == MaskKind::None)
              run_wgmma(Int<128>{}, std::false_type{});
            else
              run_wgmma(Int<64>{}, std::true_type{});
            return;
          }
        }
        if (p.mask_kind != MaskKind::None)
          run(Int<D <= 64 ? 64 : 32>{}, std::true_type{});
        else if constexpr (D <= 64)
          run(Int<64>{}, std::false_type{});
        else if constexpr (D <= 128) {
          if (fwd_key_tile() == 64 && fwd_mma_smem<T, D, MT, 64>() <= smem_optin())
            run(Int<64>{}, std::false_type{});
          else
            run(Int<32>{}, std::false_type{});
        } else {
          run(Int<32>{}, std::false_type{});
        }
      });
    }
  });
}

void backward_cuda(const BackwardParams& bp, uintptr_t stream_handle) {
  const ForwardParams& p = bp.fwd;
  check_params(p);
  check(bp.dkv_heads == p.heads_kv || bp.dkv_heads == p.heads_q,
        "attention (CUDA): dkv_heads must be heads_kv or heads_q");
  check(!(bp.dq_accum && bp.dmask && bp.dmask_f32),
        "attention (CUDA): the one-pass backward (dq_accum) writes dmask in the input dtype, not float32");
  if (p.batch == 0 || p.heads_q == 0) return;
  const cudaStream_t stream = as_stream(stream_handle);
  const bool varlen = p.cu_seqlens_q != nullptr;
  dispatch_cuda_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    launch(bwd_delta<T>, grid_for(p.len_q, kThreads / 32, p.heads_q, p.batch), 0, stream, bp);
    if constexpr (std::is_same_v<T, float>) {
      with_ffma_dim(p.head_dim, [&](auto dc) {
        constexpr int D = decltype(dc)::value;
        const size_t kv_smem =
            (size_t(2 * kFRows + 2 * kFCols) * (D + 1) + 2 * kFRows * kFPad + 2 * kFCols) * sizeof(float);
        launch(bwd_dkdv_ffma<T, D>, grid_for(p.len_k, kFRows, bp.dkv_heads, p.batch), kv_smem, stream, bp);
        const size_t q_smem = (size_t(2 * kFRows + 2 * kFCols) * (D + 1) + kFRows * kFPad) * sizeof(float);
        launch(bwd_dq_ffma<T, D>, grid_for(p.len_q, kFRows, p.heads_q, p.batch), q_smem, stream, bp);
      });
    } else {
      const bool aligned = rows_aligned(p.q, varlen) && rows_aligned(p.k, varlen) && rows_aligned(p.v, varlen) &&
                           rows_aligned(bp.dout, varlen) && rows_aligned(bp.dq, varlen) &&
                           rows_aligned(bp.dk, varlen) && rows_aligned(bp.dv, varlen);
      const bool mask_vec = mask_rows_aligned<T>(p);
      with_mma_dim(p.head_dim, [&](auto dc) {
        constexpr int D = decltype(dc)::value, LD = mma::padded_ld<D>();
        // Key pass: MTK m-tiles of keys per warp, query tiles of BQ rows; query pass: MTQ m-tiles
        // of queries per warp, key tiles of BK rows. Two m-tiles per warp halve the shared-memory
        // reads per tensor-core op (the streamed tiles' fragments serve both); the sizes keep the
        // accumulators spill-free and D = 256 within the opt-in shared memory.
        constexpr int MTK = D <= 64 ? 2 : 1, BQ = D <= 32 ? 64 : 32, BK = D <= 32 ? 64 : 32;
        auto run = [&](auto masked) {
          constexpr bool M = decltype(masked)::value;
          // key pass with W warps (key blocks of 16 MTK W); FUSED: one pass, dQ by atomics into
          // dq_accum (then scaled and rounded by bwd_dq_convert), no query pass
          auto key_pass = [&](auto warps, auto fused) {
            constexpr int W = decltype(warps)::value;
            constexpr bool F = decltype(fused)::value;
            const size_t smem = bwd_key_pass_smem<T, D, MTK, BQ, W, M, F>();
            const dim3 grid = grid_for(p.len_k, 16 * MTK * W, bp.dkv_heads, p.batch);
            if constexpr (D == 256) {  // dK and dV accumulators do not both fit in registers
              launch(bwd_dkdv_mma<T, D, MTK, BQ, false, true, M>, grid, smem, stream, bp, aligned, mask_vec);
              launch(bwd_dkdv_mma<T, D, MTK, BQ, true, false, M>, grid, smem, stream, bp, aligned, mask_vec);
            } else {
              launch<32 * W>(bwd_dkdv_mma<T, D, MTK, BQ, true, true, M, F, W>, grid, smem, stream, bp, aligned,
                             mask_vec);
            }
          };
          auto key_passes = [&](auto fused) {
            if constexpr (D == 128) {
              constexpr bool F = decltype(fused)::value;
              if (bwd_key_block() == 128 && bwd_key_pass_smem<T, D, MTK, BQ, 8, M, F>() <= smem_optin())
                return key_pass(Int<8>{}, fused);
            }
            key_pass(Int<4>{}, fused);
          };
          if constexpr (D <= 128) {
            if (bp.dq_accum) {
              bool wgmma_pass = false;
              constexpr int DW = wgmma_dim<D>();
              if constexpr (DW != 0) {
                if (bwd_wgmma_requested() && wgmma_available()) {
                  launch<kWgThreads>(bwd_wgmma<T, DW, M>, grid_for(p.len_k, 128, bp.dkv_heads, p.batch),
                                     bwd_wgmma_smem<T, DW, M>(), stream, bp, aligned, mask_vec);
                  wgmma_pass = true;
                }
              }
              if (!wgmma_pass) key_passes(std::true_type{});
              launch(bwd_dq_convert<T>, grid_for(p.len_q, kThreads / 32, p.heads_q, p.batch), 0, stream, bp);
              return;
            }
          }
          key_passes(std::false_type{});
          // query pass with MT m-tiles per warp: Q/dO tiles, double-buffered K/V (and mask) tiles
          auto q_smem = [&](int mt) {
            return size_t(2 * 64 * mt + 4 * BK) * LD * sizeof(T) + (M ? 2 * size_t(64 * mt) * mask_pitch<BK>() : 0);
          };
          auto launch_dq = [&](auto mt) {
            constexpr int MTQ = decltype(mt)::value;
            launch(bwd_dq_mma<T, D, MTQ, BK, M>, grid_for(p.len_q, 64 * MTQ, p.heads_q, p.batch), q_smem(MTQ),
                   stream, bp, aligned, mask_vec);
          };
          // Two query m-tiles per warp where the block's shared memory fits (D = 128 needs
          // 102 KB, more than sm_86/sm_89 allow); D = 256 keeps one for registers.
          if constexpr (D == 256)
            launch_dq(Int<1>{});
          else if (q_smem(2) <= smem_optin())
            launch_dq(Int<2>{});
          else
            launch_dq(Int<1>{});
        };
        if (p.mask_kind == MaskKind::None)
          run(std::false_type{});
        else
          run(std::true_type{});
      });
    }
  });
}

}  // namespace pfa::attention
