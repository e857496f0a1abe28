//! Compiles every BPF policy in bpf/policies/*.bpf.c into a libbpf-rs skeleton
//! `<name>.skel.rs` in OUT_DIR (included by policyd/bpf.rs).
//!
//! * clang-19 (Debian 12 main) compiles against the patched kernel's
//!   bpf/vmlinux/x86_64/vmlinux.h. Linux 7.x headers use embedded anonymous
//!   structs: without -fms-extensions clang silently drops them, so the
//!   policies would see wrong offsets. `POLICYD_CLANG` overrides the compiler.
//! * Warnings from clang show up as cargo warnings; errors fail the build with
//!   clang's full output.
//! * For each skeleton built, `--cfg policyd_skel="<name>"` is set, so the
//!   crate builds (and reports "not built into this binary") while a policy's
//!   source does not exist yet.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

use libbpf_cargo::util::CargoWarningFormatter;
use libbpf_cargo::SkeletonBuilder;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

const POLICY_DIR: &str = "bpf/policies";
const VMLINUX_DIR: &str = "bpf/vmlinux/x86_64";
/// Names `policyd/bpf.rs` knows; keep in step with `PolicyName`.
const KNOWN_POLICIES: &[&str] = &["priority", "largest", "badness", "observe"];

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

/// bpf/policies/*.bpf.c, sorted, and every header next to them.
fn sources(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    let mut policies = Vec::new();
    let mut headers = Vec::new();
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())))
            .path();
        let name = path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if name.ends_with(".bpf.c") {
            policies.push(path);
        } else if name.ends_with(".h") {
            headers.push(path);
        }
    }
    policies.sort();
    headers.sort();
    (policies, headers)
}

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let policy_dir = root.join(POLICY_DIR);
    let vmlinux_dir = root.join(VMLINUX_DIR);

    // A directory makes cargo rescan it: new policies are picked up too.
    println!("cargo:rerun-if-changed={POLICY_DIR}");
    println!("cargo:rerun-if-changed={VMLINUX_DIR}/vmlinux.h");
    let known: Vec<String> = KNOWN_POLICIES.iter().map(|p| format!("\"{p}\"")).collect();
    println!(
        "cargo:rustc-check-cfg=cfg(policyd_skel, values({}))",
        known.join(", ")
    );

    let (policies, headers) = sources(&policy_dir);
    for p in policies.iter().chain(&headers) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    if policies.is_empty() {
        println!("cargo:warning=no BPF policies in {POLICY_DIR}/ yet: policyd load will not work");
        return;
    }

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
    for src in &policies {
        let file = src.file_name().and_then(OsStr::to_str).unwrap_or_default();
        let name = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{name}.skel.rs"));
        // The object stays in OUT_DIR too: host tests read its BTF.
        let obj = out.join(format!("{name}.bpf.o"));
        if let Err(e) = SkeletonBuilder::new()
            .source(src)
            .obj(&obj)
            .clang(&clang)
            .clang_args(args)
            .build_and_generate(&skel)
        {
            fail(format!("building the BPF policy {}: {e:#}", src.display()));
        }
        if KNOWN_POLICIES.contains(&name) {
            println!("cargo:rustc-cfg=policyd_skel=\"{name}\"");
        } else {
            println!(
                "cargo:warning={file}: compiled, but policyd/bpf.rs has no entry for policy \
                 \"{name}\""
            );
        }
    }
}
