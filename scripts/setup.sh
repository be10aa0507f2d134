#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian 12 machine for building, testing and demoing
# pop3-interceptor. Quiet when everything is present; says what it installs otherwise.
#
# Installs: apt packages (bpftool, Dovecot, clients, nats-server, nginx with its mail module for the
# bench), the nightly's rust-src (eBPF is built
# with -Z build-std=core), bpf-linker 0.13 linked against the nightly's own LLVM 22,
# cargo-fuzz (with g++ for libFuzzer) for the fuzz smoke, and mounts bpffs at /sys/fs/bpf.
set -euo pipefail

say() { echo "setup: $*" >&2; }

APT_PACKAGES=(bpftool ethtool iproute2 tcpdump dovecot-core dovecot-pop3d curl fetchmail python3 openssl procps g++ nats-server iperf3 nginx libnginx-mod-mail)
BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.2
# A permanent home for the LLVM symlinks that bpf-linker's RUNPATH points at.
LLVM_PREFIX=${POP3I_LLVM_PREFIX:-/opt/pop3-interceptor/llvm}
NIGHTLY=nightly-x86_64-unknown-linux-gnu

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged Dovecot, NATS and nginx services are not ours: tests run their own instances.
  for service in dovecot nats-server nginx; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$service" 2>/dev/null; then
      systemctl stop "$service" || true
    fi
  done
fi

if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to the nightly toolchain"
  rustup component add rust-src --toolchain "$NIGHTLY" >/dev/null
fi

libllvm=$(ls "$HOME/.rustup/toolchains/$NIGHTLY/lib/"libLLVM.so.22.1-rust-*-nightly 2>/dev/null | head -n1 || true)
[ -n "$libllvm" ] || { say "the nightly toolchain has no libLLVM 22: install nightly with LLVM 22"; exit 1; }

linker_ok() {
  command -v bpf-linker >/dev/null &&
    bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"
}
if ! linker_ok; then
  say "building bpf-linker $BPF_LINKER_VERSION against $(basename "$libllvm") (about 2 minutes)"
  mkdir -p "$LLVM_PREFIX/lib"
  ln -sf "$libllvm" "$LLVM_PREFIX/lib/libLLVM.so"
  ln -sf "$libllvm" "$LLVM_PREFIX/lib/$(basename "$libllvm")"
  LLVM_PREFIX="$LLVM_PREFIX" cargo +stable install --quiet --force bpf-linker \
    --version "$BPF_LINKER_VERSION" --no-default-features --features llvm-22
  linker_ok || { say "bpf-linker still does not run after install"; exit 1; }
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo +stable install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

if ! mountpoint -q /sys/fs/bpf; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
