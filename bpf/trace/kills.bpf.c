// SPDX-License-Identifier: GPL-2.0
/*
 * policyd's OOM kill tracer: one event for every task the kernel marks as an
 * OOM victim, whoever chose it (the kernel's badness, a BPF OOM handler,
 * memory.oom.group), with the OOM it belongs to.
 *
 * It needs no BPF OOM patches.  The mark_victim tracepoint fires for every
 * victim on every kernel; out_of_memory(), which every OOM kill runs inside,
 * tells whose OOM it is (scope, constraint, the task that ran into it).  A
 * kernel without fentry support still gets the kills, without that context:
 * policyd then leaves oom_enter unloaded.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "kills.h"

char _license[] SEC("license") = "GPL";

/* Before 6.2 the mm's counters were plain atomics, not percpu_counters. */
struct mm_rss_stat___atomic {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

struct mm_struct___atomic {
	struct mm_rss_stat___atomic rss_stat;
} __attribute__((preserve_access_index));

/* Our series' oom_control names the BPF handler that is running. */
struct oom_control___bpf_oom {
	const char *bpf_handler;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} kills SEC(".maps");

/*
 * The OOM each task is inside, by thread id.  OOMs run under oom_lock, so
 * one entry is in use at a time; the few more cover an entry left behind by
 * an out_of_memory() that killed nothing (it is overwritten next time).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);		/* struct oom_control * */
} inside_oom SEC(".maps");

/* Events lost to a full ring buffer, read by policyd. */
__u64 dropped;

SEC("fentry/out_of_memory")
int BPF_PROG(oom_enter, struct oom_control *oc)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ptr = (__u64)oc;

	bpf_map_update_elem(&inside_oom, &tid, &ptr, BPF_ANY);
	return 0;
}

static __u64 cgroup_id_of(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

/* What get_mm_counter() reads: the counter's shared count, in pages. */
static __always_inline __u64 mm_counter(struct mm_struct *mm, int member)
{
	long pages;

	if (bpf_core_type_exists(struct mm_rss_stat___atomic))
		pages = BPF_CORE_READ((struct mm_struct___atomic *)mm,
				      rss_stat.count[member].counter);
	else
		pages = BPF_CORE_READ(mm, rss_stat[member].count);
	return pages > 0 ? (__u64)pages * 4096 : 0;
}

static void fill_context(struct kills_event *ev, struct task_struct *victim)
{
	struct task_struct *current = bpf_get_current_task_btf();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct oom_control___bpf_oom *bpf_oc;
	struct task_struct *chosen;
	struct oom_control *oc;
	struct mem_cgroup *memcg;
	const char *handler;
	__u64 *ptr;

	ptr = bpf_map_lookup_elem(&inside_oom, &tid);
	if (!ptr)
		return;
	oc = (struct oom_control *)*ptr;
	ev->has_context = 1;
	memcg = BPF_CORE_READ(oc, memcg);
	ev->scope_cgroup_id = memcg ? BPF_CORE_READ(memcg, css.cgroup, kn, id) : 0;
	ev->constraint = BPF_CORE_READ(oc, constraint);
	ev->gfp_mask = BPF_CORE_READ(oc, gfp_mask);
	ev->order = BPF_CORE_READ(oc, order);
	ev->trigger_pid = current->pid;
	ev->trigger_tgid = current->tgid;
	ev->trigger_cgroup_id = cgroup_id_of(current);
	bpf_probe_read_kernel_str(ev->trigger_comm, sizeof(ev->trigger_comm),
				  current->comm);

	chosen = BPF_CORE_READ(oc, chosen);
	if (chosen == victim)
		ev->kind = KILLS_KIND_CHOSEN;
	else if (!chosen && victim == current)
		ev->kind = KILLS_KIND_EXITING;
	else
		ev->kind = KILLS_KIND_WITH_CHOSEN;

	bpf_oc = (void *)oc;
	if (bpf_core_field_exists(bpf_oc->bpf_handler)) {
		handler = BPF_CORE_READ(bpf_oc, bpf_handler);
		if (handler)
			bpf_probe_read_kernel_str(ev->handler, sizeof(ev->handler),
						  handler);
	}
}

SEC("tp_btf/mark_victim")
int BPF_PROG(victim_marked, struct task_struct *task)
{
	struct kills_event *ev;
	struct mm_struct *mm;

	ev = bpf_ringbuf_reserve(&kills, sizeof(*ev), 0);
	if (!ev) {
		__sync_fetch_and_add(&dropped, 1);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->timestamp_ns = bpf_ktime_get_ns();
	ev->victim_pid = task->pid;
	ev->victim_tgid = task->tgid;
	ev->victim_cgroup_id = cgroup_id_of(task);
	ev->oom_score_adj = BPF_CORE_READ(task, signal, oom_score_adj);
	bpf_probe_read_kernel_str(ev->victim_comm, sizeof(ev->victim_comm),
				  task->comm);
	mm = task->mm;
	if (mm) {
		ev->anon_rss = mm_counter(mm, MM_ANONPAGES);
		ev->file_rss = mm_counter(mm, MM_FILEPAGES);
		ev->shmem_rss = mm_counter(mm, MM_SHMEMPAGES);
		ev->swap = mm_counter(mm, MM_SWAPENTS);
		ev->pgtables = BPF_CORE_READ(mm, pgtables_bytes.counter);
		ev->total_vm = BPF_CORE_READ(mm, total_vm) * 4096;
	}
	fill_context(ev, task);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* The shared types, anchored in the BTF for the skeleton's generated Rust. */
struct kills_abi {
	struct kills_event event;
	enum kills_limits limits;
	enum kills_kind kind;
	enum kills_constraint constraint;
};

const volatile struct kills_abi kills_abi;
