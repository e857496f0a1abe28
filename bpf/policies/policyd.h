/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What policyd and its BPF handler share.  policyd's Rust side is generated
 * from it: libbpf-cargo turns the types in policyd.bpf.o's BTF into the
 * skeleton's Rust types (policyd/abi.rs names them).  So keep the structs
 * plain (fixed-size integers, no bitfields, no implicit padding), make
 * constants enumerators rather than #defines, and anchor every enum in
 * policyd.bpf.c's policyd_abi so that it is in the BTF.
 */
#ifndef __POLICYD_H
#define __POLICYD_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/*
 * Sizes and fixed values.  An enum rather than #defines: enumerators are
 * constant expressions (array sizes, max_entries) and, unlike macros, reach
 * the object's BTF, from which policyd's Rust side takes them.
 */
enum policyd_limits {
	/* Room for this many cgroups in the rules map. */
	POLICYD_MAX_CGROUPS = 65536,
	/*
	 * Steps of the handler's walk of the cgroup tree: one per edge, down and
	 * up, so twice the cgroups in scope.  BPF_MAX_LOOPS, the most a numbers
	 * iterator counts (more and bpf_iter_num_new() refuses); 4M cgroups
	 * would take seconds per OOM before it mattered.
	 */
	POLICYD_WALK_STEPS = 1 << 23,

	/* Candidates' memory usage is compared in units of 1 << this many bytes (1 MiB). */
	POLICYD_USAGE_SHIFT = 20,

	/*
	 * The defaults' key among the rules policyd resolves (no cgroup has id
	 * 0).  The rules table keeps them apart, and 0 marks its empty slots.
	 */
	POLICYD_DEFAULTS_KEY = 0,

	/*
	 * Slots of the rules table (struct policyd_rule_table): twice
	 * POLICYD_MAX_CGROUPS, so that it is never more than half full.
	 */
	POLICYD_RULE_SLOTS = 2 * POLICYD_MAX_CGROUPS,
	/*
	 * A cgroup's entry in the rules table is at most this many slots past
	 * the slot its id hashes to: policyd picks the hash's multiplier so.
	 */
	POLICYD_RULE_PROBES = 32,

	/*
	 * How many of the best-ranked candidates an event reports.  A report
	 * only: the handler itself looks at every eligible cgroup, in rank order.
	 */
	POLICYD_EVENT_CANDIDATES = 4,

	/*
	 * Room in the `decisions` map: (victim cgroup, outcome) pairs counted.
	 * Decisions beyond it count in policyd_metrics.decisions_untracked.
	 */
	POLICYD_DECISION_KEYS = 1024,

	/* Buckets of the handler time histogram (struct policyd_metrics). */
	POLICYD_HANDLER_BUCKETS = 24,
	/* Bucket 0 holds handler runs shorter than 1 << this many ns (~1 us). */
	POLICYD_HANDLER_BUCKET0_SHIFT = 10,

	/*
	 * An OOM that loops while its victim exits (a memory.max write, a
	 * retried charge) asks the handler again each time, thousands of times
	 * under TCG, faster than policyd reads; each time the answer is to await
	 * that victim.  Only the first of such a run is published.  The handler
	 * counts the others in `await_run` in its .bss: the seq of the event
	 * that began the run above this bit, the count below it.  The next
	 * published event carries the run's final count (repeats_before).
	 */
	POLICYD_AWAIT_RUN_SEQ_SHIFT = 40,

	/* Room for a cgroup's name in a tree record: NAME_MAX and a NUL. */
	POLICYD_TREE_NAME_MAX = 256,
};

enum policyd_kill {
	POLICYD_KILL_TASK = 0,		/* the largest killable task of the cgroup */
	POLICYD_KILL_CGROUP = 1,	/* every killable task of the cgroup */
};

/*
 * A cgroup's standing before priorities count, from systemd's and oomd's
 * xattrs (user.oomd_prefer, user.oomd_avoid): every `prefer` cgroup ranks
 * before every plain one, and every plain one before every `avoid` one.
 * Zero is the plain case, so that a zeroed rule means "no preference".
 */
enum policyd_pref {
	POLICYD_PREF_NONE = 0,
	POLICYD_PREF_PREFER = 1,
	POLICYD_PREF_AVOID = 2,
};

/*
 * Value of the rules map, keyed by cgroup id: the resolved settings, and
 * what a cgroup created anywhere below this one resolves to until policyd
 * writes its own entry.  When that depends on the new cgroup's names (a
 * rule matches some paths below and not others), below_known is 0 and the
 * handler takes this entry's own settings meanwhile.
 */
struct policyd_rule {
	__u32 priority;
	__u8 protect;
	__u8 kill;			/* enum policyd_kill */
	__u8 pref;			/* enum policyd_pref */
	__u8 below_known;
	__u32 below_priority;
	__u8 below_protect;
	__u8 below_kill;
	__u8 below_pref;
	__u8 pad[1];
};

/*
 * A slot of the rules table: serial 0, empty.  Keyed by the cgroup's css
 * serial number (cgroup->self.serial_nr), which lies in the memory the
 * handler's walk reads anyway, where the id is one pointer further away, in
 * the kernfs node: reading it was a quarter of ranking a cgroup.  Serial
 * numbers are never reused; the slot gives the id with the rule.
 */
struct policyd_rule_slot {
	__u64 serial;
	__u64 cgroup_id;
	struct policyd_rule rule;
};

/*
 * The rules of every cgroup policyd knew when it built the table, read by
 * the handler without a call: open addressing, linear probing.  The entry
 * of serial number s is in slot (h + n) & mask, h = ((s ^ s >> 32) * mul)
 * >> 32 and n < POLICYD_RULE_PROBES, and every slot from h to it is taken.
 * policyd tries first a multiplier that lays the slots out in the order of
 * the serial numbers, the order in which cgroups were created and a walk
 * visits them.  Built whole and never written once the handler may read it:
 * policyd builds a new one and swaps it in.  Cgroups created since are in a
 * hash (new_rules in policyd.bpf.c).  4 MiB, of which the handler reads a
 * few slots per cgroup.
 */
struct policyd_rule_table {
	struct policyd_rule defaults;	/* for cgroups with no entry anywhere */
	__u64 mul;
	__u32 mask;			/* slots in use, minus 1: 2^k - 1 */
	__u32 entries;			/* cgroups in the table */
	struct policyd_rule_slot slots[POLICYD_RULE_SLOTS];
};

enum policyd_policy {
	POLICYD_POLICY_PRIORITY = 0,
	POLICYD_POLICY_LARGEST = 1,
	POLICYD_POLICY_BADNESS = 2,
	POLICYD_POLICY_OBSERVE = 3,
};

/* Why the victim was chosen. */
enum policyd_reason {
	POLICYD_REASON_NONE = 0,
	POLICYD_REASON_LOWEST_PRIORITY = 1,	/* strictly lowest priority */
	POLICYD_REASON_LARGER_USAGE = 2,	/* priority tie, larger usage */
	POLICYD_REASON_LARGEST_USAGE = 3,	/* `largest` policy */
	POLICYD_REASON_BADNESS = 4,		/* highest oom_badness() */
	POLICYD_REASON_VICTIM_EXITING = 5,	/* a previous victim is still exiting */
	POLICYD_REASON_NO_CANDIDATE = 6,	/* nothing eligible in scope */
	POLICYD_REASON_OBSERVE_ONLY = 7,	/* `observe` policy */
	POLICYD_REASON_PREFERENCE = 8,		/* prefer, or the runner-up is avoid */
};

/* What the handler did about it. */
enum policyd_outcome {
	POLICYD_OUTCOME_KILLED = 0,		/* killed, the OOM is handled */
	POLICYD_OUTCOME_AWAITED = 1,		/* memory on its way, nothing killed */
	POLICYD_OUTCOME_DEFERRED = 2,		/* left to the kernel's killer */
	POLICYD_OUTCOME_DRY_RUN = 3,		/* decided, left the kill to the kernel */
	POLICYD_OUTCOME_KILL_FAILED = 4,	/* every kill attempt failed, deferred */
};

struct policyd_candidate {
	__u64 cgroup_id;
	__u64 usage;			/* bytes charged to the cgroup's memcg */
	__u32 priority;
	__u8 kill;			/* enum policyd_kill */
	__u8 pref;			/* enum policyd_pref */
	__u8 pad[2];
};

/* One per OOM the handler sees, through the `events` ring buffer. */
struct policyd_event {
	__u64 timestamp_ns;		/* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 seq;			/* 1, 2, ...: this object's events, in order */
	/* Awaits not published after the previous event (AWAIT_RUN above). */
	__u64 repeats_before;
	__u64 handler_ns;		/* time spent in the handler */
	__u64 oom_cgroup_id;		/* the OOMing memcg's cgroup, 0: global */
	__u64 victim_cgroup_id;		/* 0: none */
	__u64 victim_usage;
	__u64 victim_task_rss;		/* bytes, of victim_pid */
	/*
	 * 0: an allocation failed.  Otherwise the OOM was declared through
	 * declare_oom() (a pressure limit held): the `trigger` it was given.
	 */
	__u64 trigger;
	__u32 victim_pid;		/* the (largest) task killed, 0: none */
	__u32 victim_priority;
	__u32 tasks_killed;
	__u32 candidates;		/* eligible cgroups (tasks for badness) seen */
	__s32 kill_err;			/* last error of bpf_oom_kill_process() */
	/*
	 * Candidates looked into, the victim's included, and why each one
	 * before the victim was passed over.
	 */
	__u32 tried;
	__u32 passed_unkillable;	/* only init, kthreads, oom_score_adj -1000 */
	__u32 passed_exiting;		/* its tasks are exiting (no mm left) */
	__u32 passed_empty;		/* emptied or removed since it was ranked */
	__u32 passed_refused;		/* the kernel refused every kill in it */
	/* Eligible cgroups beyond POLICYD_MAX_CGROUPS, never considered. */
	__u32 over_cap;
	/*
	 * 1: the walk of the scope's cgroups stopped short (POLICYD_WALK_STEPS,
	 * or a cgroup removed under it), and cgroups past it were not ranked.
	 */
	__u32 walk_cut;
	/*
	 * Cgroups judged by an ancestor's own settings: created since policyd
	 * last wrote the rules, and their settings depend on their names.
	 */
	__u32 unresolved;
	__u8 policy;			/* enum policyd_policy */
	__u8 scope_global;		/* 1: system-wide OOM */
	__u8 reason;			/* enum policyd_reason */
	__u8 outcome;			/* enum policyd_outcome */
	char victim_comm[16];
	/* The candidate that ranks right after the victim; cgroup_id 0: none. */
	struct policyd_candidate runner_up;
	/* The best-ranked candidates, best first (a report; may omit the victim). */
	struct policyd_candidate ranked[POLICYD_EVENT_CANDIDATES];
};

/*
 * Context of the declare_oom SEC("syscall") program, run by policyd with
 * BPF_PROG_TEST_RUN when a pressure limit has held long enough.
 */
struct policyd_declare {
	__u64 cgroup_id;		/* in: the OOMing cgroup, 0: system-wide */
	__u64 trigger;			/* in: copied into that OOM's event, not 0 */
	/*
	 * out: what bpf_out_of_memory() returned (1: memory freed, 0: not,
	 * -EBUSY: another OOM is being handled, -EPERM), or -ENOENT (no such
	 * cgroup, or no memcg there), -ENOSYS (a kernel without the kfunc).
	 */
	__s32 ret;
	__u32 pad;
};

/*
 * Context of the find_rule SEC("syscall") program: the entry the handler
 * finds for a cgroup id in the rules policyd installed, for tests that
 * hold what policyd built against the handler's own search.
 */
struct policyd_find_rule {
	__u64 cgroup_id;		/* in */
	__u64 serial;			/* in; 0: the live cgroup's, if any */
	struct policyd_rule rule;	/* out, if found */
	__u64 table_id;			/* out: the id of the table's slot */
	__u32 found;			/* out: 1 in the table, 2 among new cgroups */
	__u32 pad;
};

/* A cgroup as the cgroup_serials program finds it. */
struct policyd_serial {
	__u64 cgroup_id;
	__u64 serial;
};

/*
 * Context of the cgroup_serials SEC("syscall") program: the serial number
 * of each cgroup of a subtree, for policyd to key the rules table by.
 */
struct policyd_serials {
	__u64 root_id;			/* in: the subtree's cgroup */
	__u32 stored;			/* out: pairs written into `serials` */
	__u32 found;			/* out: cgroups walked, stored or not */
};

/*
 * Where the running kernel keeps the handler and its name in the value of a
 * bpf_oom_ops struct_ops map, which policyd fills itself (find_ops_layout()).
 */
struct policyd_ops_layout {
	__u32 value_type_id;		/* BTF id of struct bpf_struct_ops_bpf_oom_ops */
	__u32 data;			/* its struct bpf_oom_ops, from the value's start */
	__u32 handler;			/* handle_out_of_memory, from data */
	__u32 name;			/* name, from data */
	__u32 ops_size;			/* sizeof(struct bpf_oom_ops) */
	__u32 pad;
};

/* Counters in the policy's .bss, read by `policyd status`. */
struct policyd_stats {
	__u64 ooms;
	__u64 kills;			/* tasks killed */
	__u64 awaited;
	__u64 deferred;
	__u64 dry_runs;
	__u64 kill_failures;
	__u64 events_dropped;		/* ring buffer full */
	__u64 handler_ns_total;
	__u64 handler_ns_max;
};

/*
 * More counters in the policy's .bss, for `policyd metrics`.  Handler time
 * as a log2 histogram: handler_ns_log2[i] counts the runs shorter than
 * 1 << (POLICYD_HANDLER_BUCKET0_SHIFT + i) ns that an earlier bucket does
 * not count; the last bucket counts every longer run.
 */
struct policyd_metrics {
	__u64 handler_ns_log2[POLICYD_HANDLER_BUCKETS];
	__u64 decisions_untracked;	/* the `decisions` map was full */
	/*
	 * Walks of every process for an exiting victim: at the first OOM after
	 * load, and while more victims were pending than the list holds.
	 */
	__u64 victim_walks;
};

/* Key of the `decisions` map (value: __u64 count): OOM decisions by victim. */
struct policyd_decision_key {
	__u64 cgroup_id;		/* the victim's cgroup */
	__u8 outcome;			/* enum policyd_outcome */
	__u8 pad[7];
};

/*
 * One live cgroup of a tree walk (the read_tree iterator), through the
 * `tree` ring buffer: the header, then name_len bytes of the name (no NUL).
 * A record with id 0 ends the walk.
 */
struct policyd_tree_record {
	__u64 id;			/* kernfs node id: the cgroup id and inode number */
	__u64 parent_id;		/* 0: the walk's first cgroup has no parent in it */
	__u32 level;			/* depth in the hierarchy (root: 0) */
	__u32 dropped;			/* end record: records the ring had no room for */
	__u16 name_len;
	__u8 has_xattrs;		/* any xattr at all, of any namespace */
	__u8 pad[5];
	char name[POLICYD_TREE_NAME_MAX];
};

#endif /* __POLICYD_H */
