// SPDX-License-Identifier: GPL-2.0
/*
 * The benchmarks' stopwatch for OOM decisions: a SEC("syscall") program that
 * declares an OOM with bpf_out_of_memory() and returns how long the call took.
 * That is the whole of out_of_memory() under oom_lock: the BPF OOM handler (if
 * one is attached) or select_bad_process(), then oom_kill_process(), measured
 * the same way whoever decides.
 *
 * The victim is killed when mark_oom_victim() marks it, right after the
 * SIGKILL: its tracepoint is the kill's time on the same clock, for the
 * kernel's killer and a handler alike.  The "Killed process" line printed
 * next can land milliseconds later in the log.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "bench.h"

char _license[] SEC("license") = "GPL";

/*
 * The first victim marked by the task in timed_oom()'s bpf_out_of_memory():
 * whoever decides, the marking runs in the OOMing task.  0: not timing.
 */
__u64 timing_pid_tgid;
__u64 first_mark_ns;

SEC("tp_btf/mark_victim")
int BPF_PROG(bench_mark_victim, struct task_struct *task, uid_t uid)
{
	if (timing_pid_tgid && timing_pid_tgid == bpf_get_current_pid_tgid() &&
	    !first_mark_ns)
		first_mark_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("syscall")
int timed_oom(struct bench_oom_args *args)
{
	struct mem_cgroup *memcg = NULL;
	struct cgroup *cgrp;
	__u64 start;

	args->err = 0;
	if (args->cgroup_id) {
		cgrp = bpf_cgroup_from_id(args->cgroup_id);
		if (!cgrp) {
			args->err = -2; /* -ENOENT */
			return 0;
		}
		memcg = bpf_get_mem_cgroup(&cgrp->self);
		bpf_cgroup_release(cgrp);
		if (!memcg) {
			args->err = -2;
			return 0;
		}
	}

	first_mark_ns = 0;
	timing_pid_tgid = bpf_get_current_pid_tgid();
	start = bpf_ktime_get_ns();
	args->ret = bpf_out_of_memory(memcg, 0, args->flags);
	args->ns = bpf_ktime_get_ns() - start;
	timing_pid_tgid = 0;
	args->start_ns = start;
	args->marked_ns = first_mark_ns ? first_mark_ns - start : 0;

	if (memcg)
		bpf_put_mem_cgroup(memcg);
	return 0;
}
