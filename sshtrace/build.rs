//! Builds the eBPF programs with the nightly toolchain and places the object in OUT_DIR,
//! where `src/kernel/probes.rs` embeds it.

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sshtrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sshtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
