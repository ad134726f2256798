#!/usr/bin/env bash
# Make a Python 3.11 base image from Debian 12 packages, for machines that reach Debian's
# mirrors and a package index but no container registry (the CI machine):
#   images/debian-base.sh [IMAGE]      (default localhost/srs-python:3.11-bookworm)
# then: images/build.sh --engine buildah --base-image IMAGE ...
# debootstrap (minbase + python3, python3-venv, python-is-python3, ca-certificates) into a
# folder, committed as a one-layer image with buildah. Does nothing when IMAGE exists.
# Needs root, debootstrap and buildah; DEBIAN_MIRROR overrides the mirror.
set -euo pipefail
IMAGE="${1:-localhost/srs-python:3.11-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists"
  exit 0
fi
work="$(mktemp -d /var/tmp/srs-base.XXXXXX)"
container=""
cleanup() {
  if [ -n "$container" ]; then buildah rm "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$work/rootfs" "$MIRROR"
# What the build host put there (its DNS, name, package caches) is no part of an image.
rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
  "$work/rootfs/etc/resolv.conf" "$work/rootfs/etc/hostname"
container="$(buildah from scratch)"
tar -C "$work/rootfs" -cf - . | tar -C "$(buildah mount "$container")" -xf -
buildah config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 --label "org.opencontainers.image.description=Debian 12 + python3 (debootstrap)" \
  "$container"
buildah commit --quiet "$container" "$IMAGE" >/dev/null
echo "built base image $IMAGE ($(chroot "$work/rootfs" python3 --version))"
