#!/usr/bin/env bash
# Validates deploy/kubernetes without a cluster and without github.com:
#   1. builds kustomize and kubeconform with `go install` (pinned versions, from the Go
#      module proxy) into $EVENTQ_STACK_DIR/tools/kubernetes (.eventq by default, ignored
#      by git), once;
#   2. makes kubeconform's schemas, once: the Kubernetes ones from the OpenAPI document in
#      the k8s.io/kubernetes module (api/openapi-spec/swagger.json), KEDA's ScaledObject
#      and TriggerAuthentication from the CRDs in the github.com/kedacore/keda/v2 module
#      (config/crd/bases), converted by deploy/kubernetes/checks (Go);
#   3. renders every overlay with kustomize and checks it with `kubeconform -strict`
#      against those local schemas only (a resource without a schema fails), then with
#      the policy rules of checks/policy.go (probes, non-root, read-only root filesystem,
#      grace periods, replicas × workers ≤ partitions, ...).
#
# Usage: deploy/kubernetes/validate.sh [OVERLAY_DIR...]   (default: every overlay)
# Exit 0 when everything is valid; otherwise each problem is printed and it exits 1.
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2      # sigs.k8s.io/kustomize/kustomize/v5 (v5.8.3 needs Go 1.27)
KUBECONFORM_VERSION=v0.8.0    # github.com/yannh/kubeconform
KUBERNETES_VERSION=1.34.4     # k8s.io/kubernetes: the oldest API the manifests must fit
KEDA_VERSION=v2.21.0          # github.com/kedacore/keda/v2: the CRDs' schemas

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${EVENTQ_STACK_DIR:-$repo/.eventq}
case $state in /*) ;; *) state=$repo/$state ;; esac
tools=$state/tools/kubernetes
mkdir -p "$tools"

# Go caches of our own, so a run never depends on (or fills) the user's and a removed
# tools folder means a cold start. The small checks module keeps its caches; building
# the tools and downloading the schemas' modules (~500 MB) use scratch caches that are
# deleted once their results (binaries, schemas) are in place.
export GOMODCACHE=$tools/go/mod GOCACHE=$tools/go/build GOPATH=$tools/go/path
export GOFLAGS="-modcacherw -buildvcs=false" GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
scratch=$tools/go/scratch
rendered=$(mktemp -d)
trap 'rm -rf "$rendered" "$scratch"' EXIT

log() { printf 'validate: %s\n' "$*" >&2; }

install_tool() {  # NAME MODULE_PATH VERSION -> path of the binary
    local name=$1 module=$2 version=$3 dir=$tools/bin/$1-$3
    if [[ ! -x $dir/$name ]]; then
        log "building $name $version (go install $module@$version)"
        GOBIN=$dir GOMODCACHE=$scratch/mod GOCACHE=$scratch/build go install "$module@$version"
    fi
    printf '%s\n' "$dir/$name"
}

module_dir() {  # MODULE VERSION -> the module's extracted source, downloaded if needed
    (cd "$tools" && GOMODCACHE=$scratch/mod go mod download -json "$1@$2") | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

kustomize=$(install_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION")
kubeconform=$(install_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")

# The converter and policy checker: tested, then built (both cached by GOCACHE).
checks=$tools/bin/eventq-k8s-checks
if ! out=$(cd "$here/checks" && go vet ./... 2>&1 && go test -count=1 ./... 2>&1); then
    printf '%s\n' "$out" >&2
    log "FAILED: the tests of deploy/kubernetes/checks"
    exit 1
fi
(cd "$here/checks" && go build -o "$checks" .)

# Schemas are made again when the converter changes.
converter=$(sha256sum "$here/checks/schemas.go" | cut -d' ' -f1)
schemas=$tools/schemas
k8s_schemas=$schemas/kubernetes/v$KUBERNETES_VERSION-standalone-strict
if [[ $(cat "$k8s_schemas/.complete" 2>/dev/null) != "$converter" ]]; then
    log "Kubernetes $KUBERNETES_VERSION schemas from k8s.io/kubernetes@v$KUBERNETES_VERSION"
    src=$(module_dir k8s.io/kubernetes "v$KUBERNETES_VERSION")
    rm -rf "$k8s_schemas.tmp"
    "$checks" openapi "$src/api/openapi-spec/swagger.json" "$k8s_schemas.tmp" >&2
    rm -rf "$k8s_schemas" && mv "$k8s_schemas.tmp" "$k8s_schemas" && echo "$converter" >"$k8s_schemas/.complete"
fi
keda_schemas=$schemas/keda-$KEDA_VERSION
if [[ $(cat "$keda_schemas/.complete" 2>/dev/null) != "$converter" ]]; then
    log "KEDA $KEDA_VERSION schemas from github.com/kedacore/keda/v2@$KEDA_VERSION"
    src=$(module_dir github.com/kedacore/keda/v2 "$KEDA_VERSION")
    rm -rf "$keda_schemas.tmp"
    "$checks" crd "$keda_schemas.tmp" "$src"/config/crd/bases/keda.sh_*.yaml >&2
    rm -rf "$keda_schemas" && mv "$keda_schemas.tmp" "$keda_schemas" && echo "$converter" >"$keda_schemas/.complete"
fi

if [[ $# -gt 0 ]]; then
    overlays=("$@")
else
    overlays=("$here"/overlays/*/)
fi
status=0
for overlay in "${overlays[@]}"; do
    overlay=${overlay%/}
    name=$(basename "$overlay")
    out=$rendered/$name.yaml
    log "overlay $name"
    if ! "$kustomize" build "$overlay" >"$out"; then
        status=1
        continue
    fi
    # Only the local schemas: no "default" location, so kubeconform never goes online,
    # and a kind without a schema is an error (no -ignore-missing-schemas).
    if ! "$kubeconform" -strict -summary -kubernetes-version "$KUBERNETES_VERSION" \
        -schema-location "$schemas/kubernetes/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        -schema-location "$keda_schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
        "$out"; then
        status=1
    fi
    if ! "$checks" policy <"$out"; then
        status=1
    fi
done
if [[ $status -ne 0 ]]; then
    log "FAILED"
else
    log "every overlay is valid"
fi
exit "$status"
