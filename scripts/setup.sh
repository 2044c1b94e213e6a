#!/usr/bin/env bash
# One-time machine set-up for building Meridian on Debian/Ubuntu: the only
# native tool the build needs is clang/libclang (RocksDB's Rust bindings are
# generated with bindgen). protoc is not needed: the .proto files are compiled
# by protox, in pure Rust. Safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install the Rust toolchain first: https://rustup.rs" >&2
  exit 1
fi

have_libclang() {
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang*.so* >/dev/null 2>&1
}

if command -v clang >/dev/null 2>&1 && have_libclang; then
  echo "setup: clang and libclang already installed"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: no apt-get; install clang and libclang (LLVM >= 11) with your package manager" >&2
    exit 1
  fi
  echo "setup: installing clang and libclang-dev (for RocksDB's bindings)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-dev >/dev/null
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
else
  echo "setup: WARNING: no python3; tests/foreign_client.rs will fail until python3 with grpcio is installed" >&2
fi
echo "setup: done"
