//! Compiles policyd's BPF OOM handler, bpf/policies/policyd.bpf.c (one object
//! for every policy), into a libbpf-rs skeleton `policyd.skel.rs` in OUT_DIR
//! (included by policyd/bpf.rs).
//!
//! * clang-19 (Debian 12 main) compiles against the patched kernel's
//!   bpf/vmlinux/x86_64/vmlinux.h. Linux 7.x headers use embedded anonymous
//!   structs: without -fms-extensions clang silently drops them, so the
//!   handler would see wrong offsets. `POLICYD_CLANG` overrides the compiler.
//! * Warnings from clang show up as cargo warnings; errors fail the build with
//!   clang's full output.

use std::env;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{exit, Command};

use libbpf_cargo::util::CargoWarningFormatter;
use libbpf_cargo::SkeletonBuilder;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

const POLICY_DIR: &str = "bpf/policies";
const SOURCE: &str = "bpf/policies/policyd.bpf.c";
const HEADER: &str = "bpf/policies/policyd.h";
const VMLINUX_DIR: &str = "bpf/vmlinux/x86_64";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

/// The clang to use, checked to exist, with an actionable error otherwise.
fn clang() -> PathBuf {
    println!("cargo:rerun-if-env-changed=POLICYD_CLANG");
    let clang = env::var_os("POLICYD_CLANG").unwrap_or_else(|| "clang-19".into());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => PathBuf::from(clang),
        Ok(o) => fail(format!(
            "`{} --version` failed ({}): {}",
            clang.to_string_lossy(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(format!(
            "{} not found: the BPF policies are compiled with clang 19. Install it with \
             `apt-get install clang-19` (Debian 12 main), or run ./vm-tests/run, which installs \
             it; POLICYD_CLANG=/path/to/clang selects another one",
            clang.to_string_lossy()
        )),
        Err(e) => fail(format!("cannot run {}: {e}", clang.to_string_lossy())),
    }
}

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let policy_dir = root.join(POLICY_DIR);
    let vmlinux_dir = root.join(VMLINUX_DIR);

    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed={VMLINUX_DIR}/vmlinux.h");

    // libbpf-cargo logs clang's stderr at info level under this target.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(CargoWarningFormatter)
                .with_writer(std::io::stdout)
                .with_filter(filter_fn(|m| m.target() == "compiler-stderr")),
        )
        .init();

    let clang = clang();
    let args = [
        "-I".as_ref(),
        vmlinux_dir.as_os_str(),
        "-I".as_ref(),
        policy_dir.as_os_str(),
        "-fms-extensions".as_ref(),
        "-Wno-microsoft-anon-tag".as_ref(),
    ];
    // The object stays in OUT_DIR too: host tests read its BTF.
    if let Err(e) = SkeletonBuilder::new()
        .source(root.join(SOURCE))
        .obj(out.join("policyd.bpf.o"))
        .clang(&clang)
        .clang_args(args)
        .build_and_generate(out.join("policyd.skel.rs"))
    {
        fail(format!("building the BPF handler {SOURCE}: {e:#}"));
    }
}
