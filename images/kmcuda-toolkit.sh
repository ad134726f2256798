#!/bin/sh
# Lay out NVIDIA's CUDA wheels (nvcc, the CUDA runtime, cuRAND, ...) as one toolkit root, the
# tree CMake's FindCUDA expects:   kmcuda-toolkit.sh SITE_PACKAGES/nvidia /usr/local/cuda
# CUDA 12 wheels install one folder per component (nvidia/cuda_nvcc, nvidia/curand, ...),
# CUDA 13 wheels share one (nvidia/cu13); either way bin/, include/, lib/ and nvvm/ are merged.
set -eu
src="$1"
dst="$2"
mkdir -p "$dst"
for component in "$src"/*/; do
  for part in bin include lib nvvm; do
    if [ -d "$component$part" ]; then
      mkdir -p "$dst/$part"
      cp -a "$component$part/." "$dst/$part/"
    fi
  done
done
[ -e "$dst/lib64" ] || ln -s lib "$dst/lib64"
# The linker's names (libcurand.so) beside the versioned files the wheels ship (libcurand.so.10).
for library in "$dst"/lib/lib*.so.*; do
  [ -e "$library" ] || continue
  unversioned="${library%%.so.*}.so"
  [ -e "$unversioned" ] || ln -s "$(basename "$library")" "$unversioned"
done
"$dst/bin/nvcc" --version
