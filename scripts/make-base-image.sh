#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm where no image registry answers: Debian bookworm
# (minbase) with its Python 3.11, built by debootstrap from Debian's packages and committed with
# buildah (vfs storage). Usage: scripts/make-base-image.sh [IMAGE]   (default: the name below)
set -euo pipefail
IMAGE=${1:-localhost/cryo-ingest-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDAH=(buildah --storage-driver vfs)

work=$(mktemp -d)
ctr=
cleanup() {
    [[ -n $ctr ]] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}
# What an image does not need: the downloaded packages, the package lists, the logs.
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/* "$work"/root/var/log/*
tar -C "$work/root" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* --numeric-owner -cf "$work/root.tar" .

ctr=$("${BUILDAH[@]}" from scratch)
"${BUILDAH[@]}" add "$ctr" "$work/root.tar" / >/dev/null
"${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/bash --label org.opencontainers.image.description="Debian bookworm minbase + python3 (debootstrap)" "$ctr"
"${BUILDAH[@]}" commit --quiet "$ctr" "$IMAGE" >/dev/null
echo "$IMAGE"
