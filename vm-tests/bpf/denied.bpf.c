// SPDX-License-Identifier: GPL-2.0
/*
 * For kernel-handler-denied-calls: BPF OOM handlers that read another task's
 * memory, which the kernel must refuse to load (that takes the task's
 * mmap_lock, which the task may hold while it waits for the oom_lock the
 * handler runs under), and a syscall program doing the same, which must still
 * load: the refusal is for OOM handlers only.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char _license[] SEC("license") = "GPL";

char buf[16];

static void read_task_str(void)
{
	struct task_struct *task = bpf_task_from_pid(1);

	if (!task)
		return;
	bpf_copy_from_user_task_str(buf, sizeof(buf), (void *)0x10000, task, 0);
	bpf_task_release(task);
}

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(uses_helper, struct oom_control *oc, struct bpf_struct_ops_link *st_link)
{
	struct task_struct *task = bpf_task_from_pid(1);

	if (!task)
		return 0;
	bpf_copy_from_user_task(buf, sizeof(buf), (void *)0x10000, task, 0);
	bpf_task_release(task);
	return 0;
}

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(uses_kfunc, struct oom_control *oc, struct bpf_struct_ops_link *st_link)
{
	read_task_str();
	return 0;
}

SEC("syscall")
int syscall_uses_kfunc(void *ctx)
{
	read_task_str();
	return 0;
}

SEC(".struct_ops.link")
struct bpf_oom_ops helper_ops = {
	.handle_out_of_memory = (void *)uses_helper,
	.name = "denied_helper",
};

SEC(".struct_ops.link")
struct bpf_oom_ops kfunc_ops = {
	.handle_out_of_memory = (void *)uses_kfunc,
	.name = "denied_kfunc",
};
