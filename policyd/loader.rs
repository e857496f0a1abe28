//! Loading a policy object into the kernel and attaching its handler to a
//! cgroup.
//!
//! One BPF object, `bpf/policies/policyd.bpf.c`, serves every policy:
//!
//! * `const volatile` `policy` and `dry_run` in `.rodata`, set before load;
//! * struct_ops map `policyd_ops` (`struct bpf_oom_ops`) in `.struct_ops.link`,
//!   whose value policyd builds ([`OomOpsLayout::value`]) where the program
//!   `find_ops_layout`, run once after the load, says the kernel keeps the
//!   handler and its name;
//! * `rule_table` and `new_rules`: array-of-maps with one slot each, of a
//!   one-element array holding `struct policyd_rule_table`
//!   ([`crate::rule_table`]) and of a hash of cgroup id → `struct
//!   policyd_rule` for the cgroups created since the table was built;
//!   policyd creates the inner maps and swaps them;
//! * `serials`: an mmapable array where the program `cgroup_serials` lists
//!   cgroups' css serial numbers, the rules table's keys
//!   ([`PolicyObject::cgroup_serials`]);
//! * `events`: a ring buffer of `struct policyd_event`;
//! * `struct policyd_stats stats` in `.bss`;
//! * the program `find_per_cpu` (`bpf/per_cpu.bpf.h`, in the kill tracer
//!   too), run once after the load ([`find_per_cpu`]).
//!
//! The Rust side of those structs ([`crate::abi`]) and of `.rodata`
//! ([`skel::types::rodata`]) is the skeleton build.rs generates from this
//! object's BTF: there is nothing to check at load time.
//!
//! The handler is attached with a struct_ops link created by
//! `bpf_link_create(map, cgroup_fd, BPF_STRUCT_OPS, BPF_F_CGROUP_FD)`: libbpf
//! 1.7's own `bpf_map__attach_struct_ops()` cannot name a cgroup. Closing the
//! link fd ([`HandlerLink`]'s drop) detaches the handler.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::btf::types::MemberAttr;
use libbpf_rs::libbpf_sys;
use libbpf_rs::{
    AsRawLibbpf, Btf, ErrorKind, Map, MapCore, MapFlags, MapHandle, MapType, Object, ObjectBuilder,
    OpenMap, OpenObject, ProgramInput,
};
use nix::sys::mman::{self, ProtFlags};

use crate::abi::{
    self, Pod, PolicydDecisionKey, PolicydDeclare, PolicydFindRule, PolicydMetrics,
    PolicydOpsLayout, PolicydRule, PolicydSerial, PolicydSerials, PolicydStats,
};
use crate::bpf::skel;
use crate::policy::PolicyName;
use crate::rule_table;
use crate::tree_walk::{self, TreeRecord, TreeWalker};

/// `BPF_F_CGROUP_FD` (uapi/linux/bpf.h): `link_create.target_fd` is a cgroup.
/// Our kernel patches add it; libbpf-sys 1.7's bindings predate it.
pub const BPF_F_CGROUP_FD: u32 = 1 << 7;

/// The kernel's struct_ops type, and the value type of its maps.
pub(crate) const OOM_OPS: &str = "bpf_oom_ops";
pub(crate) const OOM_OPS_VALUE: &str = "bpf_struct_ops_bpf_oom_ops";

/// Name of the maps of new cgroups' rules policyd creates (as `bpftool map`
/// shows them).
const RULES_MAP_NAME: &str = "policyd_rules";
/// Name of the rules table maps policyd creates.
const TABLE_MAP_NAME: &str = "policyd_table";

/// `uname -r`, for messages.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// What to tell a user whose kernel has no BPF OOM support.
pub fn no_oom_support_message() -> String {
    format!(
        "this kernel ({}) lacks BPF OOM struct_ops; boot a kernel built with \
         kernel-patches/v7.3 (./vm-tests/run kernel)",
        kernel_release()
    )
}

/// Route libbpf's messages into our log: warnings (e.g. the verifier log of
/// a program that failed to load) as warnings, the rest at debug/trace.
pub fn route_libbpf_log() {
    fn print(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::warn!("libbpf: {msg}"),
            libbpf_rs::PrintLevel::Info => tracing::debug!("libbpf: {msg}"),
            libbpf_rs::PrintLevel::Debug => tracing::trace!("libbpf: {msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
}

/// Where the running kernel's `struct bpf_struct_ops_bpf_oom_ops` (the
/// value of a `bpf_oom_ops` struct_ops map) keeps the handler's program and
/// name. Read from the kernel's BTF once; the BTF itself is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomOpsLayout {
    /// BTF id of `struct bpf_struct_ops_bpf_oom_ops`: a struct_ops map
    /// whose `btf_vmlinux_value_type_id` is this one holds a BPF OOM handler.
    pub value_type_id: u32,
    handler: usize,
    name: usize,
    name_len: usize,
}

impl OomOpsLayout {
    /// From /sys/kernel/btf/vmlinux; an error that says what to do if the
    /// kernel has no BPF OOM support. (A loaded policy object knows it
    /// without reading the BTF again: [`PolicyObject::ops_layout`].)
    pub fn of_running_kernel() -> Result<Self> {
        let btf = Btf::from_vmlinux().map_err(|e| {
            anyhow!(
                "cannot read the running kernel's BTF (/sys/kernel/btf/vmlinux; the kernel \
                 needs CONFIG_DEBUG_INFO_BTF): {e}"
            )
        })?;
        let ops = abi::find_struct(&btf, OOM_OPS).with_context(no_oom_support_message)?;
        let value = abi::find_struct(&btf, OOM_OPS_VALUE)
            .with_context(|| format!("struct {OOM_OPS_VALUE} is not in the kernel's BTF"))?;
        let data = member_offset(&value, "data")?;
        let name = data + member_offset(&ops, "name")?;
        Ok(OomOpsLayout {
            value_type_id: value.type_id().into(),
            handler: data + member_offset(&ops, "handle_out_of_memory")?,
            name,
            name_len: libbpf_rs::HasSize::size(&ops).saturating_sub(name - data),
        })
    }

    /// From what the object's `find_ops_layout()` found.
    fn of_object(found: &PolicydOpsLayout) -> Self {
        let data = found.data as usize;
        let name = data + found.name as usize;
        OomOpsLayout {
            value_type_id: found.value_type_id,
            handler: data + found.handler as usize,
            name,
            name_len: (data + found.ops_size as usize).saturating_sub(name),
        }
    }

    /// Does the running kernel have `struct bpf_oom_ops`? `None`: no BTF to tell.
    pub fn supported() -> Option<bool> {
        let btf = Btf::from_vmlinux().ok()?;
        Some(abi::find_struct(&btf, OOM_OPS).is_some())
    }

    /// The value to store in a `bpf_oom_ops` struct_ops map before linking
    /// it: the handler's program fd in place of the function pointer, and
    /// its name. (libbpf prepares the same bytes for
    /// `bpf_map__attach_struct_ops()`, which cannot name a cgroup, but keeps
    /// them private.)
    pub fn value(&self, value_size: usize, prog_fd: RawFd, name: &[u8]) -> Result<Vec<u8>> {
        if self.handler + 8 > value_size || self.name + self.name_len > value_size {
            bail!("struct {OOM_OPS_VALUE} does not fit the map's {value_size}-byte value");
        }
        let mut value = vec![0u8; value_size];
        value[self.handler..self.handler + 8].copy_from_slice(&(prog_fd as u64).to_ne_bytes());
        let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let n = n.min(self.name_len.saturating_sub(1));
        value[self.name..self.name + n].copy_from_slice(&name[..n]);
        Ok(value)
    }

    /// The handler's program id in a value read back from the kernel.
    pub fn prog_id(&self, value: &[u8]) -> Option<u32> {
        let bytes = value.get(self.handler..self.handler + 8)?;
        Some(u64::from_ne_bytes(bytes.try_into().ok()?) as u32).filter(|&id| id != 0)
    }

    /// The handler's name in a value read back from the kernel.
    pub fn name(&self, value: &[u8]) -> String {
        abi::c_string(value.get(self.name..).unwrap_or_default().iter().copied())
    }
}

/// Byte offset of `member` in the kernel struct `st`.
fn member_offset(st: &libbpf_rs::btf::types::Struct<'_>, member: &str) -> Result<usize> {
    let st_name = st
        .name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let m = st
        .iter()
        .find(|m| m.name.is_some_and(|n| n == member))
        .with_context(|| format!("struct {st_name} has no member {member}"))?;
    match m.attr {
        MemberAttr::Normal { offset } => Ok(offset as usize / 8),
        MemberAttr::BitField { .. } => bail!("{st_name}.{member} is a bitfield"),
    }
}

/// Shape of the inner rules map, as the policy object declares it. A map
/// stored into `rules[0]` must match it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerSpec {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl InnerSpec {
    /// From the inner map template of `rules` (libbpf drops it at load).
    fn of_open_object(obj: &OpenObject) -> Result<Self> {
        let rules = obj
            .maps()
            .find(|m| m.name() == "new_rules")
            .context("the policy object has no `new_rules` map")?;
        // SAFETY: a valid map of a live object; the template lives as long.
        let inner = unsafe { libbpf_sys::bpf_map__inner_map(rules.as_libbpf_object().as_ptr()) };
        let inner = NonNull::new(inner)
            .context("`new_rules` in the policy object is not a map of maps with an inner map")?;
        // SAFETY: non-null, owned by the open object borrowed above.
        let m = OpenMap::new(unsafe { inner.as_ref() });
        let spec = InnerSpec {
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
        };
        if spec.map_type != MapType::Hash
            || spec.key_size != 8
            || spec.value_size as usize != size_of::<PolicydRule>()
        {
            bail!(
                "the policy's rules map is {:?} with {}-byte keys and {}-byte values; policyd \
                 expects a hash of u64 cgroup id -> struct policyd_rule ({} bytes)",
                spec.map_type,
                spec.key_size,
                spec.value_size,
                size_of::<PolicydRule>()
            );
        }
        Ok(spec)
    }

    /// A new, empty inner rules map.
    pub fn create(&self) -> Result<MapHandle> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: self.flags,
            ..Default::default()
        };
        MapHandle::create(
            self.map_type,
            Some(RULES_MAP_NAME),
            self.key_size,
            self.value_size,
            self.max_entries,
            &opts,
        )
        .map_err(|e| with_permission_hint(e, "creating the rules map"))
    }
}

/// "needs root" for permission errors, the libbpf error otherwise.
fn with_permission_hint(e: libbpf_rs::Error, what: &str) -> anyhow::Error {
    if e.kind() == ErrorKind::PermissionDenied {
        anyhow!("{what}: needs root (CAP_BPF + CAP_SYS_ADMIN): {e}")
    } else {
        anyhow!("{what}: {e:#}")
    }
}

/// policyd's BPF object (bpf/policies/policyd.bpf.c), as build.rs compiled it.
/// Opened from memory, it is owned like any other value. The skeleton
/// ([`crate::bpf::skel`]) is generated from this same file.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policyd.bpf.o"));

/// The handler program's name in [`OBJECT`].
const HANDLER_PROG: &str = "policyd_handle_oom";

/// The tp_btf/mark_victim program of [`OBJECT`]: keeps the handler's list of
/// OOM victims, so that it need not walk every process to find one exiting.
const VICTIMS_PROG: &str = "policyd_mark_victim";

/// The SEC("syscall") program of [`OBJECT`] that declares an OOM.
const DECLARE_PROG: &str = "declare_oom";

/// The SEC("syscall") program of [`OBJECT`] that looks a cgroup's rules up.
const FIND_RULE_PROG: &str = "find_rule_of";

/// The SEC("syscall") program of [`OBJECT`] that lists cgroups' css serial
/// numbers, into [`SERIALS_MAP`].
const SERIALS_PROG: &str = "cgroup_serials";

/// Where [`SERIALS_PROG`] writes: `struct policyd_serial` pairs.
const SERIALS_MAP: &str = "serials";

/// Runs the SEC("syscall") program `fd` once on the context `ctx`, which it
/// may write; what it returned.
pub fn run_syscall_prog(fd: BorrowedFd<'_>, ctx: &mut [u8]) -> io::Result<i32> {
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        ctx_in: ctx.as_mut_ptr().cast(),
        ctx_size_in: ctx.len() as u32,
        ..Default::default()
    };
    // SAFETY: `opts` points at `ctx`, live and writable for the call.
    let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd.as_raw_fd(), &mut opts) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    Ok(opts.retval as i32)
}

/// Runs `f` on the first `len` bytes of the values of the mmapable array
/// map `map`, through a shared mapping made for it and unmapped after.
/// Nothing else may write them meanwhile. An empty `len` maps nothing.
fn with_mapping<T>(map: BorrowedFd<'_>, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> Result<T> {
    let Some(len) = NonZeroUsize::new(len) else {
        return Ok(f(&mut []));
    };
    // SAFETY: a new mapping, of `len` bytes of the map's values.
    let value = unsafe {
        mman::mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            mman::MapFlags::MAP_SHARED,
            map,
            0,
        )
    }?;
    // SAFETY: `len` bytes mapped read-write above, which nothing else writes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(value.as_ptr().cast::<u8>(), len.get()) };
    let out = f(bytes);
    // SAFETY: mapped above; `bytes` is not used past here.
    unsafe { mman::munmap(value, len.get()) }.context("unmapping it")?;
    Ok(out)
}

/// The entry the `find_rule_of` program `prog` (of a loaded policy object,
/// or of a running policyd's) finds for the cgroup `id` in the rules
/// installed, and where; `serial`: its css serial number, 0 for the live
/// cgroup's. An entry found in the table must be `id`'s own.
pub fn find_rule_with(
    prog: BorrowedFd<'_>,
    id: u64,
    serial: u64,
) -> Result<Option<(PolicydRule, FoundIn)>> {
    let mut ctx = PolicydFindRule {
        cgroup_id: id,
        serial,
        found: u32::MAX,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    let ret = run_syscall_prog(prog, &mut ctx)
        .map_err(|e| with_permission_hint(e.into(), "running find_rule_of (BPF_PROG_TEST_RUN)"))?;
    if ret != 0 {
        bail!("find_rule_of: no rules installed");
    }
    let out =
        PolicydFindRule::from_bytes(&ctx).context("find_rule_of's context came back short")?;
    Ok(match out.found {
        0 => None,
        1 if out.table_id != id => bail!(
            "find_rule_of: the table's slot of serial number {} holds cgroup {}, not {id}",
            out.serial,
            out.table_id
        ),
        1 => Some((out.rule, FoundIn::Table)),
        2 => Some((out.rule, FoundIn::Created)),
        n => bail!("find_rule_of said found = {n}"),
    })
}

/// Where [`PolicyObject::find_rule`] found an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundIn {
    /// The rules table.
    Table,
    /// The hash of cgroups created since the table was built.
    Created,
}

/// The struct_ops map of [`OBJECT`].
const OPS_MAP: &str = "policyd_ops";

/// One loaded policy object (programs verified, maps created), not attached.
pub struct PolicyObject {
    policy: PolicyName,
    /// [`tree_walk::PROG`] is loaded.
    tree_walk: bool,
    /// It is attached to the cgroup2 mount ([`Self::attach_tree_walker`]).
    walker: Option<TreeWalker>,
    object: Object,
    inner: InnerSpec,
    /// The handler program's fd (owned by the object).
    handler_fd: RawFd,
    /// Where the kernel keeps the handler in the struct_ops map's value.
    ops_layout: OomOpsLayout,
    /// [`VICTIMS_PROG`], attached for as long as the object lives.
    _victims: libbpf_rs::Link,
}

fn load_error(e: libbpf_rs::Error) -> anyhow::Error {
    match e.kind() {
        // EPERM and EACCES look alike here; as root, EACCES is the verifier.
        ErrorKind::PermissionDenied if !nix::unistd::geteuid().is_root() => {
            anyhow!("loading the policy needs root (CAP_BPF + CAP_SYS_ADMIN): {e}")
        }
        ErrorKind::PermissionDenied | ErrorKind::InvalidInput => {
            anyhow!("the kernel's verifier rejected the policy (libbpf's log above says why): {e}")
        }
        ErrorKind::TooBig => anyhow!(
            "the kernel's verifier gave up on the policy as too complex (libbpf's log above \
             says where): {e}"
        ),
        // libbpf: "struct bpf_oom_ops is not found in kernel BTF".
        ErrorKind::Unsupported => {
            anyhow!("{}: {e}", no_oom_support_message())
        }
        _ => anyhow!("loading the policy failed (libbpf's log above says why): {e:#}"),
    }
}

/// The program each of policyd's objects carries (`bpf/per_cpu.bpf.h`) that
/// tells it where the per-CPU shares of tasks' memory counters are.
pub const PER_CPU_PROG: &str = "find_per_cpu";

/// Runs `object`'s SEC("syscall") program `name` once; what it returned.
fn run_once(object: &mut Object, name: &str) -> Result<i32> {
    let prog = object
        .progs_mut()
        .find(|p| p.name() == name)
        .with_context(|| format!("the BPF object has no program {name}"))?;
    let out = prog
        .test_run(ProgramInput::default())
        .map_err(|e| with_permission_hint(e, &format!("running {name} (BPF_PROG_TEST_RUN)")))?;
    Ok(out.return_value as i32)
}

/// `MAX_CPUS` in per_cpu.bpf.h: CPU ids whose shares the objects add up.
const MAX_CPUS: u32 = 1024;

/// Runs `object`'s [`PER_CPU_PROG`], before anything that counts a task's
/// memory is attached, so that it adds up the per-CPU shares as
/// `get_mm_counter_sum()` does. Err: why they are left out (or, past
/// [`MAX_CPUS`], some of them), for a warning that says what that costs.
pub fn find_per_cpu(object: &mut Object) -> Result<()> {
    let left_out = "the per-CPU shares of tasks' memory counters are left out";
    match -run_once(object, PER_CPU_PROG)? {
        0 => Ok(()),
        nix::libc::E2BIG => bail!(
            "the per-CPU shares of tasks' memory counters are added up for the first \
             {MAX_CPUS} CPUs only: this kernel has more CPU ids"
        ),
        nix::libc::EPERM => bail!(
            "{left_out}: the kernel hides its addresses from policyd (kernel.kptr_restrict \
             is 2, or 1 and policyd lacks CAP_SYSLOG)"
        ),
        nix::libc::ENOENT => bail!(
            "{left_out}: the kernel's symbol table has no __per_cpu_offset or nr_cpu_ids \
             (CONFIG_KALLSYMS_ALL is off)"
        ),
        errno => bail!(
            "{left_out}: looking up __per_cpu_offset failed: {}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// The object's `find_ops_layout()`, which CO-RE relocated against the
/// kernel's BTF as libbpf loaded the object.
const OPS_LAYOUT_PROG: &str = "find_ops_layout";

/// The `.bss` of a handler object, as one value.
fn read_bss(object: &Object) -> Result<Vec<u8>> {
    object
        .maps()
        .find(|m| m.name().to_string_lossy().ends_with(".bss"))
        .context("the BPF object has no .bss")?
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("reading the handler's .bss")?
        .context("the handler's .bss has no value")
}

/// Runs `object`'s [`OPS_LAYOUT_PROG`] and reads what it found.
fn find_ops_layout(object: &mut Object) -> Result<OomOpsLayout> {
    if run_once(object, OPS_LAYOUT_PROG)? != 0 {
        return Err(anyhow!(no_oom_support_message()));
    }
    let found = read_bss(object)?
        .get(offset_of!(skel::types::bss, ops_layout)..)
        .and_then(PolicydOpsLayout::from_bytes)
        .context("the handler's .bss is shorter than its skeleton says")?;
    Ok(OomOpsLayout::of_object(&found))
}

/// What a handler object is set up with before it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub policy: PolicyName,
    /// Decide and report, but leave the kill to the kernel.
    pub dry_run: bool,
    /// Room in the rules map and the candidates' heap (`--max-cgroups`, at
    /// most [`abi::MAX_CGROUPS`]).
    pub max_cgroups: u32,
    /// Steps of the handler's walk of the cgroup tree ([`abi::WALK_STEPS`];
    /// fewer only to test a walk cut short).
    pub walk_steps: u32,
    /// Cgroups in the tree to walk ([`tree_walk::cgroups_below`]), which size
    /// the walk's ring buffer; `None`: no walk, the tree is read from the
    /// file system (not a cgroup2 mount).
    pub tree_cgroups: Option<u64>,
}

/// Apply `settings` to the opened object: `.rodata` (the verifier then drops
/// the code of the other policies) and the sizes of the per-cgroup maps.
fn configure(open: &mut OpenObject, settings: &Settings) -> Result<()> {
    let max = settings.max_cgroups.min(abi::MAX_CGROUPS);
    open.maps_mut()
        .find(|m| m.name() == "heap")
        .context("the BPF object has no `heap` map")?
        .set_max_entries(max)
        .context("sizing the handler's candidate heap")?;
    open.maps_mut()
        .find(|m| m.name() == SERIALS_MAP)
        .with_context(|| format!("the BPF object has no `{SERIALS_MAP}` map"))?
        .set_max_entries(max)
        .context("sizing the map of cgroup serial numbers")?;
    open.maps_mut()
        .find(|m| m.name() == tree_walk::RING)
        .with_context(|| format!("the BPF object has no `{}` map", tree_walk::RING))?
        .set_max_entries(tree_walk::ring_bytes(settings.tree_cgroups.unwrap_or(0)))
        .context("sizing the tree walk's ring buffer")?;
    open.progs_mut()
        .find(|p| p.name() == tree_walk::PROG)
        .with_context(|| format!("the BPF object has no program {}", tree_walk::PROG))?
        .set_autoload(settings.tree_cgroups.is_some());
    let walk_steps = settings.walk_steps.min(abi::WALK_STEPS);
    let fields: [(usize, &[u8]); 4] = [
        (
            offset_of!(skel::types::rodata, policy),
            &[settings.policy.abi()],
        ),
        (
            offset_of!(skel::types::rodata, dry_run),
            &[u8::from(settings.dry_run)],
        ),
        (
            offset_of!(skel::types::rodata, max_candidates),
            &max.to_ne_bytes(),
        ),
        (
            offset_of!(skel::types::rodata, walk_steps),
            &walk_steps.to_ne_bytes(),
        ),
    ];
    set_rodata(open, &fields)
}

/// Writes each `(offset, bytes)` of `fields` into the .rodata of `open`
/// before it is loaded. At the skeleton's offsets, byte by byte: the section
/// may end before the trailing padding of the skeleton's struct.
fn set_rodata(open: &mut OpenObject, fields: &[(usize, &[u8])]) -> Result<()> {
    let mut rodata = open
        .maps_mut()
        .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
        .context("the BPF object has no .rodata section")?;
    let bytes = rodata
        .initial_value_mut()
        .context("the BPF object's .rodata has no initial value")?;
    let len = bytes.len();
    for &(offset, value) in fields {
        bytes
            .get_mut(offset..offset + value.len())
            .with_context(|| {
                format!("the BPF object's .rodata ({len} bytes) does not match its skeleton")
            })?
            .copy_from_slice(value);
    }
    Ok(())
}

impl PolicyObject {
    /// Open and load the handler with `settings`. Verifies the program and
    /// creates the maps; attaches the victim list's tracepoint program (before
    /// any handler can run: the handler's first walk then finds every victim
    /// marked before it), not the handler.
    pub fn open_load(settings: &Settings) -> Result<Self> {
        let loaded = match Self::open_load_inner(settings) {
            // A kernel without cgroup iterators still runs every policy.
            Err(e) if settings.tree_cgroups.is_some() => {
                let without = Settings {
                    tree_cgroups: None,
                    ..*settings
                };
                Self::open_load_inner(&without).inspect(|_| {
                    tracing::warn!(
                        "the cgroup tree iterator ({}) did not load ({e:#}): the tree is read \
                         from the file system, a listing per cgroup",
                        tree_walk::PROG
                    )
                })
            }
            loaded => loaded,
        };
        loaded.with_context(|| format!("policy {}", settings.policy))
    }

    fn open_load_inner(settings: &Settings) -> Result<Self> {
        let started = std::time::Instant::now();
        let mut open = ObjectBuilder::default()
            .name("policyd")
            .and_then(|b| b.open_memory(OBJECT))
            .context("opening the BPF object")?;
        configure(&mut open, settings)?;
        // The rules maps get --max-cgroups entries: the outer map is created
        // from an inner map of that size. (libbpf cannot resize the template
        // it keeps from the object's definition.)
        let mut inner = InnerSpec::of_open_object(&open)?;
        inner.max_entries = settings.max_cgroups.min(abi::MAX_CGROUPS);
        let template = inner.create()?;
        let rules = open
            .maps_mut()
            .find(|m| m.name() == "new_rules")
            .context("the BPF object has no `new_rules` map")?;
        // SAFETY: a valid map of the open object, not created yet.
        let ret = unsafe {
            libbpf_sys::bpf_map__set_inner_map_fd(
                rules.as_libbpf_object().as_ptr(),
                template.as_fd().as_raw_fd(),
            )
        };
        if ret < 0 {
            bail!(
                "sizing the rules map: {}",
                io::Error::from_raw_os_error(-ret)
            );
        }
        let opened = started.elapsed();
        let mut object = open.load().map_err(load_error)?;
        let loaded = started.elapsed();
        drop(template);
        if let Err(e) = find_per_cpu(&mut object) {
            tracing::warn!(
                "{e:#}: the handler may rank tasks of about the same size otherwise than the \
                 kernel and `policyd explain` do"
            );
        }
        let ops_layout = find_ops_layout(&mut object)?;
        let handler_fd = object
            .progs()
            .find(|p| p.name() == HANDLER_PROG)
            .map(|p| p.as_fd().as_raw_fd())
            .with_context(|| format!("the BPF object has no program {HANDLER_PROG}"))?;
        let victims = object
            .progs_mut()
            .find(|p| p.name() == VICTIMS_PROG)
            .with_context(|| format!("the BPF object has no program {VICTIMS_PROG}"))?
            .attach()
            .context(
                "attaching the OOM victim tracer (tp_btf/mark_victim): this kernel needs \
                 CONFIG_TRACEPOINTS and BTF",
            )?;
        tracing::debug!(
            "policy object: open {:.3} s, load {:.3} s, victim tracer {:.3} s",
            opened.as_secs_f64(),
            (loaded - opened).as_secs_f64(),
            (started.elapsed() - loaded).as_secs_f64()
        );
        Ok(PolicyObject {
            policy: settings.policy,
            tree_walk: settings.tree_cgroups.is_some(),
            walker: None,
            object,
            inner,
            handler_fd,
            ops_layout,
            _victims: victims,
        })
    }

    pub fn policy(&self) -> PolicyName {
        self.policy
    }

    /// Where the running kernel keeps the handler in the struct_ops map's
    /// value, as the object found it.
    pub fn ops_layout(&self) -> &OomOpsLayout {
        &self.ops_layout
    }

    /// Make [`Self::walk_tree`] walk the cgroup2 hierarchy mounted at `root`.
    /// Where the walk cannot be set up the tree is read from the file system:
    /// a warning says why.
    pub fn attach_tree_walker(&mut self, root: &Path) {
        if !self.tree_walk {
            return;
        }
        match TreeWalker::attach(&mut self.object, root) {
            Ok(walker) => self.walker = walker,
            Err(e) => tracing::warn!(
                "{e:#}: the cgroup tree is read from the file system, a listing per cgroup"
            ),
        }
    }

    /// One walk of the tree, or `None` when there is no walker.
    pub fn walk_tree(&self) -> Option<Result<Vec<TreeRecord>>> {
        let walker = self.walker.as_ref()?;
        Some(
            self.map(tree_walk::RING)
                .and_then(|ring| walker.walk(&ring)),
        )
    }

    pub fn object(&self) -> &Object {
        &self.object
    }

    pub fn inner_spec(&self) -> &InnerSpec {
        &self.inner
    }

    /// The handler's name as the OOM report and `policyd status` show it,
    /// e.g. "policyd_priority".
    pub fn handler_name(&self) -> String {
        format!("policyd_{}", self.policy)
    }

    fn map(&self, name: &str) -> Result<Map<'_>> {
        self.object()
            .maps()
            .find(|m| m.name() == name)
            .with_context(|| format!("policy {}: no map `{name}` in the object", self.policy))
    }

    /// The struct_ops map.
    pub fn ops_map(&self) -> Result<Map<'_>> {
        self.map(OPS_MAP)
    }

    pub fn events_map(&self) -> Result<Map<'_>> {
        self.map("events")
    }

    /// The handler's `.bss`, as one value.
    fn bss(&self) -> Result<Vec<u8>> {
        read_bss(self.object())
    }

    /// The handler's counters (`stats` in its `.bss`).
    pub fn stats(&self) -> Result<PolicydStats> {
        self.bss()?
            .get(offset_of!(skel::types::bss, stats)..)
            .and_then(PolicydStats::from_bytes)
            .context("the handler's .bss is shorter than its skeleton says")
    }

    /// The handler's `await_run` word (policyd.h), or `None` while it
    /// changes: the map read copies the .bss bytewise under some CPUs (TCG),
    /// so only two reads that agree are taken.
    pub fn await_run(&self) -> Result<Option<u64>> {
        let word = || -> Result<u64> {
            let at = offset_of!(skel::types::bss, await_run);
            self.bss()?
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .context("the handler's .bss is shorter than its skeleton says")
        };
        let first = word()?;
        Ok((word()? == first).then_some(first))
    }

    /// Everything `policyd metrics` shows of this handler: `stats` and
    /// `metrics` from one read of its `.bss`, and its `decisions` map.
    pub fn counters(&self) -> Result<RawCounters> {
        let bss = self.bss()?;
        let short = || anyhow!("the handler's .bss is shorter than its skeleton says");
        let stats = bss
            .get(offset_of!(skel::types::bss, stats)..)
            .and_then(PolicydStats::from_bytes)
            .ok_or_else(short)?;
        let metrics = bss
            .get(offset_of!(skel::types::bss, metrics)..)
            .and_then(PolicydMetrics::from_bytes)
            .ok_or_else(short)?;
        let decisions = read_decisions(&self.map("decisions")?)?;
        Ok(RawCounters {
            stats,
            metrics,
            decisions,
        })
    }

    /// A rules table map, not installed yet, that `fill` writes through a
    /// mapping of its value (zeroed, [`rule_table::SIZE`] bytes): no copy of
    /// the table passes through policyd's heap.
    pub fn new_table<T>(
        &self,
        fill: impl FnOnce(&mut [u8]) -> Result<T>,
    ) -> Result<(MapHandle, T)> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: libbpf_sys::BPF_F_MMAPABLE,
            ..Default::default()
        };
        let map = MapHandle::create(
            MapType::Array,
            Some(TABLE_MAP_NAME),
            4,
            rule_table::SIZE as u32,
            1,
            &opts,
        )
        .map_err(|e| with_permission_hint(e, "creating the rules table"))?;
        // Nothing reads the new map before it is unmapped.
        let filled =
            with_mapping(map.as_fd(), rule_table::SIZE, fill).context("mapping the rules table")?;
        Ok((map, filled?))
    }

    /// The css serial number of each cgroup of the subtree of `root_id`
    /// (the cgroup's id, or inode number), as a map of id to serial number:
    /// the rules table's keys ([`rule_table`]). At most `--max-cgroups`
    /// of them, the room in the rules maps; a cgroup past it has none, nor
    /// has the root cgroup (its serial number is 0, an empty slot's), and
    /// policyd gives them an entry in the hash instead.
    pub fn cgroup_serials(&self, root_id: u64) -> Result<HashMap<u64, u64>> {
        let prog = self
            .object
            .progs()
            .find(|p| p.name() == SERIALS_PROG)
            .with_context(|| format!("the BPF object has no program {SERIALS_PROG}"))?;
        let mut ctx = PolicydSerials {
            root_id,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        let ret = run_syscall_prog(prog.as_fd(), &mut ctx).map_err(|e| {
            with_permission_hint(
                e.into(),
                &format!("running {SERIALS_PROG} (BPF_PROG_TEST_RUN)"),
            )
        })?;
        if ret < 0 {
            bail!(
                "listing the cgroups below cgroup {root_id}: {}",
                io::Error::from_raw_os_error(-ret)
            );
        }
        let out = PolicydSerials::from_bytes(&ctx)
            .with_context(|| format!("{SERIALS_PROG}'s context came back short"))?;
        let map = self.map(SERIALS_MAP)?;
        let pair = size_of::<PolicydSerial>();
        let stored = (out.stored as usize).min(map.max_entries() as usize);
        // The program that writes the map has returned.
        let serials = with_mapping(map.as_fd(), stored * pair, |bytes| {
            bytes
                .chunks_exact(pair)
                .filter_map(PolicydSerial::from_bytes)
                // The root cgroup's 0, which keys no slot: its entry goes into the hash.
                .filter(|p| p.serial != 0)
                .map(|p| (p.cgroup_id, p.serial))
                .collect()
        })
        .with_context(|| format!("mapping the `{SERIALS_MAP}` map"))?;
        if out.found > out.stored {
            tracing::debug!(
                "{} cgroups below cgroup {root_id}, the serial numbers of {} listed",
                out.found,
                out.stored
            );
        }
        Ok(serials)
    }

    /// Make `table` and `created` (the rules of cgroups created since
    /// `table` was built) the rules the handler reads: one atomic store into
    /// `rule_table[0]`, then one into `new_rules[0]`. In between the handler
    /// finds every cgroup of `created` in `table` first, with the same rule.
    pub fn install_rules(&self, table: &MapHandle, created: &MapHandle) -> Result<()> {
        let store = |map: &str, inner: &MapHandle| {
            let fd = inner.as_fd().as_raw_fd() as u32;
            self.map(map)?
                .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| with_permission_hint(e, &format!("storing the rules into {map}[0]")))
        };
        store("rule_table", table)?;
        store("new_rules", created)
    }

    /// Declare an OOM of the cgroup `cgroup_id` (0: the whole system) with
    /// the object's `declare_oom` program, marking its decision with
    /// `trigger` (not 0). Returns what the program reports: 1 memory freed,
    /// 0 not, or a negative errno (policyd.h, `struct policyd_declare`).
    pub fn declare_oom(&mut self, cgroup_id: u64, trigger: u64) -> Result<i32> {
        let prog = self
            .object
            .progs_mut()
            .find(|p| p.name() == DECLARE_PROG)
            .with_context(|| format!("the BPF object has no program {DECLARE_PROG}"))?;
        let args = PolicydDeclare {
            cgroup_id,
            trigger,
            ret: i32::MIN,
            ..Default::default()
        };
        let mut ctx = args.as_bytes().to_vec();
        prog.test_run(ProgramInput {
            context_in: Some(&mut ctx),
            ..Default::default()
        })
        .map_err(|e| with_permission_hint(e, "running declare_oom (BPF_PROG_TEST_RUN)"))?;
        let out =
            PolicydDeclare::from_bytes(&ctx).context("declare_oom's context came back short")?;
        if out.ret == i32::MIN {
            bail!("declare_oom did not run bpf_out_of_memory() (its result was left unset)");
        }
        Ok(out.ret)
    }

    /// The entry the handler finds for the cgroup `id` in the rules
    /// installed now, and where: the `find_rule_of` program runs the
    /// handler's own search. For tests.
    pub fn find_rule(&self, id: u64, serial: u64) -> Result<Option<(PolicydRule, FoundIn)>> {
        let prog = self
            .object
            .progs()
            .find(|p| p.name() == FIND_RULE_PROG)
            .with_context(|| format!("the BPF object has no program {FIND_RULE_PROG}"))?;
        find_rule_with(prog.as_fd(), id, serial)
    }

    /// Store the struct_ops value (handler program, name) into the
    /// struct_ops map; required before a link can use the map.
    pub fn prepare_ops(&self) -> Result<()> {
        let map = self.ops_map()?;
        let value = self.ops_layout.value(
            map.value_size() as usize,
            self.handler_fd,
            self.handler_name().as_bytes(),
        )?;
        map.update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(|e| with_permission_hint(e, "registering the handler in its struct_ops map"))
    }
}

/// A handler's counters as its maps hold them (see `policyd.h`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCounters {
    pub stats: PolicydStats,
    pub metrics: PolicydMetrics,
    /// The `decisions` map: (victim cgroup, outcome) → decisions.
    pub decisions: Vec<(PolicydDecisionKey, u64)>,
}

/// Every entry of a `decisions` map (the handler's, or found by id).
pub fn read_decisions(map: &impl MapCore) -> Result<Vec<(PolicydDecisionKey, u64)>> {
    let mut out = Vec::new();
    for key in map.keys() {
        let Some(k) = PolicydDecisionKey::from_bytes(&key) else {
            continue;
        };
        // A key deleted between the walk and the lookup is simply absent.
        let value = map
            .lookup(&key, MapFlags::ANY)
            .context("reading the handler's `decisions` map")?;
        let count = value.and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)));
        if let Some(n) = count {
            out.push((k, n));
        }
    }
    out.sort_by_key(|(k, _)| (k.cgroup_id, k.outcome));
    Ok(out)
}

/// `BPF_LINK_CREATE` for the struct_ops map `map_fd`: with `BPF_F_CGROUP_FD`
/// in `flags`, on the cgroup `target_fd`; without, system-wide (as libbpf's
/// `bpf_map__attach_struct_ops()` does). Only libbpf's syscall wrapper (a
/// memset and the syscall): safe in a child between fork and exit.
pub fn link_create(map_fd: RawFd, target_fd: RawFd, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain C struct, all-zero is its default.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t;
    opts.flags = flags;
    // SAFETY: plain syscall wrapper; opts outlives the call.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(map_fd, target_fd, libbpf_sys::BPF_STRUCT_OPS, &opts)
    };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `bpf_link_get_info_by_fd()` says about a struct_ops link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    /// 0 once the link is detached.
    pub map_id: u32,
    /// The cgroup of a `BPF_F_CGROUP_FD` link (0 for one without).
    pub cgroup_id: u64,
}

/// [`LinkInfo`] of the link `fd`.
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // SAFETY: plain C struct.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: valid fd and buffer; len bounds what the kernel writes.
    let ret = unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    // The patched kernel's struct_ops member of the union is { __u32 map_id;
    // __u32 :32; __u64 cgroup_id; }; libbpf-sys knows only map_id, so the
    // cgroup id is read 8 bytes into the union.
    let union_off = offset_of!(libbpf_sys::bpf_link_info, __bindgen_anon_1);
    const _: () = assert!(size_of::<libbpf_sys::bpf_link_info__bindgen_ty_1>() >= 16);
    // SAFETY: the union is at least 16 bytes (checked above), zero-initialised.
    let cgroup_id = unsafe {
        (&info as *const libbpf_sys::bpf_link_info)
            .cast::<u8>()
            .add(union_off + 8)
            .cast::<u64>()
            .read_unaligned()
    };
    Ok(LinkInfo {
        link_type: info.type_,
        id: info.id,
        // SAFETY: a union of plain integers, zero-initialised.
        map_id: unsafe { info.__bindgen_anon_1.struct_ops.map_id },
        cgroup_id,
    })
}

/// [`LinkInfo`] of the link with id `id`; an error when it is gone.
pub fn link_info_by_id(id: u32) -> io::Result<LinkInfo> {
    // SAFETY: any id is safe to ask for: a new fd or an error.
    let ret = unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) };
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret));
    }
    // SAFETY: a new fd from the kernel, ours to close.
    let fd = unsafe { OwnedFd::from_raw_fd(ret) };
    link_info(fd.as_fd())
}

/// An attached handler. Dropping it closes the link: the handler detaches.
#[derive(Debug)]
pub struct HandlerLink {
    fd: OwnedFd,
}

impl HandlerLink {
    /// Attach the struct_ops map `ops_map` (already prepared) to the cgroup
    /// whose directory is `cgroup_dir`; `cgroup` names it in errors.
    pub fn attach(ops_map: BorrowedFd<'_>, cgroup_dir: &Path, cgroup: &str) -> Result<Self> {
        let dir = File::open(cgroup_dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "cgroup {cgroup} does not exist (no directory {})",
                cgroup_dir.display()
            ),
            _ => anyhow!(
                "cannot open cgroup {cgroup} ({}): {e}",
                cgroup_dir.display()
            ),
        })?;
        Self::attach_fd(ops_map, dir.as_fd()).map_err(|e| attach_error(e, cgroup))
    }

    /// `bpf_link_create(map, cgroup, BPF_STRUCT_OPS, BPF_F_CGROUP_FD)`.
    pub fn attach_fd(ops_map: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = link_create(ops_map.as_raw_fd(), cgroup.as_raw_fd(), BPF_F_CGROUP_FD)?;
        Ok(HandlerLink { fd })
    }

    /// Swap the handler to `new_map` in one step, if the link still uses
    /// `old_map` (`bpf_link_update` with `BPF_F_REPLACE`).
    pub fn update(&self, new_map: BorrowedFd<'_>, old_map: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: plain C struct.
        let mut opts: libbpf_sys::bpf_link_update_opts = unsafe { std::mem::zeroed() };
        opts.sz = size_of::<libbpf_sys::bpf_link_update_opts>() as libbpf_sys::size_t;
        opts.flags = libbpf_sys::BPF_F_REPLACE;
        opts.old_map_fd = old_map.as_raw_fd() as u32;
        // SAFETY: valid fds and options.
        let ret =
            unsafe { libbpf_sys::bpf_link_update(self.fd.as_raw_fd(), new_map.as_raw_fd(), &opts) };
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret));
        }
        Ok(())
    }

    /// The kernel's id of this link (as `policyd status` and bpftool show it).
    pub fn id(&self) -> io::Result<u32> {
        Ok(link_info(self.fd.as_fd())?.id)
    }
}

impl AsFd for HandlerLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a failed `bpf_link_create` means to a user.
pub fn attach_error(e: io::Error, cgroup: &str) -> anyhow::Error {
    use nix::libc;
    match e.raw_os_error() {
        Some(libc::EEXIST) => {
            anyhow!("an OOM handler is already attached to {cgroup}: see `policyd status`")
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            anyhow!("attaching to {cgroup} needs root (CAP_BPF + CAP_SYS_ADMIN): {e}")
        }
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::EBADF) => anyhow!(
            "attaching to {cgroup} failed ({e}): this kernel ({}) cannot attach BPF OOM \
             handlers to a cgroup; boot a kernel built with kernel-patches/v7.3 \
             (./vm-tests/run kernel)",
            kernel_release()
        ),
        // The kernel refuses a cgroup that cannot OOM: one without the memory controller.
        Some(libc::ENOENT) => anyhow!(
            "cgroup {cgroup} has no memory controller (add +memory to its parent's \
             cgroup.subtree_control) or is being removed: {e}"
        ),
        _ => anyhow!("attaching the handler to {cgroup}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_errors_say_what_to_do() {
        let msg = |errno| attach_error(io::Error::from_raw_os_error(errno), "/demo").to_string();
        assert_eq!(
            msg(nix::libc::EEXIST),
            "an OOM handler is already attached to /demo: see `policyd status`"
        );
        assert!(msg(nix::libc::EPERM).contains("needs root (CAP_BPF + CAP_SYS_ADMIN)"));
        assert!(msg(nix::libc::EACCES).contains("needs root"));
        assert!(msg(nix::libc::EINVAL).contains("kernel-patches/v7.3"));
        assert!(msg(nix::libc::ENOENT).contains("has no memory controller"));
    }

    #[test]
    fn missing_cgroup_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nope");
        // Any fd will do: opening the cgroup fails first.
        let f = File::open(dir.path()).unwrap();
        let err = HandlerLink::attach(f.as_fd(), &fake, "/nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cgroup /nope does not exist (no directory {})",
                fake.display()
            )
        );
    }

    #[test]
    fn settings_size_the_tables_and_fill_rodata() {
        let mut open = ObjectBuilder::default()
            .name("policyd")
            .and_then(|b| b.open_memory(OBJECT))
            .unwrap();
        let settings = Settings {
            policy: PolicyName::Largest,
            dry_run: true,
            max_cgroups: 16,
            walk_steps: 8,
            tree_cgroups: Some(10_013),
        };
        configure(&mut open, &settings).unwrap();
        let heap = open.maps().find(|m| m.name() == "heap").unwrap();
        assert_eq!(heap.max_entries(), 16);
        let ring = open.maps().find(|m| m.name() == "tree").unwrap();
        assert_eq!(ring.max_entries(), 2 * 1024 * 1024);
        let walk = |open: &OpenObject| {
            open.progs()
                .find(|p| p.name() == tree_walk::PROG)
                .unwrap()
                .autoload()
        };
        assert!(walk(&open));
        // Not a cgroup2 mount: no walk, and the smallest ring.
        configure(
            &mut open,
            &Settings {
                tree_cgroups: None,
                ..settings
            },
        )
        .unwrap();
        assert!(!walk(&open));
        let ring = open.maps().find(|m| m.name() == "tree").unwrap();
        assert_eq!(ring.max_entries(), 64 * 1024);
        let rodata = open
            .maps()
            .find(|m| m.name().to_string_lossy().ends_with(".rodata"))
            .unwrap();
        let bytes = rodata.initial_value().unwrap();
        let at = |off: usize, n: usize| bytes[off..off + n].to_vec();
        assert_eq!(
            at(offset_of!(skel::types::rodata, policy), 1),
            [PolicyName::Largest.abi()]
        );
        assert_eq!(at(offset_of!(skel::types::rodata, dry_run), 1), [1]);
        assert_eq!(
            at(offset_of!(skel::types::rodata, max_candidates), 4),
            16u32.to_ne_bytes()
        );
        assert_eq!(
            at(offset_of!(skel::types::rodata, walk_steps), 4),
            8u32.to_ne_bytes()
        );
    }

    #[test]
    fn no_support_message_names_the_kernel() {
        let msg = no_oom_support_message();
        assert!(msg.starts_with("this kernel ("), "{msg}");
        assert!(msg.contains(&kernel_release()));
        assert!(msg.ends_with("(./vm-tests/run kernel)"));
    }
}
