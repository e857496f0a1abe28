// SPDX-License-Identifier: GPL-2.0
/*
 * largest: the eligible cgroup using the most memory dies, priorities
 * ignored, as oomd's kill-by-usage does.  Protected cgroups are never chosen.
 */
#include "common.bpf.h"

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(largest_handle_oom, struct oom_control *oc,
	     struct bpf_struct_ops_link *st_link)
{
	struct cgroup *scope;
	bool awaited;

	begin_event(oc, POLICYD_POLICY_LARGEST);

	scope = scope_cgroup(oc);
	if (scope) {
		awaited = await_victim_in_scope(oc, scope);
		if (!awaited)
			rank_cgroups(scope, true);
		bpf_cgroup_release(scope);
		if (!awaited)
			kill_ranked(oc, POLICYD_REASON_LARGEST_USAGE);
	}

	return finish_event();
}

SEC(".struct_ops.link")
struct bpf_oom_ops largest_ops = {
	.handle_out_of_memory = (void *)largest_handle_oom,
	.name = "policyd_largest",
};
