# Which c10d backends the core is built with; shared by CMakeLists.txt and cmake/torch-probe (for
# binding.gyp). Sets O3_DIST_DEFINES and O3_DIST_INCLUDES; needs find_package(Torch) first.
# c10d: libtorch ships its headers when built with USE_DISTRIBUTED. Gloo's headers come with
# Debian's libgloo-dev (pip/zip libtorch builds link Gloo statically and ship none); NCCL's with
# CUDA builds (nccl.h from the toolkit or Python's nvidia-nccl package). Without them the core
# still builds, and refuses WORLD_SIZE > 1 with one line.
set(O3_DIST_DEFINES "")
set(O3_DIST_INCLUDES "")
find_path(O3_C10D_INCLUDE torch/csrc/distributed/c10d/TCPStore.hpp PATHS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH)
find_path(O3_GLOO_INCLUDE gloo/config.h HINTS ${TORCH_INCLUDE_DIRS})
if(O3_C10D_INCLUDE AND O3_GLOO_INCLUDE)
  list(APPEND O3_DIST_DEFINES O3_WITH_GLOO USE_C10D_GLOO)
  list(APPEND O3_DIST_INCLUDES ${O3_GLOO_INCLUDE})
  message(STATUS "o3: distributed training with Gloo")
endif()
if(O3_C10D_INCLUDE AND (TORCH_CUDA_LIBRARIES OR TARGET torch_cuda))
  find_path(O3_NCCL_INCLUDE nccl.h HINTS ${TORCH_INCLUDE_DIRS} ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_INCLUDE_DIR)
  if(O3_NCCL_INCLUDE)
    list(APPEND O3_DIST_DEFINES O3_WITH_NCCL USE_C10D_NCCL)
    list(APPEND O3_DIST_INCLUDES ${O3_NCCL_INCLUDE})
    message(STATUS "o3: distributed training with NCCL")
  endif()
endif()
