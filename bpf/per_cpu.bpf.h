/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Where the kernel keeps __per_cpu_offset[], and how many CPU ids there are:
 * what a program needs to add up a percpu_counter's per-CPU shares as
 * percpu_counter_sum() does.  A BPF program cannot follow a __percpu pointer
 * without the kernel's percpu type tags (a gcc-built kernel has none), so
 * per_cpu_ptr() is done by hand: pointer + __per_cpu_offset[cpu].
 *
 * Included once by each of policyd's objects.  policyd runs find_per_cpu()
 * right after loading the object, before attaching anything that reads the
 * two globals; until then, and if it fails, per_cpu_offset_addr is 0 and the
 * shares are left out.  A lookup in the kernel, rather than policyd reading
 * /proc/kallsyms (all of it, some 0.1 s under TCG) before the load: that
 * read held up every start.
 */
#ifndef __POLICYD_PER_CPU_BPF_H
#define __POLICYD_PER_CPU_BPF_H

/* Room for offsets; more CPUs: find_per_cpu() returns -E2BIG. */
#define MAX_CPUS 1024

__u64 per_cpu_offset_addr;
__u32 nr_cpus;

/*
 * Return: 0; -E2BIG if there are more than MAX_CPUS CPU ids (the first
 * MAX_CPUS are used); or the lookup's error, the globals left at 0: -EPERM
 * where kernel addresses are hidden from policyd (kernel.kptr_restrict,
 * CAP_SYSLOG), -ENOENT without the symbols (CONFIG_KALLSYMS_ALL).
 */
SEC("syscall")
int find_per_cpu(void *ctx)
{
	static const char offsets_sym[] = "__per_cpu_offset";
	static const char ids_sym[] = "nr_cpu_ids";
	__u64 offsets, ids;
	__u32 n;
	long err;

	err = bpf_kallsyms_lookup_name(offsets_sym, sizeof(offsets_sym), 0, &offsets);
	if (err)
		return err;
	err = bpf_kallsyms_lookup_name(ids_sym, sizeof(ids_sym), 0, &ids);
	if (err)
		return err;
	err = bpf_probe_read_kernel(&n, sizeof(n), (void *)ids);
	if (err)
		return err;
	nr_cpus = n;
	per_cpu_offset_addr = offsets;
	return n > MAX_CPUS ? -7 /* -E2BIG */ : 0;
}

#endif /* __POLICYD_PER_CPU_BPF_H */
