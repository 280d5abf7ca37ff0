// Runs the emulated CUDA norms (forward_cuda / backward_cuda) against the CPU kernels on the
// same inputs: warp-group rows (several rows per warp), block rows in one and several
// segments, full and partial, the fused, staged and two-kernel backward, residual add, RMS,
// strided rows.
#include <cstdlib>

#include "emu_check.h"
#include "norm/norm.h"
using namespace pfa;
using namespace pfa::norm;
using namespace emu_check;

struct Case {
  const char* name;
  DType dt;
  int64_t rows, cols;
  bool center = true, residual = false, affine = true;
  int64_t row_gap = 0;  // rows of x and dy this many elements apart beyond cols (a strided view)
};

static RowLayout rows_of(int64_t rows, int64_t pitch) {
  RowLayout l;
  l.ndim = 1, l.size[0] = rows, l.stride[0] = pitch;
  return l;
}

static void run_case(const Case& c) {
  const std::string nm = std::string(c.name) + (c.dt == DType::Float32 ? " f32" : c.dt == DType::Float16 ? " f16" : " bf16");
  const int64_t n = c.rows * c.cols, pitch = c.cols + c.row_gap;
  Buf x(c.dt, c.rows * pitch), res(c.dt, n), w(c.dt, c.cols), b(c.dt, c.cols), dy(c.dt, c.rows * pitch);
  x.randomize(), res.randomize(), w.randomize(), b.randomize(), dy.randomize();
  for (size_t i = 0; i < x.n; ++i) x.set(i, x.get(i) + 3.f);  // a mean well away from 0
  ForwardParams p;
  p.dtype = c.dt, p.rows = c.rows, p.cols = c.cols, p.center = c.center;
  p.x = x.p(), p.x_rows = rows_of(c.rows, pitch);
  if (c.residual) p.residual = res.p(), p.residual_rows = rows_of(c.rows, c.cols);
  if (c.affine) p.weight = w.p(), p.bias = c.center ? b.p() : nullptr;
  Buf y_c(c.dt, n), y_g(c.dt, n), s_c(c.dt, c.residual ? n : 0), s_g(c.dt, c.residual ? n : 0);
  Buf mean_c(DType::Float32, size_t(2 * c.rows)), mean_g(DType::Float32, size_t(2 * c.rows));
  Buf rstd_c(DType::Float32, size_t(c.rows)), rstd_g(DType::Float32, size_t(c.rows));
  for (Buf* t : {&y_c, &y_g, &s_c, &s_g, &mean_c, &mean_g, &rstd_c, &rstd_g}) t->fill_nan();
  ForwardParams pc = p, pg = p;
  pc.y = y_c.p(), pc.rstd = rstd_c.p(), pc.mean = c.center ? mean_c.p() : nullptr, pc.sum_out = c.residual ? s_c.p() : nullptr;
  pg.y = y_g.p(), pg.rstd = rstd_g.p(), pg.mean = c.center ? mean_g.p() : nullptr, pg.sum_out = c.residual ? s_g.p() : nullptr;
  forward_cpu(pc);
  forward_cuda(pg, 0);
  compare((nm + " y").c_str(), y_g, y_c);
  compare((nm + " rstd").c_str(), rstd_g, rstd_c);
  if (c.center) {  // the mean as hi + lo: compare the sums
    Buf mc(DType::Float32, size_t(c.rows)), mg(DType::Float32, size_t(c.rows));
    for (int64_t r = 0; r < c.rows; ++r) {
      mc.f[size_t(r)] = mean_c.f[size_t(2 * r)] + mean_c.f[size_t(2 * r + 1)];
      mg.f[size_t(r)] = mean_g.f[size_t(2 * r)] + mean_g.f[size_t(2 * r + 1)];
    }
    compare((nm + " mean").c_str(), mg, mc);
  }
  if (c.residual) compare((nm + " x + residual").c_str(), s_g, s_c);

  // backward from the CPU forward's statistics; x is what was normalized (x + residual)
  BackwardParams bp;
  bp.dtype = c.dt, bp.rows = c.rows, bp.cols = c.cols, bp.center = c.center;
  bp.dy = dy.p(), bp.dy_rows = rows_of(c.rows, pitch);
  if (c.residual) bp.x = s_c.p(), bp.x_rows = rows_of(c.rows, c.cols);
  else bp.x = x.p(), bp.x_rows = rows_of(c.rows, pitch);
  bp.weight = c.affine ? w.p() : nullptr;
  bp.mean = c.center ? mean_c.p() : nullptr, bp.rstd = rstd_c.p();
  Buf dsum(c.dt, c.residual ? n : 0);
  dsum.randomize();
  if (c.residual) bp.dsum = dsum.p();
  Buf dx_c(c.dt, n), dx_g(c.dt, n), dw_c(c.dt, c.cols), dw_g(c.dt, c.cols), db_c(c.dt, c.cols), db_g(c.dt, c.cols);
  for (Buf* t : {&dx_c, &dx_g, &dw_c, &dw_g, &db_c, &db_g}) t->fill_nan();
  const int64_t ch_c = reduction_chunks(c.rows, c.cols, false), ch_g = reduction_chunks(c.rows, c.cols, true);
  std::vector<float> part_c(size_t(2 * ch_c * c.cols)), part_g(size_t(2 * ch_g * c.cols), NAN);
  BackwardParams bc = bp, bg = bp;
  bc.dx = dx_c.p(), bc.partials = part_c.data(), bc.partial_rows = ch_c;
  bg.dx = dx_g.p(), bg.partials = part_g.data(), bg.partial_rows = ch_g;
  if (c.affine) {
    bc.dweight = dw_c.p(), bg.dweight = dw_g.p();
    if (c.center) bc.dbias = db_c.p(), bg.dbias = db_g.p();
  }
  backward_cpu(bc);
  backward_cuda(bg, 0);
  compare((nm + " dx").c_str(), dx_g, dx_c);
  if (c.affine) compare((nm + " dweight").c_str(), dw_g, dw_c);
  if (c.affine && c.center) compare((nm + " dbias").c_str(), db_g, db_c);
}

int main() {
  const DType F32 = DType::Float32, F16 = DType::Float16, BF16 = DType::BFloat16;
  const Case cases[] = {
      {"layer_norm 1 col", F32, 9, 1},
      {"layer_norm 7 cols (8 rows per warp)", BF16, 37, 7},
      {"layer_norm 33 cols, strided rows", F16, 21, 33, true, false, true, 5},
      {"rms_norm 64 cols", BF16, 40, 64, false},
      {"layer_norm 1000 cols, no affine", F32, 13, 1000, true, false, false},
      {"add_layer_norm 1024 cols", BF16, 11, 1024, true, true},
      {"layer_norm 768 cols (3 vectors per thread, full)", BF16, 37, 768},
      {"add_layer_norm 1536 cols (3 vectors per thread, full)", F16, 7, 1536, true, true},
      {"layer_norm 4097 cols (scalar tail)", F16, 6, 4097},
      {"layer_norm 4096 cols (register backward, one row per block)", BF16, 33, 4096},
      {"rms_norm 8192 cols (staged)", BF16, 5, 8192, false},
      {"layer_norm 16384 cols (staged backward, 2 stages)", BF16, 4, 16384},
      {"layer_norm 12288 cols, 520 rows (staged, 2 rows per block)", BF16, 520, 12288},
      {"layer_norm 16384 cols (staged, 1 stage)", F32, 300, 16384},
      {"rms_norm 16384 cols, no affine (staged, resident grid)", F32, 7, 16384, false, false, false},
      {"add_layer_norm 10000 cols (staged, dsum)", F16, 9, 10000, true, true},
      {"layer_norm 20000 cols, strided rows", F32, 3, 20000, true, false, true, 8},
      {"layer_norm 32768 cols (two full forward segments)", F32, 3, 32768},
  };
  for (const Case& c : cases) run_case(c);
  // the staged backward at every width from 1024 (PYFASTATTN_NORM_STAGED_MIN_COLS, the knob
  // bench/kernel_time.py norm-staged turns): blocks of 128 and of 32 threads per row
  setenv("PYFASTATTN_NORM_STAGED_MIN_COLS", "1024", 1);
  const Case staged_narrow[] = {
      {"layer_norm 4096 cols, 300 rows (staged from 1024)", BF16, 300, 4096},
      {"rms_norm 1024 cols (staged from 1024)", F32, 41, 1024, false},
  };
  for (const Case& c : staged_narrow) run_case(c);
  unsetenv("PYFASTATTN_NORM_STAGED_MIN_COLS");
  for (auto& [k, v] : emu_launches) std::printf("  launches %-60s %ld\n", k.c_str(), v);
  std::printf("%d failure(s), %ld emulated blocks\n", failures, emu_blocks_run);
  return failures != 0;
}
