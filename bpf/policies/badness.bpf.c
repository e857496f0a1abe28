// SPDX-License-Identifier: GPL-2.0
/*
 * badness: the kernel's own oom_badness() choice, made in BPF.  A baseline
 * for the other policies and a proof that a handler can reproduce the
 * kernel's decision: rules are ignored.
 */
#include "common.bpf.h"

#define LONG_MIN (-9223372036854775807L - 1)
#define LONG_MAX 9223372036854775807L

/* oom_badness(): RSS, swap and page tables, shifted by oom_score_adj. */
static __always_inline long task_badness(struct task_struct *task, unsigned long totalpages)
{
	struct mm_struct *mm = task->mm;
	long points, adj;

	if (task->signal->oom_flag_origin)
		return LONG_MAX;
	adj = task->signal->oom_score_adj;
	if (adj == OOM_SCORE_ADJ_MIN ||
	    (task->vfork_done && task->real_parent->mm == mm))
		return LONG_MIN;

	points = task_rss_pages(task) + BPF_CORE_READ(mm, rss_stat[MM_SWAPENTS].count) +
		 (unsigned long)BPF_CORE_READ(mm, pgtables_bytes.counter) / PAGE_SIZE;
	return points + adj * (long)(totalpages / 1000);
}

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(badness_handle_oom, struct oom_control *oc,
	     struct bpf_struct_ops_link *st_link)
{
	unsigned long totalpages = oc->totalpages;
	long best_points = LONG_MIN, points;
	struct task_struct *task;
	struct cgroup *scope;
	__s32 best_pid = 0;
	bool awaited = false;
	int err;

	begin_event(oc, POLICYD_POLICY_BADNESS);

	scope = scope_cgroup(oc);
	if (!scope)
		return finish_event();

	/* The kernel's scan: every process in scope, the last of equals wins. */
	bpf_rcu_read_lock();
	bpf_for_each(task, task, NULL, BPF_TASK_ITER_ALL_PROCS) {
		if (task->tgid == 1 || (task->flags & PF_KTHREAD))
			continue;
		if (oc->memcg && !bpf_task_under_cgroup(task, scope))
			continue;
		/*
		 * As select_bad_process(): an exiting victim means wait.  Before
		 * the mm check: a victim tearing down its memory has no mm left.
		 */
		if (bpf_task_is_oom_victim(task)) {
			if (!bpf_oom_await_victim(oc, task)) {
				awaited = true;
				best_pid = task->tgid;
				break;
			}
			continue;
		}
		if (!task->mm)
			continue;
		event.candidates++;
		points = task_badness(task, totalpages);
		if (points == LONG_MIN || points < best_points)
			continue;
		best_points = points;
		best_pid = task->tgid;
	}
	bpf_rcu_read_unlock();
	bpf_cgroup_release(scope);

	if (!best_pid) {
		event.reason = POLICYD_REASON_NO_CANDIDATE;
		return finish_event();
	}

	if (awaited) {
		/* Handled even if the victim is gone by the time we look it up. */
		event.outcome = POLICYD_OUTCOME_AWAITED;
		event.reason = POLICYD_REASON_VICTIM_EXITING;
		event.victim_pid = best_pid;
	}
	task = bpf_task_from_pid(best_pid);
	if (!task)
		return finish_event();
	record_victim(task);
	event.victim_cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	event.victim_usage = cgroup_usage(task->cgroups->dfl_cgrp);
	event.reason = awaited ? POLICYD_REASON_VICTIM_EXITING : POLICYD_REASON_BADNESS;

	if (awaited) {
		event.outcome = POLICYD_OUTCOME_AWAITED;
	} else if (dry_run) {
		event.outcome = POLICYD_OUTCOME_DRY_RUN;
	} else {
		err = bpf_oom_kill_process(oc, task, "policyd: oom_badness");
		if (!err) {
			event.tasks_killed = 1;
			event.outcome = POLICYD_OUTCOME_KILLED;
		} else {
			event.kill_err = err;
			event.outcome = POLICYD_OUTCOME_KILL_FAILED;
		}
	}
	bpf_task_release(task);

	return finish_event();
}

SEC(".struct_ops.link")
struct bpf_oom_ops badness_ops = {
	.handle_out_of_memory = (void *)badness_handle_oom,
	.name = "policyd_badness",
};
