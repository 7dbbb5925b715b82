#ifndef ADASOFTMAX_CORE_BLAS_H_
#define ADASOFTMAX_CORE_BLAS_H_

// The one place that includes BLAS. Internal to adasoftmax_core (OpenBLAS is linked PRIVATE).
#include <cblas.h>

#endif  // ADASOFTMAX_CORE_BLAS_H_
