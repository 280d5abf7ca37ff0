"""Rewrites a family's CUDA source into host C++ for the emulator: kernel launches become
emu_launch calls, dynamic shared memory the one emulated buffer, and the inline-PTX helpers
(mma.sync, ldmatrix, ex2.approx) the emulations of emu_mma.h. The cp.async helpers need no
rewrite: common/cp_async.cuh next to this script is found before the tree's.

    python transform.py conv|attention|norm CSRC OUT   (CSRC: the tree's csrc; writes
        OUT/<family>_cuda_emu.cpp and, for conv and attention, OUT/<family>/<family>_mma.cuh,
        found before CSRC's)
"""
import os
import re
import sys

family, csrc, out = sys.argv[1], sys.argv[2], sys.argv[3]
src = os.path.join(csrc, family)


def read(name):
    return open(os.path.join(src, name)).read()


def write(rel, text):
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)


def replace_once(text, old, new, what):
    if text.count(old) != 1:
        sys.exit(f"transform.py: {what} not found once in the {family} source")
    return text.replace(old, new)


def launch(m):
    name, cfg, args = m.group(1), m.group(2), m.group(3)
    return f"emu_launch({cfg}, [&] {{ {name}({args}); }}, emu_name(__PRETTY_FUNCTION__, \"{name}\"));"


cu = read(f"{family}_cuda.cu")
cu = cu.replace('#include "common/cuda_utils.cuh"', '#include "emu_cuda.h"')
cu = re.sub(r"extern __shared__ (?:__align__\(16\) )?([\w ]+?) (\w+)\[\];",
            r"\1* \2 = reinterpret_cast<\1*>(emu_dyn_smem);", cu)
cu, n = re.subn(r"([\w:]+(?:<[^;<>]*>)?)<<<(.*?)>>>\((.*?)\);", launch, cu, flags=re.S)
if n == 0:
    sys.exit(f"transform.py: no kernel launch found in {family}_cuda.cu")
cu = cu.replace("__shared__ __align__(16)", "alignas(16) __shared__").replace("__align__(16)", "alignas(16)")
write(f"{family}_cuda_emu.cpp", cu)

if family == "norm":
    # one inline-PTX 16-byte store
    cu, k = re.subn(r'asm volatile\("st\.global\.v4\.b32 \[%0\], \{%1, %2, %3, %4\};".*?"memory"\);',
                    "std::memcpy(p, word, 16);", cu, flags=re.S)
    if k != 1:
        sys.exit("transform.py: the norm family's st.global.v4 store was not found")
    write(f"{family}_cuda_emu.cpp", cu)
    print(f"transform.py: {family}: {n} kernel launches emulated", file=sys.stderr)
    sys.exit(0)
mma = read(f"{family}_mma.cuh").replace("__align__(16)", "alignas(16)")
if family == "conv":
    for t in ("__half", "__nv_bfloat16"):
        mma, k = re.subn(r"template <>\nstruct Mma<%s> \{.*?\n\};\n" % t, "", mma, flags=re.S)
        if k != 1:
            sys.exit(f"transform.py: the Mma<{t}> specialization was not found")
    mma = replace_once(mma, "template <class T> struct Mma;", """template <class T> struct Mma {
  static void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    emu_mma(d, a, b, std::is_same_v<T, __nv_bfloat16>);
  }
};""", "Mma")
    mma = replace_once(mma, "#include <cstdint>\n", '#include <cstdint>\n#include <type_traits>\n#include "emu_mma.h"\n',
                       "#include <cstdint>")
elif family == "attention":
    # The block of inline-PTX helpers, from ldmatrix_x4 to Exp2Approx, becomes its emulation
    # (the cp.async helpers come from common/cp_async.cuh, emulated next to this script).
    start = mma.find("__device__ __forceinline__ void ldmatrix_x4(")
    end = mma.find("// Both operands of a warp_mma_ss in shared memory")
    if start < 0 or end < start:
        sys.exit("transform.py: the attention PTX helpers (ldmatrix_x4 .. Exp2Approx) were not found")
    mma = mma[:start] + """inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { emu_ldmatrix(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { emu_ldmatrix(r, p, true); }
template <class T>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  emu_mma(c, a, b, std::is_same_v<T, __nv_bfloat16>);
}
struct Exp2Approx {
  float operator()(float x) const { return std::exp2(x); }
};

""" + mma[end:]
    mma = replace_once(mma, "#include <cstdint>\n", '#include <cstdint>\n#include <type_traits>\n#include "emu_mma.h"\n',
                       "#include <cstdint>")
else:
    sys.exit(f"transform.py: unknown family {family}")
write(os.path.join(family, f"{family}_mma.cuh"), mma)
print(f"transform.py: {family}: {n} kernel launches emulated", file=sys.stderr)
