#!/usr/bin/env bash
# One-time machine set-up for building Meridian on Debian/Ubuntu. Native tools:
# - clang/libclang: RocksDB's Rust bindings are generated with bindgen;
# - protoc: the `etcd-client` crate of the benchmark compiles etcd's .proto
#   files with it (Meridian's own are compiled by protox, in pure Rust);
# - etcd (Debian's etcd-server): the benchmark runs etcd side by side, and its
#   test does so too. Nothing is started here: the benchmark starts its own
#   members on free loopback ports and stops them.
# Safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain first: https://rustup.rs" >&2
  exit 1
fi

have_libclang() {
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1
}

# apt_install WHY PACKAGE...: installs with apt-get (sudo unless root). No
# package may start a service while it runs (policy-rc.d 101): etcd-server
# would otherwise start a system etcd of its own.
apt_install() {
  local why=$1
  shift
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get; install $* with your package manager ($why)" >&2
    exit 1
  fi
  echo "setup: installing $* ($why)"
  $sudo apt-get update -qq
  local policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  local status=0
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null || status=$?
  if [ -n "$policy_added" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
  return "$status"
}

if command -v clang >/dev/null 2>&1 && have_libclang; then
  echo "setup: clang and libclang already installed"
else
  apt_install "for RocksDB's bindings; LLVM >= 11" clang libclang-dev
fi
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# tests/deploy.rs verifies deploy/systemd/meridian.service with it.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# tests/deploy.rs checks and unit-tests deploy/prometheus with its promtool
# (the package's own server is not started: see apt_install).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: protoc, etcd, systemd-analyze and promtool already installed"
else
  apt_install "for the benchmark against etcd and tests/deploy.rs" "${missing[@]}"
fi
# The test that proves a foreign gRPC client works (tests/foreign_client.rs)
# uses Python's grpcio with stubs generated from proto/ at run time.
if command -v python3 >/dev/null 2>&1; then
  if python3 -c "import grpc, grpc_tools, grpc_reflection" >/dev/null 2>&1; then
    echo "setup: python grpcio already installed"
  else
    echo "setup: installing python grpcio, grpcio-tools, grpcio-reflection (for tests/foreign_client.rs)"
    python3 -m pip install --quiet grpcio grpcio-tools grpcio-reflection 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages grpcio grpcio-tools grpcio-reflection
  fi
  # OpenFeature's Python SDK and its OFREP and flagd providers, which
  # tests/flags.rs drives against a running cluster (software nobody
  # here wrote, from PyPI). The flagd provider is pinned to 0.5.2 (with
  # openfeature-flagd-core 1.0.0): 0.6 moved `fractional` to hashing the
  # CBOR encoding of the bucketing key (flagd's "harden hashing" ADR),
  # while flagd's daemon, its testbed and datalogic-rs, and so Meridian,
  # still hash the string (docs/flags.md).
  PY_OF="openfeature-sdk openfeature-provider-ofrep openfeature-provider-flagd==0.5.2 openfeature-flagd-core==1.0.0"
  if python3 -c "import importlib.metadata as m, openfeature.contrib.provider.ofrep; assert m.version('openfeature-provider-flagd') == '0.5.2'" >/dev/null 2>&1; then
    echo "setup: python openfeature providers already installed"
  else
    echo "setup: installing $PY_OF (for tests/flags.rs)"
    # shellcheck disable=SC2086
    python3 -m pip install --quiet $PY_OF 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages $PY_OF
  fi
  # Kubernetes' own schemas, shipped in the package, for tests/deploy.rs.
  if python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
    echo "setup: python kubernetes-validate already installed"
  else
    echo "setup: installing kubernetes-validate (for tests/deploy.rs)"
    python3 -m pip install --quiet kubernetes-validate 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages kubernetes-validate
  fi
else
  echo "setup: WARNING: no python3; tests/foreign_client.rs and tests/flags.rs will fail until python3 with grpcio and the openfeature providers is installed" >&2
fi
echo "setup: done"
