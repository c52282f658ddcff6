// The Python extension module itself: importing blipx._C loads this shared library, which runs
// the static op registrations. pybind11 (the copy bundled with torch) exposes build facts only;
// ops go through the dispatcher.
#include <pybind11/pybind11.h>

#ifdef BLIPX_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.def("build_info", []() {
    py::dict info;
    info["version"] = BLIPX_VERSION;
    info["torch_version"] = BLIPX_TORCH_VERSION;
#ifdef BLIPX_WITH_CUDA
    info["with_cuda"] = true;
    info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    info["cuda_archs"] = BLIPX_CUDA_ARCHS;
#else
    info["with_cuda"] = false;
    info["cuda_version"] = py::none();
    info["cuda_archs"] = "";
#endif
#ifdef BLIPX_WITH_OPENMP
    info["with_openmp"] = true;
#else
    info["with_openmp"] = false;
#endif
    return info;
  }, "Facts fixed when blipx's C++/CUDA library was compiled.");
}
