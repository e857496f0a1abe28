// SPDX-License-Identifier: GPL-2.0
/*
 * observe: record each OOM and how the priority policy would rank its
 * candidates, then leave the decision to the kernel.  For trying a
 * configuration on a live system before enforcing it.
 */
#include "common.bpf.h"

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(observe_handle_oom, struct oom_control *oc,
	     struct bpf_struct_ops_link *st_link)
{
	struct cgroup *scope;

	begin_event(oc, POLICYD_POLICY_OBSERVE);
	event.reason = POLICYD_REASON_OBSERVE_ONLY;

	scope = scope_cgroup(oc);
	if (scope) {
		rank_cgroups(scope, false);
		bpf_cgroup_release(scope);
	}

	return finish_event();
}

SEC(".struct_ops.link")
struct bpf_oom_ops observe_ops = {
	.handle_out_of_memory = (void *)observe_handle_oom,
	.name = "policyd_observe",
};
