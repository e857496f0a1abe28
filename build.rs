// Placeholder: the BPF engineer replaces this with libbpf-cargo skeleton
// generation for bpf/policies/*.bpf.c. Cargo.toml declares build = "build.rs",
// so the crate does not compile without this file.
fn main() {}
