// Warp-level tensor-core building blocks for the fp16/bf16 attention kernels (sm_80+):
// cp.async tile loads into padded shared memory, ldmatrix fragment loads and
// mma.sync.m16n8k16 with float accumulators.
//
// Every matmul of forward and backward is one of three shapes, with a warp owning MT m-tiles
// of 16 consecutive rows:
//   warp_mma_abt:  C(16 MT x N) += A(16 MT x K) * B^T, A and B both row-major tiles in smem
//                  (B stored [n][k], e.g. K for S = Q K^T);
//   warp_mma_rb:   C(16 MT x N) += A(16 MT x K) * B,   A accumulator fragments from a previous
//                  warp_mma_abt (P or dS, rounded to T), B stored [k][n] in smem (e.g. V);
//   warp_mma_tt:   C(16 MT x N) += A(16 MT x K) * B,   A^T and B both stored k-major in smem.
//
// Accumulator fragment c[mt][j][e] (j = 8-column block) holds row 16 mt + g + 8 (e / 2), column
// 8 * j + 2 * t + (e % 2), with g = lane / 4 and t = lane % 4 (the PTX m16n8 C layout).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/cp_async.cuh"
#include "common/cuda_utils.cuh"
#include "common/wgmma_layout.h"

namespace pfa::attention::mma {

// Shared-memory rows are padded by 16 bytes: a row stride of 2 * D + 16 bytes (D a multiple
// of 32) puts the 8 rows of every ldmatrix phase in 8 distinct 16-byte bank groups.
template <int D>
__host__ __device__ constexpr int padded_ld() {
  return D + 8;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <class T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x by the special-function unit (ex2.approx.ftz: about 2 ulp, denormal results flush to 0);
// passed to attention_math.h's masked_exp2 by the tensor-core kernels.
struct Exp2Approx {
  __device__ __forceinline__ float operator()(float x) const {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }
};

// Both operands of a warp_mma_ss in shared memory, each stored one of two ways: m-major
// ([m][k] for A, [n][k] for B: ldmatrix) or k-major ([k][m], [k][n]: ldmatrix.trans). This
// lane's row address within a 16 x 16 block of the operand, for one x4 ldmatrix that yields
// A's fragment (a0..a3: m 0-7 / 8-15 x k 0-7 / 8-15) or B's for two n-blocks (b0, b1 of n 0-7,
// then of n 8-15). Lane L supplies a row of 8x8 matrix L / 8.
template <class T, int LD, bool IS_A, bool K_MAJOR>
__device__ __forceinline__ const T* operand_lane(const T* base) {
  const int lane = threadIdx.x & 31;
  // matrix L / 8 holds rows (m or n) 8 ((L / 8) % 2) for A, 8 (L / 16) for B, and k the other;
  // a k-major A and an m-major B take the same stored-row order
  if constexpr (IS_A && !K_MAJOR) return base + (lane & 15) * LD + (lane >> 4) * 8;
  if constexpr (IS_A == K_MAJOR) return base + ((lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8;
  return base + ((lane & 7) + ((lane >> 3) & 1) * 8) * LD + (lane >> 4) * 8;
}
// The operand's 16 x 16 block of rows 16 blk and k-step ks, from the lane address.
template <int LD, bool K_MAJOR>
__device__ __forceinline__ int operand_block(int blk, int ks) {
  return K_MAJOR ? ks * 16 * LD + blk * 16 : blk * 16 * LD + ks * 16;
}
template <bool K_MAJOR>
__device__ __forceinline__ void ldmatrix_x4_as(uint32_t (&r)[4], const void* p) {
  if constexpr (K_MAJOR)
    ldmatrix_x4_trans(r, p);
  else
    ldmatrix_x4(r, p);
}

// C(16 MT x N) += A(16 MT x K) B with both operands in shared memory: A = the warp's MT m-tiles
// at `a` (row stride LDA), B's N columns at `b` (row stride LDB), each m-major or k-major
// (operand_lane). Per k-step the A fragments are loaded once and every B fragment serves the
// MT m-tiles.
template <class T, int MT, int N, int K, int LDA, int LDB, bool A_KMAJOR, bool B_KMAJOR>
__device__ __forceinline__ void warp_mma_ss(float (&c)[MT][N / 8][4], const T* a, const T* b) {
  const T* a_lane = operand_lane<T, LDA, true, A_KMAJOR>(a);
  const T* b_lane = operand_lane<T, LDB, false, B_KMAJOR>(b);
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    uint32_t af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4_as<A_KMAJOR>(af[mt], a_lane + operand_block<LDA, A_KMAJOR>(mt, ks));
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      ldmatrix_x4_as<B_KMAJOR>(bf, b_lane + operand_block<LDB, B_KMAJOR>(np, ks));
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(c[mt][2 * np], af[mt], bf[0], bf[1]);
        mma_16816<T>(c[mt][2 * np + 1], af[mt], bf[2], bf[3]);
      }
    }
  }
}

// C += A B^T, A and B both row-major tiles (m-major; B stored [n][k], e.g. K for S = Q K^T).
template <class T, int MT, int N, int K, int LD>
__device__ __forceinline__ void warp_mma_abt(float (&c)[MT][N / 8][4], const T* a, const T* b) {
  warp_mma_ss<T, MT, N, K, LD, LD, false, false>(c, a, b);
}

// The A fragment of k-step ks (columns 16 ks .. 16 ks + 15) from a warp's float accumulator
// fragment (16 x K, the m16n8 C layout), rounded to T: an accumulator tile is an A operand
// without data movement.
template <class T, int NJ>
__device__ __forceinline__ void a_fragment(uint32_t (&a)[4], const float (&s)[NJ][4], int ks) {
  a[0] = pack2<T>(s[2 * ks][0], s[2 * ks][1]);
  a[1] = pack2<T>(s[2 * ks][2], s[2 * ks][3]);
  a[2] = pack2<T>(s[2 * ks + 1][0], s[2 * ks + 1][1]);
  a[3] = pack2<T>(s[2 * ks + 1][2], s[2 * ks + 1][3]);
}

// C(16 MT x N) += A(16 MT x K) B: A = the float fragments `s` (as left by warp_mma_abt),
// rounded to T; B = K rows at `b` stored [k][n], read transposed by ldmatrix.trans.
template <class T, int MT, int N, int K, int LD>
__device__ __forceinline__ void warp_mma_rb(float (&c)[MT][N / 8][4], const float (&s)[MT][K / 8][4],
                                            const T* b) {
  const T* b_lane = operand_lane<T, LD, false, true>(b);
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    uint32_t af[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_fragment<T>(af[mt], s[mt], ks);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b_lane + ks * 16 * LD + np * 16);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_16816<T>(c[mt][2 * np], af[mt], bf[0], bf[1]);
        mma_16816<T>(c[mt][2 * np + 1], af[mt], bf[2], bf[3]);
      }
    }
  }
}

// C += A B with A^T and B both stored k-major ([k][m], [k][n]): the fused backward's dQ += dS K,
// with dS^T as the key pass leaves it.
template <class T, int MT, int N, int K, int LDA, int LDB>
__device__ __forceinline__ void warp_mma_tt(float (&c)[MT][N / 8][4], const T* at, const T* b) {
  warp_mma_ss<T, MT, N, K, LDA, LDB, true, true>(c, at, b);
}

// Where row r, 8-column chunk c of a ROWS x D shared tile lives (element offset): padded rows
// for the ldmatrix operands, or the 128-byte-swizzled panels wgmma reads (common/wgmma_layout.h).
// kRowPeriod: rows after which the layout repeats, shifted by a constant.
template <int D>
struct PaddedRows {
  static constexpr int kRowPeriod = 1;
  static __device__ __forceinline__ int at(int r, int c, int) { return r * padded_ld<D>() + 8 * c; }
};
struct SwizzledRows {
  static constexpr int kRowPeriod = 8;
  static __device__ __forceinline__ int at(int r, int c, int rows) {
    return int(wgmma::swizzled_chunk(r, c, rows)) / 2;
  }
};

// Copies `ROWS` rows (global row stride `ld_g` elements) into a padded smem tile, zero-filling
// rows >= `valid_rows` and columns >= `dim`. With `async_ok` (base and strides 16-byte aligned)
// it issues cp.async (the caller commits and waits); otherwise plain loads and stores.
// `safe` is any readable address, passed to zero-byte copies.
template <class T, int ROWS, int D, int NT, class Layout = PaddedRows<D>>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t ld_g, int valid_rows, int dim,
                                          bool async_ok, const void* safe) {
  constexpr int CH = D / 8;
  for (int idx = threadIdx.x; idx < ROWS * CH; idx += NT) {
    const int r = idx / CH, c = (idx % CH) * 8;
    T* dst = s + Layout::at(r, c / 8, ROWS);
    const T* src = g + r * ld_g + c;
    const int n = r < valid_rows ? min(8, max(0, dim - c)) : 0;
    if (async_ok) {
      cp_async16(dst, n > 0 ? static_cast<const void*>(src) : safe, n * int(sizeof(T)));
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = e < n ? src[e] : T(0.f);
    }
  }
}

// load_tile for a whole tile (all ROWS rows valid, dim == D, 16-byte aligned): no bounds or
// sizes per chunk, and the shared address converted once rather than per chunk. In the
// forward's key loop the per-chunk tests and conversions were among the most stalled
// instructions (check 10). Used for K/V tiles by the unmasked forward and dq pass
// (load_key_tiles); the masked kernels and the key pass keep load_tile (spills otherwise).
template <class T, int ROWS, int D, int NT, class Layout = PaddedRows<D>>
__device__ __forceinline__ void load_whole_tile(T* s, const T* g, int64_t ld_g) {
  constexpr int CH = D / 8;
  const uint32_t s0 = smem_addr(s);
  if constexpr (NT % CH == 0 && ROWS * CH % NT == 0) {
    // A thread copies chunk column c of rows r, r + NT/CH, ...: one pointer stepped by a
    // constant, shared offsets folded into the instruction (the swizzle repeats every 8 rows,
    // so the step is constant there too when NT/CH is a multiple of 8).
    constexpr int kRowStep = NT / CH;
    static_assert(kRowStep % Layout::kRowPeriod == 0, "load_whole_tile: the row step breaks the layout's period");
    const int r = int(threadIdx.x) / CH, c = int(threadIdx.x) % CH;
    const T* src = g + r * ld_g + 8 * c;
    const uint32_t dst = s0 + uint32_t(Layout::at(r, c, ROWS) * sizeof(T));
    const uint32_t step = uint32_t(Layout::at(kRowStep, 0, ROWS) * sizeof(T));  // at(0, 0) is 0
#pragma unroll
    for (int i = 0; i < ROWS / kRowStep; ++i) cp_async16_whole(dst + uint32_t(i) * step, src + i * kRowStep * ld_g);
  } else {
#pragma unroll
    for (int i = 0; i < (ROWS * CH + NT - 1) / NT; ++i) {
      const int idx = int(threadIdx.x) + i * NT;
      if (ROWS * CH % NT != 0 && idx >= ROWS * CH) break;
      const int r = idx / CH, c = idx % CH;
      cp_async16_whole(s0 + uint32_t(Layout::at(r, c, ROWS) * sizeof(T)), g + r * ld_g + 8 * c);
    }
  }
}

// Writes `ROWS` rows of a padded smem tile to global memory (row stride `ld_g`): rows
// < `valid_rows`, columns < `dim` only, 16-byte stores where `vec_ok` (aligned) allows.
template <class T, int ROWS, int D, int NT>
__device__ __forceinline__ void store_tile(T* g, int64_t ld_g, const T* s, int valid_rows, int dim,
                                           bool vec_ok) {
  constexpr int LD = padded_ld<D>(), CH = D / 8;
  for (int idx = threadIdx.x; idx < ROWS * CH; idx += NT) {
    const int r = idx / CH, c = (idx % CH) * 8;
    if (r >= valid_rows || c >= dim) continue;
    const T* src = s + r * LD + c;
    T* dst = g + r * ld_g + c;
    if (vec_ok && c + 8 <= dim) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int e = 0; e < min(8, dim - c); ++e) dst[e] = src[e];
    }
  }
}

// A warp's float fragment (16 x N), rows g scaled by mul_lo and rows g + 8 by mul_hi, rounded
// to T into rows row0 .. row0 + 15 of a shared tile of ROWS rows laid out as Layout (staging
// for coalesced stores, or an MMA operand).
template <class T, int N, class Layout, int ROWS = 0>
__device__ __forceinline__ void fragment_to_smem(T* s, int row0, const float (&c)[N / 8][4], float mul_lo,
                                                 float mul_hi) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < N / 8; ++j) {
    *reinterpret_cast<uint32_t*>(s + Layout::at(row0 + g, j, ROWS) + 2 * t) =
        pack2<T>(c[j][0] * mul_lo, c[j][1] * mul_lo);
    *reinterpret_cast<uint32_t*>(s + Layout::at(row0 + g + 8, j, ROWS) + 2 * t) =
        pack2<T>(c[j][2] * mul_hi, c[j][3] * mul_hi);
  }
}

}  // namespace pfa::attention::mma
