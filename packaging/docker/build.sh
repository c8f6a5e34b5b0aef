#!/usr/bin/env bash
# Build packaging/docker/Dockerfile without a Docker engine or a registry: buildah (root) builds it FROM a Debian
# bookworm base made locally by debootstrap (minbase + python3 + python3-venv), with the Python dependencies taken
# from a wheelhouse that the host's pip fills, and the RUN steps cut off from the network. Writes an OCI archive.
#
#   packaging/docker/build.sh [-t IMAGE_REF] [-o ARCHIVE] [--base IMAGE] [--rmi]
#
#   -t IMAGE_REF   name of the image, also in the archive (default docker.io/nodeagent/nodeagent:<version>)
#   -o ARCHIVE     where to write the OCI archive (default dist/nodeagent-image.oci.tar); "-" writes none
#   --base IMAGE   build FROM this image (one buildah can pull, e.g. docker.io/library/python:3.11-slim-bookworm)
#                  instead of the local debootstrap base
#   --rmi          remove the built image from buildah's storage once the archive is written
#
# Environment: NODEAGENT_BUILD_CACHE (default /var/tmp/nodeagent-image-build: buildah's storage, the base rootfs
# tarball and the wheelhouse, reused while their inputs do not change), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), NODEAGENT_REVISION and SOURCE_DATE_EPOCH (the revision and created labels).
# Needs root and the Debian packages buildah and debootstrap. Prints "image-size <size>" and the archive path.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -n1)"
ref="docker.io/nodeagent/nodeagent:$version"
archive="$repo/dist/nodeagent-image.oci.tar"
base=""
rmi=0
while [ $# -gt 0 ]; do
  case "$1" in
    -t) ref="$2"; shift 2 ;;
    -o) archive="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --rmi) rmi=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (buildah with its own storage, debootstrap)" >&2; exit 2; }
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install buildah debootstrap)" >&2; exit 2; }
done

cache="${NODEAGENT_BUILD_CACHE:-/var/tmp/nodeagent-image-build}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$cache"
# One build at a time per cache (buildah's storage, the base and the wheelhouse are shared).
exec 9>"$cache/lock"
flock 9

t0=$(date +%s)
log() { echo "build.sh [$(( $(date +%s) - t0 ))s] $*" >&2; }

# buildah's own storage, kept in the cache: overlay where this kernel allows an overlay mount there, else vfs.
driver=vfs
probe="$(mktemp -d "$cache/overlay-probe.XXXXXX")"
mkdir -p "$probe"/{l,u,w,m}
if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
  umount "$probe/m"
  driver=overlay
fi
rm -rf "$probe"
bah() { buildah --root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver" "$@"; }

# --- the base image: Debian bookworm minbase + python3, made by debootstrap, cached by its recipe ---------------
if [ -z "$base" ]; then
  suite=bookworm
  packages=python3,python3-venv
  recipe="v1 $suite minbase $packages $mirror"
  key="$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
  base="localhost/nodeagent-base:$suite-$key"
  if ! bah inspect --type image "$base" >/dev/null 2>&1; then
    tarball="$cache/base-$key.tar"
    if [ ! -f "$tarball" ]; then
      log "debootstrap --variant=minbase --include=$packages $suite ($mirror)"
      rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
      debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -n 30 "$cache/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
      # Slim, as the official -slim images: no package caches, lists, documentation, manuals, locales or devices.
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
        "$rootfs"/var/cache/debconf/*-old
      find "$rootfs/dev" -mindepth 1 -delete
      tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
      mv "$tarball.part" "$tarball"
      rm -rf "$rootfs"
    fi
    log "importing the base rootfs as $base ($driver storage)"
    ctr="$(bah from scratch)"
    mnt="$(bah mount "$ctr")"
    tar --numeric-owner -C "$mnt" -xpf "$tarball"
    bah umount "$ctr" >/dev/null
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash \
      --label org.opencontainers.image.description="Debian $suite minbase + python3, made by debootstrap" "$ctr"
    bah commit --quiet --rm "$ctr" "$base" >/dev/null
  fi
fi

# --- the wheelhouse: every dependency as a binary wheel, plus setuptools for the wheel build of the project ------
wkey="$(cat "$repo/pyproject.toml" | sha256sum | cut -c1-12)"
wheelhouse="$cache/wheelhouse-$wkey"
if [ ! -d "$wheelhouse" ]; then
  log "filling the wheelhouse with pip (binary wheels only)"
  tmpwh="$(mktemp -d "$cache/wheelhouse.XXXXXX")"
  python3 -m pip wheel -q --disable-pip-version-check --only-binary=:all: --wheel-dir "$tmpwh" "$repo" 'setuptools>=68' 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  rm -f "$tmpwh"/nodeagent-*.whl  # the image builds its own wheel from the source
  ls "$tmpwh"/setuptools-*.whl >/dev/null
  mv "$tmpwh" "$wheelhouse"
fi

# --- the image: the Dockerfile as it is, its RUN steps without a network -----------------------------------------
created="$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)"
log "buildah bud -f packaging/docker/Dockerfile (BASE=$base) -t $ref"
bah bud --quiet --isolation oci --network none --layers=false \
  --volume "$wheelhouse:/wheelhouse:ro" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse \
  --build-arg "BASE=$base" --build-arg "VERSION=$version" \
  --build-arg "REVISION=${NODEAGENT_REVISION:-unknown}" --build-arg "CREATED=$created" \
  -f "$here/Dockerfile" -t "$ref" "$repo" >/dev/null
bah rmi --prune >/dev/null 2>&1 || true  # the untagged build stage
echo "image-size $(bah images --noheading --format '{{.Size}}' "$ref")"

if [ "$archive" != "-" ]; then
  mkdir -p "$(dirname "$archive")"
  rm -f "$archive"
  bah push --quiet "$ref" "oci-archive:$archive:$ref"
  log "wrote $archive ($(stat -c %s "$archive") bytes)"
  echo "$archive"
fi
if [ "$rmi" = 1 ]; then
  bah rmi "$ref" >/dev/null
fi
log "done"
