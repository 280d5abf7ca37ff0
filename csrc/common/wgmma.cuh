// Warpgroup-level tensor-core MMA for sm_90a (wgmma.mma_async, m64nNk16, float32 accumulate):
// a warpgroup (4 consecutive warps, 128 threads) multiplies a 64-row A by an N-column B in
// one asynchronous instruction, B (and A, or A from registers) read straight from shared
// memory through descriptors (common/wgmma_layout.h). sm_90a only: callers compile their
// wgmma code for that arch alone. The host emulator (dev/cuda_emu) replaces this file with its
// own implementation of the same functions.
//
// Accumulator d[j][e] of warp w (of the warpgroup) holds row 16 w + g + 8 (e / 2), column
// 8 j + 2 t + (e % 2), g = lane / 4, t = lane % 4: per warp the m16n8 layout of mma.sync, so
// the attention softmax code serves both. A from registers takes mma.sync's A fragment of the
// warp's 16 rows.
//
// Asynchrony rules the callers follow: fence() before the first wgmma of a batch whose
// accumulator or A registers other instructions wrote; commit_group() after the batch;
// wait_group<0>() before reading the accumulators (then fence_operand() so that the compiler
// does not move those reads above the wait); fence_async_shared() after shared memory is
// written by ordinary or cp.async stores and before a barrier, so that the wgmma (the async
// proxy) sees the data.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/wgmma_layout.h"

namespace pfa::wgmma {

__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// The accumulators (or register A fragments) count as rewritten here: reads after a wait_group
// stay after it, and registers a wgmma still reads are not reused before it.
template <class E, int N>
__device__ __forceinline__ void fence_operand(E (&x)[N][4]) {
  static_assert(std::is_same_v<E, float> || std::is_same_v<E, uint32_t>, "fence_operand: accumulators or A fragments");
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (std::is_same_v<E, float>)
        asm volatile("" : "+f"(x[i][e])::"memory");
      else
        asm volatile("" : "+r"(x[i][e])::"memory");
    }
}

#define PFA_WG_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define PFA_WG_OUT16 PFA_WG_D4(0), PFA_WG_D4(1), PFA_WG_D4(2), PFA_WG_D4(3)
#define PFA_WG_OUT32 PFA_WG_OUT16, PFA_WG_D4(4), PFA_WG_D4(5), PFA_WG_D4(6), PFA_WG_D4(7)
#define PFA_WG_OUT64 PFA_WG_OUT32, PFA_WG_D4(8), PFA_WG_D4(9), PFA_WG_D4(10), PFA_WG_D4(11), PFA_WG_D4(12), \
                     PFA_WG_D4(13), PFA_WG_D4(14), PFA_WG_D4(15)
#define PFA_WG_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define PFA_WG_D32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define PFA_WG_D64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// D (+)= A B, both in shared memory. Operands after the N / 2 accumulators: descriptors of A
// and B, the accumulate flag (scale-d = 0 overwrites D), then imm-trans-a / imm-trans-b
// (1: the operand is MN-major).
#define PFA_WGMMA_SS(SHAPE, TY, DLIST, IA, IB, ID, ITA, ITB, OUTS)                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ID ", 0;\n"                                       \
                "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " DLIST ", %" IA ", %" IB       \
                ", p, 1, 1, %" ITA ", %" ITB ";\n}\n"                                                  \
                : OUTS                                                                                 \
                : "l"(a_desc), "l"(b_desc), "r"(int(accumulate)), "n"(int(A_MN_MAJOR)), "n"(int(B_MN_MAJOR)))
// D (+)= A B, A from registers (4 x 2 elements), B MN-major in shared memory (imm-trans-b = 1).
#define PFA_WGMMA_RS(SHAPE, TY, DLIST, IA0, IA1, IA2, IA3, IB, ID, OUTS)                              \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ID ", 0;\n"                                       \
                "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " DLIST ", {%" IA0 ", %" IA1   \
                ", %" IA2 ", %" IA3 "}, %" IB ", p, 1, 1, 1;\n}\n"                                     \
                : OUTS                                                                                 \
                : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc), "r"(int(accumulate)))

template <class T>
constexpr bool kIsBf16 = std::is_same_v<T, __nv_bfloat16>;

// D(64 x N) = A B (+ D where `accumulate`): A (64 x 16) and B (16 x N) in shared memory, each
// K-major (A stored [m][k], B [n][k]) or, where its flag says, MN-major (A [k][m], B [k][n]).
template <class T, int N, bool A_MN_MAJOR = false, bool B_MN_MAJOR = false>
__device__ __forceinline__ void mma_ss(float (&d)[N / 8][4], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
  static_assert(N == 32 || N == 64 || N == 128, "wgmma::mma_ss: N is 32, 64 or 128");
  if constexpr (N == 32 && kIsBf16<T>) PFA_WGMMA_SS("m64n32k16", "bf16", PFA_WG_D16, "16", "17", "18", "19", "20", PFA_WG_OUT16);
  else if constexpr (N == 32) PFA_WGMMA_SS("m64n32k16", "f16", PFA_WG_D16, "16", "17", "18", "19", "20", PFA_WG_OUT16);
  else if constexpr (N == 64 && kIsBf16<T>) PFA_WGMMA_SS("m64n64k16", "bf16", PFA_WG_D32, "32", "33", "34", "35", "36", PFA_WG_OUT32);
  else if constexpr (N == 64) PFA_WGMMA_SS("m64n64k16", "f16", PFA_WG_D32, "32", "33", "34", "35", "36", PFA_WG_OUT32);
  else if constexpr (kIsBf16<T>) PFA_WGMMA_SS("m64n128k16", "bf16", PFA_WG_D64, "64", "65", "66", "67", "68", PFA_WG_OUT64);
  else PFA_WGMMA_SS("m64n128k16", "f16", PFA_WG_D64, "64", "65", "66", "67", "68", PFA_WG_OUT64);
}

// D(64 x N) = A B (+ D): A (64 x 16) the warps' register fragments, B (16 x N) MN-major.
template <class T, int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_desc,
                                       bool accumulate) {
  static_assert(N == 64 || N == 128, "wgmma::mma_rs: N is 64 or 128");
  if constexpr (N == 64 && kIsBf16<T>) PFA_WGMMA_RS("m64n64k16", "bf16", PFA_WG_D32, "32", "33", "34", "35", "36", "37", PFA_WG_OUT32);
  else if constexpr (N == 64) PFA_WGMMA_RS("m64n64k16", "f16", PFA_WG_D32, "32", "33", "34", "35", "36", "37", PFA_WG_OUT32);
  else if constexpr (kIsBf16<T>) PFA_WGMMA_RS("m64n128k16", "bf16", PFA_WG_D64, "64", "65", "66", "67", "68", "69", PFA_WG_OUT64);
  else PFA_WGMMA_RS("m64n128k16", "f16", PFA_WG_D64, "64", "65", "66", "67", "68", "69", PFA_WG_OUT64);
}

#undef PFA_WGMMA_SS
#undef PFA_WGMMA_RS
#undef PFA_WG_D4
#undef PFA_WG_OUT16
#undef PFA_WG_D16
#undef PFA_WG_OUT32
#undef PFA_WG_OUT64
#undef PFA_WG_D32
#undef PFA_WG_D64

}  // namespace pfa::wgmma
