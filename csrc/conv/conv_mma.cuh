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

}  // namespace pfa::conv::dev
