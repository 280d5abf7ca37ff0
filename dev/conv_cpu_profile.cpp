// Where the CPU convolution spends its time, without Python: builds conv_cpu.cpp into one
// executable with symbols and times the hex radius-1 passes of a 32->64 layer, N=256.
//   g++ -O3 -g -DNDEBUG -fno-math-errno -fopenmp -std=gnu++17 -I csrc dev/conv_cpu_profile.cpp -o /tmp/conv_prof
//   OMP_NUM_THREADS=2 /tmp/conv_prof 13 60            # side, reps: min ms of fwd, dx, dw
//   OMP_NUM_THREADS=2 perf record -e cpu-clock -g /tmp/conv_prof 13 300 fwd
//   perf report --no-children --sort symbol
// (the compile takes ~6 minutes: three CPU clones of every micro-tile)
#include "conv/conv_cpu.cpp"

#include <chrono>
#include <cstdio>
#include <random>
#include <string>

using namespace pfa::conv;

int main(int argc, char** argv) {
  const int64_t N = 256, Cin = 32, Cout = 64, S = argc > 1 ? std::stoi(argv[1]) : 13;
  const int reps = argc > 2 ? std::stoi(argv[2]) : 200;
  const std::string only = argc > 3 ? argv[3] : "all";
  std::vector<float> x(N * Cin * S * S), w(Cout * Cin * 7), b(Cout), y(N * Cout * S * S), dy(y.size()),
      dx(x.size()), dw(w.size()), db(Cout);
  std::mt19937 gen(0);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  for (auto* v : {&x, &w, &b, &dy})
    for (auto& e : *v) e = u(gen);
  TapConvParams p;
  p.N = N, p.Cin = Cin, p.H = S, p.W = S, p.Cout = Cout, p.Ho = S, p.Wo = S;
  p.taps = hex_taps(1);
  p.x = x.data(), p.x_strides = {Cin * S * S, S * S, S};
  p.w = w.data(), p.bias = b.data(), p.y = y.data();
  p.dy = dy.data(), p.dy_strides = {Cout * S * S, S * S, S};
  const int64_t chunks = weight_chunks(N, Cout * Cin * 7 * S * S, false);
  std::vector<float> partials(size_t(chunks * (Cout * Cin * 7 + Cout)));
  p.partials = partials.data(), p.partial_chunks = chunks;
  const char* names[3] = {"fwd", "dx", "dw"};
  double best[3] = {0, 0, 0};
  for (int r = 0; r < reps; ++r)
    for (int k = 0; k < 3; ++k) {
      if (only != "all" && only != names[k]) continue;
      const auto t0 = std::chrono::steady_clock::now();
      if (k == 0) tap_conv_forward_cpu(p);
      if (k == 1) p.dx = dx.data(), p.dw = nullptr, p.db = nullptr, tap_conv_backward_input_cpu(p);
      if (k == 2) p.dx = nullptr, p.dw = dw.data(), p.db = db.data(), tap_conv_backward_weight_cpu(p);
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      best[k] = r == 0 ? ms : std::min(best[k], ms);
    }
  std::printf("hex %lldx%lld 32->64 N=256: min ms fwd %.3f dx %.3f dw %.3f\n", (long long)S, (long long)S, best[0],
              best[1], best[2]);
  return 0;
}
