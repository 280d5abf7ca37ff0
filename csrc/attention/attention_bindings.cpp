// Bindings of the attention family: pointers, sizes and strides in, no logic beyond
// memory-safety checks (Python validates shapes, dtypes and devices).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "attention/attention.h"
#include "common/binding.h"

namespace py = pybind11;

namespace {

using Dims = std::vector<int64_t>;
namespace A = pfa::attention;

A::Strided strided_in(uintptr_t ptr, const Dims& s, const char* what) {
  pfa::check(s.size() == 3, std::string(what) + ": expected 3 strides (b, h, l)");
  return {pfa::nonnull_ptr<const void>(ptr, what), s[0], s[1], s[2]};
}
A::StridedOut strided_out(uintptr_t ptr, const Dims& s, const char* what) {
  pfa::check(s.size() == 3, std::string(what) + ": expected 3 strides (b, h, l)");
  return {pfa::nonnull_ptr<void>(ptr, what), s[0], s[1], s[2]};
}

// Fills everything but the operand pointers, which are only required when there is work.
A::ForwardParams forward_params(int dtype, int batch, int heads_q, int heads_kv, int len_q, int len_k,
                                int head_dim, uintptr_t cu_q, uintptr_t cu_k, uintptr_t q,
                                const Dims& qs, uintptr_t k, const Dims& ks, uintptr_t v,
                                const Dims& vs, uintptr_t out, const Dims& os, uintptr_t lse,
                                uintptr_t lse_f64, int mask_kind, uintptr_t mask, const Dims& ms,
                                double scale, bool causal) {
  pfa::check(batch >= 0 && heads_q >= 0 && heads_kv >= 0 && len_q >= 0 && len_k >= 0,
             "attention: negative size");
  pfa::check(head_dim >= 1 && head_dim <= 256, "attention: head_dim must be in 1..256");
  pfa::check(heads_kv > 0 ? heads_q % heads_kv == 0 : heads_q == 0,
             "attention: heads_q must be a multiple of heads_kv");
  pfa::check(mask_kind >= 0 && mask_kind <= 2, "attention: bad mask kind");
  pfa::check((cu_q == 0) == (cu_k == 0), "attention: give both cu_seqlens or neither");
  A::ForwardParams p;
  p.dtype = pfa::dtype_from(dtype);
  p.batch = batch;
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.len_q = len_q;
  p.len_k = len_k;
  p.head_dim = head_dim;
  p.cu_seqlens_q = pfa::ptr_from<const int32_t>(cu_q);
  p.cu_seqlens_k = pfa::ptr_from<const int32_t>(cu_k);
  p.scale = scale;
  p.causal = causal;
  p.mask_kind = A::MaskKind(mask_kind);
  const bool work = batch > 0 && heads_q > 0 && len_q > 0;
  if (work) {
    p.q = strided_in(q, qs, "query");
    p.out = strided_out(out, os, "output");
    if (len_k > 0) {
      p.k = strided_in(k, ks, "key");
      p.v = strided_in(v, vs, "value");
    } else {
      p.k = {nullptr, ks.at(0), ks.at(1), ks.at(2)};
      p.v = {nullptr, vs.at(0), vs.at(1), vs.at(2)};
    }
    p.lse = pfa::ptr_from<float>(lse);
    p.lse_f64 = pfa::ptr_from<double>(lse_f64);
    pfa::check(p.lse || p.lse_f64, "attention: lse is a null pointer");
    pfa::check(p.dtype == pfa::DType::Float64 || !p.lse_f64, "attention: lse_f64 is for float64 only");
    if (p.mask_kind != A::MaskKind::None) {
      pfa::check(ms.size() == 4, "attention: expected 4 mask strides");
      pfa::check(cu_q == 0, "attention: masks are not supported with cu_seqlens");
      p.mask = pfa::nonnull_ptr<const void>(mask, "attn_mask");
      p.mask_stride_b = ms[0];
      p.mask_stride_h = ms[1];
      p.mask_stride_q = ms[2];
      p.mask_stride_k = ms[3];
    }
  }
  return p;
}

void forward(bool cuda, int dtype, int batch, int heads_q, int heads_kv, int len_q, int len_k,
             int head_dim, uintptr_t cu_q, uintptr_t cu_k, uintptr_t q, const Dims& qs, uintptr_t k,
             const Dims& ks, uintptr_t v, const Dims& vs, uintptr_t out, const Dims& os,
             uintptr_t lse, uintptr_t lse_f64, int mask_kind, uintptr_t mask, const Dims& ms,
             double scale, bool causal, [[maybe_unused]] uintptr_t stream) {
  const A::ForwardParams p =
      forward_params(dtype, batch, heads_q, heads_kv, len_q, len_k, head_dim, cu_q, cu_k, q, qs, k,
                     ks, v, vs, out, os, lse, lse_f64, mask_kind, mask, ms, scale, causal);
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef PFA_WITH_CUDA
    A::forward_cuda(p, stream);
#else
    throw std::runtime_error("pyfastattn was built without CUDA");
#endif
  } else {
    A::forward_cpu(p);
  }
}

void backward(bool cuda, int dtype, int batch, int heads_q, int heads_kv, int len_q, int len_k,
              int head_dim, uintptr_t cu_q, uintptr_t cu_k, uintptr_t q, const Dims& qs, uintptr_t k,
              const Dims& ks, uintptr_t v, const Dims& vs, uintptr_t out, const Dims& os,
              uintptr_t lse, uintptr_t lse_f64, int mask_kind, uintptr_t mask, const Dims& ms,
              double scale, bool causal, uintptr_t dout, const Dims& dos, uintptr_t dq,
              const Dims& dqs, uintptr_t dk, const Dims& dks, uintptr_t dv, const Dims& dvs,
              int dkv_heads, uintptr_t delta, uintptr_t dq_accum, uintptr_t dmask,
              const Dims& dms, bool dmask_f32, [[maybe_unused]] uintptr_t stream) {
  A::BackwardParams bp;
  bp.fwd = forward_params(dtype, batch, heads_q, heads_kv, len_q, len_k, head_dim, cu_q, cu_k, q,
                          qs, k, ks, v, vs, out, os, lse, lse_f64, mask_kind, mask, ms, scale, causal);
  pfa::check(dkv_heads == heads_kv || dkv_heads == heads_q,
             "attention backward: dk/dv must have heads_kv or heads_q heads");
  bp.dkv_heads = dkv_heads;
  const bool any = batch > 0 && heads_q > 0;
  if (any && len_q > 0) {
    bp.dout = strided_in(dout, dos, "grad_output");
    bp.dq = strided_out(dq, dqs, "grad_query");
  }
  if (any && len_k > 0) {
    bp.dk = strided_out(dk, dks, "grad_key");
    bp.dv = strided_out(dv, dvs, "grad_value");
  }
  if (any && len_k > 0 && len_q == 0) {  // keys but no queries: dK = dV = 0, written by the kernel
    bp.fwd.q = {nullptr, qs.at(0), qs.at(1), qs.at(2)};
    bp.fwd.k = {pfa::ptr_from<const void>(k), ks.at(0), ks.at(1), ks.at(2)};
    bp.fwd.v = {pfa::ptr_from<const void>(v), vs.at(0), vs.at(1), vs.at(2)};
  }
  bp.delta = pfa::ptr_from<float>(delta);
  bp.dq_accum = pfa::ptr_from<float>(dq_accum);
  if (dmask) {
    pfa::check(mask_kind == int(A::MaskKind::Float), "attention backward: dmask needs a float mask");
    pfa::check(dms.size() == 3, "attention backward: expected 3 dmask strides");
    bp.dmask = pfa::ptr_from<void>(dmask);
    bp.dmask_stride_b = dms[0];
    bp.dmask_stride_h = dms[1];
    bp.dmask_stride_q = dms[2];
    bp.dmask_f32 = dmask_f32;
    pfa::check(!dmask_f32 || dtype == int(pfa::DType::Float16) || dtype == int(pfa::DType::BFloat16),
               "attention backward: a float32 dmask is for float16/bfloat16 inputs");
  }
  py::gil_scoped_release nogil;
  if (cuda) {
#ifdef PFA_WITH_CUDA
    pfa::check(bp.delta || len_q == 0 || batch == 0 || heads_q == 0, "attention backward: CUDA needs the delta workspace");
    A::backward_cuda(bp, stream);
#else
    throw std::runtime_error("pyfastattn was built without CUDA");
#endif
  } else {
    A::backward_cpu(bp);
  }
}

bool wgmma_available() {
#ifdef PFA_WITH_CUDA
  return A::wgmma_available();
#else
  return false;
#endif
}

// The wgmma self-test cases (attention.h): name, form, A and B shapes, n.
py::list wgmma_selftest_cases() {
  py::list cases;
  for (const A::WgmmaSelftestCase& c : A::kWgmmaSelftestCases) {
    py::dict d;
    d["name"] = c.name;
    d["form"] = c.form == A::WgmmaForm::KMajor ? "k_major" : c.form == A::WgmmaForm::Registers ? "registers" : "mn_major";
    d["a_shape"] = py::make_tuple(c.a_rows, c.a_cols);
    d["b_shape"] = py::make_tuple(c.b_rows, c.b_cols);
    d["n"] = c.n;
    cases.append(d);
  }
  return cases;
}

void wgmma_selftest(int index, int dtype, uintptr_t a, uintptr_t b, uintptr_t c, [[maybe_unused]] uintptr_t stream) {
  pfa::check(index >= 0 && index < A::kWgmmaSelftestCount, "wgmma_selftest: index out of range");
  [[maybe_unused]] const void* ap = pfa::nonnull_ptr<const void>(a, "a");
  [[maybe_unused]] const void* bp = pfa::nonnull_ptr<const void>(b, "b");
  [[maybe_unused]] float* cp = pfa::nonnull_ptr<float>(c, "c");
#ifdef PFA_WITH_CUDA
  py::gil_scoped_release nogil;
  A::wgmma_selftest_cuda(index, pfa::DType(dtype), ap, bp, cp, stream);
#else
  throw std::runtime_error("pyfastattn was built without CUDA");
#endif
}

void bind_attention(py::module_& m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("wgmma_available", &wgmma_available);
  m.def("wgmma_selftest_cases", &wgmma_selftest_cases);
  m.def("wgmma_selftest", &wgmma_selftest);
}

}  // namespace

PFA_REGISTER_FAMILY(attention, bind_attention);
