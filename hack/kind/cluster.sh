#!/usr/bin/env bash
# A kind cluster on the node image that build-node-image.sh makes.
#
#   hack/kind/cluster.sh up NAME      build what is missing, create the cluster
#                                     (one retry), keep CoreDNS from
#                                     forwarding out of the machine
#   hack/kind/cluster.sh load NAME IMAGE...   kind load docker-image
#   hack/kind/cluster.sh diag NAME    pods, descriptions, events, node logs
#   hack/kind/cluster.sh down NAME    delete the cluster
#   hack/kind/cluster.sh kind ARGS... the pinned kind CLI, with the docker
#                                     workaround when it is needed
#
# kubectl and kind use $KUBECONFIG (kind's default, ~/.kube/config, when it
# is unset). On a machine where `docker run --privileged` fails (see
# docker-wrapper/docker), kind runs with that wrapper first on PATH; where it
# works, kind runs unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${IMMORTALD_KIND_CACHE:-$HOME/.cache/immortald-kind}
log() { echo "kind-cluster: $(date +%T) $*" >&2; }

# kind_bin builds the pinned kind CLI once (the Go build cache keeps it cheap).
kind_bin() {
  local b=$cache/bin/kind-$KIND_VERSION
  if [[ ! -x "$b" ]]; then
    mkdir -p "$cache/bin"
    (cd "$here/modules/kind" && CGO_ENABLED=0 go build -trimpath -o "$b.tmp" sigs.k8s.io/kind && mv "$b.tmp" "$b")
  fi
  echo "$b"
}

# kind_run runs kind, through the docker wrapper when privileged containers
# cannot run here. The probe runs the node image itself (no pull).
kind_run() {
  local kind
  kind=$(kind_bin)
  if [[ -z "${IMMORTALD_KIND_PRIVILEGED:-}" ]]; then
    local image
    image=$("$here/build-node-image.sh" --print-tag)
    if docker image inspect "$image" >/dev/null 2>&1 &&
      ! docker run --rm --privileged --label org.immortald.kind=probe --entrypoint /bin/true "$image" >/dev/null 2>&1; then
      IMMORTALD_KIND_PRIVILEGED=no
      log "docker run --privileged fails here: kind runs with hack/kind/docker-wrapper"
    else
      IMMORTALD_KIND_PRIVILEGED=yes
    fi
    export IMMORTALD_KIND_PRIVILEGED
  fi
  if [[ "$IMMORTALD_KIND_PRIVILEGED" == no ]]; then
    IMMORTALD_REAL_DOCKER=$(command -v docker) PATH="$here/docker-wrapper:$PATH" "$kind" "$@"
  else
    "$kind" "$@"
  fi
}

kctl() { kubectl --context "kind-$name" "$@"; }

cmd=${1:?usage: cluster.sh up|load|diag|down|kind NAME}
shift
case "$cmd" in
kind)
  kind_run "$@"
  exit
  ;;
esac
name=${1:?cluster name}
shift

case "$cmd" in
up)
  image=$("$here/build-node-image.sh")
  for attempt in 1 2; do
    log "creating cluster $name on $image (attempt $attempt)"
    t0=$(date +%s)
    if kind_run create cluster --name "$name" --image "$image" --config "$here/cluster.yaml" --wait 5m; then
      log "cluster $name up in $(($(date +%s) - t0))s"
      break
    fi
    kind_run delete cluster --name "$name" || true
    if ((attempt == 2)); then
      log "cannot create cluster $name"
      exit 1
    fi
  done
  # CoreDNS forwards names outside cluster.local to the node's resolver, and
  # through it off the machine: drop the forward block.
  corefile=$(kctl -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
  printf '%s\n' "$corefile" | sed '/^[[:space:]]*forward \. /,/^[[:space:]]*}/d' >"$cache/Corefile.$name"
  if grep -q forward "$cache/Corefile.$name"; then
    log "CoreDNS still forwards: $(cat "$cache/Corefile.$name")"
    exit 1
  fi
  kctl -n kube-system create configmap coredns --from-file=Corefile="$cache/Corefile.$name" \
    --dry-run=client -o yaml | kctl apply -f - >/dev/null
  rm -f "$cache/Corefile.$name"
  kctl -n kube-system rollout restart deployment/coredns >/dev/null
  kctl -n kube-system rollout status deployment/coredns --timeout=5m >/dev/null
  kctl wait --for=condition=Ready nodes --all --timeout=5m >/dev/null
  log "cluster $name ready"
  ;;
load)
  kind_run load docker-image "$@" --name "$name"
  ;;
diag)
  set +e
  echo "== kubectl get nodes,pods -A -o wide"
  kctl get nodes,pods -A -o wide
  echo "== kubectl describe pods (not Running, or restarted)"
  kctl get pods -A --no-headers | awk '$4 != "Running" || $5 != "0" {print $1, $2}' |
    while read -r ns pod; do kctl -n "$ns" describe pod "$pod"; done
  echo "== events"
  kctl get events -A --sort-by=.lastTimestamp | tail -60
  for ns in $(kctl get pods -A -l app.kubernetes.io/name=immortald --no-headers -o custom-columns=NS:.metadata.namespace | sort -u); do
    for pod in $(kctl -n "$ns" get pods -l app.kubernetes.io/name=immortald -o name); do
      echo "== logs $ns/$pod (last 40 lines)"
      kctl -n "$ns" logs --tail=40 "$pod"
    done
  done
  for node in $(kind_run get nodes --name "$name" 2>/dev/null); do
    echo "== node $node: kubelet, containerd and immortald-kind-cni (last 80 lines)"
    docker exec "$node" journalctl -u kubelet -u containerd -u immortald-kind-cni --no-pager -n 80
  done
  true
  ;;
down)
  kind_run delete cluster --name "$name"
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
