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
 * policyd then leaves oom_enter unloaded.  `charging` keeps each memcg's
 * recent growth, so that policyd can name who grew most before a kill.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "kills.h"
#include "../per_cpu.bpf.h"

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

/*
 * Who grew just before an OOM: each memcg's usage, sampled on the charge
 * path's slow path.  A charge takes pages from a per-CPU stock and refills it
 * in batches of MEMCG_CHARGE_BATCH (64) pages through
 * page_counter_try_charge(), a non-inlined function every kernel with memcg
 * has; so this runs about once per 64 pages charged, never on the stock's
 * fast path (a hook on every page fault or every charge would cost many
 * times more).  It needs no timer: samples are taken by the charging tasks,
 * and policyd reads the map only when a kill arrives.  Samples race between
 * CPUs charging the same memcg; a torn sample is off by a batch.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KILLS_GROWTH_CGROUPS);
	__type(key, __u64);		/* cgroup id */
	__type(value, struct kills_growth);
} growth SEC(".maps");

/* Cgroups that got an entry in `growth`: with its size, what it evicted. */
__u64 growth_inserts;

/*
 * The report adds up the mm counters' per-CPU shares as the kernel's own
 * "Killed process" line does (get_mm_counter_sum()), once find_per_cpu()
 * has said where they are.
 */

/* The per-CPU shares of a percpu_counter whose `counters` are at @counters. */
static __always_inline __s64 per_cpu_shares(__u64 counters)
{
	__u64 offset;
	__s64 sum = 0;
	__s32 share;
	__u32 cpu;

	if (!per_cpu_offset_addr)
		return 0;
	bpf_for(cpu, 0, MAX_CPUS) {
		if (cpu >= nr_cpus)
			break;
		if (bpf_probe_read_kernel(&offset, sizeof(offset),
					  (void *)(per_cpu_offset_addr + cpu * sizeof(__u64))))
			break;
		if (bpf_probe_read_kernel(&share, sizeof(share), (void *)(counters + offset)))
			break;
		sum += share;
	}
	return sum;
}

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

/*
 * What get_mm_counter_sum() reads (the count and every CPU's share; before
 * 6.2, one atomic), in bytes.  A macro, so that the index is a constant in
 * the CO-RE access: an index computed at run time would be scaled by this
 * file's sizeof(struct percpu_counter), not the running kernel's (lockdep
 * makes it larger).
 */
#define MM_COUNTER(mm, member)							\
	({									\
		__s64 __pages;							\
		if (bpf_core_type_exists(struct mm_rss_stat___atomic))		\
			__pages = BPF_CORE_READ((struct mm_struct___atomic *)(mm), \
						rss_stat.count[member].counter); \
		else								\
			__pages = BPF_CORE_READ(mm, rss_stat[member].count) +	\
				  per_cpu_shares((__u64)BPF_CORE_READ(mm,	\
						rss_stat[member].counters));	\
		__pages > 0 ? (__u64)__pages * 4096 : 0;			\
	})

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
		ev->anon_rss = MM_COUNTER(mm, MM_ANONPAGES);
		ev->file_rss = MM_COUNTER(mm, MM_FILEPAGES);
		ev->shmem_rss = MM_COUNTER(mm, MM_SHMEMPAGES);
		ev->swap = MM_COUNTER(mm, MM_SWAPENTS);
		ev->pgtables = BPF_CORE_READ(mm, pgtables_bytes.counter);
		ev->total_vm = BPF_CORE_READ(mm, total_vm) * 4096;
	}
	fill_context(ev, task);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* The mem_cgroup whose `memory` counter @counter is, or NULL: not one. */
static struct mem_cgroup *memcg_of_memory_counter(struct page_counter *counter)
{
	struct mem_cgroup *memcg;
	struct cgroup *cgrp;
	void *css = NULL;
	int id;

	/*
	 * The same function charges memsw, swap, hugetlb and dmem counters:
	 * only a memory counter's container_of() is a memcg whose cgroup's
	 * memory css is that memcg.
	 */
	memcg = (void *)((unsigned long)counter -
			 bpf_core_field_offset(struct mem_cgroup, memory));
	cgrp = BPF_CORE_READ(memcg, css.cgroup);
	if (!cgrp)
		return NULL;
	id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	bpf_probe_read_kernel(&css, sizeof(css),
			      (void *)((unsigned long)cgrp +
				       bpf_core_field_offset(struct cgroup, subsys) +
				       id * sizeof(void *)));
	if (css != (void *)((unsigned long)memcg +
			    bpf_core_field_offset(struct mem_cgroup, css)))
		return NULL;
	return memcg;
}

SEC("fentry/page_counter_try_charge")
int BPF_PROG(charging, struct page_counter *counter)
{
	struct mem_cgroup *memcg = memcg_of_memory_counter(counter);
	struct kills_growth *g;
	__u64 id, now, pages;

	if (!memcg)
		return 0;
	id = BPF_CORE_READ(memcg, css.cgroup, kn, id);
	pages = BPF_CORE_READ(counter, usage.counter);
	now = bpf_ktime_get_ns();
	g = bpf_map_lookup_elem(&growth, &id);
	if (!g) {
		struct kills_growth fresh = {
			.first_ns = now, .first_pages = pages,
			.mid_ns = now, .mid_pages = pages,
			.last_ns = now, .last_pages = pages,
		};

		if (!bpf_map_update_elem(&growth, &id, &fresh, BPF_NOEXIST))
			__sync_fetch_and_add(&growth_inserts, 1);
		return 0;
	}
	if (now - g->mid_ns >= KILLS_GROWTH_HALF_WINDOW_MS * 1000000ULL) {
		g->first_ns = g->mid_ns;
		g->first_pages = g->mid_pages;
		g->mid_ns = now;
		g->mid_pages = pages;
	}
	g->last_ns = now;
	g->last_pages = pages;
	return 0;
}

/* The shared types, anchored in the BTF for the skeleton's generated Rust. */
struct kills_abi {
	struct kills_event event;
	struct kills_growth growth;
	enum kills_limits limits;
	enum kills_kind kind;
	enum kills_constraint constraint;
};

const volatile struct kills_abi kills_abi;
