# Defines TORCH_LIBRARIES / TORCH_INCLUDE_DIRS for the CPU part of an installed torch without
# running torch's own CMake config (which insists on a CUDA toolkit for CUDA builds of torch).
# In: Python_EXECUTABLE. Out: TORCH_LIBRARIES (an imported target), TORCH_INSTALL_PREFIX.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _t OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "\n" ";" _t "${_t}")
list(GET _t 0 TORCH_INSTALL_PREFIX)
list(GET _t 1 _abi)
add_library(blipx_torch_cpu INTERFACE IMPORTED)
target_include_directories(blipx_torch_cpu INTERFACE
  "${TORCH_INSTALL_PREFIX}/include" "${TORCH_INSTALL_PREFIX}/include/torch/csrc/api/include")
target_compile_definitions(blipx_torch_cpu INTERFACE _GLIBCXX_USE_CXX11_ABI=${_abi})
foreach(_lib c10 torch_cpu torch)
  find_library(_path_${_lib} ${_lib} PATHS "${TORCH_INSTALL_PREFIX}/lib" REQUIRED NO_DEFAULT_PATH)
  target_link_libraries(blipx_torch_cpu INTERFACE "${_path_${_lib}}")
endforeach()
set(TORCH_LIBRARIES blipx_torch_cpu)
