// ATen's PhiloxCudaState -> the torch-free PhiloxArgs the random kernels take.
#pragma once
#include <ATen/cuda/PhiloxUtils.cuh>

#include "blipx/philox.cuh"

namespace blipx {

inline PhiloxArgs to_philox_args(const at::PhiloxCudaState& st) {
  PhiloxArgs a;
  if (st.captured_) {
    a.captured = true;
    a.seed_ptr = st.seed_.ptr;
    a.offset_ptr = st.offset_.ptr;
    a.offset_intragraph = st.offset_intragraph_;
  } else {
    a.seed = st.seed_.val;
    a.offset = st.offset_.val;
  }
  return a;
}

}  // namespace blipx
