//! What the build scripts of policyd (build.rs) and vm-tests (vm-tests/build.rs) share:
//! compiling BPF C against the patched kernel's bpf/vmlinux/x86_64/vmlinux.h into
//! libbpf-rs skeletons in OUT_DIR, with one clang setup.
//!
//! * clang-19 (Debian 12 main) compiles; an environment variable named by the caller
//!   overrides it. Linux 7.x headers use embedded anonymous structs: without
//!   -fms-extensions clang silently drops them, so BPF code would read wrong offsets.
//! * Warnings from clang show up as cargo warnings; errors fail the build with clang's
//!   full output.

use std::env;
use std::ffi::OsString;
use std::fmt::Display;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

use libbpf_cargo::util::CargoWarningFormatter;
use libbpf_cargo::SkeletonBuilder;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

/// Fails the build script with `msg`.
fn fail(msg: impl Display) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}

/// A directory of the package being built (CARGO_MANIFEST_DIR) or its OUT_DIR.
fn cargo_dir(var: &str) -> PathBuf {
    PathBuf::from(env::var_os(var).unwrap_or_else(|| fail(format!("{var} is not set"))))
}

/// The compiler and flags every BPF source of the workspace is built with.
pub struct BpfCompiler {
    clang: PathBuf,
    args: Vec<OsString>,
    /// The package's directory, which source paths are relative to.
    root: PathBuf,
    out_dir: PathBuf,
}

impl BpfCompiler {
    /// Finds clang (`$clang_env`, else clang-19), checked to run, with an actionable error
    /// naming `what` needs it otherwise. `vmlinux_dir` holds vmlinux.h, `include_dir` the
    /// sources' own headers; both are relative to the package (CARGO_MANIFEST_DIR).
    pub fn new(clang_env: &str, what: &str, vmlinux_dir: &str, include_dir: &str) -> BpfCompiler {
        forward_clang_warnings();
        let root = cargo_dir("CARGO_MANIFEST_DIR");
        println!("cargo:rerun-if-changed={vmlinux_dir}/vmlinux.h");
        BpfCompiler {
            clang: clang(clang_env, what),
            args: vec![
                "-I".into(),
                root.join(vmlinux_dir).into(),
                "-I".into(),
                root.join(include_dir).into(),
                "-fms-extensions".into(),
                "-Wno-microsoft-anon-tag".into(),
            ],
            root,
            out_dir: cargo_dir("OUT_DIR"),
        }
    }

    /// Compiles `source` (relative to the package; `headers` are what it includes besides
    /// vmlinux.h, for cargo to watch) into OUT_DIR/<name>.bpf.o and the skeleton
    /// OUT_DIR/<name>.skel.rs.
    pub fn skeleton(&self, name: &str, source: &str, headers: &[&str]) {
        for path in std::iter::once(&source).chain(headers) {
            println!("cargo:rerun-if-changed={path}");
        }
        if let Err(e) = SkeletonBuilder::new()
            .source(self.root.join(source))
            .obj(self.out_dir.join(format!("{name}.bpf.o")))
            .clang(&self.clang)
            .clang_args(self.args.clone())
            .build_and_generate(self.out_dir.join(format!("{name}.skel.rs")))
        {
            fail(format!("building {source}: {e:#}"));
        }
    }
}

/// libbpf-cargo logs clang's stderr at info level under the target "compiler-stderr":
/// print it as cargo warnings. A build script with several compilers sets this up once.
fn forward_clang_warnings() {
    // Err: already set up by an earlier BpfCompiler of this build script.
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(CargoWarningFormatter)
                .with_writer(std::io::stdout)
                .with_filter(filter_fn(|m| m.target() == "compiler-stderr")),
        )
        .try_init();
}

/// `$clang_env` or clang-19, checked to run.
fn clang(clang_env: &str, what: &str) -> PathBuf {
    println!("cargo:rerun-if-env-changed={clang_env}");
    let clang = env::var_os(clang_env).unwrap_or_else(|| "clang-19".into());
    let shown = Path::new(&clang).display().to_string();
    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => PathBuf::from(clang),
        Ok(o) => fail(format!(
            "`{shown} --version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(format!(
            "{shown} not found: {what} is compiled with clang 19. Install it with \
             `apt-get install clang-19` (Debian 12 main), or run ./vm-tests/run, which \
             installs it; {clang_env}=/path/to/clang selects another one"
        )),
        Err(e) => fail(format!("cannot run {shown}: {e}")),
    }
}
