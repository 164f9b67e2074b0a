#!/usr/bin/env bash
# Image build check (called by deploy/check-chart.sh): build the Dockerfile's runtime stage
# (`runtime-prebuilt`) offline with buildah over a locally built zeptod, run it as the image's
# user, and run the image's own HEALTHCHECK command against it.
# Exit 0 = built and healthy, 3 = SKIPPED (the reason is printed), anything else = failure.
#
# No container registry is reachable here, so the base image `debian:bookworm-slim` comes from
# local container storage; when it is missing and debootstrap is installed, it is made from
# Debian's packages (`debootstrap --variant=minbase bookworm`, the same release as the real
# base) and stored under that name. On CI (CI=true, root) buildah and debootstrap are
# installed from Debian's packages when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
skip() { echo "image build check SKIPPED: $*"; exit 3; }
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
BASE_IMAGE="docker.io/library/debian:bookworm-slim"

if { ! command -v buildah || ! command -v debootstrap; } >/dev/null 2>&1 \
  && [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing buildah and debootstrap (Debian packages)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null) \
    || echo "could not install buildah/debootstrap"
fi
command -v buildah >/dev/null 2>&1 || skip "buildah is not installed (Debian package 'buildah')"

BIN=""
TGT="${CARGO_TARGET_DIR:-$ROOT/target}"
for b in "$TGT/release/zeptod" "$TGT/debug/zeptod"; do   # the newest build
  if [ -x "$b" ] && { [ -z "$BIN" ] || [ "$b" -nt "$BIN" ]; }; then BIN="$b"; fi
done
[ -n "$BIN" ] || skip "no locally built zeptod in target/release or target/debug"

if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 \
    || skip "base image $BASE_IMAGE is not in local container storage, no container registry is reachable to pull it, and debootstrap is not installed to make it"
  rootfs="$(mktemp -d)"
  echo "making $BASE_IMAGE locally: debootstrap --variant=minbase bookworm (Debian packages)"
  # The Debian mirror apt on this machine is configured with (no host is named here).
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || skip "no Debian mirror configured for apt, so debootstrap has nowhere to fetch from"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
    tail -5 "$rootfs.log"; rm -rf "$rootfs"
    skip "debootstrap could not make a bookworm base image (see above)"
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  c=$(buildah from scratch)
  buildah copy "$c" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$c"
  buildah commit --rm "$c" "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
fi
echo "base image: $BASE_IMAGE from local storage (not the registry's image: made with debootstrap from Debian packages or loaded by hand)"

# A small build context: the Dockerfile and the binary at the path the stage copies from.
ctx="$(mktemp -d)"
work="$(mktemp -d)"
ctr=""
pid=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1; fi
  # Keep the base image (no registry to pull it again); drop what this run built.
  buildah rmi -f "$TAG" >/dev/null 2>&1
  buildah rmi --prune >/dev/null 2>&1
  rm -rf "$ctx" "$work"
  exit "$rc"
}
trap cleanup EXIT
mkdir -p "$ctx/target/release"
cp "$ROOT/Dockerfile" "$ctx/Dockerfile"
# Without its debug info, as the Dockerfile's builder stage builds it: the debug info is most of
# a local build's size, and the vfs storage driver writes every layer as a whole copy.
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$ctx/target/release/zeptod" "$BIN"
else
  cp "$BIN" "$ctx/target/release/zeptod"
fi
TAG="localhost/zeptod:check"
buildah rmi --prune >/dev/null 2>&1 || true

# Room for the build: with vfs, the base rootfs is copied about six times (stage containers,
# committed layers, the container the check runs) and the binary about four times.
store=$(buildah info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
while [ ! -d "$store" ]; do store=$(dirname "$store"); done
bin_bytes=$(stat -c %s "$ctx/target/release/zeptod")
need=$((4 * bin_bytes + 6 * 250 * 1024 * 1024))
avail=$(df -P -B1 "$store" | awk 'NR==2{print $4}')
echo "binary for the image: $((bin_bytes / 1048576)) MiB; $((avail / 1048576)) MiB free under $store, about $((need / 1048576)) MiB needed"
if [ "$avail" -lt "$need" ]; then
  skip "only $((avail / 1048576)) MiB free under $store; building the image with the vfs driver needs about $((need / 1048576)) MiB"
fi
echo "building --target runtime-prebuilt over $BIN"
buildah bud --pull=never --format docker --layers=false --target runtime-prebuilt -t "$TAG" "$ctx"

buildah inspect --type image "$TAG" >"$work/inspect.json"
user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Docker"]["config"]["User"])' "$work/inspect.json")
[ "$user" = "10001:10001" ] || { echo "image user is '$user', want 10001:10001"; exit 1; }
mapfile -t hc_cmd < <(python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["Docker"]["config"]["Healthcheck"]["Test"]
assert t[0] == "CMD", t
print("\n".join(t[1:]))' "$work/inspect.json")
echo "image user $user; HEALTHCHECK CMD ${hc_cmd[*]}"

# The HEALTHCHECK probes 127.0.0.1:8123; buildah's chroot isolation shares the host network.
if (exec 3<>/dev/tcp/127.0.0.1/8123) 2>/dev/null; then
  skip "port 8123 on this machine is taken by another process; the image's HEALTHCHECK needs it"
fi
ctr=$(buildah from --pull=never "$TAG")
# The image's own ENTRYPOINT/CMD/USER: zeptod --data-dir /data as 10001.
buildah run "$ctr" -- /usr/local/bin/zeptod --data-dir /data >"$work/zeptod.log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  if buildah run "$ctr" -- "${hc_cmd[@]}" 2>/dev/null; then
    echo "image build check: the image's HEALTHCHECK passed (GET /health 200) on $TAG"
    owner=$(buildah run "$ctr" -- stat -c %u:%g /data/wal 2>/dev/null || echo none)
    echo "zeptod's WAL directory /data/wal is owned by uid:gid $owner"
    [ "$owner" = "10001:10001" ] || { echo "zeptod did not write /data as 10001:10001"; exit 1; }
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.2
done
cat "$work/zeptod.log"
echo "image build check: the image's HEALTHCHECK did not pass"
exit 1
