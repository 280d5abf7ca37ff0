// Emulation of csrc/common/wgmma.cuh (found first on the emulator's include path). A wgmma
// runs when issued, the earliest a real one may; with EMU_WGMMA_LATE=1 it runs when a
// wait_group retires its commit group, the latest: it reads its shared-memory and register A
// operands and writes its accumulators only then. A kernel must be right both ways, which
// checks the asynchrony rules as far as data goes: no accumulator read before its wait, no
// operand overwritten before it. Fences are no-ops (the emulator has one memory).
//
// Operands in shared memory are read through the descriptor alone, decoded from the PTX ISA's
// canonical 128-byte-swizzle layouts (in 16-bit elements, T = 8 per 16 bytes):
//   K-major:  ((8, m), (T, 2k)) : ((8T, SBO), (1, T))        rows (M or N) x k
//   MN-major: ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO))  n x k
// then Swizzle<3, 4, 3> on the byte address (bits [4, 7) ^= bits [7, 10)), independently of
// common/wgmma_layout.h's swizzled_chunk, which the kernels use to write the tiles.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <stdexcept>

#include "common/wgmma_layout.h"
#include "emu_mma.h"

namespace pfa::wgmma {

inline void fence() {}
inline void fence_async_shared() {}
inline bool emu_wgmma_late() {
  const char* v = std::getenv("EMU_WGMMA_LATE");
  return v && std::atoi(v) == 1;
}
inline void emu_wgmma_issue(std::function<void()> op) {
  if (emu_wgmma_late())
    emu_wgmma_open.push_back(std::move(op));
  else
    op();
}
inline void commit_group() {  // a group, possibly empty, as in PTX
  emu_wgmma_groups.push_back(std::move(emu_wgmma_open));
  emu_wgmma_open.clear();
}
template <int N>
inline void wait_group() {
  if (!emu_wgmma_open.empty()) throw std::runtime_error("emu: wait_group with uncommitted wgmma");
  while (emu_wgmma_groups.size() > size_t(N)) {
    for (auto& op : emu_wgmma_groups.front()) op();
    emu_wgmma_groups.erase(emu_wgmma_groups.begin());
  }
}
template <class E, int N>
inline void fence_operand(E (&)[N][4]) {}

// Element (mn, k) of a 16-bit operand of one k-step (k < 16) in shared memory.
inline float emu_operand(uint64_t desc, int mn, int k, bool mn_major, bool bf) {
  const uint32_t start = uint32_t(desc & 0x3FFF) << 4, lbo = uint32_t(desc >> 16 & 0x3FFF) << 4,
                 sbo = uint32_t(desc >> 32 & 0x3FFF) << 4;
  if ((desc >> 62) != 1 || (desc >> 49 & 7) != 0)
    throw std::runtime_error("emu: wgmma descriptor is not 128-byte swizzle with base offset 0");
  const uint32_t off = mn_major ? uint32_t(mn % 64) * 2 + uint32_t(mn / 64) * lbo + uint32_t(k % 8) * 128 + uint32_t(k / 8) * sbo
                                : uint32_t(mn % 8) * 128 + uint32_t(mn / 8) * sbo + uint32_t(k) * 2;
  const uint32_t addr = start + off, phys = addr ^ (((addr >> 7) & 7) << 4);
  if (phys + 2 > sizeof(emu_dyn_smem)) throw std::runtime_error("emu: wgmma operand outside shared memory");
  uint16_t bits;
  std::memcpy(&bits, emu_dyn_smem + phys, 2);
  return emu_elem(bits, 0, bf);
}

// This lane's accumulators d[j][e] (row 16 w + g + 8 (e / 2), column 8 j + 2 t + (e % 2) of the
// warpgroup's 64 x N tile, w the warp within the warpgroup) += sum over k of A(row, k) B(k, col).
template <int N, class A>
inline void emu_wgmma(float (&d)[N / 8][4], A a_at, uint64_t b_desc, bool b_mn_major, bool accumulate, bool bf) {
  const int w = int(threadIdx.x / 32) % 4, g = emu_lane >> 2, t = emu_lane & 3;
  for (int j = 0; j < N / 8; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * w + g + 8 * (e >> 1), col = 8 * j + 2 * t + (e & 1);
      float s = 0.f;
      for (int k = 0; k < 16; ++k) s += a_at(row, k) * emu_operand(b_desc, col, k, b_mn_major, bf);
      d[j][e] = accumulate ? d[j][e] + s : s;
    }
}

template <class T, int N, bool A_MN_MAJOR = false, bool B_MN_MAJOR = false>
inline void mma_ss(float (&d)[N / 8][4], uint64_t a_desc, uint64_t b_desc, bool accumulate) {
  static_assert(N == 32 || N == 64 || N == 128, "wgmma::mma_ss: N is 32, 64 or 128");
  constexpr bool bf = std::is_same_v<T, __nv_bfloat16>;
  emu_wgmma_issue([&d, a_desc, b_desc, accumulate] {
    emu_wgmma<N>(d, [&](int row, int k) { return emu_operand(a_desc, row, k, A_MN_MAJOR, bf); }, b_desc, B_MN_MAJOR,
                 accumulate, bf);
  });
}

// A from the warp's registers: mma.sync's m16k16 A fragment (emu_mma.h) of the warp's 16 rows.
template <class T, int N>
inline void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b_desc, bool accumulate) {
  constexpr bool bf = std::is_same_v<T, __nv_bfloat16>;
  emu_wgmma_issue([&d, &a, b_desc, accumulate] {  // every lane runs it at the same point: the exchange works
    EmuWarp& w = *emu_warp;
    for (int i = 0; i < 4; ++i) w.a[emu_lane][i] = a[i];
    __syncwarp();
    float A[16][16];
    emu_a_operand(A, w, bf);
    __syncwarp();
    emu_wgmma<N>(d, [&](int row, int k) { return A[row % 16][k]; }, b_desc, true, accumulate, bf);
  });
}

}  // namespace pfa::wgmma
