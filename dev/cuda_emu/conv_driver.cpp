// Runs the emulated CUDA entry points against the CPU kernels on the same inputs.
#include "conv/conv.h"
#include "emu_check.h"
using namespace pfa;
using namespace pfa::conv;
using namespace emu_check;

static int64_t hex_out_size(int64_t H, int s) { return (H + s - 1) / s; }
static int64_t conv_out_size(int64_t H, int plo, int phi, int ext, int s) { return (H + plo + phi - ext) / s + 1; }

struct ConvCase {
  const char* name; DType dt; int64_t N, Cin, Cout, H, W, groups; int sh, sw, ph, pw, pe_h, pe_w; TapSet taps;
  bool bias = true; bool strided_x = false;
};

static void run_conv(const ConvCase& c) {
  const int64_t T = c.taps.count(), cig = c.Cin / c.groups;
  int ext_h = c.taps.max_dr() - c.taps.min_dr() + 1, ext_w = c.taps.max_dc() - c.taps.min_dc() + 1;
  int64_t Ho, Wo;
  if (c.taps.kind == TapKind::Hex) { Ho = hex_out_size(c.H, c.sh); Wo = hex_out_size(c.W, c.sw); }
  else { Ho = conv_out_size(c.H, c.ph, c.pe_h, ext_h, c.sh); Wo = conv_out_size(c.W, c.pw, c.pe_w, ext_w, c.sw); }
  // x possibly with a batch stride larger than C*H*W (a non-contiguous view)
  const int64_t xsn = c.Cin * c.H * c.W + (c.strided_x ? 7 : 0);
  Buf x(c.dt, c.N * xsn), w(c.dt, c.Cout * cig * T), b(c.dt, c.Cout), dy(c.dt, c.N * c.Cout * Ho * Wo);
  x.randomize(); w.randomize(); b.randomize(); dy.randomize();
  TapConvParams p;
  p.dtype = c.dt; p.N = c.N; p.Cin = c.Cin; p.H = c.H; p.W = c.W; p.Cout = c.Cout; p.Ho = Ho; p.Wo = Wo;
  p.groups = c.groups; p.stride_h = c.sh; p.stride_w = c.sw; p.pad_h = c.ph; p.pad_w = c.pw; p.taps = c.taps;
  p.x = x.p(); p.x_strides = {xsn, c.H * c.W, c.W}; p.w = w.p(); p.bias = c.bias ? b.p() : nullptr;
  p.dy = dy.p(); p.dy_strides = {c.Cout * Ho * Wo, Ho * Wo, Wo};
  std::string nm = std::string(c.name) + (c.dt == DType::Float32 ? " f32" : c.dt == DType::Float16 ? " f16" : " bf16");
  // forward
  Buf y1(c.dt, c.N * c.Cout * Ho * Wo), y2 = y1; y1.fill_nan(); y2.fill_nan();
  p.y = y1.p(); tap_conv_forward_cpu(p); p.y = y2.p(); tap_conv_forward_cuda(p, 0);
  compare((nm + " fwd").c_str(), y2, y1);
  // backward input
  Buf dx1(c.dt, c.N * c.Cin * c.H * c.W), dx2 = dx1; dx1.fill_nan(); dx2.fill_nan();
  p.dx = dx1.p(); tap_conv_backward_input_cpu(p); p.dx = dx2.p(); tap_conv_backward_input_cuda(p, 0);
  compare((nm + " dx").c_str(), dx2, dx1);
  // backward weight + bias
  const int64_t work = c.Cout * cig * T * Ho * Wo;
  Buf dw1(c.dt, c.Cout * cig * T), dw2 = dw1, db1(c.dt, c.Cout), db2 = db1;
  dw1.fill_nan(); dw2.fill_nan(); db1.fill_nan(); db2.fill_nan();
  const int64_t ch1 = weight_chunks(c.N, work, false), ch2 = weight_chunks(c.N, work, true);
  std::vector<float> part1(std::max<int64_t>(1, ch1) * (c.Cout * cig * T + c.Cout), NAN), part2(std::max<int64_t>(1, ch2) * (c.Cout * cig * T + c.Cout), NAN);
  p.dx = nullptr;
  p.dw = dw1.p(); p.db = db1.p(); p.partials = part1.data(); p.partial_chunks = ch1; tap_conv_backward_weight_cpu(p);
  p.dw = dw2.p(); p.db = db2.p(); p.partials = part2.data(); p.partial_chunks = ch2; tap_conv_backward_weight_cuda(p, 0);
  compare((nm + " dw").c_str(), dw2, dw1);
  compare((nm + " db").c_str(), db2, db1);
}

static void run_pool(const char* name, DType dt, PoolMode mode, int64_t N, int64_t C, int64_t H, int64_t W, int radius, int stride) {
  TapPoolParams p;
  p.dtype = dt; p.mode = mode; p.N = N; p.C = C; p.H = H; p.W = W; p.Ho = hex_out_size(H, stride); p.Wo = hex_out_size(W, stride);
  p.stride_h = p.stride_w = stride; p.taps = hex_taps(radius);
  Buf x(dt, N * C * H * W), dy(dt, N * C * p.Ho * p.Wo); x.randomize(); dy.randomize();
  for (size_t i = 0; i < x.n; i += 5) x.set(i, 0.5f);  // ties
  p.x = x.p(); p.x_strides = {C * H * W, H * W, W};
  Buf y1(dt, dy.n), y2 = y1; y1.fill_nan(); y2.fill_nan();
  std::vector<int32_t> a1(dy.n, -7), a2(dy.n, -7);
  p.y = y1.p(); p.argmax = a1.data(); tap_pool_forward_cpu(p);
  p.y = y2.p(); p.argmax = a2.data(); tap_pool_forward_cuda(p, 0);
  std::string nm = std::string(name) + (dt == DType::Float32 ? " f32" : " f16");
  compare((nm + " fwd").c_str(), y2, y1);
  if (mode == PoolMode::Max && a1 != a2) { std::printf("FAIL %s argmax differs\n", nm.c_str()); ++failures; }
  p.dy = dy.p(); p.dy_strides = {C * p.Ho * p.Wo, p.Ho * p.Wo, p.Wo}; p.argmax_in = a1.data();
  Buf dx1(dt, x.n), dx2 = dx1; dx1.fill_nan(); dx2.fill_nan();
  p.dx = dx1.p(); tap_pool_backward_cpu(p); p.dx = dx2.p(); tap_pool_backward_cuda(p, 0);
  compare((nm + " dx").c_str(), dx2, dx1);
}

static void run_indexed(DType dt, int64_t N, int64_t Cin, int64_t Cout, int64_t P, int64_t T) {
  IndexedConvParams p;
  p.dtype = dt; p.N = N; p.Cin = Cin; p.Cout = Cout; p.P = P; p.P_out = P; p.T = T;
  std::vector<int32_t> nb(P * T);
  std::uniform_int_distribution<int> ud(-1, int(P) - 1);
  for (auto& v : nb) v = ud(rng);
  // inverse CSR: entries o*T + t sorted by (p, o, t)
  std::vector<int32_t> off(P + 1, 0), ent;
  for (int64_t q = 0; q < P; ++q) {
    off[q] = int32_t(ent.size());
    for (int64_t o = 0; o < P; ++o) for (int64_t t = 0; t < T; ++t) if (nb[o * T + t] == q) ent.push_back(int32_t(o * T + t));
  }
  off[P] = int32_t(ent.size());
  Buf x(dt, N * Cin * P), w(dt, Cout * Cin * T), b(dt, Cout), dy(dt, N * Cout * P);
  x.randomize(); w.randomize(); b.randomize(); dy.randomize();
  p.neighbors = nb.data(); p.inv_offsets = off.data(); p.inv_entries = ent.data();
  p.x = x.p(); p.x_stride_n = Cin * P; p.x_stride_c = P; p.w = w.p(); p.bias = b.p();
  p.dy = dy.p(); p.dy_stride_n = Cout * P; p.dy_stride_c = P;
  std::string nm = "indexed " + std::to_string(Cin) + "->" + std::to_string(Cout) + (dt == DType::Float32 ? " f32" : " f16");
  Buf y1(dt, dy.n), y2 = y1; y1.fill_nan(); y2.fill_nan();
  p.y = y1.p(); indexed_conv_forward_cpu(p); p.y = y2.p(); indexed_conv_forward_cuda(p, 0);
  compare((nm + " fwd").c_str(), y2, y1);
  Buf dx1(dt, x.n), dx2 = dx1; dx1.fill_nan(); dx2.fill_nan();
  p.dx = dx1.p(); indexed_conv_backward_input_cpu(p); p.dx = dx2.p(); indexed_conv_backward_input_cuda(p, 0);
  compare((nm + " dx").c_str(), dx2, dx1);
  const int64_t work = Cout * Cin * T * P;
  const int64_t ch1 = weight_chunks(N, work, false), ch2 = weight_chunks(N, work, true);
  std::vector<float> part1(ch1 * (Cout * Cin * T + Cout)), part2(ch2 * (Cout * Cin * T + Cout), NAN);
  Buf dw1(dt, w.n), dw2 = dw1, db1(dt, Cout), db2 = db1;
  p.dx = nullptr;
  p.dw = dw1.p(); p.db = db1.p(); p.partials = part1.data(); p.partial_chunks = ch1; indexed_conv_backward_weight_cpu(p);
  p.dw = dw2.p(); p.db = db2.p(); p.partials = part2.data(); p.partial_chunks = ch2; indexed_conv_backward_weight_cuda(p, 0);
  compare((nm + " dw").c_str(), dw2, dw1);
  compare((nm + " db").c_str(), db2, db1);
}

int main() {
  const DType F32 = DType::Float32, F16 = DType::Float16, BF16 = DType::BFloat16;
  std::vector<ConvCase> cases = {
      {"direct8/direct1 3x3 p1", F32, 2, 5, 12, 11, 13, 1, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"direct8/direct1 3x3 p1", F16, 2, 5, 12, 11, 13, 1, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1), true, true},
      {"gemm 32->64 3x3 s2 p1", F16, 2, 32, 64, 9, 9, 1, 2, 2, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"gemm 32->64 3x3 s2 p1", BF16, 2, 32, 64, 9, 9, 1, 2, 2, 1, 1, 1, 1, grid_taps(3, 3, 1, 1), false, true},
      {"gemm generic 36->40 (3,2) dil(2,1)", BF16, 2, 36, 40, 7, 6, 1, 1, 1, 1, 2, 1, 0, grid_taps(3, 2, 2, 1)},
      {"gemm groups 64->64 g2", F16, 1, 64, 64, 6, 5, 2, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"fp32 32->64 s2", F32, 1, 32, 64, 9, 10, 1, 2, 2, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"depthwise 16 g16", F32, 2, 16, 16, 9, 9, 16, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"depthwise x3 g4", BF16, 2, 4, 12, 6, 6, 4, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"hex k1 s2 2->32", F32, 2, 2, 32, 8, 9, 1, 2, 2, 0, 0, 0, 0, hex_taps(1)},
      {"hex k1 s1 2->32", F16, 2, 2, 32, 13, 13, 1, 1, 1, 0, 0, 0, 0, hex_taps(1)},
      {"hex k2 s1 32->32", F16, 1, 32, 32, 7, 9, 1, 1, 1, 0, 0, 0, 0, hex_taps(2)},
      {"hex k1 s2 32->64", BF16, 2, 32, 64, 7, 7, 1, 2, 2, 0, 0, 0, 0, hex_taps(1)},
      {"fallback stride 20", F32, 1, 2, 8, 40, 40, 1, 20, 20, 0, 0, 0, 0, grid_taps(2, 2, 1, 1)},
      {"no bias 1x1", F32, 1, 3, 9, 5, 6, 1, 1, 1, 0, 0, 0, 0, grid_taps(1, 1, 1, 1), false},
      {"gemm multi M/N tiles hex k1 32->96", F16, 2, 32, 96, 13, 13, 1, 1, 1, 0, 0, 0, 0, hex_taps(1)},
      {"gemm 48->64 3x3 p1 strided x", BF16, 2, 48, 64, 10, 10, 1, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1), true, true},
      {"direct many ci chunks 64->16 5x5", F32, 1, 64, 16, 12, 12, 1, 1, 1, 2, 2, 2, 2, grid_taps(5, 5, 1, 1)},
      {"mma dw walk across samples 1x1", F16, 10, 32, 32, 2, 2, 1, 1, 1, 0, 0, 0, 0, grid_taps(1, 1, 1, 1)},
      {"asym same-pad even kernel", F32, 1, 2, 3, 5, 13, 1, 1, 1, 1, 0, 2, 1, grid_taps(4, 2, 1, 2)},
      {"image mode 7 samples/block hex", F32, 7, 3, 9, 5, 4, 1, 1, 1, 0, 0, 0, 0, hex_taps(1)},
      {"image mode direct1 N5", F16, 5, 4, 2, 6, 6, 1, 1, 1, 1, 1, 1, 1, grid_taps(3, 3, 1, 1)},
      {"image mode 1x1 grid", F32, 3, 3, 9, 1, 1, 1, 1, 1, 0, 0, 0, 0, grid_taps(1, 1, 1, 1)},
      {"tile mode 20x17 hex k2 s2", F32, 1, 3, 10, 40, 34, 1, 2, 2, 0, 0, 0, 0, hex_taps(2)},
      {"hex 13x13 32->64 walk over samples", BF16, 6, 32, 64, 13, 13, 1, 1, 1, 0, 0, 0, 0, hex_taps(1)},
      {"gemm 5x5 s2 p2 64->40 strided x", F16, 3, 64, 40, 11, 9, 1, 2, 2, 2, 2, 2, 2, grid_taps(5, 5, 1, 1), true, true},
      {"gemm 1x1 32->33 odd dcg", BF16, 2, 32, 33, 5, 7, 1, 1, 1, 0, 0, 0, 0, grid_taps(1, 1, 1, 1)},
  };
  for (auto& c : cases) run_conv(c);
  run_pool("maxpool r1 s2", F32, PoolMode::Max, 2, 3, 9, 10, 1, 2);
  run_pool("maxpool r1 s2", F16, PoolMode::Max, 1, 2, 7, 6, 1, 2);
  run_pool("avgpool r1 s2", F32, PoolMode::Avg, 2, 3, 9, 10, 1, 2);
  run_pool("avgpool r2 s1", F32, PoolMode::Avg, 1, 2, 6, 7, 2, 1);
  run_indexed(F32, 2, 20, 24, 40, 7);
  run_indexed(F16, 2, 20, 40, 40, 7);
  for (auto& [k, v] : emu_launches) std::printf("  launches %-60s %ld\n", k.c_str(), v);
  std::printf("%d failure(s), %ld emulated blocks\n", failures, emu_blocks_run);
  return failures != 0;
}
