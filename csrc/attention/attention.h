// Fused scaled-dot-product attention (FlashAttention-2 algorithm): the one declaration of
// the op family, implemented in attention_cpu.cpp and attention_cuda.cu.
//
// Tensors are addressed through element strides; the head dim is contiguous. Dense inputs
// are (B, H, L, D) viewed with strides (b, h, l). Varlen inputs are (total, H, D): then
// cu_seqlens_* are non-null device/host int32 arrays of batch+1 offsets, stride_b is unused
// and row i of sequence b sits at token cu_seqlens[b] + i.
#pragma once
#include <cstdint>

#include "common/pfa.h"

namespace pfa::attention {

enum class MaskKind : int { None = 0, Bool = 1, Float = 2 };

struct Strided {         // one (B, H, L, D) operand
  const void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_l = 0;
};
struct StridedOut {
  void* ptr = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_l = 0;
};

struct ForwardParams {
  DType dtype;                       // of q, k, v, out (and a float mask)
  int batch = 0, heads_q = 0, heads_kv = 0;  // heads_q % heads_kv == 0 (GQA)
  int len_q = 0, len_k = 0;          // dense lengths; for varlen the max lengths
  int head_dim = 0;                  // 1..256
  const int32_t* cu_seqlens_q = nullptr;  // varlen only (same device as q)
  const int32_t* cu_seqlens_k = nullptr;
  Strided q, k, v;
  StridedOut out;
  float* lse = nullptr;              // (B, Hq, Lq) contiguous float32 (varlen: (Hq, total_q))
  double* lse_f64 = nullptr;         // float64 inputs (CPU only): the LSE in double, used instead
                                     // of lse so that float64 gradients stay exact
  MaskKind mask_kind = MaskKind::None;
  const void* mask = nullptr;        // bool (uint8) or dtype; broadcast dims have stride 0
  int64_t mask_stride_b = 0, mask_stride_h = 0, mask_stride_q = 0, mask_stride_k = 0;
  double scale = 1.0;                // softmax scale (1/sqrt(D) by default); double so float64 stays
                                     // exact (the CUDA kernels take float(scale))
  bool causal = false;               // top-left aligned: key j visible to query i iff j <= i
};

struct BackwardParams {
  ForwardParams fwd;                 // the forward's inputs, out and lse
  Strided dout;
  StridedOut dq, dk, dv;             // dk/dv have heads_q heads when GQA is reduced by the caller,
                                     // or heads_kv heads when the kernel reduces (see kernels)
  int dkv_heads = 0;                 // heads of dk/dv: heads_kv (the kernel sums the GQA group in
                                     // a fixed order; CPU, and CUDA too) or heads_q (CUDA: one query
                                     // head per dk/dv head, the caller sums the group)
  float* delta = nullptr;            // workspace float32, laid out as lse: rowsum(dO * O)
  float* dq_accum = nullptr;         // CUDA, float16/bfloat16, head_dim <= 128: a
                                     // zeroed float32 workspace of lse rows x head_dim; when given,
                                     // the key pass adds dQ there with atomics (one pass, dQ not
                                     // bitwise reproducible; Python decides when). Null: a separate
                                     // deterministic dQ pass over query blocks. The CPU ignores it.
                                     // Not with a float32 dmask (dmask_f32).
  void* dmask = nullptr;             // gradient of a float mask that requires grad (mask dtype), or null:
  int64_t dmask_stride_b = 0, dmask_stride_h = 0, dmask_stride_q = 0;  // (B, Hq, Lq, Lk), last contiguous;
                                     // CUDA writes every element (masked pairs get 0): no zero-fill needed
  bool dmask_f32 = false;            // dmask is float32 although dtype is float16/bfloat16, so the
                                     // broadcast reduction rounds once (CPU and CUDA both honor it)
};

void forward_cpu(const ForwardParams& p);
void backward_cpu(const BackwardParams& p);
#ifdef PFA_WITH_CUDA
void forward_cuda(const ForwardParams& p, uintptr_t stream);
void backward_cuda(const BackwardParams& p, uintptr_t stream);
// Does the current device run the sm_90a warpgroup-MMA kernels (PYFASTATTN_ATTN_FWD_WGMMA=1,
// PYFASTATTN_ATTN_BWD_WGMMA=1)? An sm_90 GPU and a build with sm_90a code.
bool wgmma_available();
#endif

// The warpgroup-MMA operand forms the sm_90a kernels use, each checked alone on the device
// (wgmma_selftest_cuda: tests/attention test_cuda_wgmma_primitives, and the host emulator): C
// (64 x n, float32, row-major) from dense row-major A (a_rows x a_cols) and B (b_rows x b_cols)
// in float16 / bfloat16, which the kernel writes into shared memory in the swizzled layout of
// common/wgmma_layout.h. The shapes are the kernels' own:
//   KMajor:    C = A[a_rows - 64 :] B^T     both K-major, A the second warpgroup's rows (S = Q K^T)
//   Registers: C = A B                      A from registers, B MN-major (O += P V, dV, dK)
//   MNMajor:   C = A^T B[:, b_cols - n :]   both MN-major, B the second warpgroup's columns (dQ = dS K)
enum class WgmmaForm : int { KMajor, Registers, MNMajor };
struct WgmmaSelftestCase {
  const char* name;
  WgmmaForm form;
  int a_rows, a_cols, b_rows, b_cols, n;
};
inline constexpr WgmmaSelftestCase kWgmmaSelftestCases[] = {
    {"S^T = K Q^T (backward, D = 128)", WgmmaForm::KMajor, 128, 128, 64, 128, 64},
    {"S = Q K^T (forward, D = 64)", WgmmaForm::KMajor, 128, 64, 128, 64, 128},
    {"dV += P^T dO (backward, D = 128)", WgmmaForm::Registers, 64, 64, 64, 128, 128},
    {"O += P V (forward, D = 64)", WgmmaForm::Registers, 64, 128, 128, 64, 64},
    {"dQ = dS K (backward, D = 128)", WgmmaForm::MNMajor, 128, 64, 128, 128, 64},
    {"dQ = dS K (backward, D = 64)", WgmmaForm::MNMajor, 128, 64, 128, 64, 32},
};
inline constexpr int kWgmmaSelftestCount = int(sizeof(kWgmmaSelftestCases) / sizeof(kWgmmaSelftestCases[0]));
#ifdef PFA_WITH_CUDA
// Case `index` of kWgmmaSelftestCases (a, b of `dtype`, c float32, device pointers); throws
// where wgmma_available() is false.
void wgmma_selftest_cuda(int index, DType dtype, const void* a, const void* b, float* c, uintptr_t stream);
#endif

}  // namespace pfa::attention
