#ifndef ADASOFTMAX_CORE_TARGET_CLONES_H_
#define ADASOFTMAX_CORE_TARGET_CLONES_H_

// Marks a kernel to be compiled for AVX-512, AVX2 and baseline x86-64, the variant picked at
// load time for the CPU it runs on (the CI machine may differ from the benchmarked one).
#if defined(__x86_64__)
#define ADASOFTMAX_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ADASOFTMAX_KERNEL
#endif

#endif  // ADASOFTMAX_CORE_TARGET_CLONES_H_
