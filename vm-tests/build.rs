//! Compiles the test BPF OOM handler vm-tests/bpf/oom_test.bpf.c into a libbpf-rs skeleton
//! `oom_test.skel.rs` in OUT_DIR (included by src/guest/kutil.rs), and the
//! benchmarks' stopwatch vm-tests/bpf/bench.bpf.c into `bench.skel.rs` (included by
//! src/guest/scenarios/bench_common.rs).
//!
//! clang-19 compiles it against the patched kernel's bpf/vmlinux/x86_64/vmlinux.h (at the
//! repository root). Linux 7.x headers use embedded anonymous structs, which clang drops
//! silently without -fms-extensions: the handler would then read wrong offsets.
//! `VMTESTS_CLANG` overrides the compiler.

use std::env;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::{exit, Command};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/oom_test.bpf.c";
const HEADER: &str = "bpf/oom_test.h";
const BENCH_SRC: &str = "bpf/bench.bpf.c";
const BENCH_HEADER: &str = "bpf/bench.h";
const VMLINUX_DIR: &str = "../bpf/vmlinux/x86_64";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

fn clang() -> OsString {
    println!("cargo:rerun-if-env-changed=VMTESTS_CLANG");
    let clang = env::var_os("VMTESTS_CLANG").unwrap_or_else(|| "clang-19".into());
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => clang,
        Ok(o) => fail(format!(
            "`{} --version` failed ({})",
            clang.to_string_lossy(),
            o.status
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(format!(
            "{} not found: vm-tests compiles its BPF test handler with clang 19 \
             (`apt-get install clang-19`, or run ./vm-tests/run, which installs it); \
             VMTESTS_CLANG=/path/to/clang selects another one",
            clang.to_string_lossy()
        )),
        Err(e) => fail(format!("cannot run {}: {e}", clang.to_string_lossy())),
    }
}

fn main() {
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-changed={BENCH_SRC}");
    println!("cargo:rerun-if-changed={BENCH_HEADER}");
    println!("cargo:rerun-if-changed={VMLINUX_DIR}/vmlinux.h");

    let vmlinux_dir = dir.join(VMLINUX_DIR);
    let bpf_dir = dir.join("bpf");
    let args: [OsString; 6] = [
        "-I".into(),
        vmlinux_dir.into(),
        "-I".into(),
        bpf_dir.into(),
        "-fms-extensions".into(),
        "-Wno-microsoft-anon-tag".into(),
    ];
    let clang = clang();
    if let Err(e) = SkeletonBuilder::new()
        .source(dir.join(SRC))
        .obj(out.join("oom_test.bpf.o"))
        .clang(&clang)
        .clang_args(args.clone())
        .build_and_generate(out.join("oom_test.skel.rs"))
    {
        fail(format!("building {SRC}: {e:#}"));
    }
    if let Err(e) = SkeletonBuilder::new()
        .source(dir.join(BENCH_SRC))
        .obj(out.join("bench.bpf.o"))
        .clang(&clang)
        .clang_args(args)
        .build_and_generate(out.join("bench.skel.rs"))
    {
        fail(format!("building {BENCH_SRC}: {e:#}"));
    }
}
