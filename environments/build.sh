#!/usr/bin/env bash
# Builds the tuneline images with whichever engine works here: docker, podman or buildah (installed with
# apt-get when none is usable). When the production base images cannot be pulled (no registry reachable),
# a local Debian base is built with debootstrap (environments/base-image.sh) and passed as BASE_IMAGE.
# Run as: environments/build.sh [IMAGE ...]     (default: every image marked cpu_buildable in images.yaml)
# Environment: PYTHON (default .venv/bin/python), ENGINE (docker|podman|buildah, default: detect),
#              BASE_IMAGE (skip detection, use this base), TAG (default dev), REPORT (default .tuneline/images.json)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
TAG="${TAG:-dev}"
REPORT="${REPORT:-.tuneline/images.json}"
LOCAL_BASE=localhost/tuneline-base:bookworm

usable() {
  case "$1" in
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
    # podman is installed on hosts where it cannot run containers (cgroups v1 hybrid): prove it can.
    podman) command -v podman >/dev/null && podman run --rm --quiet "${BASE_IMAGE:-$LOCAL_BASE}" true >/dev/null 2>&1 ;;
    buildah) command -v buildah >/dev/null ;;
  esac
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || { echo "need root to apt-get install ${missing[*]}" >&2; exit 1; }
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
  fi
}

if [ -z "${ENGINE:-}" ]; then
  for candidate in docker podman buildah; do
    if usable "$candidate"; then ENGINE=$candidate; break; fi
  done
fi
if [ -z "${ENGINE:-}" ]; then
  apt_install buildah
  ENGINE=buildah
fi
echo "engine: $ENGINE"

build_cmd() {
  case "$ENGINE" in
    # chroot isolation: works as root without user namespaces or a cgroup manager.
    buildah) echo "buildah build --isolation chroot --layers" ;;
    podman) echo "podman build --layers" ;;
    docker) echo "docker build" ;;
  esac
}

# Production bases are pinned by digest in each Dockerfile; only when none of their registries answers do we
# fall back to the local Debian base.
if [ -z "${BASE_IMAGE:-}" ]; then
  if curl -fsS -m 5 -o /dev/null https://registry-1.docker.io/v2/ 2>/dev/null \
     || curl -sS -m 5 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null | grep -q 401; then
    echo "registry reachable: using the production base images"
  else
    [ "$ENGINE" = buildah ] || { echo "no registry reachable and ENGINE=$ENGINE: set BASE_IMAGE" >&2; exit 1; }
    apt_install debootstrap
    environments/base-image.sh "$LOCAL_BASE"
    BASE_IMAGE=$LOCAL_BASE
  fi
fi

# The host pip's wheelhouse (find-links) and CA bundle also serve the build: a wheelhouse is where a CPU torch
# wheel lives on machines that cannot reach the PyTorch index, and the CA bundle is what makes a TLS-inspecting
# proxy trusted. Both are bind-mounted into RUN steps only (a buildah/podman feature): nothing lands in a layer.
pip_conf() { "$PYTHON" -m pip config get "$1" 2>/dev/null | head -1 || true; }
wheelhouse="${PIP_FIND_LINKS:-$(pip_conf global.find-links)}"
ca_bundle="${PIP_CERT:-$(pip_conf global.cert)}"
torch_index=https://download.pytorch.org/whl/cpu
curl -sS -m 5 -o /dev/null "$torch_index/" 2>/dev/null || torch_index=https://pypi.org/simple

images=("$@")
if ((${#images[@]} == 0)); then
  mapfile -t images < <("$PYTHON" environments/render.py --list cpu)
fi

mkdir -p "$(dirname "$REPORT")"
echo "[" > "$REPORT.tmp"
first=1
for image in "${images[@]}"; do
  args=(-f "environments/$image/Dockerfile" -t "tuneline/$image:$TAG")
  [ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
  pip_args=""
  if [ "$ENGINE" != docker ]; then
    if [ -n "$wheelhouse" ] && [ -d "$wheelhouse" ]; then
      args+=(-v "$wheelhouse:/run/wheelhouse:ro"); pip_args+=" --find-links /run/wheelhouse"
    fi
    if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
      args+=(-v "$ca_bundle:/run/build-ca.crt:ro"); pip_args+=" --cert /run/build-ca.crt"
    fi
  fi
  [ -n "$pip_args" ] && args+=(--build-arg "PIP_BUILD_ARGS=$pip_args")
  [ "$ENGINE" != docker ] && args+=(--ignorefile environments/build.ignore)
  echo "== building tuneline/$image:$TAG"
  start=$(date +%s)
  # shellcheck disable=SC2046
  $(build_cmd) "${args[@]}" .
  seconds=$(( $(date +%s) - start ))
  case "$ENGINE" in
    buildah) read -r size digest < <(buildah images --json "tuneline/$image:$TAG" | "$PYTHON" -c \
               'import json, sys; i = json.load(sys.stdin)[0]; print(i["size"].replace(" ", ""), i["digest"])') ;;
    *) size="$($ENGINE image inspect --format '{{.Size}}' "tuneline/$image:$TAG")B"
       digest=$($ENGINE image inspect --format '{{.Id}}' "tuneline/$image:$TAG") ;;
  esac
  echo "== tuneline/$image:$TAG built in ${seconds}s, ${size}, ${digest}"
  ((first)) || echo "," >> "$REPORT.tmp"
  first=0
  printf '  {"image": "tuneline/%s:%s", "engine": "%s", "base": "%s", "seconds": %s, "size": "%s", "digest": "%s"}' \
    "$image" "$TAG" "$ENGINE" "${BASE_IMAGE:-production}" "$seconds" "$size" "$digest" >> "$REPORT.tmp"
done
printf '\n]\n' >> "$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
echo "report: $REPORT"
