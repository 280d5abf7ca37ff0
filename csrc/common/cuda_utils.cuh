// CUDA-side helpers shared by every family: error checks that throw (pybind11 turns
// them into Python RuntimeError), dtype dispatch to the device storage types, and
// float conversions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common/pfa.h"

#define PFA_CUDA_CHECK(expr)                                                          \
  do {                                                                                \
    cudaError_t pfa_err_ = (expr);                                                    \
    if (pfa_err_ != cudaSuccess)                                                      \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(pfa_err_) + \
                               " at " __FILE__ ":" + std::to_string(__LINE__) + " (" #expr ")"); \
  } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define PFA_CHECK_LAUNCH() PFA_CUDA_CHECK(cudaGetLastError())

namespace pfa {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Two floats rounded to T (nearest even) in one 32-bit word, `lo` in the low half: one
// cvt instruction for the pair.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Calls f(T{}) with T the device storage type for `dtype` (no float64 on the GPU).
template <class F>
void dispatch_cuda_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); return;
    case DType::Float16: f(__half{}); return;
    case DType::BFloat16: f(__nv_bfloat16{}); return;
    default: break;
  }
  throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) +
                              " is not supported on CUDA (use float32, float16 or bfloat16)");
}

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Shared memory one block may opt in to on the current device (past the default 48 KB).
inline size_t smem_optin() {
  int dev = 0, bytes = 0;
  PFA_CUDA_CHECK(cudaGetDevice(&dev));
  PFA_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return size_t(bytes);
}

// Blocks of `kernel` (block_threads threads, dynamic_smem bytes of dynamic shared memory)
// that are resident on the current device at once: a grid of at most this many never waits
// for a second wave. The answer is fixed per (kernel, block size, shared memory, device), so
// the runtime is asked once and the launches after that only look it up.
template <class Kernel>
int resident_blocks(Kernel kernel, int block_threads, size_t dynamic_smem = 0) {
  int device = 0;
  PFA_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, int>, int> known;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), block_threads, dynamic_smem, device);
  std::lock_guard<std::mutex> lock(mutex);
  if (const auto it = known.find(key); it != known.end()) return it->second;
  int sms = 0, per_sm = 0;
  PFA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  PFA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, block_threads, dynamic_smem));
  return known[key] = (per_sm > 0 ? per_sm : 1) * sms;
}

}  // namespace pfa
