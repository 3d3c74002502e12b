# pykata: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PREFIX_VENV ?= /opt/pykata/venv
PY := $(PREFIX_VENV)/bin/python
BIN_DIR ?= /usr/local/bin
HOST_PACKAGES := containerd runc crun busybox-static qemu-system-x86 cpio kmod e2fsprogs iproute2 util-linux \
	containernetworking-plugins \
	golang-go golang-github-containerd-ttrpc-dev golang-github-gogo-protobuf-dev

.PHONY: setup host-packages venv dev test unit integration lint protos demo bench gottrpc \
	image guest-selftest config

## setup: host packages, pykata (containerd-shim-pykata-v2 on PATH), guest image, config
setup: host-packages venv
	$(PY) -m pip install -q --upgrade .
	ln -sf $(PREFIX_VENV)/bin/containerd-shim-pykata-v2 $(BIN_DIR)/containerd-shim-pykata-v2
	ln -sf $(PREFIX_VENV)/bin/pykata-image $(BIN_DIR)/pykata-image
	ln -sf $(PREFIX_VENV)/bin/pykata-runtime $(BIN_DIR)/pykata-runtime
	$(PREFIX_VENV)/bin/pykata-image build
	$(PREFIX_VENV)/bin/pykata-image host-virtiofsd
	$(PREFIX_VENV)/bin/pykata-image host-vhost-vsock
	$(MAKE) --no-print-directory config

## config: install the commented default configuration
config:
	install -D -m 0644 shim/defaults/configuration.toml /usr/share/pykata/defaults/configuration.toml

host-packages:
	@missing=""; for p in $(HOST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing host packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv:
	@test -x $(PY) || python3 -m venv $(PREFIX_VENV)
	$(PY) -m pip install -q --upgrade pip

## dev: like setup, but editable and with the test tools
dev: host-packages venv
	$(PY) -m pip install -q -e '.[dev]'
	# CRI v1 stubs for the kubelet-style tests; --no-deps: it pins protobuf 6, ours is 7
	$(PY) -m pip install -q --no-deps 'container-runtime-interface-api==2.0.1'
	# byte-compile the checkout as pip does an install: containerd execs the shim for
	# every pod, and under PYTHONDONTWRITEBYTECODE each start would compile it all again
	$(PY) -m compileall -q -j 0 shim ttrpc protos >/dev/null
	ln -sf $(PREFIX_VENV)/bin/containerd-shim-pykata-v2 $(BIN_DIR)/containerd-shim-pykata-v2
	ln -sf $(PREFIX_VENV)/bin/pykata-image $(BIN_DIR)/pykata-image
	ln -sf $(PREFIX_VENV)/bin/pykata-runtime $(BIN_DIR)/pykata-runtime
	$(MAKE) --no-print-directory config

## image: (re)build the guest image, the host virtiofsd and vhost-device-vsock (no-op when unchanged)
image: dev
	$(PY) -m guest build
	$(PY) -m guest host-virtiofsd
	$(PY) -m guest host-vhost-vsock

guest-selftest: image
	$(PY) -m guest selftest

## test: install what the tests need, then run every test
test: dev image
	$(PY) -m ruff check .
	$(PY) -m pytest -p no:cacheprovider -ra

unit: dev
	$(PY) -m pytest -p no:cacheprovider -ra tests

integration: dev
	$(PY) -m pytest -p no:cacheprovider -ra integration

lint: dev
	$(PY) -m ruff check .

## protos: regenerate the *_pb2 modules from the .proto sources
protos: dev
	$(PY) protos/generate.py

## demo: set everything up and run a container inside a VM
demo: setup
	$(PY) integration/demo.py

## bench: print the benchmark figures quoted in README.md
bench: dev
	$(PY) bench/import_cost.py
	$(PY) bench/ttrpc_bench.py
	$(PY) bench/guest_boot_bench.py --runs 3
	$(PY) bench/vm_start_bench.py -n 5
	$(PY) bench/shim_bench.py --runs 5
	$(PY) bench/network_bench.py

## gottrpc: build the Go ttrpc peer (offline, from Debian's sources) and print its path
gottrpc: host-packages
	$(PY) bench/gottrpc/build.py
