#!/usr/bin/env bash
# Builds the image (default cryo_ingest:latest) from the Containerfile: with docker where a daemon
# answers, else with buildah (vfs storage, chroot isolation: what works without a daemon, overlay
# or user namespaces), so that `buildah --storage-driver vfs from cryo_ingest:latest` finds it.
#
# Base: $BASE if set; else python:3.11-slim-bookworm if it is here or a registry gives it; else the
# local Debian base of scripts/make-base-image.sh (made on first use).
#
# pip reaches its index as the host's pip does, through two build secrets (never build arguments,
# never layers): the CA bundle the host trusts ($PIP_CERT, else $SSL_CERT_FILE, else the system's),
# which a TLS-intercepting proxy needs, and $CRYO_INGEST_PIP_CONF, a pip.conf for a private index.
#
# The image is labelled with a hash of its inputs (Containerfile, constraints, pyproject, src/, this
# script, the base image's id): an image with the same label is up to date, and is not rebuilt
# unless FORCE=1. `--print-inputs` prints that hash and exits. Environment: IMAGE, BASE, FORCE,
# CONTAINER_TOOL (docker or buildah), CRYO_INGEST_PIP_CONF, PIP_CERT.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-cryo_ingest:latest}
REGISTRY_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/cryo-ingest-base:bookworm
LABEL=io.cryo-ingest.inputs

tool=${CONTAINER_TOOL:-}  # docker or buildah; by default docker where its daemon answers
if [[ -z $tool ]]; then
    if docker info >/dev/null 2>&1; then tool=docker; else tool=buildah; fi
fi
if [[ $tool == buildah ]] && ! command -v buildah >/dev/null; then
    echo "no docker daemon answers and there is no buildah (make image-deps)" >&2
    exit 1
fi
B=(buildah --storage-driver vfs)

image_id() { # the id of a local image, or nothing
    if [[ $tool == docker ]]; then
        docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true
    else
        "${B[@]}" inspect --type image -f '{{.FromImageID}}' "$1" 2>/dev/null || true
    fi
}
pull() {
    if [[ $tool == docker ]]; then docker pull -q "$1"; else "${B[@]}" pull -q "$1"; fi
}

base=${BASE:-}
if [[ -z $base ]]; then
    if [[ -n $(image_id "$REGISTRY_BASE") ]] || pull "$REGISTRY_BASE" >/dev/null 2>&1; then
        base=$REGISTRY_BASE
    else
        base=$LOCAL_BASE
        if [[ -z $(image_id "$base") ]]; then
            [[ $tool == buildah ]] || { echo "no registry answers: make a base with scripts/make-base-image.sh and pass BASE" >&2; exit 1; }
            echo "no registry gives $REGISTRY_BASE: making $base with debootstrap" >&2
            scripts/make-base-image.sh "$base" >/dev/null
        fi
    fi
fi
base_id=$(image_id "$base")
[[ -n $base_id ]] || { echo "base image $base not found" >&2; exit 1; }

inputs=$({
    echo "$base_id"
    find Containerfile .dockerignore constraints.txt pyproject.toml scripts/build-image.sh src -type f \
        ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-32)
if [[ ${1:-} == --print-inputs ]]; then
    echo "$inputs"
    exit 0
fi
if [[ ${FORCE:-0} != 1 ]]; then
    if [[ $tool == docker ]]; then
        current=$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
    else
        current=$("${B[@]}" inspect --type image -f "{{ index .OCIv1.Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
    fi
    if [[ $current == "$inputs" ]]; then
        echo "$IMAGE is up to date (inputs $inputs)" >&2
        exit 0
    fi
fi

secrets=$(mktemp -d)
trap 'rm -rf "$secrets"' EXIT
cert=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
if [[ -f $cert ]]; then cp "$cert" "$secrets/pip_cert"; else : >"$secrets/pip_cert"; fi
if [[ -n ${CRYO_INGEST_PIP_CONF:-} ]]; then
    cp "$CRYO_INGEST_PIP_CONF" "$secrets/pip_conf"
else # the index settings of the host's environment, those that reach beyond this machine (no file://)
    index=$(grep -E '^https?://' <<<"${PIP_INDEX_URL:-}" || true)
    extra=$(tr ' ' '\n' <<<"${PIP_EXTRA_INDEX_URL:-}" | grep -E '^https?://' | tr '\n' ' ' || true)
    {
        echo "[global]"
        if [[ -n $index ]]; then echo "index-url = $index"; fi
        if [[ -n ${extra// /} ]]; then echo "extra-index-url = $extra"; fi
    } >"$secrets/pip_conf"
fi

args=(-f Containerfile -t "$IMAGE" --build-arg "BASE=$base" --label "$LABEL=$inputs"
    --secret "id=pip_cert,src=$secrets/pip_cert" --secret "id=pip_conf,src=$secrets/pip_conf")
echo "building $IMAGE with $tool on $base" >&2
start=$SECONDS
previous=$(image_id "$IMAGE")
if [[ $tool == docker ]]; then
    DOCKER_BUILDKIT=1 docker build "${args[@]}" .
else
    # No --layers: with vfs every cached layer is a full copy of the tree (gigabytes per build),
    # and a rebuild with the dependencies cached saved only about 40 s of about 100.
    "${B[@]}" bud --isolation chroot --pull=never "${args[@]}" .
    # The image this one replaced, now untagged: nothing else uses it.
    if [[ -n $previous && $previous != "$(image_id "$IMAGE")" ]]; then "${B[@]}" rmi "$previous" >/dev/null 2>&1 || true; fi
fi
echo "built $IMAGE in $((SECONDS - start)) s (inputs $inputs)" >&2
