/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every policyd policy shares: the maps policyd fills and reads, rule
 * lookup, the ranking of cgroups, and killing inside a chosen cgroup.
 *
 * Handlers run one at a time (the kernel holds oom_lock around them), so the
 * scratch state below needs no locking.
 */
#ifndef __POLICYD_COMMON_BPF_H
#define __POLICYD_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "policyd.h"

#define EINVAL 22
#define ENOENT 2
#define OOM_SCORE_ADJ_MIN (-1000)
#define PF_KTHREAD 0x00200000
#define PAGE_SIZE 4096

/* Deepest cgroup nesting whose rule inheritance the handler resolves itself. */
#define MAX_CGROUP_DEPTH 32

char _license[] SEC("license") = "GPL";

/* Set by policyd before load: decide and report, but leave the kill to the kernel. */
const volatile bool dry_run;

struct policyd_stats stats;

/* The event being built; sent to user space when the handler is done. */
struct policyd_event event;

/* rules[0] is a cgroup id -> policyd_rule hash that policyd swaps as a whole. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, POLICYD_MAX_CGROUPS);
		__type(key, __u64);
		__type(value, struct policyd_rule);
	});
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/*
 * Until policyd installs its rules.  A global, not a static: that also puts
 * the complete struct policyd_rule into the object's BTF, which the rules
 * map's inner definition alone does not, and libbpf needs it to size the map.
 */
const struct policyd_rule builtin_defaults = {
	.priority = 100,
	.kill = POLICYD_KILL_TASK,
};

static __always_inline void *rules_map(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&rules, &zero);
}

/*
 * The resolved settings of @cgrp.  policyd writes an entry for every cgroup;
 * one created since then inherits from its nearest ancestor that has one.
 */
static __always_inline struct policyd_rule rule_of(void *rmap, struct cgroup *cgrp)
{
	struct policyd_rule *rule;
	__u64 key;
	int i;

	if (!rmap)
		return builtin_defaults;

	for (i = 0; i < MAX_CGROUP_DEPTH && cgrp; i++) {
		key = BPF_CORE_READ(cgrp, kn, id);
		rule = bpf_map_lookup_elem(rmap, &key);
		if (rule)
			return *rule;
		cgrp = BPF_CORE_READ(cgrp, self.parent, cgroup);
	}

	key = POLICYD_DEFAULTS_KEY;
	rule = bpf_map_lookup_elem(rmap, &key);
	return rule ? *rule : builtin_defaults;
}

/* Bytes charged to @cgrp's memcg; 0 without the memory controller there. */
static __always_inline __u64 cgroup_usage(struct cgroup *cgrp)
{
	struct cgroup_subsys_state *css;
	struct mem_cgroup *memcg;

	css = BPF_CORE_READ(cgrp, subsys[memory_cgrp_id]);
	if (!css)
		return 0;
	memcg = container_of(css, struct mem_cgroup, css);
	return BPF_CORE_READ(memcg, memory.usage.counter) * PAGE_SIZE;
}

/* Resident memory of @task's mm, in pages, as get_mm_rss() counts it. */
static __always_inline __u64 task_rss_pages(struct task_struct *task)
{
	struct mm_struct *mm = task->mm;
	__s64 pages;

	if (!mm)
		return 0;
	pages = BPF_CORE_READ(mm, rss_stat[MM_FILEPAGES].count) +
		BPF_CORE_READ(mm, rss_stat[MM_ANONPAGES].count) +
		BPF_CORE_READ(mm, rss_stat[MM_SHMEMPAGES].count);
	return pages > 0 ? pages : 0;
}

/* The same tasks the kernel refuses to kill, checked before asking it. */
static __always_inline bool task_killable(struct task_struct *task)
{
	if (task->tgid == 1 || (task->flags & PF_KTHREAD) || !task->mm)
		return false;
	return task->signal->oom_score_adj != OOM_SCORE_ADJ_MIN;
}

/* Is @a a better victim than @b?  Lower priority, then more memory, then older. */
static __always_inline bool priority_better(const struct policyd_candidate *a,
					    const struct policyd_candidate *b)
{
	if (a->priority != b->priority)
		return a->priority < b->priority;
	if (a->usage != b->usage)
		return a->usage > b->usage;
	return a->cgroup_id < b->cgroup_id;
}

static __always_inline bool usage_better(const struct policyd_candidate *a,
					 const struct policyd_candidate *b)
{
	if (a->usage != b->usage)
		return a->usage > b->usage;
	return a->cgroup_id < b->cgroup_id;
}

/* Keep event.ranked sorted, best first, holding the best few candidates. */
static __noinline void rank_candidate(struct policyd_candidate *cand, bool by_usage)
{
	struct policyd_candidate tmp;
	int i;

	event.candidates++;
	for (i = 0; i < POLICYD_EVENT_CANDIDATES; i++) {
		struct policyd_candidate *slot = &event.ranked[i];
		bool better;

		if (!slot->cgroup_id) {
			*slot = *cand;
			return;
		}
		better = by_usage ? usage_better(cand, slot) : priority_better(cand, slot);
		if (better) {
			tmp = *slot;
			*slot = *cand;
			*cand = tmp;
		}
	}
}

/*
 * Rank the cgroups of @scope that hold processes themselves, leaving out the
 * root cgroup and protected ones, into event.ranked.
 */
static __noinline __attribute__((unused)) void rank_cgroups(struct cgroup *scope, bool by_usage)
{
	struct cgroup_subsys_state *pos;
	struct policyd_candidate cand;
	struct policyd_rule rule;
	void *rmap = rules_map();

	bpf_rcu_read_lock();
	bpf_for_each(css, pos, &scope->self, BPF_CGROUP_ITER_DESCENDANTS_PRE) {
		struct cgroup *cgrp = pos->cgroup;

		if (!cgrp || !cgrp->level || !pos->nr_populated_csets)
			continue;
		rule = rule_of(rmap, cgrp);
		if (rule.protect)
			continue;
		cand.cgroup_id = cgrp->kn->id;
		cand.usage = cgroup_usage(cgrp);
		cand.priority = rule.priority;
		cand.pad = 0;
		rank_candidate(&cand, by_usage);
	}
	bpf_rcu_read_unlock();
}

/* The cgroup whose subtree this OOM may kill in: the OOMing memcg's, or all. */
static __always_inline struct cgroup *scope_cgroup(struct oom_control *oc)
{
	struct mem_cgroup *memcg = oc->memcg;

	if (!memcg)
		return bpf_cgroup_from_id(1);
	return bpf_cgroup_from_id(memcg->css.cgroup->kn->id);
}

static __always_inline void record_victim(struct task_struct *task)
{
	event.victim_pid = task->tgid;
	event.victim_task_rss = task_rss_pages(task) * PAGE_SIZE;
	bpf_probe_read_kernel_str(event.victim_comm, sizeof(event.victim_comm), task->comm);
}

/*
 * An earlier OOM victim anywhere in the OOM's scope that is still releasing
 * its memory: wait for it, as the kernel's select_bad_process() does, rather
 * than kill a second task.  Looked for across the whole scope before any
 * ranking: the victim's cgroup need not rank first any more (under `largest`
 * it shrinks as the memory comes back), and kill_in_cgroup() only looks in
 * the cgroup it is about to kill in.  Walks every process, as badness does.
 *
 * Return: true if the OOM is resolved by waiting; the event says for whom.
 */
static __noinline __attribute__((unused)) bool await_victim_in_scope(struct oom_control *oc,
								      struct cgroup *scope)
{
	struct task_struct *task;
	__s32 pid = 0;

	bpf_rcu_read_lock();
	bpf_for_each(task, task, NULL, BPF_TASK_ITER_ALL_PROCS) {
		if (!bpf_task_is_oom_victim(task))
			continue;
		if (oc->memcg && !bpf_task_under_cgroup(task, scope))
			continue;
		if (!bpf_oom_await_victim(oc, task)) {
			pid = task->tgid;
			break;
		}
	}
	bpf_rcu_read_unlock();
	if (!pid)
		return false;

	/* Handled from here on, even if the victim is gone by now. */
	event.outcome = POLICYD_OUTCOME_AWAITED;
	event.reason = POLICYD_REASON_VICTIM_EXITING;
	event.victim_pid = pid;
	task = bpf_task_from_pid(pid);
	if (task) {
		record_victim(task);
		event.victim_cgroup_id = task->cgroups->dfl_cgrp->kn->id;
		event.victim_usage = cgroup_usage(task->cgroups->dfl_cgrp);
		bpf_task_release(task);
	}
	return true;
}

/*
 * What a scan of one cgroup's tasks found.  Kept in a global rather than on
 * the stack: the verifier then sees no loop-carried values and the task loops
 * converge at once, whatever the number of tasks.
 */
struct {
	__u64 best_rss;
	__s32 best_pid;
	__u32 killed;
} scan;

/* Find the largest killable task of @cgrp, or an earlier victim still exiting. */
static __noinline void scan_tasks(struct oom_control *oc, struct cgroup *cgrp)
{
	struct bpf_iter_css_task it;
	struct task_struct *task;
	__u64 rss;

	scan.best_rss = 0;
	scan.best_pid = 0;

	/* WITH_DEAD: a victim tearing down its memory is exiting, not gone. */
	bpf_iter_css_task_new(&it, &cgrp->self, CSS_TASK_ITER_PROCS | CSS_TASK_ITER_WITH_DEAD);
	while ((task = bpf_iter_css_task_next(&it))) {
		if (bpf_task_is_oom_victim(task) && !bpf_oom_await_victim(oc, task)) {
			event.outcome = POLICYD_OUTCOME_AWAITED;
			event.reason = POLICYD_REASON_VICTIM_EXITING;
			record_victim(task);
			break;
		}
		if (!task_killable(task))
			continue;
		rss = task_rss_pages(task);
		if (scan.best_pid && (rss < scan.best_rss ||
				      (rss == scan.best_rss && task->tgid > scan.best_pid)))
			continue;
		scan.best_rss = rss;
		scan.best_pid = task->tgid;
	}
	bpf_iter_css_task_destroy(&it);
}

static __always_inline void kill_task(struct oom_control *oc, struct task_struct *task)
{
	int err = bpf_oom_kill_process(oc, task, "policyd");

	if (!err)
		scan.killed++;
	else
		event.kill_err = err;
}

/* Every killable task of @cgrp but the one already killed. */
static __noinline void kill_rest(struct oom_control *oc, struct cgroup *cgrp)
{
	struct bpf_iter_css_task it;
	struct task_struct *task;

	bpf_iter_css_task_new(&it, &cgrp->self, CSS_TASK_ITER_PROCS);
	while ((task = bpf_iter_css_task_next(&it))) {
		if (task->tgid == scan.best_pid || !task_killable(task) ||
		    bpf_task_is_oom_victim(task))
			continue;
		kill_task(oc, task);
	}
	bpf_iter_css_task_destroy(&it);
}

/*
 * Kill inside the cgroup @cgid as its rule says: its largest task, or all of
 * them, largest first so that the OOM report shows it.  An earlier OOM victim
 * still exiting there means memory is on its way: wait for it instead.
 *
 * Return: the number of tasks killed.  Sets event.outcome when it awaited,
 * event.victim_* for the (largest) victim, and event.kill_err on failures.
 */
static __noinline int kill_in_cgroup(struct oom_control *oc, __u64 cgid, __u8 kill)
{
	struct task_struct *task;
	struct cgroup *cgrp;

	scan.killed = 0;
	cgrp = bpf_cgroup_from_id(cgid);
	if (!cgrp) {
		event.kill_err = -ENOENT;
		return 0;
	}

	scan_tasks(oc, cgrp);
	if (event.outcome == POLICYD_OUTCOME_AWAITED)
		goto out;
	if (!scan.best_pid) {
		event.kill_err = -ENOENT;
		goto out;
	}

	task = bpf_task_from_pid(scan.best_pid);
	if (!task) {
		event.kill_err = -ENOENT;
		goto out;
	}
	record_victim(task);
	if (!dry_run)
		kill_task(oc, task);
	bpf_task_release(task);

	if (kill == POLICYD_KILL_CGROUP && !dry_run)
		kill_rest(oc, cgrp);
out:
	bpf_cgroup_release(cgrp);
	return scan.killed;
}

static __always_inline void begin_event(struct oom_control *oc, enum policyd_policy policy)
{
	struct mem_cgroup *memcg = oc->memcg;

	__builtin_memset(&event, 0, sizeof(event));
	event.timestamp_ns = bpf_ktime_get_ns();
	event.policy = policy;
	event.scope_global = !memcg;
	event.oom_cgroup_id = memcg ? memcg->css.cgroup->kn->id : 0;
	event.outcome = POLICYD_OUTCOME_DEFERRED;
	stats.ooms++;
}

/* Account and publish the event; the handler's return value follows from it. */
static __always_inline int finish_event(void)
{
	__u64 ns = bpf_ktime_get_ns() - event.timestamp_ns;

	event.handler_ns = ns;
	stats.handler_ns_total += ns;
	if (ns > stats.handler_ns_max)
		stats.handler_ns_max = ns;

	switch (event.outcome) {
	case POLICYD_OUTCOME_KILLED:
		stats.kills += event.tasks_killed;
		break;
	case POLICYD_OUTCOME_AWAITED:
		stats.awaited++;
		break;
	case POLICYD_OUTCOME_DRY_RUN:
		stats.dry_runs++;
		break;
	case POLICYD_OUTCOME_KILL_FAILED:
		stats.kill_failures++;
		stats.deferred++;
		break;
	default:
		stats.deferred++;
		break;
	}

	if (bpf_ringbuf_output(&events, &event, sizeof(event), 0))
		stats.events_dropped++;

	return event.outcome == POLICYD_OUTCOME_KILLED ||
	       event.outcome == POLICYD_OUTCOME_AWAITED;
}

/*
 * Shared by the cgroup-ranking policies: try the ranked candidates in order
 * until a kill succeeds or an exiting victim is found.
 */
static __noinline __attribute__((unused)) int kill_ranked(struct oom_control *oc, enum policyd_reason reason)
{
	void *rmap = rules_map();
	struct policyd_rule rule;
	struct cgroup *cgrp;
	int i, killed;

	if (!event.ranked[0].cgroup_id) {
		event.reason = POLICYD_REASON_NO_CANDIDATE;
		return 0;
	}

	for (i = 0; i < POLICYD_EVENT_CANDIDATES; i++) {
		struct policyd_candidate *cand = &event.ranked[i];

		if (!cand->cgroup_id)
			break;
		cgrp = bpf_cgroup_from_id(cand->cgroup_id);
		if (!cgrp)
			continue;
		rule = rule_of(rmap, cgrp);
		bpf_cgroup_release(cgrp);

		event.victim_cgroup_id = cand->cgroup_id;
		event.victim_priority = cand->priority;
		event.victim_usage = cand->usage;
		event.reason = reason;
		if (reason == POLICYD_REASON_LOWEST_PRIORITY && i + 1 < POLICYD_EVENT_CANDIDATES &&
		    event.ranked[i + 1].cgroup_id &&
		    event.ranked[i + 1].priority == cand->priority)
			event.reason = POLICYD_REASON_LARGER_USAGE;

		killed = kill_in_cgroup(oc, cand->cgroup_id, rule.kill);
		if (event.outcome == POLICYD_OUTCOME_AWAITED)
			return 0;
		if (dry_run && event.victim_pid) {
			event.outcome = POLICYD_OUTCOME_DRY_RUN;
			return 0;
		}
		if (killed) {
			event.tasks_killed = killed;
			event.outcome = POLICYD_OUTCOME_KILLED;
			return killed;
		}
	}

	event.outcome = POLICYD_OUTCOME_KILL_FAILED;
	return 0;
}

#endif /* __POLICYD_COMMON_BPF_H */
