#!/usr/bin/env bash
# Builds a minimal Debian bookworm image (python3 + venv + CA certificates) with buildah, for machines
# that cannot pull the production base images from a registry. The result is passed to the Dockerfiles
# as BASE_IMAGE; the production digests stay the default.
# libpython3.11 is included because Triton's Python backend stub (serve image) loads it dynamically.
# Run as: sudo environments/base-image.sh [IMAGE_NAME]   (default localhost/tuneline-base:bookworm)
set -euo pipefail

IMAGE="${1:-localhost/tuneline-base:bookworm}"
SUITE=bookworm

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE already present"
  exit 0
fi

# The machine's own Debian mirror: the only one guaranteed reachable from a locked-down builder.
debian_mirror() {
  local files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list)
  # deb822 ("URIs: http://...") first, then one-line format ("deb [opts] http://... suite").
  # Missing files and an early awk exit are expected here, hence the "|| true" under pipefail.
  { cat "${files[@]}" 2>/dev/null || true; } | awk '
    /^URIs:/ && $2 !~ /security/ && !found {print $2; found = 1}
    /^deb / && !found {for (i = 2; i <= NF; i++) if ($i ~ /^(http|https|file):/ && $i !~ /security/) {print $i; found = 1; break}}'
}
mirror="${DEBIAN_MIRROR:-$(debian_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d /var/tmp/tuneline-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $SUITE from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates "$SUITE" "$rootfs" "$mirror"
# apt lists and caches are dead weight in an image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

ctr="$(buildah from scratch)"
buildah copy "$ctr" "$rootfs" / >/dev/null
buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
buildah commit --rm "$ctr" "$IMAGE"
echo "built $IMAGE"
