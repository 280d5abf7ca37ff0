// Warp-level m16n8k16 emulation (row.col, f32 accumulate) from the PTX fragment layout.
#pragma once
#include <mutex>
namespace pfa::conv::dev {
struct EmuWarp { uint32_t a[32][4], b[32][2]; };
inline EmuWarp emu_warps[64];
inline float emu_elem(uint32_t r, int half, bool bf) {
  const uint16_t bits = uint16_t(half ? r >> 16 : r & 0xffff);
  if (bf) { __nv_bfloat16 v; std::memcpy(&v, &bits, 2); return __bfloat162float(v); }
  __half v; std::memcpy(&v, &bits, 2); return __half2float(v);
}
inline void emu_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  EmuWarp& w = emu_warps[warp];
  for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
  for (int i = 0; i < 2; ++i) w.b[lane][i] = b[i];
  __syncthreads();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, q = l & 3;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * q + h] = emu_elem(w.a[l][0], h, bf);
      A[g + 8][2 * q + h] = emu_elem(w.a[l][1], h, bf);
      A[g][2 * q + 8 + h] = emu_elem(w.a[l][2], h, bf);
      A[g + 8][2 * q + 8 + h] = emu_elem(w.a[l][3], h, bf);
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
  __syncthreads();
}
}  // namespace pfa::conv::dev
