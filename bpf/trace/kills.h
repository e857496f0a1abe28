/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What policyd's OOM kill tracer (kills.bpf.c) and policyd share.  As with
 * policyd.h, the Rust side is generated from the object's BTF: plain structs,
 * enumerators rather than #defines, every enum anchored in kills_abi.
 *
 * The tracer loads on any kernel with BTF: it uses no BPF OOM struct_ops,
 * only a tracepoint every kernel has and an fentry program on
 * out_of_memory() that may be missing (no CONFIG_FUNCTION_TRACER); without it
 * kills are still reported, without their OOM's context.
 */
#ifndef __KILLS_H
#define __KILLS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum kills_limits {
	KILLS_COMM_LEN = 16,
	/* Room for a BPF OOM handler's name (struct bpf_oom_ops.name). */
	KILLS_HANDLER_LEN = 64,
	/*
	 * Cgroups whose memory growth the tracer follows at once (`growth`,
	 * an LRU: the one that charged least recently makes room).
	 */
	KILLS_GROWTH_CGROUPS = 4096,
	/*
	 * A cgroup's growth is measured from a sample 1 to 2 half windows
	 * old; policyd ranks growth over the last two (5 s) before the OOM.
	 */
	KILLS_GROWTH_HALF_WINDOW_MS = 2500,
};

/* Why this task was marked as an OOM victim. */
enum kills_kind {
	/* The victim chosen by the kernel's badness or by a BPF handler. */
	KILLS_KIND_CHOSEN = 0,
	/* Killed with the chosen victim: memory.oom.group, or sharing its mm. */
	KILLS_KIND_WITH_CHOSEN = 1,
	/* The OOMing task was exiting already: given reserves, not killed. */
	KILLS_KIND_EXITING = 2,
};

/* The kernel's enum oom_constraint, as the OOM saw it. */
enum kills_constraint {
	KILLS_CONSTRAINT_NONE = 0,
	KILLS_CONSTRAINT_CPUSET = 1,
	KILLS_CONSTRAINT_MEMORY_POLICY = 2,
	KILLS_CONSTRAINT_MEMCG = 3,
};

/* One per task the kernel marks as an OOM victim, through `kills`. */
struct kills_event {
	__u64 timestamp_ns;		/* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 victim_cgroup_id;
	/* The victim's memory when it was marked, in bytes. */
	__u64 anon_rss;
	__u64 file_rss;
	__u64 shmem_rss;
	__u64 swap;
	__u64 pgtables;
	__u64 total_vm;
	/* The OOM; valid when has_context. */
	__u64 scope_cgroup_id;		/* the OOMing memcg's cgroup, 0: global */
	__u64 trigger_cgroup_id;	/* the task that ran into the OOM */
	__u32 gfp_mask;
	__s32 order;			/* -1: sysrq or a declared OOM */
	__u32 victim_pid;		/* thread id, as the kernel logs it */
	__u32 victim_tgid;
	__u32 trigger_pid;
	__u32 trigger_tgid;
	__s16 oom_score_adj;
	__u8 kind;			/* enum kills_kind */
	__u8 constraint;		/* enum kills_constraint */
	__u8 has_context;		/* out_of_memory() was seen entering */
	__u8 pad[3];
	char victim_comm[KILLS_COMM_LEN];
	char trigger_comm[KILLS_COMM_LEN];
	/* The BPF OOM handler that chose the victim; empty: the kernel. */
	char handler[KILLS_HANDLER_LEN];
};

/*
 * A cgroup's memory.current, sampled whenever its memcg charges a batch of
 * pages (the `growth` map, keyed by cgroup id), in pages.  `first` is 1 to 2
 * half windows older than `mid` once the cgroup has charged for that long;
 * `mid` becomes `first` when it is a half window old.
 */
struct kills_growth {
	__u64 first_ns;
	__u64 first_pages;
	__u64 mid_ns;
	__u64 mid_pages;
	__u64 last_ns;
	__u64 last_pages;
};

#endif /* __KILLS_H */
