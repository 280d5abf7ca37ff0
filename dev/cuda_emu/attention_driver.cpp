// Runs the emulated CUDA attention (forward_cuda / backward_cuda) against the CPU kernels on
// the same inputs: every kernel family (tensor-core fp16/bf16 at each head-dim class, float32
// FFMA), masks, causal, GQA, varlen, strided views, partial tiles, rising logits.
#include <cstring>

#include "attention/attention.h"
#include "emu_check.h"
using namespace pfa;
using namespace pfa::attention;
using namespace emu_check;

enum class Mask { None, Bool, Float, FloatGrad, FloatKeys };  // FloatKeys: a (B, 1, 1, Lk) bias

struct Case {
  const char* name;
  DType dt;
  int B, Hq, Hkv, Lq, Lk, D;
  bool causal = false;
  Mask mask = Mask::None;
  bool blhd = false;      // (B, L, H, D) storage viewed as (B, H, L, D)
  float ramp = 0.f;       // logits rising along the keys (the lazy running max)
  bool varlen = false;    // B sequences of lengths Lq - 7 b / Lk - 5 b, packed
};

static void strides(const Case& c, int H, int L, Strided& s) {
  if (c.varlen) s.stride_b = 0, s.stride_h = c.D, s.stride_l = int64_t(H) * c.D;  // (total, H, D)
  else if (c.blhd) s.stride_b = int64_t(L) * H * c.D, s.stride_h = c.D, s.stride_l = int64_t(H) * c.D;
  else s.stride_b = int64_t(H) * L * c.D, s.stride_h = int64_t(L) * c.D, s.stride_l = c.D;
}
template <class S>
static S strided(const Case& c, void* ptr, int H, int L) {
  Strided s;
  strides(c, H, L, s);
  S out;
  out.ptr = ptr;
  out.stride_b = s.stride_b, out.stride_h = s.stride_h, out.stride_l = s.stride_l;
  return out;
}

static void run_case(const Case& c) {
  const std::string nm = std::string(c.name) + (c.dt == DType::Float32 ? " f32" : c.dt == DType::Float16 ? " f16" : " bf16");
  std::vector<int32_t> cu_q(c.B + 1, 0), cu_k(c.B + 1, 0);
  for (int b = 0; b < c.B; ++b) {
    cu_q[b + 1] = cu_q[b] + std::max(0, c.Lq - 7 * b);
    cu_k[b + 1] = cu_k[b] + std::max(0, c.Lk - 5 * b);
  }
  // tokens per head: dense B*L, varlen the packed total
  const int64_t tq = c.varlen ? cu_q[c.B] : int64_t(c.B) * c.Lq, tk = c.varlen ? cu_k[c.B] : int64_t(c.B) * c.Lk;
  Buf q(c.dt, tq * c.Hq * c.D), k(c.dt, tk * c.Hkv * c.D), v(c.dt, tk * c.Hkv * c.D), dout(c.dt, tq * c.Hq * c.D);
  q.randomize(), k.randomize(), v.randomize(), dout.randomize();
  if (c.ramp != 0.f) {  // q > 0 along every dim, k rising along the keys: q.k grows with the key
    Strided ks;
    strides(c, c.Hkv, c.Lk, ks);
    for (size_t i = 0; i < q.n; ++i) q.set(i, std::fabs(q.get(i)) + 0.5f);
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.Hkv; ++h)
        for (int j = 0; j < c.Lk; ++j)
          for (int x = 0; x < c.D; ++x) {
            const size_t i = size_t(b * ks.stride_b + h * ks.stride_h + j * ks.stride_l + x);
            k.set(i, k.get(i) + c.ramp * float(j) / float(c.D));
          }
  }
  ForwardParams p;
  p.dtype = c.dt, p.batch = c.B, p.heads_q = c.Hq, p.heads_kv = c.Hkv, p.len_q = c.Lq, p.len_k = c.Lk;
  p.head_dim = c.D, p.causal = c.causal, p.scale = 1.0 / std::sqrt(double(c.D));
  if (c.varlen) p.cu_seqlens_q = cu_q.data(), p.cu_seqlens_k = cu_k.data();
  p.q = strided<Strided>(c, q.p(), c.Hq, c.Lq);
  p.k = strided<Strided>(c, k.p(), c.Hkv, c.Lk);
  p.v = strided<Strided>(c, v.p(), c.Hkv, c.Lk);
  // masks: (B, Hq, Lq, Lk) dense, or a (B, 1, 1, Lk) key bias read with stride 0
  const int64_t mfull = int64_t(c.B) * c.Hq * c.Lq * c.Lk;
  std::vector<uint8_t> bmask;
  Buf fmask(c.dt, c.mask == Mask::FloatKeys ? int64_t(c.B) * c.Lk : mfull);
  if (c.mask == Mask::Bool) {
    bmask.resize(size_t(mfull));
    std::bernoulli_distribution keep(0.7);
    for (auto& m : bmask) m = keep(rng);
    for (int j = 0; j < c.Lk; ++j) bmask[size_t(j)] = 0;  // row 0 of (0, 0) sees no key
    p.mask_kind = MaskKind::Bool, p.mask = bmask.data();
  } else if (c.mask != Mask::None) {
    fmask.randomize();
    p.mask_kind = MaskKind::Float, p.mask = fmask.p();
  }
  if (c.mask == Mask::FloatKeys) p.mask_stride_b = c.Lk, p.mask_stride_k = 1;
  else if (c.mask != Mask::None)
    p.mask_stride_b = int64_t(c.Hq) * c.Lq * c.Lk, p.mask_stride_h = int64_t(c.Lq) * c.Lk, p.mask_stride_q = c.Lk,
    p.mask_stride_k = 1;

  const int64_t stat = c.varlen ? int64_t(c.Hq) * tq : int64_t(c.B) * c.Hq * c.Lq;
  Buf out_cpu(c.dt, q.n), out_gpu(c.dt, q.n), lse_cpu(DType::Float32, size_t(stat)), lse_gpu(DType::Float32, size_t(stat));
  out_cpu.fill_nan(), out_gpu.fill_nan(), lse_cpu.fill_nan(), lse_gpu.fill_nan();
  ForwardParams pc = p, pg = p;
  pc.out = strided<StridedOut>(c, out_cpu.p(), c.Hq, c.Lq), pc.lse = lse_cpu.f.data();
  pg.out = strided<StridedOut>(c, out_gpu.p(), c.Hq, c.Lq), pg.lse = lse_gpu.f.data();
  forward_cpu(pc);
  forward_cuda(pg, 0);
  compare((nm + " out").c_str(), out_gpu, out_cpu);
  // lse: -inf rows on both sides compare equal; finite ones to float32 rounding of ~|lse|
  Buf lse_c = lse_cpu, lse_g = lse_gpu;
  for (size_t i = 0; i < lse_c.f.size(); ++i)
    if (std::isinf(lse_c.f[i]) && lse_c.f[i] == lse_g.f[i]) lse_c.f[i] = lse_g.f[i] = 0.f;
  compare((nm + " lse").c_str(), lse_g, lse_c, c.dt == DType::Float32 ? 1 : 10);

  // backward from the CPU forward's out and lse, so that only the backward kernels differ
  BackwardParams bp;
  bp.fwd = pc;
  bp.dout = strided<Strided>(c, dout.p(), c.Hq, c.Lq);
  bp.dkv_heads = c.Hkv;
  const bool dmask = c.mask == Mask::FloatGrad;
  Buf dq_c(c.dt, q.n), dq_g(c.dt, q.n), dk_c(c.dt, k.n), dk_g(c.dt, k.n), dv_c(c.dt, v.n), dv_g(c.dt, v.n);
  Buf dm_c(c.dt, dmask ? mfull : 0), dm_g(c.dt, dmask ? mfull : 0);
  for (Buf* b : {&dq_c, &dq_g, &dk_c, &dk_g, &dv_c, &dv_g, &dm_g}) b->fill_nan();  // CUDA writes every dmask element
  std::vector<float> delta(static_cast<size_t>(stat));
  BackwardParams bc = bp, bg = bp;
  bc.dq = strided<StridedOut>(c, dq_c.p(), c.Hq, c.Lq), bg.dq = strided<StridedOut>(c, dq_g.p(), c.Hq, c.Lq);
  bc.dk = strided<StridedOut>(c, dk_c.p(), c.Hkv, c.Lk), bg.dk = strided<StridedOut>(c, dk_g.p(), c.Hkv, c.Lk);
  bc.dv = strided<StridedOut>(c, dv_c.p(), c.Hkv, c.Lk), bg.dv = strided<StridedOut>(c, dv_g.p(), c.Hkv, c.Lk);
  bg.delta = delta.data();
  if (dmask) {
    bc.dmask = dm_c.p(), bg.dmask = dm_g.p();
    for (BackwardParams* b : {&bc, &bg})
      b->dmask_stride_b = int64_t(c.Hq) * c.Lq * c.Lk, b->dmask_stride_h = int64_t(c.Lq) * c.Lk, b->dmask_stride_q = c.Lk;
  }
  backward_cpu(bc);
  backward_cuda(bg, 0);
  const double slack = c.dt == DType::Float32 ? 2 : 1;
  compare((nm + " dq").c_str(), dq_g, dq_c, slack);
  compare((nm + " dk").c_str(), dk_g, dk_c, slack);
  compare((nm + " dv").c_str(), dv_g, dv_c, slack);
  if (dmask) compare((nm + " dmask").c_str(), dm_g, dm_c, slack);
  // one-pass backward (float16/bfloat16, head_dim <= 128): dQ by atomics into dq_accum, dMask
  // from the key pass
  if (c.dt != DType::Float32 && c.D <= 128) {
    std::vector<float> dq_accum(size_t(stat) * c.D, 0.f);
    for (Buf* b : {&dq_g, &dk_g, &dv_g, &dm_g}) b->fill_nan();
    bg.dq_accum = dq_accum.data();
    backward_cuda(bg, 0);
    compare((nm + " dq (one pass)").c_str(), dq_g, dq_c, slack);
    compare((nm + " dk (one pass)").c_str(), dk_g, dk_c, slack);
    compare((nm + " dv (one pass)").c_str(), dv_g, dv_c, slack);
    if (dmask) compare((nm + " dmask (one pass)").c_str(), dm_g, dm_c, slack);
  }
}

// The wgmma self-test (attention.h, kWgmmaSelftestCases) against the products it states, on
// small integers (exact in float32): the emulator agrees with the statement of each form, so a
// device that fails a form disagrees with the PTX layouts the emulator decodes.
static void run_wgmma_selftest(DType dt) {
  std::uniform_int_distribution<int> small(-4, 4);
  for (int i = 0; i < kWgmmaSelftestCount; ++i) {
    const WgmmaSelftestCase& cs = kWgmmaSelftestCases[i];
    Buf a(dt, size_t(cs.a_rows) * cs.a_cols), b(dt, size_t(cs.b_rows) * cs.b_cols);
    for (size_t x = 0; x < a.n; ++x) a.set(x, float(small(rng)));
    for (size_t x = 0; x < b.n; ++x) b.set(x, float(small(rng)));
    Buf c(DType::Float32, size_t(64) * cs.n), want(DType::Float32, size_t(64) * cs.n);
    c.fill_nan();
    const int c0 = cs.b_cols - cs.n;
    for (int m = 0; m < 64; ++m)
      for (int n = 0; n < cs.n; ++n) {
        float acc = 0.f;
        if (cs.form == WgmmaForm::KMajor)
          for (int k = 0; k < cs.a_cols; ++k) acc += a.get(size_t(cs.a_rows - 64 + m) * cs.a_cols + k) * b.get(size_t(n) * cs.b_cols + k);
        else if (cs.form == WgmmaForm::Registers)
          for (int k = 0; k < cs.b_rows; ++k) acc += a.get(size_t(m) * cs.a_cols + k) * b.get(size_t(k) * cs.b_cols + n);
        else
          for (int k = 0; k < cs.b_rows; ++k) acc += a.get(size_t(k) * cs.a_cols + m) * b.get(size_t(k) * cs.b_cols + c0 + n);
        want.set(size_t(m) * cs.n + n, acc);
      }
    wgmma_selftest_cuda(i, dt, a.p(), b.p(), c.f.data(), 0);
    compare((std::string("wgmma self-test ") + cs.name + (dt == DType::Float16 ? " f16" : " bf16")).c_str(), c, want);
  }
}

int main() {
  const DType F32 = DType::Float32, F16 = DType::Float16, BF16 = DType::BFloat16;
  const Case cases[] = {
      {"D=64 partial key tile", BF16, 1, 2, 2, 70, 150, 64},
      {"D=64 causal, Lq > Lk", F16, 1, 2, 2, 130, 97, 64, true},
      {"D=128 whole tiles, rising logits", BF16, 1, 1, 1, 64, 256, 128, false, Mask::None, false, 0.3f},
      {"D=128 causal GQA 4/2", F16, 1, 4, 2, 100, 100, 128, true},
      {"D=128 causal, three 128-key tiles", BF16, 1, 2, 1, 260, 260, 128, true},
      {"D=64 three 128-key tiles, partial last", F16, 1, 2, 2, 90, 300, 64},
      {"D=128 (B,L,H,D) view", BF16, 2, 2, 2, 40, 72, 128, false, Mask::None, true},
      {"D=80 (pads to 96)", BF16, 1, 2, 1, 33, 65, 80},
      {"D=96 whole tiles, rising logits", F16, 1, 2, 1, 70, 192, 96, false, Mask::None, false, 0.2f},
      {"D=40 (pads to 64), causal", F16, 1, 2, 1, 37, 51, 40, true},
      {"D=3, rows not 16-byte aligned", BF16, 1, 2, 2, 20, 33, 3},
      {"D=32 bool mask, dead row", F16, 1, 2, 2, 66, 90, 32, false, Mask::Bool},
      {"D=64 float bias with grad", BF16, 1, 2, 2, 70, 80, 64, false, Mask::FloatGrad},
      {"D=128 float bias with grad, causal", F16, 1, 1, 1, 45, 70, 128, true, Mask::FloatGrad},
      {"D=64 float bias with grad, causal GQA 4/2, Lq > Lk", BF16, 1, 4, 2, 150, 140, 64, true, Mask::FloatGrad},
      {"D=32 float bias with grad, causal", F16, 1, 2, 2, 140, 133, 32, true, Mask::FloatGrad},
      {"D=64 key-padding bias (B,1,1,Lk), rising", BF16, 2, 2, 1, 50, 100, 64, false, Mask::FloatKeys, false, 0.1f},
      {"D=256", BF16, 1, 1, 1, 40, 50, 256},
      {"varlen D=64 causal", F16, 3, 2, 2, 40, 45, 64, true, Mask::None, false, 0.f, true},
      {"fp32 D=64 causal", F32, 1, 2, 2, 50, 60, 64, true},
      {"fp32 D=40 float bias with grad", F32, 1, 2, 1, 30, 35, 40, false, Mask::FloatGrad},
  };
  run_wgmma_selftest(F16);
  run_wgmma_selftest(BF16);
  for (const Case& c : cases) run_case(c);
  // The unmasked forward at D = 96 / 128 takes 64-key tiles by default; run its cases again
  // with the 32-key tiles the launch code falls back to (too little shared memory) or is told
  // to use (PYFASTATTN_ATTN_FWD_KEY_TILE=32).
  setenv("PYFASTATTN_ATTN_FWD_KEY_TILE", "32", 1);
  for (const Case& c : cases)
    if (c.dt != DType::Float32 && c.D > 64 && c.D <= 128 && c.mask == Mask::None) {
      std::printf("  (32-key forward tiles)\n");
      run_case(c);
    }
  unsetenv("PYFASTATTN_ATTN_FWD_KEY_TILE");
  // The sm_90a kernels (fwd_wgmma, PYFASTATTN_ATTN_FWD_WGMMA=1; the one-pass bwd_wgmma,
  // PYFASTATTN_ATTN_BWD_WGMMA=1): fp16/bf16 cases that pad to head dim 64, 96 (run at 128) or
  // 128 (forward with a mask: 64-key tiles).
  setenv("PYFASTATTN_ATTN_FWD_WGMMA", "1", 1);
  setenv("PYFASTATTN_ATTN_BWD_WGMMA", "1", 1);
  for (const Case& c : cases)
    if (c.dt != DType::Float32 && c.D > 32 && c.D <= 128) {
      std::printf("  (wgmma forward and one-pass backward)\n");
      run_case(c);
    }
  // Again with every wgmma run as late as the hardware may (EMU_WGMMA_LATE=1): when the wait
  // that retires it returns, reading its operands and writing its accumulators then.
  setenv("EMU_WGMMA_LATE", "1", 1);
  run_wgmma_selftest(F16);
  for (const Case& c : cases)
    if (c.dt != DType::Float32 && c.D > 32 && c.D <= 128) {
      std::printf("  (wgmma forward and one-pass backward, each wgmma run late)\n");
      run_case(c);
    }
  unsetenv("EMU_WGMMA_LATE");
  unsetenv("PYFASTATTN_ATTN_FWD_WGMMA");
  unsetenv("PYFASTATTN_ATTN_BWD_WGMMA");
  // The head-dim-128 backward key pass takes 128-key blocks (8 warps) by default; run those
  // cases again with the 64-key blocks (4 warps) of PYFASTATTN_ATTN_BWD_KEY_BLOCK=64 (also the
  // fallback where shared memory is short).
  setenv("PYFASTATTN_ATTN_BWD_KEY_BLOCK", "64", 1);
  for (const Case& c : cases)
    if (c.dt != DType::Float32 && c.D > 96 && c.D <= 128) {
      std::printf("  (64-key backward blocks)\n");
      run_case(c);
    }
  unsetenv("PYFASTATTN_ATTN_BWD_KEY_BLOCK");
  for (auto& [k, v] : emu_launches) std::printf("  launches %-60s %ld\n", k.c_str(), v);
  std::printf("%d failure(s), %ld emulated blocks\n", failures, emu_blocks_run);
  return failures != 0;
}
