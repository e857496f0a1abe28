// SPDX-License-Identifier: GPL-2.0
/*
 * The benchmarks' stopwatch for OOM decisions: a SEC("syscall") program that
 * declares an OOM with bpf_out_of_memory() and returns how long the call took.
 * That is the whole of out_of_memory() under oom_lock: the BPF OOM handler (if
 * one is attached) or select_bad_process(), then oom_kill_process(), measured
 * the same way whoever decides.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "bench.h"

char _license[] SEC("license") = "GPL";

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

	start = bpf_ktime_get_ns();
	args->ret = bpf_out_of_memory(memcg, 0, args->flags);
	args->ns = bpf_ktime_get_ns() - start;
	args->start_ns = start;

	if (memcg)
		bpf_put_mem_cgroup(memcg);
	return 0;
}
