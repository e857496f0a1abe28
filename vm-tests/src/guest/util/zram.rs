//! Swap on zram, for the scenarios that need memory to thrash rather than run out: pages
//! swapped out are compressed in RAM, so a growing job slows down (PSI memory stall) long
//! before the kernel declares an OOM. The test kernel has CONFIG_ZRAM with lzo-rle.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, Context, Result};
use nix::libc;

use super::{read_file, write_file};

const SYSFS: &str = "/sys/block/zram0";
const DEV: &str = "/dev/zram0";
const PAGE: usize = 4096;

/// /dev/zram0 as swap, as long as this lives: swapoff and reset on drop.
pub struct ZramSwap {
    mib: u64,
}

impl ZramSwap {
    /// A `mib` MiB zram device, formatted as swap (what mkswap writes) and swapped on.
    pub fn on(mib: u64) -> Result<ZramSwap> {
        if !std::path::Path::new(SYSFS).exists() {
            bail!("{SYSFS} does not exist: the kernel has no CONFIG_ZRAM (vm-tests/kernel.config)");
        }
        write_file(format!("{SYSFS}/disksize"), format!("{mib}M"))
            .context("sizing zram0 (is it in use already?)")?;
        let swap = ZramSwap { mib };
        let pages = u32::try_from((mib << 20) / PAGE as u64).context("zram size")?;
        // struct swap_header (include/linux/swap.h), version 1, no bad pages.
        let mut header = vec![0u8; PAGE];
        header[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
        header[1028..1032].copy_from_slice(&(pages - 1).to_ne_bytes());
        header[PAGE - 10..].copy_from_slice(b"SWAPSPACE2");
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open(DEV)
            .and_then(|mut f| f.write_all(&header))
            .with_context(|| format!("writing a swap header to {DEV}"))?;
        let dev = std::ffi::CString::new(DEV).expect("no NUL");
        // SAFETY: a valid NUL-terminated path; no flags.
        if unsafe { libc::swapon(dev.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("swapon {DEV}"));
        }
        Ok(swap)
    }

    pub fn mib(&self) -> u64 {
        self.mib
    }

    /// Pages swapped out since boot, to any swap (/proc/vmstat pswpout): a count that
    /// stays when the pages' owner dies.
    pub fn pages_out() -> Result<u64> {
        let vmstat = read_file("/proc/vmstat")?;
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix("pswpout "))
            .and_then(|n| n.trim().parse().ok())
            .context("no pswpout in /proc/vmstat")
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let dev = std::ffi::CString::new(DEV).expect("no NUL");
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc::swapoff(dev.as_ptr()) } != 0 {
            eprintln!("swapoff {DEV}: {}", std::io::Error::last_os_error());
        }
        if let Err(e) = write_file(format!("{SYSFS}/reset"), "1") {
            eprintln!("resetting zram0: {e:#}");
        }
    }
}
