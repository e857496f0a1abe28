/* SPDX-License-Identifier: GPL-2.0 */
/* Shared between oom_test.bpf.c and the Rust scenarios that drive it. */
#ifndef __OOM_TEST_H
#define __OOM_TEST_H

enum oom_test_action {
	OOM_TEST_DEFER = 0,		/* do nothing */
	OOM_TEST_CLAIM_ONLY = 1,	/* do nothing, return `claim` */
	OOM_TEST_KILL_TARGET = 2,	/* kill target_pid */
	OOM_TEST_AWAIT_OR_KILL = 3,	/* await an exiting victim, else kill target_pid */
	OOM_TEST_SPIN_THEN_KILL = 4,	/* busy-wait for release_spin, then kill target_pid */
	OOM_TEST_STORE_THEN_KILL = 5,	/* create task storage on target_pid, then kill it */
};

struct oom_test_stats {
	__u64 calls;
	__u64 kills;
	__u64 awaits;
	__u64 victims_seen;
	__u64 last_oom_memcg;	/* cgroup id of oc->memcg, 0 for a global OOM */
	__u64 last_link_cgroup;	/* cgroup id of st_link->cgroup, 0 if system-wide */
	__u64 last_ns;
	__s32 last_kill_err;
	__s32 last_await_err;
	__s32 last_victim;
	__u8 freed_before;	/* oc->bpf_memory_freed on entry */
	__u8 freed_after;	/* oc->bpf_memory_freed on return */
	__u64 spins;		/* SPIN_THEN_KILL calls that started waiting */
	__u64 spins_released;	/* ... that saw release_spin (else: spin_timeout_ns) */
	__u64 spin_end_ns;	/* bpf_ktime_get_ns() when the last one went on to kill */
	__u64 stored;		/* STORE_THEN_KILL: task storage created */
	__u64 store_failed;	/* STORE_THEN_KILL: bpf_task_storage_get() gave NULL */
};

struct oom_test_declare {
	__u64 cgroup_id;	/* 0: a system-wide OOM */
	__u64 flags;
	__s32 times;		/* 1 or 2 back-to-back OOMs */
	__s32 ret[2];
};

#endif /* __OOM_TEST_H */
