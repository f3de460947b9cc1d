# Locates LibTorch inside the pinned `torch` Python wheel and defines the
# interface target preflight::torch.
#
# We deliberately do not call find_package(Torch):
#  * Torch's config defines its own empty protobuf::libprotobuf target, which
#    silently drops Debian's libprotobuf from our link lines;
#  * it probes the system CUDA toolkit and puts it on the executable's RPATH,
#    which would shadow the CUDA runtime the wheel was built against.
# The wheel's include/ also ships protobuf headers of a different version than
# Debian's libprotobuf; a shadow include directory without google/ keeps them
# out of every translation unit, so protobuf code always sees Debian's headers.

set(PREFLIGHT_PYTHON "python3" CACHE STRING "Python interpreter that has the pinned torch wheel")
execute_process(
  COMMAND ${PREFLIGHT_PYTHON} -c "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)"
  OUTPUT_VARIABLE _pf_torch_out
  OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE _pf_torch_err
  RESULT_VARIABLE _pf_torch_rc)
if(NOT _pf_torch_rc EQUAL 0)
  message(FATAL_ERROR "The torch wheel is not importable by ${PREFLIGHT_PYTHON}: run tools/setup.sh first.\n${_pf_torch_err}")
endif()
string(REPLACE "\n" ";" _pf_torch_out "${_pf_torch_out}")
list(GET _pf_torch_out 0 TORCH_PY_DIR)
list(GET _pf_torch_out 1 TORCH_PY_VERSION)
message(STATUS "LibTorch ${TORCH_PY_VERSION} from ${TORCH_PY_DIR}")

set(_pf_shadow ${CMAKE_BINARY_DIR}/torch_include)
file(MAKE_DIRECTORY ${_pf_shadow})
file(GLOB _pf_entries RELATIVE ${TORCH_PY_DIR}/include ${TORCH_PY_DIR}/include/*)
foreach(_e ${_pf_entries})
  if(NOT _e STREQUAL "google" AND NOT EXISTS ${_pf_shadow}/${_e})
    file(CREATE_LINK ${TORCH_PY_DIR}/include/${_e} ${_pf_shadow}/${_e} SYMBOLIC)
  endif()
endforeach()

set(_pf_lib ${TORCH_PY_DIR}/lib)
add_library(preflight_torch INTERFACE)
add_library(preflight::torch ALIAS preflight_torch)
target_include_directories(preflight_torch SYSTEM INTERFACE
  ${_pf_shadow} ${_pf_shadow}/torch/csrc/api/include)
set(_pf_torch_libs ${_pf_lib}/libtorch_cpu.so ${_pf_lib}/libtorch.so)
# The CUDA backend registers itself from static initialisers, so it must stay
# linked even though nothing references it by symbol.
if(EXISTS ${_pf_lib}/libtorch_cuda.so)
  list(PREPEND _pf_torch_libs ${_pf_lib}/libtorch_cuda.so)
  set(_pf_c10 ${_pf_lib}/libc10_cuda.so ${_pf_lib}/libc10.so)
else()
  set(_pf_c10 ${_pf_lib}/libc10.so)
endif()
target_link_libraries(preflight_torch INTERFACE
  "-Wl,--no-as-needed" ${_pf_torch_libs} "-Wl,--as-needed" ${_pf_c10})
# libtorch_cuda's own RPATH finds the CUDA runtime of the nvidia-* wheels at
# run time; the linker needs the same directories to check those references.
file(GLOB _pf_nv_libs ${TORCH_PY_DIR}/../nvidia/*/lib)
if(_pf_nv_libs)
  string(REPLACE ";" ":" _pf_rpl "${_pf_nv_libs}")
  target_link_options(preflight_torch INTERFACE "LINKER:-rpath-link=${_pf_rpl}")
endif()
