# immortald build, images and tests.
#
# No container registry is reachable from the build machines, so every image is
# built FROM scratch around a static binary that is compiled here first.

GO            ?= go
DOCKER        ?= docker
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
VERSION_PKG   := github.com/immortald/immortald/daemon
LDFLAGS       := -s -w -X $(VERSION_PKG).Version=$(VERSION)
IMAGE         ?= immortald:dev
ETCD_IMAGE    ?= immortald-etcd:dev
E2E_TIMEOUT   ?= 20m
# Extra flags for the e2e run, e.g. E2E_FLAGS='-run TestKill -v'.
E2E_FLAGS     ?= -v

# Static binaries (no libc in a scratch image). Not exported: -race needs cgo.
STATIC        := CGO_ENABLED=0

.PHONY: all build etcd image etcd-image dev-certs test lint browser tools unit e2e kind-image e2e-kind bench bench-quick bench-check bench-1m clean

all: build

## build: the daemon for this machine, in bin/immortald.
build:
	$(STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/immortald ./cmd/immortald

## etcd: etcd and etcdctl from the tool lines in go.mod, in bin/.
etcd:
	$(STATIC) $(GO) build -trimpath -ldflags '-s -w' -o bin/etcd go.etcd.io/etcd/server/v3
	$(STATIC) $(GO) build -trimpath -ldflags '-s -w' -o bin/etcdctl go.etcd.io/etcd/etcdctl/v3

## image: immortald:dev, FROM scratch around a static linux binary (and
## /counter, the workload of the counter kind used by the tests).
image:
	mkdir -p bin/empty
	$(STATIC) GOOS=linux $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/immortald-linux ./cmd/immortald
	$(STATIC) GOOS=linux $(GO) build -trimpath -ldflags '-s -w' -o bin/counter-linux ./cmd/counter
	$(DOCKER) build -q -t $(IMAGE) -f Dockerfile .

## etcd-image: immortald-etcd:dev with /etcd and /etcdctl, FROM scratch.
# Its build context is bin/etcd-image/ alone, so the daemon's context stays the
# one binary that .dockerignore lets through.
etcd-image:
	mkdir -p bin/etcd-image/data
	$(STATIC) GOOS=linux $(GO) build -trimpath -ldflags '-s -w' -o bin/etcd-image/etcd go.etcd.io/etcd/server/v3
	$(STATIC) GOOS=linux $(GO) build -trimpath -ldflags '-s -w' -o bin/etcd-image/etcdctl go.etcd.io/etcd/etcdctl/v3
	$(DOCKER) build -q -t $(ETCD_IMAGE) -f Dockerfile.etcd bin/etcd-image

## dev-certs: a development CA and the certificates of deploy/overlays/tls,
## with the Secrets that carry them, in bin/dev-certs/ (see README).
dev-certs:
	$(GO) run ./cmd/devcerts -out bin/dev-certs

## test: what CI runs: lint, unit and integration tests (-race), the
## end-to-end suite on Docker, then the quick benchmark against its bars.
test: lint browser tools unit e2e bench-check

## tools: helm and promtool, built from hack/tools/ into ~/.cache/immortald by
## the deploy tests (run here first, outside unit's -race timeout: from a cold
## Go cache the two take about 12 minutes; seconds once cached).
tools:
	$(GO) test -count=1 -timeout 40m ./deploy/...

## browser: Debian's chromium, the headless browser of the live page's test
## (installed when missing and this is root on Debian; else that test skips
## and says why).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  echo "installing Debian's chromium for the live page's browser test" && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "no chromium: the live page's browser test will skip"

## lint: gofmt and go vet (the e2e files too).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...

## unit: unit and integration tests, against real embedded etcd.
unit:
	$(GO) test -race -count=1 -timeout 15m ./...

## e2e: both images, then the end-to-end scenarios against Docker.
# IMMORTALD_E2E_BACKEND=kind selects the kind backend instead.
e2e: image etcd-image
	IMMORTALD_E2E_IMAGE=$(IMAGE) IMMORTALD_E2E_ETCD_IMAGE=$(ETCD_IMAGE) $(GO) test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) $(E2E_FLAGS) ./e2e/...

## kind-image: the kind node image (Kubernetes v1.34.4), built offline from
## Go modules and Debian packages (hack/kind/); skipped when Docker has it.
## 9 to 35 minutes from nothing, seconds when it is there.
kind-image:
	hack/kind/build-node-image.sh

## e2e-kind: the end-to-end suite on a kind cluster of its own: builds what
## is missing, creates the cluster, runs the kind scenarios, deletes it.
# E2E_KIND_RUN narrows the tests (a go test -run pattern).
e2e-kind:
	IMMORTALD_E2E_IMAGE=$(IMAGE) IMMORTALD_E2E_ETCD_IMAGE=$(ETCD_IMAGE) hack/kind/e2e.sh

## bench: the full benchmark (real etcd and immortald processes, and the
## etcdctl-lock baseline); prints a table and, last, one JSON line.
bench:
	$(GO) run ./cmd/immortalbench -out bin/bench.json

## bench-quick: the same in about a minute and a half (at most 105 s after the build).
bench-quick:
	$(GO) run ./cmd/immortalbench -quick -out bin/bench-quick.json

## bench-check: the quick benchmark; fails when a figure misses its bar (CI's
## regression check: the bars are printed under "== targets").
bench-check:
	$(GO) run ./cmd/immortalbench -quick -check -out bin/bench-quick.json

## bench-1m: the scale-1m phase alone: 1,000,000 lives over 10 members on one
## etcd (placement, steady state, the handoff of one member's 100k lives).
bench-1m:
	$(GO) run ./cmd/immortalbench -only scale-1m -out bin/bench-1m.json

clean:
	rm -rf bin/ e2e/logs/
