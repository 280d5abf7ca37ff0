// What every family's *_bindings.cpp needs. Each family registers its bindings here, so
// adding a family touches no shared file: PFA_REGISTER_FAMILY(norm, bind_norm) puts
// bind_norm into the submodule _C.norm.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/row_layout.h"

namespace pfa {

using BindFn = void (*)(pybind11::module_&);
struct FamilyEntry {
  const char* name;
  BindFn bind;
};
std::vector<FamilyEntry>& family_registry();

struct FamilyRegistrar {
  FamilyRegistrar(const char* name, BindFn bind) { family_registry().push_back({name, bind}); }
};

// Raw pointers travel from Python as integers (tensor.data_ptr()).
template <class T>
T* ptr_from(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
template <class T>
T* nonnull_ptr(uintptr_t p, const char* what) {
  if (p == 0) throw std::invalid_argument(std::string(what) + " is a null pointer");
  return reinterpret_cast<T*>(p);
}

// Leading-dim sizes/strides (elements) from Python, validated.
inline RowLayout make_row_layout(const std::vector<int64_t>& sizes,
                                 const std::vector<int64_t>& strides, const char* what) {
  if (sizes.size() != strides.size() || sizes.size() > size_t(kMaxRowDims))
    throw std::invalid_argument(std::string(what) + ": bad row layout (at most " +
                                std::to_string(kMaxRowDims) + " leading dims)");
  RowLayout l;
  l.ndim = int(sizes.size());
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] <= 0) throw std::invalid_argument(std::string(what) + ": non-positive size");
    l.size[d] = sizes[d];
    l.stride[d] = strides[d];
  }
  return l;
}

inline DType dtype_from(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("unknown dtype code " + std::to_string(code));
  return DType(code);
}

}  // namespace pfa

#define PFA_REGISTER_FAMILY(name, fn) \
  static ::pfa::FamilyRegistrar pfa_family_registrar_##name(#name, fn)
