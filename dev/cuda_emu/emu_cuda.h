// Host emulation of the CUDA subset conv_cuda.cu uses: blocks run one after another, each
// with blockDim std::threads and a std::barrier for __syncthreads; mma.sync is emulated per
// warp from the PTX fragment layout.
#pragma once
#include <atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include "common/pfa.h"

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#include <cuda_runtime.h>
// The runtime calls the kernels' host code makes, answered as a device with 227 KB of shared
// memory per block and 2 SMs holding one block each (so grids sized to the resident blocks are
// small, and their blocks walk many rows).
extern "C" {
inline const char* cudaGetErrorString(cudaError_t) { return "emu error"; }
inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? 2 : 227 * 1024;
  return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, const void*, int, size_t, unsigned) {
  *n = 1;
  return cudaSuccess;
}
}
template <class K> cudaError_t cudaFuncSetAttribute(K*, cudaFuncAttribute, int) { return cudaSuccess; }
// Every kernel "loaded" as sm_90a code: the emulator runs the sm_90a paths (wgmma) too.
template <class K> cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, K*) {
  *a = cudaFuncAttributes{};
  a->binaryVersion = a->ptxVersion = 90;
  return cudaSuccess;
}

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
inline thread_local std::barrier<>* emu_bar = nullptr;
inline void __syncthreads() { emu_bar->arrive_and_wait(); }
alignas(16) inline unsigned char emu_dyn_smem[256 * 1024];
inline long emu_blocks_run = 0;

// A warp: its 32 threads meet at `bar` for every warp-wide operation, exchanging values
// through the slots (shuffles, votes, ldmatrix addresses, mma fragments).
struct EmuWarp {
  std::barrier<> bar{32};
  uint64_t slot[32];
  const void* addr[32];
  uint32_t a[32][4], b[32][2];
};
inline thread_local EmuWarp* emu_warp = nullptr;
inline thread_local int emu_lane = 0;
// The wgmma a thread has committed in groups, and issued since its last commit, that have not
// run yet (common/wgmma.cuh: with EMU_WGMMA_LATE=1 they run when a wait retires them).
inline thread_local std::vector<std::vector<std::function<void()>>> emu_wgmma_groups;
inline thread_local std::vector<std::function<void()>> emu_wgmma_open;
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp->bar.arrive_and_wait(); }
template <class V>
V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  static_assert(sizeof(V) <= sizeof(uint64_t));
  std::memcpy(&emu_warp->slot[emu_lane], &v, sizeof(V));
  __syncwarp();
  V r;
  std::memcpy(&r, &emu_warp->slot[emu_lane ^ lane_mask], sizeof(V));
  __syncwarp();
  return r;
}
inline int __any_sync(unsigned, int pred) {
  emu_warp->slot[emu_lane] = pred != 0;
  __syncwarp();
  int any = 0;
  for (int l = 0; l < 32; ++l) any |= int(emu_warp->slot[l]);
  __syncwarp();
  return any;
}
// Device math intrinsics the kernels use, with their IEEE meaning.
inline uint32_t __float_as_uint(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __fmul_rn(float a, float b) { return a * b; }  // rounded, never fused into an FMA
// Blocks run one after another, but a block's threads concurrently: an atomic read-modify-write.
inline float atomicAdd(float* address, float v) { return std::atomic_ref<float>(*address).fetch_add(v); }

// Shared-space address of a pointer into the (only) shared memory: the dynamic buffer.
inline uint32_t emu_smem_offset(const void* p) {
  const auto off = static_cast<const unsigned char*>(p) - emu_dyn_smem;
  if (off < 0 || off >= std::ptrdiff_t(sizeof(emu_dyn_smem))) throw std::runtime_error("emu: not a shared address");
  return uint32_t(off);
}

#include <map>
inline std::map<std::string, long> emu_launches;
inline std::string emu_name(const char* fn, const char* k) {
  std::string f(fn), key = std::string(k) == "kernel" ? f.substr(0, f.find('(')) : k;
  const size_t w = f.find("[with T = ");
  return key.substr(key.rfind(' ') + 1) + (w != std::string::npos ? " " + f.substr(w + 5, f.find_first_of(";]", w) - w - 5) : "");
}
// Blocks run one after another on blockDim persistent threads (one per CUDA thread of a
// block), which meet at a gate between blocks. A thread that returns drops out of its block's
// and warp's barriers, as an exited GPU thread no longer takes part in them.
inline void emu_launch(dim3 g, dim3 b, size_t smem, cudaStream_t, const std::function<void()>& fn, const std::string& name) {
  ++emu_launches[name];
  if (smem > sizeof(emu_dyn_smem)) throw std::runtime_error("emu: dynamic smem too large");
  if (g.x == 0 || g.y == 0 || g.z == 0) throw std::runtime_error("emu: empty grid (invalid configuration)");
  const int nt = int(b.x * b.y * b.z);
  if (nt % 32 != 0) throw std::runtime_error("emu: block size not a multiple of 32");
  const long blocks = long(g.x) * g.y * g.z;
  std::barrier<> gate(nt);
  std::unique_ptr<std::barrier<>> bar;
  std::unique_ptr<EmuWarp[]> warps;
  std::vector<std::thread> ts;
  for (int t = 0; t < nt; ++t)
    ts.emplace_back([&, t] {
      for (long i = 0; i < blocks; ++i) {
        gate.arrive_and_wait();  // every thread is done with block i - 1
        if (t == 0) {
          std::memset(emu_dyn_smem, 0xFF, smem);  // garbage: NaN in every float format, so a read
                                                  // before a write shows even times zero
          bar = std::make_unique<std::barrier<>>(nt);
          warps = std::make_unique<EmuWarp[]>(size_t(nt / 32));
        }
        gate.arrive_and_wait();
        threadIdx = make_uint3(t % b.x, (t / b.x) % b.y, t / (b.x * b.y));
        blockIdx = make_uint3(unsigned(i % g.x), unsigned(i / g.x % g.y), unsigned(i / (long(g.x) * g.y)));
        blockDim = b;
        gridDim = g;
        emu_bar = bar.get();
        emu_warp = &warps[size_t(t / 32)];
        emu_lane = t % 32;
        fn();
        if (!emu_wgmma_groups.empty() || !emu_wgmma_open.empty())
          throw std::runtime_error("emu: " + name + " ended with wgmma it never waited for");
        emu_warp->bar.arrive_and_drop();
        emu_bar->arrive_and_drop();
      }
    });
  for (auto& th : ts) th.join();
  emu_blocks_run += blocks;
}

#include "common/cuda_utils.cuh"  // the real helpers: checks, dtype dispatch, conversions
using std::max;
using std::min;
