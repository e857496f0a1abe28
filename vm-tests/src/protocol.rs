//! The lines the guest prints on the serial console for the host to find. The /init
//! script (host/initramfs.rs) prints the markers; guest code prints story and JSON lines.

/// Kernel command line argument naming the scenario to run: `vmtest=<name>`.
pub const NAME_ARG: &str = "vmtest=";
/// Kernel command line argument asking scenarios for a shortened run (`bench --quick`).
pub const QUICK_ARG: &str = "vmtest_quick=1";
/// Only these sizes of bench-decision ("10000x10000,10000x50000"), from VMTEST_DECISION_ONLY.
pub const DECISION_ONLY_ARG: &str = "vmtest_decision_only=";
/// The scenario that only boots: used to probe KVM and to measure boot time.
pub const PROBE: &str = "probe";

pub const START: &str = "VMTEST-START ";
/// Seconds from the kernel's start to the scenario's start (the Debian guest prints it).
pub const BOOT: &str = "VMTEST-BOOT ";
pub const EXIT: &str = "VMTEST-EXIT ";
pub const DMESG_BEGIN: &str = "VMTEST-DMESG-BEGIN";
pub const DMESG_END: &str = "VMTEST-DMESG-END";
/// Prefix of a demo story line (see guest::util::story).
pub const STORY: &str = "VMTEST-STORY ";
/// Prefix of a benchmark result line (see guest::util::emit_json).
pub const JSON: &str = "VMTEST-JSON ";
/// Prefix of the line carrying a failed scenario's error message.
pub const ERROR: &str = "VMTEST-ERROR ";
