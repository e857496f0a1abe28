// SPDX-License-Identifier: GPL-2.0
/*
 * A purpose-made BPF OOM handler for the kernel scenarios: its behaviour is
 * chosen by the test through `action`, and everything it sees and does is
 * counted so the test can assert on it.  Not a policy: see bpf/policies/.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "oom_test.h"

char _license[] SEC("license") = "GPL";

/* Set by the test before each OOM. */
enum oom_test_action action;
s32 target_pid;
int claim;	/* what the handler returns after acting */

/* SPIN_THEN_KILL waits until the test sets release_spin, or spin_timeout_ns passed. */
int release_spin;
u64 spin_timeout_ns;

/* Read by the test. */
struct oom_test_stats stats;

/*
 * STORE_THEN_KILL creates an element here during the OOM: an allocation
 * charged to the memcg of whoever created the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u64);
} victim_store SEC(".maps");

/* Resolve with an exiting victim of this scope, if there is one. */
static bool await_victim(struct oom_control *oc)
{
	struct bpf_iter_css_task it;
	struct task_struct *task;
	struct mem_cgroup *memcg = oc->memcg;
	bool awaited = false;

	if (!memcg)
		return false;

	/* WITH_DEAD: the victim is exiting, and must still be found. */
	bpf_iter_css_task_new(&it, &memcg->css, CSS_TASK_ITER_PROCS | CSS_TASK_ITER_WITH_DEAD);
	while ((task = bpf_iter_css_task_next(&it))) {
		if (!bpf_task_is_oom_victim(task))
			continue;
		stats.victims_seen++;
		stats.last_await_err = bpf_oom_await_victim(oc, task);
		if (!stats.last_await_err) {
			stats.awaits++;
			awaited = true;
			break;
		}
	}
	bpf_iter_css_task_destroy(&it);

	return awaited;
}

static void kill_target(struct oom_control *oc)
{
	struct task_struct *task;

	task = bpf_task_from_pid(target_pid);
	if (!task) {
		stats.last_kill_err = -3; /* -ESRCH: no such pid */
		return;
	}
	stats.last_kill_err = bpf_oom_kill_process(oc, task, "vm-tests handler");
	if (!stats.last_kill_err) {
		stats.kills++;
		stats.last_victim = target_pid;
	}
	bpf_task_release(task);
}

/*
 * Keeps the handler running (it holds oom_lock and sits in the OOM path) until
 * the test says so, for tests of what happens meanwhile.
 */
static void spin(void)
{
	u64 start = bpf_ktime_get_ns();
	bool done = false;
	int i, j;

	stats.spins++;
	/* Nested: one numbers iterator stops at BPF_MAX_LOOPS (1 << 23). */
	bpf_for(i, 0, 1 << 20) {
		bpf_for(j, 0, 1 << 20) {
			if (*(volatile int *)&release_spin) {
				stats.spins_released++;
				done = true;
				break;
			}
			if (bpf_ktime_get_ns() - start > spin_timeout_ns) {
				done = true;
				break;
			}
		}
		if (done)
			break;
	}
	stats.spin_end_ns = bpf_ktime_get_ns();
}

static void store_target(void)
{
	struct task_struct *task;
	u64 *v;

	task = bpf_task_from_pid(target_pid);
	if (!task)
		return;
	v = bpf_task_storage_get(&victim_store, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (v) {
		*v = bpf_ktime_get_ns();
		stats.stored++;
	} else {
		stats.store_failed++;
	}
	bpf_task_release(task);
}

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(handle_out_of_memory, struct oom_control *oc,
	     struct bpf_struct_ops_link *st_link)
{
	struct mem_cgroup *memcg = oc->memcg;
	u64 start = bpf_ktime_get_ns();

	stats.calls++;
	stats.last_oom_memcg = memcg ? memcg->css.cgroup->kn->id : 0;
	stats.last_link_cgroup = st_link->cgroup ? st_link->cgroup->kn->id : 0;
	stats.freed_before = oc->bpf_memory_freed;

	switch (action) {
	case OOM_TEST_DEFER:
		break;
	case OOM_TEST_CLAIM_ONLY:
		break;
	case OOM_TEST_KILL_TARGET:
		kill_target(oc);
		break;
	case OOM_TEST_AWAIT_OR_KILL:
		if (!await_victim(oc))
			kill_target(oc);
		break;
	case OOM_TEST_SPIN_THEN_KILL:
		spin();
		kill_target(oc);
		break;
	case OOM_TEST_STORE_THEN_KILL:
		store_target();
		kill_target(oc);
		break;
	}

	stats.freed_after = oc->bpf_memory_freed;
	stats.last_ns = bpf_ktime_get_ns() - start;
	return claim;
}

SEC(".struct_ops.link")
struct bpf_oom_ops oom_test_ops = {
	.handle_out_of_memory = (void *)handle_out_of_memory,
	.name = "vm_tests",
};

/* Declares an OOM from a SEC("syscall") program, as a user space policy would. */
SEC("syscall")
int declare_oom(struct oom_test_declare *args)
{
	struct mem_cgroup *memcg = NULL;
	struct cgroup *cgrp;
	int i;

	if (args->cgroup_id) {
		cgrp = bpf_cgroup_from_id(args->cgroup_id);
		if (!cgrp)
			return -2; /* -ENOENT */
		memcg = bpf_get_mem_cgroup(&cgrp->self);
		bpf_cgroup_release(cgrp);
		if (!memcg)
			return -2;
	}

	for (i = 0; i < 2 && i < args->times; i++)
		args->ret[i] = bpf_out_of_memory(memcg, 0, args->flags);

	if (memcg)
		bpf_put_mem_cgroup(memcg);
	return 0;
}
