#!/usr/bin/env bash
# Builds the kind node image offline, from Go modules (hack/kind/modules/) and
# Debian packages (hack/kind/packages.txt) alone, and prints its tag.
#
# The tag is immortald-kind-node:<hash of the image's inputs>: this script,
# versions.env, packages.txt, modules/ and node/ (not cluster.sh, e2e.sh,
# cluster.yaml or docker-wrapper/, which only run clusters); when Docker
# already has it, nothing is built. The Go build cache and the Debian
# rootfs (a tarball in $IMMORTALD_KIND_CACHE, default ~/.cache/immortald-kind)
# are kept between builds.
#
# No registry but the Go module proxy and Debian's mirror is reached, and no
# container runs during the build: the control-plane images are imported into
# the node's containerd by that containerd itself, run in a chroot of the
# rootfs on a socket of its own, and the result is `docker import`ed.
#
# IMMORTALD_KIND_NODE_REPO names the image's repository (default
# immortald-kind-node), e.g. to time a build from nothing beside a cached one.
#
# Usage: hack/kind/build-node-image.sh [--print-tag]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${IMMORTALD_KIND_CACHE:-$HOME/.cache/immortald-kind}
docker=${DOCKER:-docker}
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOFLAGS=-trimpath

hash=$(cd "$here" && find build-node-image.sh versions.env packages.txt modules node -type f ! -name '*.log' -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum | sha256sum | cut -c1-16)
tag=${IMMORTALD_KIND_NODE_REPO:-immortald-kind-node}:$hash
if [[ "${1:-}" == --print-tag ]]; then
  echo "$tag"
  exit 0
fi

log() { echo "kind-image: $(date +%T) $*" >&2; }
if $docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag is in Docker already"
  echo "$tag"
  exit 0
fi
start=$(date +%s)
step=$start
lap() { local now; now=$(date +%s); log "$1 done in $((now - step))s"; step=$now; }

# ---- tools ----
need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v pigz >/dev/null || need_pkgs+=(pigz)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
built=()
cleanup() {
  # The chrooted containerd, if it still runs, the images tagged for the
  # import, and the work tree.
  if [[ -n "${ctrd_pid:-}" ]]; then kill "$ctrd_pid" 2>/dev/null || true; wait "$ctrd_pid" 2>/dev/null || true; fi
  if ((${#built[@]})); then $docker rmi "${built[@]}" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# ---- rootfs (cached by its package list and suite) ----
# Bump rootfs_rev when the rootfs steps below change.
rootfs_rev=1
rootfs_key=$({ echo "$rootfs_rev $DEBIAN_SUITE $DEBIAN_MIRROR"; cat "$here/packages.txt"; } |
  sha256sum | cut -c1-16)
rootfs_tar=$cache/rootfs-$DEBIAN_SUITE-$rootfs_key.tar.gz
if [[ ! -f "$rootfs_tar" ]]; then
  log "debootstrap $DEBIAN_SUITE (minbase) into a new rootfs"
  pkgs=$(grep -v '^#' "$here/packages.txt" | grep . | paste -sd, -)
  debootstrap --variant=minbase --include="$pkgs" "$DEBIAN_SUITE" "$work/rootfs" "$DEBIAN_MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; exit 1; }
  r=$work/rootfs
  # As kind's base image: no units but the ones kind enables, journald not
  # reading kmsg, systemd as /sbin/init.
  find "$r/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
    "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
    "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$r/sbin/init"
  # Debian's sysctl files set host-wide values (kernel.pid_max, fs.protected_*).
  rm -f "$r"/usr/lib/sysctl.d/* "$r"/etc/sysctl.d/*.conf "$r"/etc/sysctl.conf
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc \
    "$r"/usr/share/man "$r"/usr/share/locale
  tar -C "$r" --numeric-owner -cf - . | pigz -1 >"$rootfs_tar.tmp"
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf "$r"
  lap "rootfs ($(du -h "$rootfs_tar" | cut -f1))"
fi

# ---- Go binaries (the Go build cache makes a rebuild take seconds) ----
bin=$work/bin
mkdir -p "$bin"
k8s_ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  minor=${K8S_VERSION#v1.}
  k8s_ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor%%.*}"
  k8s_ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
log "go build: kubernetes $K8S_VERSION (about 10 minutes with an empty build cache)"
(cd "$here/modules/kubernetes" && go build -ldflags "$k8s_ld" -o "$bin/" \
  k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy)
lap "kubernetes binaries"
log "go build: etcd, coredns, crictl, local-path-provisioner, pause"
(cd "$here/modules/etcd" && go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
(cd "$here/modules/coredns" && go build -ldflags "-s -w" -o "$bin/coredns" .)
(cd "$here/modules/crictl" && go build -ldflags "-s -w" -o "$bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl)
(cd "$here/modules/localpath" && go build -ldflags "-s -w" -o "$bin/local-path-provisioner" github.com/rancher/local-path-provisioner)
(cd "$here/modules/pause" && go build -ldflags "-s -w" -o "$bin/pause" .)
lap "other binaries"

# ---- the node's tree ----
r=$work/node
mkdir -p "$r"
pigz -dc "$rootfs_tar" | tar -C "$r" --numeric-owner -xf -
# go list -m names a module's directory only once it is in the module cache,
# and nothing above downloads kind's module: download it first.
kinddir=$(cd "$here/modules/kind" && go mod download sigs.k8s.io/kind && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
[[ -n "$kinddir" ]] || { echo "kind-image: sigs.k8s.io/kind is not in the module cache" >&2; exit 1; }
kindsrc=$kinddir/images/base/files
install -m 0755 "$kindsrc"/usr/local/bin/* "$r/usr/local/bin/"
mkdir -p "$r/kind/bin" "$r/kind/manifests" "$r/kind/immortald" "$r/etc/kubernetes/manifests" \
  "$r/opt/cni/bin" "$r/etc/cni/net.d" "$r/etc/containerd" "$r/etc/systemd/system/kubelet.service.d"
install -m 0755 "$kindsrc"/kind/bin/* "$r/kind/bin/"
install -m 0644 "$kindsrc"/etc/crictl.yaml "$r/etc/"
install -m 0644 "$kindsrc"/etc/containerd/config.toml "$r/etc/containerd/"
install -m 0644 "$kindsrc"/etc/default/kubelet "$r/etc/default/"
install -m 0644 "$kindsrc"/etc/sysctl.d/* "$r/etc/sysctl.d/"
install -m 0644 "$kindsrc"/etc/systemd/system/*.service "$kindsrc"/etc/systemd/system/*.slice "$r/etc/systemd/system/"
install -m 0644 "$kindsrc"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
# containerd and runc are Debian's (1.6): kind's unit and config name
# /usr/local/bin/containerd; pods cannot lower their OOM score without
# CAP_SYS_RESOURCE, which a non-privileged node lacks.
ln -sf /usr/bin/containerd "$r/usr/local/bin/containerd"
sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$r/etc/containerd/config.toml"
# The runtime spec containerd starts pods from, as kind's base image makes it
# (without the product_uuid hook, and without rlimits).
chroot "$r" ctr oci spec | jq 'del(.process.rlimits)' >"$r/etc/containerd/cri-base.json"
for f in "$r"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/${f##*/}" "$r/opt/cni/bin/"; done
# The pod network: no CNI config until immortald-kind-cni writes this
# node's (its subnet, and routes to the other nodes').
install -m 0755 "$here/node/immortald-kind-cni" "$r/usr/local/bin/"
install -m 0644 "$here/node/immortald-kind-cni.service" "$r/etc/systemd/system/"
install -m 0644 "$here/node/default-cni.yaml" "$here/node/default-storage.yaml" "$r/kind/manifests/"
install -m 0755 "$here/node/immortald-kind-entrypoint" "$r/usr/local/bin/"
printf 'SERVICE_CIDR=%s\nPOD_CIDR=%s\n' "$SERVICE_CIDR" "$POD_CIDR" >"$r/kind/immortald/network.env"
install -m 0755 "$bin"/kubeadm "$bin"/kubelet "$bin"/kubectl "$r/usr/bin/"
install -m 0755 "$bin"/crictl "$r/usr/local/bin/"
echo "$K8S_VERSION" >"$r/kind/version"
for unit in kubelet.service containerd.service undo-mount-hacks.service immortald-kind-cni.service; do
  ln -sf "/etc/systemd/system/$unit" "$r/etc/systemd/system/multi-user.target.wants/$unit"
done
ln -sf /dev/null "$r/etc/systemd/system/systemd-binfmt.service"

# ---- control-plane images, FROM scratch around each binary ----
img=$work/images
mkdir -p "$img"
reg=registry.k8s.io
scratch_image() { # name dir entrypoint file... (the files go to dir)
  local name=$1 dir=$2 entry=$3 ctx=$work/ctx-${1//\//-}
  shift 3
  rm -rf "$ctx"
  mkdir -p "$ctx/root$dir"
  cp -a "$@" "$ctx/root$dir/"
  {
    echo 'FROM scratch'
    echo 'COPY root/ /'
    [[ -z "$entry" ]] || echo "ENTRYPOINT [\"$entry\"]"
  } >"$ctx/Dockerfile"
  if ! $docker build -q -t "$name" "$ctx" >"$work/docker-build.log" 2>&1; then
    cat "$work/docker-build.log" >&2
    return 1
  fi
  rm -rf "$ctx"
}
declare -A images=(
  [kube-apiserver]="$reg/kube-apiserver:$K8S_VERSION"
  [kube-controller-manager]="$reg/kube-controller-manager:$K8S_VERSION"
  [kube-scheduler]="$reg/kube-scheduler:$K8S_VERSION"
  [etcd]="$reg/etcd:$ETCD_IMAGE_TAG"
  [coredns]="$reg/coredns/coredns:$COREDNS_IMAGE_TAG"
  [local-path-provisioner]="$reg/immortald-kind/local-path-provisioner:v0.0.30"
)
# Everything this build tags in Docker carries the hash, so that parallel
# builds and other users' images are never touched; removed at the end.
btag=immortald-kind-build-$hash
# kubeadm's static pods name their command (kube-apiserver, etcd, ...) and
# find it on the default PATH; CoreDNS's Deployment gives only arguments.
for b in "${!images[@]}"; do
  case $b in
  coredns) scratch_image "$btag-$b" / /coredns "$bin/$b" ;;
  *) scratch_image "$btag-$b" /usr/local/bin "/usr/local/bin/$b" "$bin/$b" ;;
  esac
  built+=("$btag-$b")
done
# The pause image (kind's containerd config and kubeadm name two tags).
scratch_image "$btag-pause" / /pause "$bin/pause"
built+=("$btag-pause")
# local-path's helper runs sh scripts: busybox from the rootfs.
mkdir -p "$work/helper/bin"
cp "$r/bin/busybox" "$work/helper/bin/"
for a in sh mkdir rm chmod ls cat; do ln -s busybox "$work/helper/bin/$a"; done
scratch_image "$btag-helper" /bin "" "$work/helper/bin/"*
built+=("$btag-helper")
# kube-proxy runs iptables, nft and conntrack: they come with their
# libraries and iptables' extensions from the rootfs.
kp=$work/kube-proxy
mkdir -p "$kp/usr/local/bin" "$kp/usr/sbin" "$kp/usr/bin" "$kp/usr/lib" "$kp/usr/lib64" "$kp/etc" "$kp/run" "$kp/tmp"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$kp/$d"; done
cp "$bin/kube-proxy" "$kp/usr/local/bin/"
for f in xtables-nft-multi xtables-legacy-multi nft conntrack; do cp -a "$r/usr/sbin/$f" "$kp/usr/sbin/"; done
for a in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -s xtables-nft-multi "$kp/usr/sbin/$a"
  ln -s xtables-legacy-multi "$kp/usr/sbin/${a/tables/tables-legacy}"
  ln -s xtables-nft-multi "$kp/usr/sbin/${a/tables/tables-nft}"
done
libs=$(chroot "$r" sh -c 'ldd /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft /usr/sbin/conntrack /usr/lib/x86_64-linux-gnu/xtables/*.so' |
  awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u)
for l in $libs /usr/lib/x86_64-linux-gnu/xtables; do
  mkdir -p "$kp$(dirname "$l")"
  cp -aL "$r$l" "$kp$l"
done
echo 'hosts: files dns' >"$kp/etc/nsswitch.conf"
tar -C "$kp" -cf - . | $docker import - "$btag-kube-proxy" >/dev/null
built+=("$btag-kube-proxy")
lap "images"

# ---- import them into the node's containerd ----
# containerd from the rootfs, in a chroot and a mount namespace of its own,
# on its own socket; it only stores the images (no unpacking, so no mounts):
# the node's CRI unpacks an image the first time a container needs it.
declare -A names=()
for b in "${!images[@]}"; do names[$btag-$b]=${images[$b]}; done
names[$btag-pause]="$reg/pause:$PAUSE_IMAGE_TAG $reg/pause:$KIND_PAUSE_IMAGE_TAG"
names[$btag-helper]="$reg/immortald-kind/local-path-helper:v1"
names[$btag-kube-proxy]="$reg/kube-proxy:$K8S_VERSION"
mkdir -p "$r/run/build-ctrd"
printf 'version = 2\nroot = "/var/lib/containerd"\nstate = "/run/build-ctrd/state"\n[grpc]\naddress = "/run/build-ctrd/sock"\n' \
  >"$r/run/build-ctrd/config.toml"
ctr_() { chroot "$r" ctr --address /run/build-ctrd/sock -n k8s.io "$@"; }
unshare -m --propagation private sh -c 'mount -t proc proc "$1/proc" && exec chroot "$1" /usr/bin/containerd --config /run/build-ctrd/config.toml' \
  sh "$r" >"$work/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 1 60); do [[ -S "$r/run/build-ctrd/sock" ]] && break; sleep 0.5; done
for src in "${built[@]}"; do
  first=""
  for n in ${names[$src]}; do
    if [[ -z "$first" ]]; then
      # `docker save` names the image by its Docker tag: import it under
      # that, then rename it.
      $docker save "$src" >"$r/run/build-ctrd/image.tar"
      ctr_ images import --no-unpack /run/build-ctrd/image.tar >/dev/null
      ctr_ images tag "docker.io/library/$src:latest" "$n" >/dev/null
      ctr_ images rm "docker.io/library/$src:latest" >/dev/null
      first=$n
    else
      ctr_ images tag "$first" "$n" >/dev/null
    fi
  done
done
rm -f "$r/run/build-ctrd/image.tar"
ctr_ images ls -q >&2
kill "$ctrd_pid"
wait "$ctrd_pid" 2>/dev/null || true
ctrd_pid=""
rm -rf "$r/run/build-ctrd"
$docker rmi "${built[@]}" >/dev/null
built=()
lap "containerd import"

# ---- the node image ----
# docker import takes the tree; a one-line build on top sets what import
# cannot (STOPSIGNAL), with no base image to pull.
tar -C "$r" --numeric-owner -cf - . | $docker import - "$btag-rootfs" >/dev/null
built+=("$btag-rootfs")
mkdir -p "$work/final"
cat >"$work/final/Dockerfile" <<DOCKERFILE
FROM $btag-rootfs
ENV container=docker
STOPSIGNAL SIGRTMIN+3
LABEL org.immortald.kind-node=$hash
ENTRYPOINT ["/usr/local/bin/immortald-kind-entrypoint", "/sbin/init"]
DOCKERFILE
if ! $docker build -q -t "$tag" "$work/final" >"$work/docker-build.log" 2>&1; then
  cat "$work/docker-build.log" >&2
  exit 1
fi
$docker rmi "$btag-rootfs" >/dev/null
built=()
lap "docker import"
log "built $tag in $(($(date +%s) - start))s"
echo "$tag"
