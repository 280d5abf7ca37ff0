"""Rewrites csrc/conv/conv_cuda.cu and conv_mma.cuh into host C++ for the emulator:
kernel launches become emu_launch calls, dynamic shared memory one static buffer, and
mma.sync the per-warp emulation of emu_mma.h.

    python transform.py SRC_DIR OUT_DIR     (SRC_DIR: csrc/conv; writes OUT_DIR/conv_cuda_emu.cpp
                                             and OUT_DIR/conv/conv_mma.cuh)
"""
import os
import re
import sys

src, out = sys.argv[1], sys.argv[2]
cu = open(os.path.join(src, "conv_cuda.cu")).read()
cu = cu.replace('#include "common/cuda_utils.cuh"', '#include "emu_cuda.h"')
cu = re.sub(r"extern __shared__ (?:__align__\(16\) )?(\w+) (\w+)\[\];",
            r"\1* \2 = reinterpret_cast<\1*>(emu_dyn_smem);", cu)


def launch(m):
    name, cfg, args = m.group(1), m.group(2), m.group(3)
    return f"emu_launch({cfg}, [&] {{ {name}({args}); }}, emu_name(__PRETTY_FUNCTION__, \"{name}\"));"


cu, n = re.subn(r"([\w:]+(?:<[^;<>]*>)?)<<<(.*?)>>>\((.*?)\);", launch, cu, flags=re.S)
if n == 0:
    sys.exit("transform.py: no kernel launch found in conv_cuda.cu")
cu = cu.replace("__shared__ __align__(16)", "alignas(16) __shared__").replace("__align__(16)", "alignas(16)")
open(os.path.join(out, "conv_cuda_emu.cpp"), "w").write(cu)

mma = open(os.path.join(src, "conv_mma.cuh")).read()
mma, n_h = re.subn(r"template <>\nstruct Mma<__half> \{.*?\n\};\n", "", mma, flags=re.S)
mma, n_b = re.subn(r"template <>\nstruct Mma<__nv_bfloat16> \{.*?\n\};\n", "", mma, flags=re.S)
if (n_h, n_b) != (1, 1):
    sys.exit("transform.py: the Mma<__half> / Mma<__nv_bfloat16> specializations were not found")
mma = mma.replace("template <class T> struct Mma;", """template <class T> struct Mma {
  static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu_mma(d, a, b, std::is_same_v<T, __nv_bfloat16>);
  }
};""")
mma = mma.replace("namespace pfa::conv::dev {", '}\n#include "emu_mma.h"\nnamespace pfa::conv::dev {', 1)
mma = mma.replace("#include <cstdint>\n", "#include <cstdint>\n#include <type_traits>\nnamespace pfa::conv::dev {\n", 1)
mma = mma.replace("__align__(16)", "alignas(16)")
os.makedirs(os.path.join(out, "conv"), exist_ok=True)
open(os.path.join(out, "conv", "conv_mma.cuh"), "w").write(mma)
print(f"transform.py: {n} kernel launches emulated", file=sys.stderr)
