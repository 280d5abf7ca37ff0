// Asynchronous global -> shared copies (cp.async, sm_80+), shared by the attention tiles and
// the norm backward's staged rows. A copy lands in shared memory some time after it is
// issued; cp_async_wait<N> returns once all but the N most recent commit groups of this
// thread have landed, and only this thread is sure to see them (other threads: a barrier).
#pragma once
#include <cstdint>

namespace pfa {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy; bytes < 16 zero-fills the rest (bytes = 0: pure zero fill,
// nothing is read from src).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(bytes));
}
// The same for a whole 16-byte chunk, to a shared-space address (smem_addr).
__device__ __forceinline__ void cp_async16_whole(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
// 4-byte asynchronous copy (through L1: .cg takes 16 bytes only); bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// The "memory" clobber keeps the compiler from moving shared-memory reads of the landed data
// above the wait.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

}  // namespace pfa
