#!/usr/bin/env bash
# make e2e-kind: the end-to-end suite on a kind cluster of its own.
#
# Builds what is missing (the node image, immortald:dev, immortald-etcd:dev,
# or the tags in IMMORTALD_E2E_IMAGE / IMMORTALD_E2E_ETCD_IMAGE), creates a
# cluster named immortald-e2e-<random> with a kubeconfig of its own, loads the
# images, runs `go test -tags e2e` with IMMORTALD_E2E_BACKEND=kind, prints
# diagnostics when it fails, and deletes the cluster whatever happens.
#
# E2E_KIND_RUN is the -run pattern (default: the kind scenarios, TestKind*,
# TestBadInput and TestCommandLife; TestKindNodeLost, which kills a node,
# runs after the others);
# E2E_TIMEOUT the go test timeout (default 30m).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${IMMORTALD_KIND_CACHE:-$HOME/.cache/immortald-kind}
mkdir -p "$cache"
log() { echo "e2e-kind: $(date +%T) $*" >&2; }
start=$(date +%s)

image=${IMMORTALD_E2E_IMAGE:-immortald:dev}
etcd_image=${IMMORTALD_E2E_ETCD_IMAGE:-immortald-etcd:dev}
name=immortald-e2e-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
KUBECONFIG=$(mktemp "$cache/kubeconfig.$name.XXXX")
export KUBECONFIG

# kubectl of the cluster's version (the machine's may be older), built once.
. "$here/versions.env"
kubectl_bin=$cache/bin/kubectl-$K8S_VERSION
if [[ ! -x "$kubectl_bin" ]]; then
  log "building kubectl $K8S_VERSION"
  mkdir -p "$cache/bin"
  (cd "$here/modules/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
    -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitVersion=$K8S_VERSION" \
    -o "$kubectl_bin.tmp" k8s.io/kubernetes/cmd/kubectl && mv "$kubectl_bin.tmp" "$kubectl_bin")
fi
mkdir -p "$cache/path"
ln -sf "$kubectl_bin" "$cache/path/kubectl"
export PATH="$cache/path:$PATH"

t0=$(date +%s)
"$here/build-node-image.sh" >/dev/null
log "node image ready in $(($(date +%s) - t0))s"
t0=$(date +%s)
make -C "$root" --no-print-directory image etcd-image IMAGE="$image" ETCD_IMAGE="$etcd_image" >/dev/null
log "$image and $etcd_image built in $(($(date +%s) - t0))s"

status=1
finish() {
  if ((status != 0)); then
    log "FAILED: diagnostics of cluster $name follow"
    "$here/cluster.sh" diag "$name" 2>&1 || true
  fi
  log "deleting cluster $name"
  "$here/cluster.sh" down "$name" >/dev/null 2>&1 || "$here/cluster.sh" down "$name" || true
  rm -f "$KUBECONFIG"
  log "done in $(($(date +%s) - start))s (exit $status)"
}
trap finish EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
"$here/cluster.sh" up "$name"
log "cluster up in $(($(date +%s) - t0))s"
t0=$(date +%s)
"$here/cluster.sh" load "$name" "$image" "$etcd_image"
log "images loaded in $(($(date +%s) - t0))s"

cd "$root"
# TestKindNodeLost kills a node for good: it runs last, in a go test of its
# own, when the pattern selects it.
run_pattern=${E2E_KIND_RUN:-^(TestKind|TestBadInput$|TestCommandLife$)}
last=TestKindNodeLost
e2e_test() {
  IMMORTALD_E2E_BACKEND=kind IMMORTALD_E2E_KIND_CLUSTER=$name \
    IMMORTALD_E2E_IMAGE=$image IMMORTALD_E2E_ETCD_IMAGE=$etcd_image \
    go test -tags e2e -count=1 -v -timeout "${E2E_TIMEOUT:-30m}" "$@" ./e2e/
}
set +e
e2e_test -run "$run_pattern" -skip "^$last\$"
status=$?
listed=$(go test -tags e2e -list "$run_pattern" ./e2e/)
if grep -qx "$last" <<<"$listed"; then
  t0=$(date +%s)
  e2e_test -run "^$last\$"
  s=$?
  ((status != 0)) || status=$s
  log "$last in $(($(date +%s) - t0))s"
fi
set -e
exit "$status"
