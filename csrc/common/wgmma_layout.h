// The shared-memory layout every sm_90a warpgroup MMA operand here uses, and the 64-bit matrix
// descriptors that describe it to wgmma.mma_async (PTX ISA, "Matrix Descriptor Format" and
// "Canonical Layouts"). Plain integer maths, shared by the kernels (common/wgmma.cuh) and the
// host emulator, which decodes the descriptors on its own from the PTX canonical layouts.
//
// Swizzled tile: ROWS rows x C columns of 16-bit elements, C a multiple of 64, stored as
// C / 64 panels of ROWS x 64. In a panel, row r takes 128 bytes at r * 128, and its 16-byte
// chunk c (columns 8 c .. 8 c + 7) sits at chunk slot c ^ (r % 8): the 128-byte swizzle,
// address bits [4, 7) ^= bits [7, 10), so that the 8 rows of a core matrix lie in 8 distinct
// bank groups. The tile starts on a 1024-byte boundary (the swizzle's period), so descriptor
// base offsets are 0.
//
// A tile serves wgmma two ways:
//   K-major (rows = M or N, columns = K; Q and K for S = Q K^T): the 16 columns of k-step ks
//     start at panel 16 ks / 64, byte 2 (16 ks % 64) of row 0; 8-row groups 1024 bytes apart
//     (stride byte offset); the leading byte offset is unused with swizzling.
//   MN-major (rows = K, columns = N; V for O += P V, transposed by the instruction): k-step ks
//     starts at row 16 ks of panel 0; 8-row groups (k) 1024 bytes apart (stride byte offset),
//     64-column panels (n) ROWS * 128 bytes apart (leading byte offset).
#pragma once
#include <cstdint>

#include "common/pfa.h"

namespace pfa::wgmma {

constexpr int kPanelCols = 64;       // 16-bit elements in a 128-byte swizzled row
constexpr int kSwizzleBytes = 1024;  // 8 rows of 128 bytes: the swizzle's period

// Byte offset of row r, 8-column chunk c of a swizzled tile of `rows` rows.
PFA_HD uint32_t swizzled_chunk(int r, int c, int rows) {
  return uint32_t((c / 8) * rows * 128 + r * 128 + (((c % 8) ^ (r % 8)) << 4));
}

// The descriptor of a 128-byte-swizzled operand at shared address `start`.
PFA_HD uint64_t descriptor(uint32_t start, uint32_t leading_bytes, uint32_t stride_bytes) {
  constexpr uint64_t kSwizzle128B = 1;
  return uint64_t((start & 0x3FFFF) >> 4) | uint64_t((leading_bytes & 0x3FFFF) >> 4) << 16 |
         uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32 | kSwizzle128B << 62;
}

// K-major operand: k-step ks of a swizzled tile of `rows` rows at shared address `tile`.
PFA_HD uint64_t k_major_desc(uint32_t tile, int ks, int rows) {
  return descriptor(tile + uint32_t((16 * ks / kPanelCols) * rows * 128 + (16 * ks % kPanelCols) * 2), 16,
                    kSwizzleBytes);
}
// MN-major operand: k-step ks (rows 16 ks ..) of a swizzled tile of `rows` rows.
PFA_HD uint64_t mn_major_desc(uint32_t tile, int ks, int rows) {
  return descriptor(tile + uint32_t(16 * ks * 128), uint32_t(rows * 128), kSwizzleBytes);
}

}  // namespace pfa::wgmma
