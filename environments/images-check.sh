#!/usr/bin/env bash
# Runs the prepare step inside the built train-cpu image (buildah run) and on the host with the project venv,
# on the same sample data, and fails unless every output file is byte-identical.
# Run as: environments/images-check.sh      (after `make images`; needs buildah, i.e. root here)
# Environment: PYTHON (default .venv/bin/python), IMAGE (default tuneline/train-cpu:dev),
#              DATA (default data/sample/tickets.jsonl)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
IMAGE="${IMAGE:-tuneline/train-cpu:dev}"
DATA="${DATA:-data/sample/tickets.jsonl}"

command -v buildah >/dev/null || { echo "buildah not installed: run make images first" >&2; exit 1; }
buildah inspect --type image "$IMAGE" >/dev/null 2>&1 || { echo "$IMAGE not built: run make images" >&2; exit 1; }

work="$(mktemp -d /tmp/tuneline-images-check.XXXXXX)"
ctr=""
cleanup() { [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1; rm -rf "$work"; }
trap cleanup EXIT

outputs() {  # the prepare command line with outputs under $1
  echo --raw "$2" --train-out "$1/train" --validation-out "$1/validation" --test-out "$1/test" --report-out "$1/report"
}

mkdir -p "$work/host" "$work/image/out" "$work/image/in"
# shellcheck disable=SC2046
"$PYTHON" -m components.prepare $(outputs "$work/host" "$DATA") > "$work/host.log" 2>&1 \
  || { cat "$work/host.log"; echo "prepare failed on the host" >&2; exit 1; }

cp "$DATA" "$work/image/in/"
chmod -R a+rwX "$work/image"  # the image runs as UID 10001
ctr="$(buildah from "$IMAGE")"
start=$(date +%s)
# shellcheck disable=SC2046
buildah run --isolation chroot -v "$work/image:/mnt/check" "$ctr" -- \
  python -m components.prepare $(outputs /mnt/check/out "/mnt/check/in/$(basename "$DATA")") > "$work/image.log" 2>&1 \
  || { cat "$work/image.log"; echo "prepare failed inside $IMAGE" >&2; exit 1; }
echo "prepare inside $IMAGE: $(( $(date +%s) - start )) s"

# Paths embedded in reports differ (/mnt/check/... vs the host folder), and so do wall-clock timings: compare
# after normalising both. Everything else must be byte-identical.
VOLATILE_KEYS="${VOLATILE_KEYS:-seconds records_per_second}"
drop_volatile() {  # JSON: remove timing keys at any depth; other files pass through
  case "$1" in
    *.json) "$PYTHON" -c 'import json, sys
keys = set(sys.argv[2].split())
def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if k not in keys}
    return [clean(v) for v in x] if isinstance(x, list) else x
print(json.dumps(clean(json.load(open(sys.argv[1]))), indent=1, sort_keys=True))' "$1" "$VOLATILE_KEYS" ;;
    *) cat "$1" ;;
  esac
}
status=0
while IFS= read -r rel; do
  host="$work/host/$rel"; image="$work/image/out/$rel"
  if [ ! -f "$image" ]; then echo "MISSING in image run: $rel"; status=1; continue; fi
  norm_host="$(drop_volatile "$host" | sed -e "s#$work/host#OUT#g" -e "s#$DATA#RAW#g")"
  norm_image="$(drop_volatile "$image" | sed -e "s#/mnt/check/out#OUT#g" -e "s#/mnt/check/in/$(basename "$DATA")#RAW#g")"
  if [ "$norm_host" = "$norm_image" ]; then
    echo "same  $rel"
  else
    echo "DIFF  $rel (< host, > image)"; diff <(echo "$norm_host") <(echo "$norm_image") | head -20; status=1
  fi
done < <(cd "$work/host" && find . -type f | sed 's#^\./##' | sort)
[ $status = 0 ] && echo "images-check ok: prepare outputs identical inside and outside $IMAGE"
exit $status
