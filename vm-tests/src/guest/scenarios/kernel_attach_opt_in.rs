//! BPF_F_CGROUP_FD is opt-in per struct_ops type: bpf_oom_ops takes it, a struct_ops of
//! another subsystem is refused with EOPNOTSUPP. Without the opt-in, a tcp_congestion_ops
//! or sched_ext link made with the flag would register system-wide and then be unregistered
//! by an unrelated rmdir. The other type here is binfmt_misc_ops (vm-tests/bpf/
//! other_ops.bpf.c): registering one does nothing until a binfmt_misc entry names it, and
//! it needs only BINFMT_MISC in the test kernel, where tcp_congestion_ops needs INET.
//! The same map attaches without the flag before and after, so the refusal is the flag's.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;
use nix::libc;

use crate::guest::kutil::{self, link_info, Action, Handler, BPF_F_CGROUP_FD};
use crate::guest::util::Cgroup;
use crate::guest::Scenario;

#[rustfmt::skip]
mod other_ops { include!(concat!(env!("OUT_DIR"), "/other_ops.skel.rs")); }
use other_ops::OtherOpsSkelBuilder;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-attach-opt-in", run).timeout_s(60)
}

fn run() -> Result<()> {
    let c = Cgroup::create("kernel-attach-opt-in")?;
    let c_id = c.id()?;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(c.dir())
        .with_context(|| format!("opening {}", c.dir().display()))?;

    // The opted-in type: bpf_oom_ops attaches to the cgroup.
    let h = Handler::load(Action::Defer, 0, 0)?;
    let l = h.attach(&c)?;
    ensure!(
        link_info(&l)?.cgroup_id == c_id,
        "the bpf_oom_ops link does not name {}",
        c.path()
    );
    drop(l);
    println!("bpf_oom_ops: attached to {} with BPF_F_CGROUP_FD", c.path());

    let storage = Box::leak(Box::new(std::mem::MaybeUninit::<OpenObject>::uninit()));
    let open = OtherOpsSkelBuilder::default()
        .open(storage)
        .context("opening the other_ops BPF object")?;
    let mut skel = open
        .load()
        .context("loading binfmt_misc_ops (other_ops.bpf.c; verifier log above)")?;

    // Without the flag it registers (libbpf stores the map's value here, as for any
    // struct_ops link), and a detach makes room for the next link of the same name.
    let link = skel
        .maps
        .other_ops
        .attach_struct_ops()
        .context("attaching binfmt_misc_ops without a cgroup")?;
    drop(link);
    println!("binfmt_misc_ops: attached and detached without a cgroup");

    let map_fd = skel.maps.other_ops.as_fd().as_raw_fd();
    match kutil::link_create(map_fd, dir.as_raw_fd(), BPF_F_CGROUP_FD) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            println!("binfmt_misc_ops with BPF_F_CGROUP_FD: EOPNOTSUPP, as expected")
        }
        Err(e) => bail!("binfmt_misc_ops with BPF_F_CGROUP_FD: {e}, expected EOPNOTSUPP"),
        Ok(fd) => {
            let info = link_info(&fd)?;
            bail!("binfmt_misc_ops attached with BPF_F_CGROUP_FD ({info:?}), expected EOPNOTSUPP")
        }
    }

    // The refusal left nothing registered: the map attaches again without the flag.
    let fd = kutil::link_create(map_fd, 0, 0)
        .context("attaching binfmt_misc_ops without a cgroup after the refusal")?;
    let info = link_info(&fd)?;
    ensure!(
        info.map_id != 0 && info.cgroup_id == 0,
        "binfmt_misc_ops link without a cgroup shows {info:?}"
    );
    println!("binfmt_misc_ops: attached again without a cgroup: {info:?}");
    Ok(())
}
