//! Where the per-CPU shares of tasks' memory counters are: each of policyd's BPF objects
//! (the handler and the kill tracer) looks up `__per_cpu_offset` and `nr_cpu_ids` in the
//! kernel (find_per_cpu(), bpf/per_cpu.bpf.h) right after it is loaded.
//!
//! 1. `policyd load`: both objects' `.bss` hold the address /proc/kallsyms shows for
//!    `__per_cpu_offset` and one more than the highest possible CPU, and policyd warns
//!    of nothing.
//! 2. The same without CAP_SYSLOG, with kernel.kptr_restrict=1 (kernel addresses hidden
//!    from it): the handler still attaches, both objects hold zeros, and policyd warns
//!    once for each, saying why (kptr_restrict, CAP_SYSLOG) and what it costs.

use std::mem::offset_of;

use anyhow::{ensure, Context, Result};
use libbpf_rs::query::MapInfoIter;
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use policyd::bpf::{kills_skel, skel};

use crate::guest::pdutil::{self, Policyd};
use crate::guest::util;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-per-cpu", run)
        .needs_policyd()
        .timeout_s(120)
}

/// capability.h's CAP_SYSLOG: kernel addresses in kallsyms, and from
/// bpf_kallsyms_lookup_name(), are shown only to it (kptr_restrict 1).
const CAP_SYSLOG: u32 = 34;

/// What one object found: `per_cpu_offset_addr` and `nr_cpus` in its `.bss`.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    offsets_addr: u64,
    nr_cpus: u32,
}

fn run() -> Result<()> {
    let config = pdutil::write_config("per-cpu", "policy = \"priority\"\n")?;
    let want = Found {
        offsets_addr: kallsyms_address("__per_cpu_offset")?,
        nr_cpus: possible_cpus()?,
    };
    println!("/proc/kallsyms and the possible CPUs: {want:x?}");

    // 1. With every capability.
    let mut pd = Policyd::load(&["priority", "--config", &config])?;
    let (handler, tracer) = found_by_both()?;
    ensure!(
        handler == want && tracer == want,
        "the handler found {handler:x?} and the kill tracer {tracer:x?}, expected {want:x?}"
    );
    let warnings: Vec<String> = pd
        .log()
        .iter()
        .filter(|l| l.level == "WARN")
        .map(|l| l.raw.clone())
        .collect();
    ensure!(
        warnings.is_empty(),
        "policyd load warned:\n{}",
        warnings.join("\n")
    );
    pd.stop()?;
    println!("both objects found them; no warning");

    // 2. Kernel addresses hidden from policyd.
    let restrict = util::read_file("/proc/sys/kernel/kptr_restrict")?;
    util::write_file("/proc/sys/kernel/kptr_restrict", "1")?;
    let hidden = Policyd::load_without_caps(&["priority", "--config", &config], &[CAP_SYSLOG]);
    util::write_file("/proc/sys/kernel/kptr_restrict", restrict.trim())?;
    let mut pd = hidden?;
    let zero = Found {
        offsets_addr: 0,
        nr_cpus: 0,
    };
    let (handler, tracer) = found_by_both()?;
    ensure!(
        handler == zero && tracer == zero,
        "without CAP_SYSLOG the handler found {handler:x?} and the kill tracer {tracer:x?}"
    );
    let log = pd.log().to_vec();
    let warned = |what: &str| -> Vec<String> {
        log.iter()
            .filter(|l| l.is("WARN", "kptr_restrict") && l.message.contains(what))
            .map(|l| l.message.clone())
            .collect()
    };
    let (handler_warned, tracer_warned) = (
        warned("the handler may rank tasks"),
        warned("kill reports may show"),
    );
    ensure!(
        handler_warned.len() == 1
            && tracer_warned.len() == 1
            && handler_warned[0].contains("CAP_SYSLOG"),
        "without CAP_SYSLOG, expected one warning for each object naming kptr_restrict and \
         CAP_SYSLOG; policyd logged:\n{}",
        pdutil::lines_text(&log)
    );
    println!("without CAP_SYSLOG: {}", handler_warned[0]);
    pd.stop()
}

/// The address /proc/kallsyms shows for `name` (read as root, with CAP_SYSLOG).
fn kallsyms_address(name: &str) -> Result<u64> {
    let syms = util::read_file("/proc/kallsyms")?;
    let addr = syms
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, sym) = (f.next()?, f.next()?, f.next()?);
            (sym == name).then_some(addr)
        })
        .with_context(|| format!("no {name} in /proc/kallsyms"))?;
    u64::from_str_radix(addr, 16).with_context(|| format!("{name}'s address {addr:?}"))
}

/// One more than the highest CPU of /sys/devices/system/cpu/possible ("0-1").
fn possible_cpus() -> Result<u32> {
    let list = util::read_file("/sys/devices/system/cpu/possible")?;
    let highest = list
        .trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.parse::<u32>().ok())
        .max()
        .with_context(|| format!("cannot parse the possible CPUs {list:?}"))?;
    Ok(highest + 1)
}

/// libbpf names an object's `.bss` map after the first 8 characters of the object's name:
/// "policyd.bss" for the handler, "policyd_.bss" for the tracer ("policyd_kills").
const HANDLER_BSS: &str = "policyd.bss";
const TRACER_BSS: &str = "policyd_.bss";

/// What the newest handler and kill tracer found.
fn found_by_both() -> Result<(Found, Found)> {
    let handler = bss_of(
        HANDLER_BSS,
        offset_of!(skel::types::bss, per_cpu_offset_addr),
        offset_of!(skel::types::bss, nr_cpus),
    )?;
    let tracer = bss_of(
        TRACER_BSS,
        offset_of!(kills_skel::types::bss, per_cpu_offset_addr),
        offset_of!(kills_skel::types::bss, nr_cpus),
    )?;
    Ok((handler, tracer))
}

/// The per-CPU globals in the `.bss` named `name` of the newest loaded object,
/// at the skeleton's offsets `addr_at` and `nr_at`.
fn bss_of(name: &str, addr_at: usize, nr_at: usize) -> Result<Found> {
    let bss: Vec<(u32, String)> = MapInfoIter::default()
        .map(|m| (m.id, m.name.to_string_lossy().into_owned()))
        .filter(|(_, n)| n.ends_with(".bss"))
        .collect();
    let id = bss
        .iter()
        .filter(|(_, n)| n == name)
        .map(|(id, _)| *id)
        .max()
        .with_context(|| format!("no BPF map named {name}; the .bss maps: {bss:?}"))?;
    let map = MapHandle::from_map_id(id).with_context(|| format!("opening BPF map {id}"))?;
    let value = map
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("reading BPF map {id}"))?
        .with_context(|| format!("BPF map {id} has no value"))?;
    let bytes = |at: usize, n: usize| {
        value
            .get(at..at + n)
            .with_context(|| format!("BPF map {id}'s value has {} bytes", value.len()))
    };
    Ok(Found {
        offsets_addr: u64::from_ne_bytes(bytes(addr_at, 8)?.try_into()?),
        nr_cpus: u32::from_ne_bytes(bytes(nr_at, 4)?.try_into()?),
    })
}
