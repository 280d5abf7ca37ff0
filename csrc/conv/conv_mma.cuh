// Tensor-core building blocks for the convolution family's implicit-GEMM kernels:
// mma.sync m16n8k16 (row-major A, column-major B, float accumulate) for float16 and
// bfloat16, and packing of two 16-bit values into the 32-bit fragment registers.
//
// Fragment layout of m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"), with
// g = lane / 4 and q = lane % 4:
//   A (16x16): a0 = A[g][2q..2q+1],   a1 = A[g+8][2q..2q+1],
//              a2 = A[g][2q+8..2q+9], a3 = A[g+8][2q+8..2q+9]
//   B (16x8):  b0 = B[2q..2q+1][g],   b1 = B[2q+8..2q+9][g]
//   C (16x8):  c0,c1 = C[g][2q..2q+1], c2,c3 = C[g+8][2q..2q+1]
// Shared tiles are stored k-contiguous ([row][k] for A, [col][k] for B), so every
// fragment register is one aligned 32-bit shared load.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace pfa::conv::dev {

template <class T> struct Mma;

template <>
struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

__device__ __forceinline__ uint16_t bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint16_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// The element with the lower k goes to the low half (the fragment's first element).
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// One 32-bit shared-memory load of two adjacent 16-bit elements.
template <class T>
__device__ __forceinline__ uint32_t lds32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// The block tile both implicit GEMMs use: C (64 x 64) += A (64 x 32) * B (32 x 64) per K
// tile, A and B in shared memory as [row][k] with k contiguous; 128 threads = four warps,
// each owning a 32 x 32 quarter of C (2 x 4 m16n8k16 tiles). The +8 padding of a row
// (80 bytes) puts the eight rows a fragment load touches on distinct banks.
constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kRowK = kTileK + 8;

template <class T>
using SmemTile = T[kTileM][kRowK];

// Packs 16 16-bit values (raw bits) into eight words, v[2j] in the low half of r[j]: a
// row's 16 consecutive k (fragment order), or one k of 16 consecutive rows.
__device__ __forceinline__ void pack16(const uint16_t (&v)[16], uint32_t (&r)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) r[j] = pack2(v[2 * j], v[2 * j + 1]);
}

// A loader thread's 16 k-values of one row, as two 16-byte shared stores (the row offset
// is 80 bytes and the 16-value half 32 bytes, so both stay 16-byte aligned).
template <class T>
__device__ __forceinline__ void store_row16(T* dst, const uint32_t (&r)[8]) {
  uint4* d = reinterpret_cast<uint4*>(dst);
  d[0] = make_uint4(r[0], r[1], r[2], r[3]);
  d[1] = make_uint4(r[4], r[5], r[6], r[7]);
}

// One k of rows r0 .. r0 + 15 (packed by pack16) into a tile: 16 two-byte shared stores,
// for loaders whose lanes run along k (a warp's 32 lanes fill 64 contiguous bytes of a row).
template <class T>
__device__ __forceinline__ void store_col16(SmemTile<T>& tile, int r0, int k, const uint32_t (&r)[8]) {
  uint16_t* t = reinterpret_cast<uint16_t*>(&tile[0][0]);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    t[(r0 + 2 * j) * kRowK + k] = uint16_t(r[j] & 0xffffu);
    t[(r0 + 2 * j + 1) * kRowK + k] = uint16_t(r[j] >> 16);
  }
}

// acc[i][j] (rows wm + 16i .., cols wn + 8j ..) += A[rows][0:32] * B[cols][0:32]^T.
template <class T>
__device__ __forceinline__ void mma_k32(const SmemTile<T>& A, const SmemTile<T>& B,
                                        float (&acc)[2][4][4], int wm, int wn, int lane) {
  const int gr = lane >> 2, q2 = (lane & 3) * 2;
#pragma unroll
  for (int ks = 0; ks < kTileK; ks += 16) {
    uint32_t af[2][4], bf[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const T* a = &A[wm + i * 16 + gr][ks + q2];
      af[i][0] = lds32(a);
      af[i][1] = lds32(a + 8 * kRowK);
      af[i][2] = lds32(a + 8);
      af[i][3] = lds32(a + 8 * kRowK + 8);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const T* b = &B[wn + j * 8 + gr][ks + q2];
      bf[j][0] = lds32(b);
      bf[j][1] = lds32(b + 8);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Mma<T>::run(acc[i][j], af[i], bf[j]);
  }
}

}  // namespace pfa::conv::dev
