// pyfastattn._C: thin bindings only. Each family adds a submodule through registry.h.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/binding.h"

#ifdef PFA_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;

std::vector<pfa::FamilyEntry>& pfa::family_registry() {
  static std::vector<FamilyEntry> entries;
  return entries;
}

namespace {

py::dict build_info() {
  py::dict d;
#ifdef PFA_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(PFA_CUDA_ARCHS);
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  d["cuda_runtime"] = rt;
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_runtime"] = 0;
#endif
#ifdef PFA_SANITIZE
  d["sanitize"] = true;
#else
  d["sanitize"] = false;
#endif
  py::list fams;
  for (const auto& e : pfa::family_registry()) fams.append(e.name);
  d["families"] = fams;
  return d;
}

// Number of usable CUDA devices; any error (no driver, old driver) means none.
int cuda_device_count() {
#ifdef PFA_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyfastattn kernels (thin bindings; see pyfastattn for the API)";
  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count);
  auto& entries = pfa::family_registry();
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return std::string(a.name) < b.name; });
  for (const auto& e : entries) {
    py::module_ sub = m.def_submodule(e.name);
    e.bind(sub);
  }
}
