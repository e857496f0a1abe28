/* SPDX-License-Identifier: GPL-2.0 */
/* Shared between bench.bpf.c and the bench-* scenarios that drive it. */
#ifndef __BENCH_H
#define __BENCH_H

/* The context of the `timed_oom` syscall program, in and out. */
struct bench_oom_args {
	__u64 cgroup_id;	/* in: the OOMing memcg's cgroup; 0: system-wide */
	__u64 flags;		/* in: BPF_OOM_FLAGS_* */
	__u64 start_ns;		/* out: bpf_ktime_get_ns() before the call */
	__u64 ns;		/* out: time spent in bpf_out_of_memory() */
	__u64 marked_ns;	/* out: from the call to the first victim marked; 0: none */
	__s32 ret;		/* out: what bpf_out_of_memory() returned */
	__s32 err;		/* out: 0, or -ENOENT for an unknown cgroup id */
};

#endif /* __BENCH_H */
