// SPDX-License-Identifier: GPL-2.0
/*
 * priority: the cgroup with the lowest priority dies first; between equals,
 * the one using the most memory.  Protected cgroups are never chosen.  With
 * nothing eligible, the kernel's own killer decides.
 */
#include "common.bpf.h"

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(priority_handle_oom, struct oom_control *oc,
	     struct bpf_struct_ops_link *st_link)
{
	struct cgroup *scope;
	bool awaited;

	begin_event(oc, POLICYD_POLICY_PRIORITY);

	scope = scope_cgroup(oc);
	if (scope) {
		awaited = await_victim_in_scope(oc, scope);
		if (!awaited)
			rank_cgroups(scope, false);
		bpf_cgroup_release(scope);
		if (!awaited)
			kill_ranked(oc, POLICYD_REASON_LOWEST_PRIORITY);
	}

	return finish_event();
}

SEC(".struct_ops.link")
struct bpf_oom_ops priority_ops = {
	.handle_out_of_memory = (void *)priority_handle_oom,
	.name = "policyd_priority",
};
