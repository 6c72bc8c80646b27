//! sshtrace's kernel side: tracepoint programs that report how connections to tracked sshd
//! ports end and what happens to the tracked sshd processes. Everything is filtered here, in
//! the kernel, by tracked port and tracked process, so unrelated traffic never reaches the
//! ring buffer. Field offsets come from userspace through the `LAYOUT` global.
//!
//! The object's BTF must load, or no tp_btf program can: a function the compiler keeps out
//! of line becomes a BTF FUNC, and one whose signature holds a Rust enum (`Result`, `Option`)
//! gets BTF the kernel rejects. Such helpers are `#[inline(always)]`.
#![no_std]
#![no_main]

#[macro_use]
mod maps;
mod probes;
mod record;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// Only for the BPF target: a host check of the workspace (clippy --workspace) links std,
// which has its own.
#[cfg(all(not(test), target_arch = "bpf"))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
