// SPDX-License-Identifier: GPL-2.0
/*
 * A struct_ops of another subsystem than BPF OOM, for kernel-attach-opt-in:
 * BPF_F_CGROUP_FD must be refused for types that did not opt in to cgroup
 * attachment.  binfmt_misc_ops because registering one has no effect until a
 * binfmt_misc 'B' entry names it, and the test kernel builds it cheaply.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char _license[] SEC("license") = "GPL";

SEC("struct_ops.s/match")
bool BPF_PROG(never_match, struct linux_binprm *bprm)
{
	return false;
}

SEC("struct_ops.s/load")
int BPF_PROG(never_load, struct linux_binprm *bprm)
{
	return -8; /* -ENOEXEC: not ours, try the next binary format */
}

SEC(".struct_ops.link")
struct binfmt_misc_ops other_ops = {
	.match = (void *)never_match,
	.load = (void *)never_load,
	.name = "vm_tests_opt_in",
};
