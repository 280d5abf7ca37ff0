// Warp-level tensor-core instructions emulated from the PTX fragment layouts: mma.sync
// m16n8k16 (row.col, f32 accumulate) and ldmatrix x4 (wgmma: common/wgmma.cuh next to this
// file). Each lane passes its part; the warp meets at its barrier (emu_cuda.h) to exchange them.
#pragma once
#include <cstdint>
#include <cstring>
inline float emu_elem(uint32_t r, int half, bool bf) {
  const uint16_t bits = uint16_t(half ? r >> 16 : r & 0xffff);
  if (bf) { __nv_bfloat16 v; std::memcpy(&v, &bits, 2); return __bfloat162float(v); }
  __half v; std::memcpy(&v, &bits, 2); return __half2float(v);
}
// The warp's 16 x 16 A operand from the lanes' fragments in w.a (the m16n8k16 A layout, which
// wgmma's register A shares per warp).
inline void emu_a_operand(float (&A)[16][16], const EmuWarp& w, bool bf) {
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * q + h] = emu_elem(w.a[l][0], h, bf);
      A[g + 8][2 * q + h] = emu_elem(w.a[l][1], h, bf);
      A[g][2 * q + 8 + h] = emu_elem(w.a[l][2], h, bf);
      A[g + 8][2 * q + 8 + h] = emu_elem(w.a[l][3], h, bf);
    }
  }
}
inline void emu_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf) {
  const int lane = emu_lane;
  EmuWarp& w = *emu_warp;
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
  __syncwarp();
  float A[16][16], B[16][8];
  emu_a_operand(A, w, bf);
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int h = 0; h < 2; ++h) {
      B[2 * q + h][g] = emu_elem(w.b[l][0], h, bf);
      B[2 * q + 8 + h][g] = emu_elem(w.b[l][1], h, bf);
    }
  }
  const int g = lane >> 2, q = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int r = g + (i >= 2 ? 8 : 0), c = 2 * q + (i & 1);
    float s = 0.f;
    for (int k = 0; k < 16; ++k) s += A[r][k] * B[k][c];
    d[i] += s;
  }
  __syncwarp();
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i .. 8i + 7 give the row addresses
// of 8x8 matrix i; r[i] of lane l holds matrix i's row l / 4, columns 2 (l % 4) and + 1
// (.trans: rows 2 (l % 4) and + 1 of column l / 4), the lower column (row) in the low half.
inline void emu_ldmatrix(uint32_t (&r)[4], const void* p, bool trans) {
  const int lane = emu_lane;
  EmuWarp& w = *emu_warp;
  w.addr[lane] = p;
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!trans) {
      const auto* row = static_cast<const uint16_t*>(w.addr[8 * i + lane / 4]);
      lo = row[2 * (lane % 4)];
      hi = row[2 * (lane % 4) + 1];
    } else {
      lo = static_cast<const uint16_t*>(w.addr[8 * i + 2 * (lane % 4)])[lane / 4];
      hi = static_cast<const uint16_t*>(w.addr[8 * i + 2 * (lane % 4) + 1])[lane / 4];
    }
    r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
  }
  __syncwarp();
}
