# The node-gyp build of the addons CMakeLists.txt builds; run it with `scripts/build-addon --gyp`
# (offline against /usr's Node headers, output in build-gyp/). The same targets: o3_core, the static
# training core (cpp/sources.txt), and the trainer addon (addon/sources.txt) linked against it;
# o3_mount_core (cpp/mount/sources.txt) and the mount's addon (addon/mount/sources.txt).
# libtorch's flags (the C++ ABI above all) come from libtorch's CMake config via scripts/torch-config.
# Against a CUDA libtorch this build links libtorch_cuda and trains on the GPU, but without CUDA's
# headers it reports the GPU as "cuda:0" rather than by name (CMakeLists.txt defines O3_WITH_CUDA).
{
  'target_defaults': {
    'cflags!': ['-fno-exceptions'],
    'cflags_cc!': ['-fno-exceptions', '-fno-rtti', '-std=gnu++17', '-std=gnu++1y', '-std=gnu++20'],
    'cflags_cc': ['-std=c++17', '-fexceptions', '-frtti', '<!@(scripts/torch-config --cxx-flags)'],
  },
  'targets': [
    {
      'target_name': 'o3_core',
      'type': 'static_library',
      'sources': ['<!@(grep -v "^#" cpp/sources.txt)'],
      'include_dirs': ['<!@(scripts/torch-config --include-dirs)', '<!@(scripts/torch-config --dist-include-dirs)'],
      # Gloo (and NCCL with a CUDA libtorch) when their headers are there, as CMakeLists.txt decides.
      'defines': ['<!@(scripts/torch-config --dist-defines)'],
      # Linked into a shared object; float arithmetic as written (see CMakeLists.txt).
      'cflags': ['-fPIC', '-ffp-contract=off'],
      'link_settings': {
        # --no-as-needed keeps libtorch_cuda, which registers CUDA when loaded (see CMakeLists.txt).
        'ldflags': ['-Wl,--no-as-needed', '-Wl,-rpath,<!(scripts/torch-config --lib-dir)'],
        'libraries': ['<!@(scripts/torch-config --libs)', '-lz', '-ljpeg', '-lpng'],
      },
    },
    {
      'target_name': 'o3_trainer',
      'dependencies': ['o3_core'],
      'sources': ['<!@(grep -v "^#" addon/sources.txt)'],
      'include_dirs': ["<!(node -p \"require('node-addon-api').include_dir\")"],
      'defines': ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
    },
    {
      # The mount's byte path (cpp/mount/sources.txt): C++20, libfuse3, libcurl, GnuTLS, libcrypto, zlib; no torch.
      'target_name': 'o3_mount_core',
      'type': 'static_library',
      'sources': ['<!@(grep -v "^#" cpp/mount/sources.txt)'],
      'include_dirs': ['cpp'],
      'cflags_cc!': ['-std=c++17'],
      # -Wno-restrict: as in CMakeLists.txt, GCC 12's false positive on string concatenation (bug 105651).
      'cflags_cc': ['-std=c++20', '-Wall', '-Wextra', '-Werror', '-Wno-restrict', '<!@(pkg-config --cflags fuse3 libcurl gnutls)'],
      'cflags': ['-fPIC'],
      'link_settings': {'libraries': ['<!@(pkg-config --libs fuse3 libcurl gnutls libcrypto zlib)']},
    },
    {
      'target_name': 'o3_mount',
      'dependencies': ['o3_mount_core'],
      'sources': ['<!@(grep -v "^#" addon/mount/sources.txt)'],
      'include_dirs': ['cpp', "<!(node -p \"require('node-addon-api').include_dir\")"],
      'cflags_cc!': ['-std=c++17'],
      'cflags_cc': ['-std=c++20'],
      'defines': ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', 'NODE_ADDON_API_DISABLE_DEPRECATED'],
    },
  ],
}
