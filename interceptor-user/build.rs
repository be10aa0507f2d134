//! Builds the XDP object from `interceptor-ebpf` (nightly, bpf-linker) so the daemon can
//! embed it with `include_bytes_aligned!`.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // The maps' keys and values are laid out in `common`: a change there changes the
    // object (aya-build only watches the eBPF crate's own folder).
    println!("cargo:rerun-if-changed=../common");
    let ebpf = aya_build::Package {
        name: "pop3-interceptor-ebpf",
        root_dir: "../interceptor-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
        .context("building the eBPF object (run scripts/setup.sh for bpf-linker and rust-src)")
}
