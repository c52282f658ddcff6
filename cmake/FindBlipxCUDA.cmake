# Locate nvcc, the CUDA toolkit root and the CUDA libraries that torch's CMake config
# asks for (cuBLAS, cuSPARSE, NVRTC, ...). System toolkits are often partial (this project's
# CI image has nvcc and cudart only); torch's CUDA wheels ship the rest under
# site-packages/nvidia/<pkg>/{include,lib} (cu13: site-packages/nvidia/cu13/{include,lib}).
#
# In:  Python_EXECUTABLE
# Out: BLIPX_NVCC (empty when none), BLIPX_CUDA_ROOT, BLIPX_WHEEL_CUDA_INCLUDE_DIRS,
#      BLIPX_WHEEL_CUDA_LIB_DIRS; sets the hints torch's config reads (CUDAToolkit_ROOT,
#      CUDA_TOOLKIT_ROOT_DIR, CUDA_nvrtc_LIBRARY, ...).

set(BLIPX_NVCC "")
set(_blipx_nvcc_candidates)
if(CMAKE_CUDA_COMPILER)
  list(APPEND _blipx_nvcc_candidates "${CMAKE_CUDA_COMPILER}")
endif()
foreach(_var CUDACXX CUDA_HOME CUDA_PATH CUDA_ROOT)
  if(DEFINED ENV{${_var}})
    if(_var STREQUAL "CUDACXX")
      list(APPEND _blipx_nvcc_candidates "$ENV{${_var}}")
    else()
      list(APPEND _blipx_nvcc_candidates "$ENV{${_var}}/bin/nvcc")
    endif()
  endif()
endforeach()
list(APPEND _blipx_nvcc_candidates /usr/local/cuda/bin/nvcc)
file(GLOB _blipx_versioned_nvcc /usr/local/cuda-*/bin/nvcc)
list(SORT _blipx_versioned_nvcc ORDER DESCENDING)
list(APPEND _blipx_nvcc_candidates ${_blipx_versioned_nvcc})
find_program(_blipx_nvcc_on_path nvcc)
if(_blipx_nvcc_on_path)
  list(APPEND _blipx_nvcc_candidates "${_blipx_nvcc_on_path}")
endif()

foreach(_cand IN LISTS _blipx_nvcc_candidates)
  if(EXISTS "${_cand}" AND NOT IS_DIRECTORY "${_cand}")
    get_filename_component(_real "${_cand}" REALPATH)
    get_filename_component(_bin "${_real}" DIRECTORY)
    get_filename_component(_root "${_bin}" DIRECTORY)
    # A wrapper script (e.g. /usr/local/bin/nvcc exec-ing the real one) has no toolkit beside it.
    if(EXISTS "${_root}/include/cuda_runtime.h")
      set(BLIPX_NVCC "${_real}")
      set(BLIPX_CUDA_ROOT "${_root}")
      break()
    endif()
  endif()
endforeach()

# CUDA pieces shipped in torch's wheels (nvidia-* packages).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
"import glob, os
try:
    import nvidia
    roots = [p for base in nvidia.__path__ for p in glob.glob(os.path.join(base, '*'))]
except ImportError:
    roots = []
inc = [os.path.join(r, 'include') for r in roots if os.path.isdir(os.path.join(r, 'include'))]
lib = [os.path.join(r, 'lib') for r in roots if os.path.isdir(os.path.join(r, 'lib'))]
print(';'.join(sorted(inc)))
print(';'.join(sorted(lib)))"
  OUTPUT_VARIABLE _blipx_wheel_dirs OUTPUT_STRIP_TRAILING_WHITESPACE)
string(REPLACE "\n" "|" _blipx_wheel_dirs "${_blipx_wheel_dirs}")
# _blipx_wheel_dirs is "inc1;inc2|lib1;lib2": split on the first '|'.
string(FIND "${_blipx_wheel_dirs}" "|" _bar)
if(_bar GREATER -1)
  string(SUBSTRING "${_blipx_wheel_dirs}" 0 ${_bar} BLIPX_WHEEL_CUDA_INCLUDE_DIRS)
  math(EXPR _after "${_bar} + 1")
  string(SUBSTRING "${_blipx_wheel_dirs}" ${_after} -1 BLIPX_WHEEL_CUDA_LIB_DIRS)
else()
  set(BLIPX_WHEEL_CUDA_INCLUDE_DIRS "")
  set(BLIPX_WHEEL_CUDA_LIB_DIRS "")
endif()

if(BLIPX_NVCC)
  set(CMAKE_CUDA_COMPILER "${BLIPX_NVCC}" CACHE FILEPATH "nvcc" FORCE)
  set(CUDAToolkit_ROOT "${BLIPX_CUDA_ROOT}")
  set(CUDA_TOOLKIT_ROOT_DIR "${BLIPX_CUDA_ROOT}" CACHE PATH "CUDA toolkit root" FORCE)
  # FindCUDAToolkit searches these for libraries the system toolkit lacks.
  list(APPEND CMAKE_LIBRARY_PATH ${BLIPX_WHEEL_CUDA_LIB_DIRS})
  list(APPEND CMAKE_INCLUDE_PATH ${BLIPX_WHEEL_CUDA_INCLUDE_DIRS})
  # torch's cuda.cmake wants NVRTC; wheels ship it only as a versioned soname.
  if(NOT EXISTS "${BLIPX_CUDA_ROOT}/lib64/libnvrtc.so" AND NOT CUDA_nvrtc_LIBRARY)
    foreach(_dir IN LISTS BLIPX_WHEEL_CUDA_LIB_DIRS)
      file(GLOB _nvrtc "${_dir}/libnvrtc.so.[0-9]*")
      list(FILTER _nvrtc EXCLUDE REGEX "builtins|alt")
      if(_nvrtc)
        list(GET _nvrtc 0 _nvrtc0)
        set(CUDA_nvrtc_LIBRARY "${_nvrtc0}" CACHE FILEPATH "NVRTC" FORCE)
        break()
      endif()
    endforeach()
  endif()
  # FindCUDAToolkit only considers unversioned names (libcublas.so); wheels have libcublas.so.13.
  foreach(_lib cublas cublasLt cusparse cufft curand cusolver nvJitLink nvrtc)
    string(TOUPPER "${_lib}" _upper)
    if(NOT EXISTS "${BLIPX_CUDA_ROOT}/lib64/lib${_lib}.so" AND NOT CUDA_${_lib}_LIBRARY)
      foreach(_dir IN LISTS BLIPX_WHEEL_CUDA_LIB_DIRS)
        file(GLOB _cand "${_dir}/lib${_lib}.so.[0-9]*")
        list(FILTER _cand EXCLUDE REGEX "builtins|alt")
        if(_cand)
          list(GET _cand 0 _cand0)
          set(CUDA_${_lib}_LIBRARY "${_cand0}" CACHE FILEPATH "${_lib}" FORCE)
          break()
        endif()
      endforeach()
    endif()
  endforeach()
endif()
