//! Links the netattach executable position-dependent (non-PIE).
//!
//! The runtime starts this binary for every CNI call, so its start-up is part of every pod's
//! ADD and DEL. As a PIE, the dynamic loader first applies ~28,000 relative relocations to it,
//! which writes to ~130 pages of its relocated data (measured: 257 page faults and 1.6 ms of CPU
//! per start, against 128 and 1.1 ms non-PIE; packing the relocations as RELR changed nothing,
//! the page faults are the cost). This is how Go links the plugins it replaces (the reference
//! plugins, Multus, whereabouts and flannel are all non-PIE executables). The code itself is
//! still compiled position-independent, and only this package's binaries are affected: build
//! scripts, proc-macros and the libraries keep their defaults.
//!
//! The binary as it ships is also linked statically (`scripts/build-release`: `crt-static` and
//! the static relocation model, which cargo can only set for a whole build with `--target`).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
