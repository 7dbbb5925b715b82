#ifndef ADASOFTMAX_CORE_VERSION_H_
#define ADASOFTMAX_CORE_VERSION_H_

namespace adasoftmax {

// This build's release (CMakeLists.txt's project VERSION), as the binaries' --version, the
// server's start-up log and the adasoftmax_build_info metric report it.
inline constexpr const char* kVersion = ADASOFTMAX_VERSION;

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_VERSION_H_
