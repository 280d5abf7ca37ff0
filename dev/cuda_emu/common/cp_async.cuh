// Emulation of csrc/common/cp_async.cuh (found first on the emulator's include path): a copy
// lands at once, the earliest a real one may. So the emulator checks what is copied where,
// not where the waits are: a read that should have waited still sees the data here.
#pragma once
#include <cstdint>
#include <cstring>

namespace pfa {
inline uint32_t smem_addr(const void* p) { return emu_smem_offset(p); }
inline void cp_async16(void* dst, const void* src, int bytes) {
  std::memcpy(dst, src, size_t(bytes));
  std::memset(static_cast<char*>(dst) + bytes, 0, size_t(16 - bytes));
}
inline void cp_async4(void* dst, const void* src, int bytes) {
  std::memcpy(dst, src, size_t(bytes));
  std::memset(static_cast<char*>(dst) + bytes, 0, size_t(4 - bytes));
}
inline void cp_async16_whole(uint32_t dst, const void* src) { std::memcpy(emu_dyn_smem + dst, src, 16); }
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
}  // namespace pfa
