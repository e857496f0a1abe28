// SPDX-License-Identifier: GPL-2.0
/*
 * policyd's BPF OOM handler: one object for every policy, chosen at load
 * time through `policy` in .rodata (the verifier drops the other branches).
 *
 *   priority  the eligible cgroup with the lowest priority dies; between
 *             equals, the one using the most memory
 *   largest   the eligible leaf cgroup using the most memory dies
 *   observe   rank as priority does, report, kill nothing
 *   badness   the kernel's own oom_badness() choice, rules ignored
 *
 * An eligible cgroup is a populated, unprotected, non-root, non-threaded
 * cgroup in the OOM's scope that holds processes itself.  The cgroup
 * policies try every eligible cgroup, best first, until a kill succeeds;
 * the kernel's own killer decides only when none had anything killable.
 *
 * Handlers run one at a time (the kernel holds oom_lock around them), so the
 * scratch state below needs no locking.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "policyd.h"
#include "../per_cpu.bpf.h"

#define OOM_SCORE_ADJ_MIN (-1000)
#define PF_KTHREAD 0x00200000
#define PAGE_SIZE 4096
#define LONG_MIN (-9223372036854775807L - 1)
#define LONG_MAX 9223372036854775807L

/* Levels of a binary heap of POLICYD_MAX_CGROUPS (2^16) candidates. */
#define HEAP_LEVELS 17

char _license[] SEC("license") = "GPL";

/* Set by policyd before load. */
const volatile __u8 policy = POLICYD_POLICY_PRIORITY;
/* Decide and report, but leave the kill to the kernel. */
const volatile bool dry_run;
/* Room in `heap` (policyd's --max-cgroups, at most POLICYD_MAX_CGROUPS). */
const volatile __u32 max_candidates = POLICYD_MAX_CGROUPS;
/* Steps of rank_cgroups()' walk: POLICYD_WALK_STEPS, fewer only in tests. */
const volatile __u32 walk_steps = POLICYD_WALK_STEPS;

struct policyd_stats stats;
struct policyd_metrics metrics;

/*
 * Decisions by victim cgroup and outcome, for `policyd metrics`.  A plain
 * hash, not a per-CPU one: handlers run one at a time, like `stats`.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICYD_DECISION_KEYS);
	__type(key, struct policyd_decision_key);
	__type(value, __u64);
} decisions SEC(".maps");

/* The event being built; sent to user space when the handler is done. */
struct policyd_event event;

/*
 * rule_table[0]: the rules of the cgroups policyd knew when it built it;
 * new_rules[0]: cgroup id -> policyd_rule of those created since (no cgroup
 * is in both but for the moment a rebuild takes them into the table).
 * policyd swaps each as a whole: the table first, then an empty hash.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, 1);
		/* policyd writes a new table through a mapping. */
		__uint(map_flags, BPF_F_MMAPABLE);
		__type(key, __u32);
		__type(value, struct policyd_rule_table);
	});
} rule_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, POLICYD_MAX_CGROUPS);
		/* Holds a few: kernel memory for them only. */
		__uint(map_flags, BPF_F_NO_PREALLOC);
		__type(key, __u64);
		__type(value, struct policyd_rule);
	});
} new_rules SEC(".maps");

/*
 * About 1,000 events.  The retries of an OOM while its victim exits, thousands
 * at some 16 us each under TCG, publish one (publish_event()).
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/*
 * Every eligible cgroup of the OOM being handled, as a binary heap whose
 * root is the best victim: ranking costs O(log n) per cgroup, and each
 * candidate tried after a failed one costs O(log n) more.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POLICYD_MAX_CGROUPS);
	__type(key, __u32);
	__type(value, struct policyd_candidate);
} heap SEC(".maps");

__u32 heap_len;

/*
 * Until policyd installs its rules.  A global, not a static: that also puts
 * the complete struct policyd_rule into the object's BTF, which the rules
 * map's inner definition alone does not, and libbpf needs it to size the map.
 */
const struct policyd_rule builtin_defaults = {
	.priority = 100,
	.kill = POLICYD_KILL_TASK,
};

static __always_inline struct policyd_rule_table *rules_table(void)
{
	__u32 zero = 0;
	void *inner = bpf_map_lookup_elem(&rule_table, &zero);

	return inner ? bpf_map_lookup_elem(inner, &zero) : NULL;
}

/*
 * The entry of the cgroup with css serial number @serial in the rules
 * table: its rule into @rule, its id into @id.  Plain loads: ranking looks
 * up every cgroup in scope, and a hash lookup was nearly half the cost of
 * that.  A global function: the verifier follows its loop once, not at each
 * place a rule is looked up.  Return: whether the table has one.
 */
__noinline bool table_rule(__u64 serial, struct policyd_rule *rule __arg_nonnull,
			   __u64 *id __arg_nonnull)
{
	struct policyd_rule_table *table = rules_table();
	struct policyd_rule_slot *slot;
	__u32 at;
	int n;

	if (!table || !serial)
		return false;
	/* policyd/rule_table.rs's home(), which placed the entries. */
	at = ((serial ^ (serial >> 32)) * table->mul) >> 32;
	for (n = 0; n < POLICYD_RULE_PROBES; n++) {
		slot = &table->slots[(at + n) & table->mask & (POLICYD_RULE_SLOTS - 1)];
		if (slot->serial == serial) {
			*rule = slot->rule;
			*id = slot->cgroup_id;
			return true;
		}
		if (!slot->serial)
			return false;
	}
	return false;
}

/* @id's entry among the cgroups created since the table was built. */
static __always_inline struct policyd_rule *created_rule(__u64 id)
{
	void *created;
	__u32 zero = 0;

	created = bpf_map_lookup_elem(&new_rules, &zero);
	return created ? bpf_map_lookup_elem(created, &id) : NULL;
}

/* @cgrp's entry, in the table or among the cgroups created since. */
static __always_inline bool find_rule(struct cgroup *cgrp, struct policyd_rule *rule)
{
	struct policyd_rule *created;
	__u64 id;

	if (table_rule(cgrp->self.serial_nr, rule, &id))
		return true;
	created = created_rule(cgrp->kn->id);
	if (!created)
		return false;
	*rule = *created;
	return true;
}

/*
 * The resolved settings of @cgrp, into @out.  policyd writes an entry for every cgroup;
 * one created since then takes its nearest ancestor's template for cgroups
 * below it, or, where that depends on names, the ancestor's own settings
 * (counted in event.unresolved).  The walk is bounded by @cgrp's own level,
 * not by a fixed depth, so that a whole new subtree deeper than any cap is
 * still judged as `policyd explain` says.  A global function: verified
 * once, not at each of its callers.  Return: @cgrp's id.
 */
__noinline __u64 rule_of(struct cgroup *cgrp __arg_untrusted, struct policyd_rule *out __arg_nonnull)
{
	struct policyd_rule_table *table = rules_table();
	struct policyd_rule rule, *created;
	int i, level;
	__u64 id;

	/* Most cgroups: their own entry in the table, and no walk. */
	if (table_rule(cgrp->self.serial_nr, out, &id))
		return id;

	id = cgrp->kn->id;
	*out = table ? table->defaults : builtin_defaults;
	if (!table)
		return id;
	/* Not in the table: its own entry is in the hash, if it has one. */
	created = created_rule(id);
	if (created) {
		*out = *created;
		return id;
	}
	level = cgrp->level;
	bpf_for(i, 0, level) {
		cgrp = cgrp->self.parent->cgroup;
		if (!cgrp)
			break;
		if (!find_rule(cgrp, &rule))
			continue;
		if (rule.below_known) {
			*out = (struct policyd_rule){
				.priority = rule.below_priority,
				.protect = rule.below_protect,
				.kill = rule.below_kill,
				.pref = rule.below_pref,
			};
		} else {
			event.unresolved++;
			*out = rule;
		}
		return id;
	}
	return id;
}

/* Bytes charged to @cgrp's memcg; 0 without the memory controller there. */
static __always_inline __u64 cgroup_usage(struct cgroup *cgrp)
{
	struct cgroup_subsys_state *css;
	struct mem_cgroup *memcg;

	css = cgrp->subsys[memory_cgrp_id];
	if (!css)
		return 0;
	memcg = bpf_core_cast(css, struct mem_cgroup);
	return memcg->memory.usage.counter * PAGE_SIZE;
}

/*
 * An mm's counters are per-CPU: the shared count lags each CPU's share by
 * up to percpu_counter_batch pages.  oom_badness() and /proc/<pid>/statm
 * add the shares up (get_mm_counter_sum()), and so must the handler, or it
 * picks another of two tasks of the same size than the kernel and
 * `policyd explain` would.  find_per_cpu() says where the shares are.
 * __per_cpu_offset[] is read once per OOM.
 */
__u64 cpu_offsets[MAX_CPUS];
__u32 cpu_offsets_read;

static __noinline void read_cpu_offsets(void)
{
	__u32 cpu;

	cpu_offsets_read = 0;
	if (!per_cpu_offset_addr)
		return;
	bpf_for(cpu, 0, MAX_CPUS) {
		if (cpu >= nr_cpus)
			break;
		if (bpf_probe_read_kernel(&cpu_offsets[cpu], sizeof(__u64),
					  (void *)(per_cpu_offset_addr + cpu * sizeof(__u64))))
			return;
		cpu_offsets_read = cpu + 1;
	}
}

/*
 * @count plus the CPUs' shares at @counters: percpu_counter_sum().  A global
 * function: the verifier checks its loop once, not at each place the handler
 * counts an mm's pages (three loops per task).
 */
__noinline __s64 percpu_sum(__s64 count, __u64 counters)
{
	__s32 share;
	__u32 cpu;

	bpf_for(cpu, 0, MAX_CPUS) {
		if (cpu >= cpu_offsets_read)
			break;
		if (bpf_probe_read_kernel(&share, sizeof(share),
					  (void *)(counters + cpu_offsets[cpu])))
			break;
		count += share;
	}
	return count > 0 ? count : 0;
}

/* percpu_counter_sum() of one of @mm's counters, in pages. */
static __always_inline __s64 mm_counter_sum(struct mm_struct *mm, int member)
{
	struct percpu_counter *counter = &mm->rss_stat[member];

	return percpu_sum(BPF_CORE_READ(counter, count),
			  (__u64)BPF_CORE_READ(counter, counters));
}

/* Resident memory of @task's mm, in pages, as get_mm_rss_sum() counts it. */
static __always_inline __u64 task_rss_pages(struct task_struct *task)
{
	struct mm_struct *mm = task->mm;

	if (!mm)
		return 0;
	return mm_counter_sum(mm, MM_FILEPAGES) + mm_counter_sum(mm, MM_ANONPAGES) +
	       mm_counter_sum(mm, MM_SHMEMPAGES);
}

/* Tasks the kernel refuses to kill whatever their state. */
static __always_inline bool task_unkillable(struct task_struct *task)
{
	return task->tgid == 1 || (task->flags & PF_KTHREAD) ||
	       task->signal->oom_score_adj == OOM_SCORE_ADJ_MIN;
}

/* Where each enum policyd_pref puts a cgroup: prefer first, avoid last. */
static const __u8 pref_ranks[] = {
	[POLICYD_PREF_PREFER] = 0,
	[POLICYD_PREF_NONE] = 1,
	[POLICYD_PREF_AVOID] = 2,
};

/*
 * Where @pref puts a cgroup; a value policyd does not write, as none.  A
 * table rather than branches, whose constants the verifier would follow
 * apart through better()'s comparisons.
 */
static __always_inline int pref_rank(__u8 pref)
{
	return pref < sizeof(pref_ranks) ? pref_ranks[pref] : pref_ranks[POLICYD_PREF_NONE];
}

/*
 * Is @a a better victim than @b?  Under every cgroup policy, a preferred
 * cgroup first and an avoided one last.  Then under `priority` (and
 * `observe`, which reports what priority would do): lower priority, then
 * more memory, then the lower cgroup id.  Under `largest`: more memory,
 * then the lower id.
 *
 * Memory is compared in whole MiB: usage moves by a few pages all the time
 * (per-CPU charge caches, page tables), and two cgroups of the same size
 * must not swap places between `policyd explain` and the OOM.
 *
 * A global function: the verifier checks its branches once, rather than
 * on every path through the heap's loops, each of which compares twice.
 */
__noinline bool better(const struct policyd_candidate *a __arg_nonnull,
		       const struct policyd_candidate *b __arg_nonnull)
{
	__u64 mib_a = a->usage >> POLICYD_USAGE_SHIFT, mib_b = b->usage >> POLICYD_USAGE_SHIFT;

	if (pref_rank(a->pref) != pref_rank(b->pref))
		return pref_rank(a->pref) < pref_rank(b->pref);
	if (policy != POLICYD_POLICY_LARGEST && a->priority != b->priority)
		return a->priority < b->priority;
	if (mib_a != mib_b)
		return mib_a > mib_b;
	return a->cgroup_id < b->cgroup_id;
}

/* A global function: verified once, not on each path of rank_cgroups()'s loop. */
__noinline void heap_push(const struct policyd_candidate *cand __arg_nonnull)
{
	struct policyd_candidate *parent, *slot;
	__u32 i = heap_len, up;
	int level;

	if (i >= max_candidates || i >= POLICYD_MAX_CGROUPS) {
		event.over_cap++;
		return;
	}
	heap_len = i + 1;

	/* Move worse parents down until @cand's place is found. */
	bpf_for(level, 0, HEAP_LEVELS) {
		if (!i)
			break;
		up = (i - 1) / 2;
		parent = bpf_map_lookup_elem(&heap, &up);
		slot = bpf_map_lookup_elem(&heap, &i);
		if (!parent || !slot || !better(cand, parent))
			break;
		*slot = *parent;
		i = up;
	}
	slot = bpf_map_lookup_elem(&heap, &i);
	if (slot)
		*slot = *cand;
}

/*
 * Where heap_pop() is sifting.  A global, like `scan`: a local index would
 * start at the root as a constant, which the verifier follows precisely
 * (a constant ARRAY key is exact), and it would then verify every path down
 * the heap apart instead of one loop body.
 */
__u32 sift_at;

/*
 * Take the best candidate out of the heap.  Return: false if it is empty.
 * A global function: verified once, not at each of kill_ranked()'s calls.
 */
__noinline bool heap_pop(struct policyd_candidate *out __arg_nonnull)
{
	struct policyd_candidate *root, *last, *child, *right, *slot;
	struct policyd_candidate moving;
	__u32 i = 0, c, r, n;
	int level;

	if (!heap_len)
		return false;
	root = bpf_map_lookup_elem(&heap, &i);
	if (!root)
		return false;
	*out = *root;
	n = heap_len - 1;
	heap_len = n;
	last = bpf_map_lookup_elem(&heap, &n);
	if (!n || !last)
		return true;
	moving = *last;

	/* Sift the last element down from the root. */
	sift_at = 0;
	bpf_for(level, 0, HEAP_LEVELS) {
		i = sift_at;
		c = 2 * i + 1;
		if (c >= n)
			break;
		child = bpf_map_lookup_elem(&heap, &c);
		if (!child)
			break;
		r = c + 1;
		right = bpf_map_lookup_elem(&heap, &r);
		if (r < n && right && better(right, child)) {
			child = right;
			c = r;
		}
		if (!better(child, &moving))
			break;
		slot = bpf_map_lookup_elem(&heap, &i);
		if (!slot)
			break;
		*slot = *child;
		sift_at = c;
	}
	i = sift_at;
	slot = bpf_map_lookup_elem(&heap, &i);
	if (slot)
		*slot = moving;
	return true;
}

/*
 * Put @cgrp into the heap if it is eligible (see rank_cgroups()).  A global
 * function, verified once, not on each path of the walk.
 */
__noinline void rank_one(struct cgroup *cgrp __arg_untrusted)
{
	struct cgroup_subsys_state *css = &cgrp->self;
	struct policyd_candidate cand = {};
	struct policyd_rule rule;

	/* Not the root, whose css alone has no parent. */
	if (!css->parent || cgrp->dom_cgrp != cgrp || (css->flags & CSS_RELEASED))
		return;
	if (!css->nr_populated_csets && !cgrp->nr_populated_threaded_children)
		return;
	if (policy == POLICYD_POLICY_LARGEST && cgrp->nr_populated_domain_children)
		return;
	cand.cgroup_id = rule_of(cgrp, &rule);
	if (rule.protect)
		return;
	cand.usage = cgroup_usage(cgrp);
	cand.priority = rule.priority;
	cand.kill = rule.kill;
	cand.pref = rule.pref;
	event.candidates++;
	heap_push(&cand);
}

/*
 * Put every eligible cgroup of @scope into the heap.  Protected cgroups are
 * left out; under `largest`, so are cgroups with a populated domain child
 * (their usage counts their children's too).  A threaded subtree shares its
 * domain's memcg, and all its processes belong to the domain: the domain
 * cgroup is the candidate, for them all, and threaded cgroups are not.
 *
 * The walk visits @scope and its descendants, parents first, as
 * css_next_descendant_pre() does, but follows the children and sibling
 * lists itself, through untrusted (fault-safe) loads under RCU: the css
 * iterator kfunc cost some 4 times as much per cgroup under a lockdep
 * kernel, which at 10,000 cgroups was most of a decision.  A css removed
 * while we stand on it keeps its sibling pointer (list_del_rcu()), so the
 * walk goes on past it; released ones are not ranked, as the iterator skips
 * them.  Each step goes down, across or up one edge, twice the cgroups at
 * most; a walk cut short (POLICYD_WALK_STEPS, or a fault) is reported
 * (event.walk_cut).
 */
static __noinline void rank_cgroups(struct cgroup *scope)
{
	__u64 off_sibling = bpf_core_field_offset(struct cgroup_subsys_state, sibling);
	__u64 off_children = bpf_core_field_offset(struct cgroup_subsys_state, children);
	/* The walk stands on cgroups' own css, cgroup->self. */
	__u64 off_self = bpf_core_field_offset(struct cgroup, self);
	__u64 root = (__u64)&scope->self, pos = root, next, parent;
	struct cgroup_subsys_state *css;
	bool up = false;	/* back from pos's subtree: pos was ranked already */
	int step;

	heap_len = 0;
	/* Until the walk is back at the root. */
	event.walk_cut = 1;
	bpf_rcu_read_lock();
	bpf_for(step, 0, walk_steps) {
		if (!up)
			rank_one(bpf_core_cast((void *)(pos - off_self), struct cgroup));
		css = bpf_core_cast((void *)pos, struct cgroup_subsys_state);
		next = (__u64)css->children.next;
		if (!up && next && next != pos + off_children) {
			/* Down to the first child. */
			pos = next - off_sibling;
			continue;
		}
		if (pos == root) {
			event.walk_cut = 0;
			break;
		}
		next = (__u64)css->sibling.next;
		parent = (__u64)css->parent;
		/* 0: a fault, the css gone from under us. */
		if (!next || !parent)
			break;
		if (next != parent + off_children) {
			/* Across to the next sibling. */
			pos = next - off_sibling;
			up = false;
			continue;
		}
		/* Up: the parent's subtree is done. */
		pos = parent;
		up = true;
	}
	bpf_rcu_read_unlock();
}

/* The cgroup whose subtree this OOM may kill in: the OOMing memcg's, or all. */
static __always_inline struct cgroup *scope_cgroup(struct oom_control *oc)
{
	struct mem_cgroup *memcg = oc->memcg;

	if (!memcg)
		return bpf_cgroup_from_id(1);
	return bpf_cgroup_from_id(memcg->css.cgroup->kn->id);
}

static __always_inline void record_victim(struct task_struct *task)
{
	event.victim_pid = task->tgid;
	event.victim_task_rss = task_rss_pages(task) * PAGE_SIZE;
	bpf_probe_read_kernel_str(event.victim_comm, sizeof(event.victim_comm), task->comm);
}

/*
 * OOM victims, by tgid, as the kernel marks them (mark_oom_victim(): every
 * kill, the kernel's, ours, memory.oom.group's, and a task that was exiting
 * anyway).  Marking and handlers both run under oom_lock: no two at once.
 * The handler looks for a victim still exiting among these rather than
 * through every process, so that an OOM costs the same with 10 or 50,000
 * tasks outside the victim's cgroup.  Complete only once a walk of every
 * process has added the victims marked before this object was loaded
 * (victims_complete), and again whenever marking overflows the list; until
 * then each OOM walks every process, as the kernel's own selection does.
 */
#define POLICYD_MAX_VICTIMS 128
__s32 victim_tgids[POLICYD_MAX_VICTIMS];
__u32 nr_victims;
bool victims_complete;

SEC("tp_btf/mark_victim")
int BPF_PROG(policyd_mark_victim, struct task_struct *task, uid_t uid)
{
	__u32 n = nr_victims;

	if (n >= POLICYD_MAX_VICTIMS) {
		victims_complete = false;
		return 0;
	}
	victim_tgids[n] = task->tgid;
	nr_victims = n + 1;
	return 0;
}

/* Adds @tgid to the list; false if it is full. */
static __always_inline bool remember_victim(__s32 tgid)
{
	__u32 n = nr_victims;

	if (n >= POLICYD_MAX_VICTIMS)
		return false;
	victim_tgids[n] = tgid;
	nr_victims = n + 1;
	return true;
}

/*
 * Whether @task, an OOM victim, resolves this OOM by waiting for it: in
 * scope and its memory not given up on.  Sets oc->bpf_memory_freed if so.
 * Return: 0 to wait for it; -ESRCH (done, forget it); other errors: not now.
 */
static __always_inline int await_victim(struct oom_control *oc, struct cgroup *scope,
					struct task_struct *task)
{
	if (oc->memcg && !bpf_task_under_cgroup(task, scope))
		return -18; /* -EXDEV */
	return bpf_oom_await_victim(oc, task);
}

/*
 * The victim to wait for, once found, and the list being refilled: globals,
 * like `scan`, so that the loops below carry no values and converge at once.
 */
struct {
	__s32 pid;
	__u32 kept;
	bool complete;
} awaiting;

/* The walk of every process: finds a victim to wait for and refills the list. */
static __noinline void await_victim_walk(struct oom_control *oc, struct cgroup *scope)
{
	struct task_struct *task;

	metrics.victim_walks++;
	nr_victims = 0;
	awaiting.complete = true;
	bpf_rcu_read_lock();
	bpf_for_each(task, task, NULL, BPF_TASK_ITER_ALL_PROCS) {
		if (!bpf_task_is_oom_victim(task))
			continue;
		if (!awaiting.pid && !await_victim(oc, scope, task))
			awaiting.pid = task->tgid;
		if (!remember_victim(task->tgid))
			awaiting.complete = false;
	}
	bpf_rcu_read_unlock();
	victims_complete = awaiting.complete;
}

/* The victims of the list: finds one to wait for and drops the finished. */
static __noinline void await_victim_listed(struct oom_control *oc, struct cgroup *scope)
{
	struct task_struct *task;
	__u32 i, n = nr_victims;
	__s32 tgid;
	int err;

	awaiting.kept = 0;
	bpf_for(i, 0, POLICYD_MAX_VICTIMS) {
		if (i >= n)
			break;
		tgid = victim_tgids[i];
		task = bpf_task_from_pid(tgid);
		if (!task)
			continue;
		if (!bpf_task_is_oom_victim(task)) {
			/* Its pid, reused. */
			bpf_task_release(task);
			continue;
		}
		err = await_victim(oc, scope, task);
		bpf_task_release(task);
		if (err == -3) /* -ESRCH: its memory is gone or given up on. */
			continue;
		if (!err && !awaiting.pid)
			awaiting.pid = tgid;
		if (awaiting.kept < POLICYD_MAX_VICTIMS)
			victim_tgids[awaiting.kept++] = tgid;
	}
	nr_victims = awaiting.kept;
}

/*
 * An earlier OOM victim anywhere in the OOM's scope that is still releasing
 * its memory: wait for it, as the kernel's select_bad_process() does, rather
 * than kill a second task.  Looked for across the whole scope before any
 * ranking: the victim's cgroup need not rank first any more (under `largest`
 * it shrinks as the memory comes back).
 *
 * Return: true if the OOM is resolved by waiting; the event says for whom.
 */
static __noinline bool await_victim_in_scope(struct oom_control *oc, struct cgroup *scope)
{
	struct policyd_rule rule;
	struct task_struct *task;
	struct cgroup *cgrp;
	__s32 pid;

	awaiting.pid = 0;
	if (victims_complete)
		await_victim_listed(oc, scope);
	else
		await_victim_walk(oc, scope);
	pid = awaiting.pid;
	if (!pid)
		return false;

	/* Handled from here on, even if the victim is gone by now. */
	event.outcome = POLICYD_OUTCOME_AWAITED;
	event.reason = POLICYD_REASON_VICTIM_EXITING;
	event.victim_pid = pid;
	task = bpf_task_from_pid(pid);
	if (task) {
		record_victim(task);
		/* A threaded cgroup's processes belong to its domain. */
		cgrp = task->cgroups->dfl_cgrp->dom_cgrp;
		event.victim_cgroup_id = cgrp->kn->id;
		event.victim_usage = cgroup_usage(cgrp);
		rule_of(cgrp, &rule);
		event.victim_priority = rule.priority;
		bpf_task_release(task);
	}
	return true;
}

/*
 * What a scan of one cgroup's tasks found.  Kept in a global rather than on
 * the stack: the verifier then sees no loop-carried values and the task loops
 * converge at once, whatever the number of tasks.
 */
struct {
	__u64 best_rss;
	__s32 best_pid;
	__u32 killed;
	__u32 tasks;
	__u32 exiting;
} scan;

/* Find the largest killable task of @cgrp, or an earlier victim still exiting. */
static __noinline void scan_tasks(struct oom_control *oc, struct cgroup *cgrp)
{
	struct bpf_iter_css_task it;
	struct task_struct *task;
	__u64 rss;

	scan.best_rss = 0;
	scan.best_pid = 0;
	scan.tasks = 0;
	scan.exiting = 0;

	/*
	 * THREADED: the processes of the cgroup's threaded subtree too.
	 * WITH_DEAD: a victim tearing down its memory is exiting, not gone.
	 */
	bpf_iter_css_task_new(&it, &cgrp->self,
			      CSS_TASK_ITER_PROCS | CSS_TASK_ITER_THREADED | CSS_TASK_ITER_WITH_DEAD);
	while ((task = bpf_iter_css_task_next(&it))) {
		if (bpf_task_is_oom_victim(task) && !bpf_oom_await_victim(oc, task)) {
			event.outcome = POLICYD_OUTCOME_AWAITED;
			event.reason = POLICYD_REASON_VICTIM_EXITING;
			record_victim(task);
			break;
		}
		scan.tasks++;
		if (task_unkillable(task))
			continue;
		if (!task->mm) {
			scan.exiting++;
			continue;
		}
		rss = task_rss_pages(task);
		if (scan.best_pid && (rss < scan.best_rss ||
				      (rss == scan.best_rss && task->tgid > scan.best_pid)))
			continue;
		scan.best_rss = rss;
		scan.best_pid = task->tgid;
	}
	bpf_iter_css_task_destroy(&it);
}

static __always_inline void kill_task(struct oom_control *oc, struct task_struct *task)
{
	int err = bpf_oom_kill_process(oc, task, "policyd");

	if (!err)
		scan.killed++;
	else
		event.kill_err = err;
}

/* Every killable task of @cgrp but the one already killed. */
static __noinline void kill_rest(struct oom_control *oc, struct cgroup *cgrp)
{
	struct bpf_iter_css_task it;
	struct task_struct *task;

	bpf_iter_css_task_new(&it, &cgrp->self, CSS_TASK_ITER_PROCS | CSS_TASK_ITER_THREADED);
	while ((task = bpf_iter_css_task_next(&it))) {
		if (task->tgid == scan.best_pid || task_unkillable(task) || !task->mm ||
		    bpf_task_is_oom_victim(task))
			continue;
		kill_task(oc, task);
	}
	bpf_iter_css_task_destroy(&it);
}

/*
 * Kill inside @cand's cgroup as its rule says: its largest task, or all of
 * them, largest first so that the OOM report shows it.  An earlier OOM victim
 * still exiting there means memory is on its way: wait for it instead.  A
 * cgroup with nothing to kill is counted in the event by why.
 *
 * Return: the number of tasks killed.  Sets event.outcome when it awaited,
 * event.victim_* for the (largest) victim, and event.kill_err on failures.
 * A global function: verified once, not on each pass over kill_ranked()'s
 * loop.
 */
__noinline int kill_in_cgroup(struct oom_control *oc __arg_trusted,
			   struct policyd_candidate *cand __arg_nonnull)
{
	struct task_struct *task;
	struct cgroup *cgrp;

	scan.killed = 0;
	cgrp = bpf_cgroup_from_id(cand->cgroup_id);
	if (!cgrp) {
		event.passed_empty++;
		return 0;
	}

	scan_tasks(oc, cgrp);
	if (event.outcome == POLICYD_OUTCOME_AWAITED)
		goto out;
	if (!scan.best_pid) {
		if (!scan.tasks)
			event.passed_empty++;
		else if (scan.exiting)
			event.passed_exiting++;
		else
			event.passed_unkillable++;
		goto out;
	}

	task = bpf_task_from_pid(scan.best_pid);
	if (!task) {
		event.passed_empty++;
		goto out;
	}
	record_victim(task);
	if (!dry_run)
		kill_task(oc, task);
	bpf_task_release(task);

	if (cand->kill == POLICYD_KILL_CGROUP && !dry_run)
		kill_rest(oc, cgrp);
	if (!dry_run && !scan.killed) {
		/* Refused (e.g. -ESRCH: its memory was gone already). */
		event.passed_refused++;
		event.victim_pid = 0;
		event.victim_task_rss = 0;
		__builtin_memset(event.victim_comm, 0, sizeof(event.victim_comm));
	}
out:
	bpf_cgroup_release(cgrp);
	return scan.killed;
}

/*
 * Try the ranked candidates, best first, until one dies.  The first few go
 * into the event as a report; the search itself goes on through all of them.
 */
static __noinline void kill_ranked(struct oom_control *oc, enum policyd_reason reason)
{
	struct policyd_candidate cand, next;
	int i, killed;

	if (!heap_len) {
		event.reason = POLICYD_REASON_NO_CANDIDATE;
		return;
	}

	bpf_for(i, 0, POLICYD_MAX_CGROUPS) {
		if (!heap_pop(&cand))
			break;
		if (i < POLICYD_EVENT_CANDIDATES)
			event.ranked[i] = cand;
		event.tried++;

		killed = kill_in_cgroup(oc, &cand);
		if (!killed && !(dry_run && event.victim_pid) &&
		    event.outcome != POLICYD_OUTCOME_AWAITED)
			continue;

		event.victim_cgroup_id = cand.cgroup_id;
		event.victim_priority = cand.priority;
		event.victim_usage = cand.usage;
		if (event.outcome == POLICYD_OUTCOME_AWAITED)
			return;
		event.reason = reason;
		if (heap_pop(&next)) {
			event.runner_up = next;
			if (i + 1 < POLICYD_EVENT_CANDIDATES)
				event.ranked[i + 1] = next;
			if (pref_rank(next.pref) != pref_rank(cand.pref))
				event.reason = POLICYD_REASON_PREFERENCE;
			else if (reason == POLICYD_REASON_LOWEST_PRIORITY &&
				 next.priority == cand.priority)
				event.reason = POLICYD_REASON_LARGER_USAGE;
		}
		if (killed) {
			event.tasks_killed = killed;
			event.outcome = POLICYD_OUTCOME_KILLED;
		} else {
			event.outcome = POLICYD_OUTCOME_DRY_RUN;
		}
		return;
	}
	event.outcome = POLICYD_OUTCOME_KILL_FAILED;
}

/* `observe`: the report of how `priority` would rank, nothing more. */
static __noinline void report_ranked(void)
{
	struct policyd_candidate cand;
	int i;

	bpf_for(i, 0, POLICYD_EVENT_CANDIDATES) {
		if (!heap_pop(&cand))
			break;
		event.ranked[i] = cand;
	}
}

/* oom_badness(): RSS, swap and page tables, shifted by oom_score_adj. */
static __always_inline long task_badness(struct task_struct *task, unsigned long totalpages)
{
	struct mm_struct *mm = task->mm;
	long points, adj;

	if (task->signal->oom_flag_origin)
		return LONG_MAX;
	adj = task->signal->oom_score_adj;
	if (adj == OOM_SCORE_ADJ_MIN ||
	    (task->vfork_done && task->real_parent->mm == mm))
		return LONG_MIN;

	points = task_rss_pages(task) + mm_counter_sum(mm, MM_SWAPENTS) +
		 (unsigned long)BPF_CORE_READ(mm, pgtables_bytes.counter) / PAGE_SIZE;
	return points + adj * (long)(totalpages / 1000);
}

/*
 * `badness`: the kernel's scan, every process in scope, the last of equals
 * winning, and an exiting victim meaning wait.
 */
static __noinline void kill_by_badness(struct oom_control *oc, struct cgroup *scope)
{
	unsigned long totalpages = oc->totalpages;
	long best_points = LONG_MIN, points;
	struct task_struct *task;
	struct cgroup *cgrp;
	__s32 best_pid = 0;
	bool awaited = false;
	int err;

	bpf_rcu_read_lock();
	bpf_for_each(task, task, NULL, BPF_TASK_ITER_ALL_PROCS) {
		if (task->tgid == 1 || (task->flags & PF_KTHREAD))
			continue;
		if (oc->memcg && !bpf_task_under_cgroup(task, scope))
			continue;
		/* Before the mm check: a victim tearing down its memory has no mm left. */
		if (bpf_task_is_oom_victim(task)) {
			if (!bpf_oom_await_victim(oc, task)) {
				awaited = true;
				best_pid = task->tgid;
				break;
			}
			continue;
		}
		if (!task->mm)
			continue;
		event.candidates++;
		points = task_badness(task, totalpages);
		if (points == LONG_MIN || points < best_points)
			continue;
		best_points = points;
		best_pid = task->tgid;
	}
	bpf_rcu_read_unlock();

	if (!best_pid) {
		event.reason = POLICYD_REASON_NO_CANDIDATE;
		return;
	}
	if (awaited) {
		/* Handled even if the victim is gone by the time we look it up. */
		event.outcome = POLICYD_OUTCOME_AWAITED;
		event.victim_pid = best_pid;
	}
	event.reason = awaited ? POLICYD_REASON_VICTIM_EXITING : POLICYD_REASON_BADNESS;

	task = bpf_task_from_pid(best_pid);
	if (!task)
		return;
	record_victim(task);
	/* A threaded cgroup's processes belong to its domain. */
	cgrp = task->cgroups->dfl_cgrp->dom_cgrp;
	event.victim_cgroup_id = cgrp->kn->id;
	event.victim_usage = cgroup_usage(cgrp);
	event.tried = 1;

	if (awaited) {
		event.outcome = POLICYD_OUTCOME_AWAITED;
	} else if (dry_run) {
		event.outcome = POLICYD_OUTCOME_DRY_RUN;
	} else {
		err = bpf_oom_kill_process(oc, task, "policyd: oom_badness");
		if (!err) {
			event.tasks_killed = 1;
			event.outcome = POLICYD_OUTCOME_KILLED;
		} else {
			event.kill_err = err;
			event.outcome = POLICYD_OUTCOME_KILL_FAILED;
		}
	}
	bpf_task_release(task);
}

/*
 * The OOM declare_oom() is declaring, while it does: its trigger and cgroup.
 * The handler runs inside that call, under oom_lock, and takes the trigger
 * only for a declared OOM (oc->bpf_declared) of the same cgroup: a real OOM
 * that holds oom_lock meanwhile (declare_oom() then gets -EBUSY) keeps 0.
 */
__u64 declaring_trigger;
__u64 declaring_cgroup;

static __always_inline __u64 trigger_of(struct oom_control *oc, __u64 oom_cgroup_id)
{
	if (!bpf_core_field_exists(oc->bpf_declared) || !oc->bpf_declared)
		return 0;
	return oom_cgroup_id == declaring_cgroup ? declaring_trigger : 0;
}

static __always_inline void begin_event(struct oom_control *oc)
{
	struct mem_cgroup *memcg = oc->memcg;

	__builtin_memset(&event, 0, sizeof(event));
	event.timestamp_ns = bpf_ktime_get_ns();
	event.policy = policy;
	event.scope_global = !memcg;
	event.oom_cgroup_id = memcg ? memcg->css.cgroup->kn->id : 0;
	event.trigger = trigger_of(oc, event.oom_cgroup_id);
	event.outcome = POLICYD_OUTCOME_DEFERRED;
	stats.ooms++;
	read_cpu_offsets();
}

/*
 * The handler time histogram's bucket for a run of @ns (policyd.h).  A loop
 * over the buckets' bounds: a floor(log2()) by halvings gives the verifier
 * a constant on each of its 64 paths, and it would verify them all, at
 * each of the handler's exits.
 */
static __always_inline __u32 handler_bucket(__u64 ns)
{
	__u32 b;

	bpf_for(b, 0, POLICYD_HANDLER_BUCKETS - 1) {
		if (ns < 1ULL << (POLICYD_HANDLER_BUCKET0_SHIFT + b))
			return b;
	}
	return POLICYD_HANDLER_BUCKETS - 1;
}

/* Count the decision under its victim cgroup, if it named one. */
static __always_inline void count_decision(void)
{
	struct policyd_decision_key key = {};
	__u64 one = 1, *n;

	if (!event.victim_cgroup_id)
		return;
	key.cgroup_id = event.victim_cgroup_id;
	key.outcome = event.outcome;
	n = bpf_map_lookup_elem(&decisions, &key);
	if (n)
		(*n)++;
	else if (bpf_map_update_elem(&decisions, &key, &one, BPF_NOEXIST))
		metrics.decisions_untracked++;
}

/* Events published so far, and the run of awaits (policyd.h) going on. */
__u64 event_seq;
__u64 await_run;
struct {
	__s32 pid;
	__u64 cgroup_id;
} run_victim;

/*
 * Publish the event, unless it awaits the victim the last published one
 * awaited: then count it in the run.  Return: 0 if the ring was full.
 */
static __always_inline bool publish_event(void)
{
	const __u64 repeats_mask = (1ULL << POLICYD_AWAIT_RUN_SEQ_SHIFT) - 1;
	bool awaited = event.outcome == POLICYD_OUTCOME_AWAITED;

	if (awaited && run_victim.pid && event.victim_pid == run_victim.pid &&
	    event.victim_cgroup_id == run_victim.cgroup_id) {
		/* One store: policyd reads the word while handlers run. */
		await_run = await_run + 1;
		return true;
	}
	event.seq = ++event_seq;
	event.repeats_before = await_run & repeats_mask;
	await_run = event.seq << POLICYD_AWAIT_RUN_SEQ_SHIFT;
	run_victim.pid = awaited ? event.victim_pid : 0;
	run_victim.cgroup_id = awaited ? event.victim_cgroup_id : 0;
	return !bpf_ringbuf_output(&events, &event, sizeof(event), 0);
}

/* Account and publish the event; the handler's return value follows from it. */
static __always_inline int finish_event(void)
{
	__u64 ns = bpf_ktime_get_ns() - event.timestamp_ns;
	__u32 bucket;

	event.handler_ns = ns;
	stats.handler_ns_total += ns;
	if (ns > stats.handler_ns_max)
		stats.handler_ns_max = ns;
	bucket = handler_bucket(ns);
	if (bucket < POLICYD_HANDLER_BUCKETS)
		metrics.handler_ns_log2[bucket]++;
	count_decision();

	switch (event.outcome) {
	case POLICYD_OUTCOME_KILLED:
		stats.kills += event.tasks_killed;
		break;
	case POLICYD_OUTCOME_AWAITED:
		stats.awaited++;
		break;
	case POLICYD_OUTCOME_DRY_RUN:
		stats.dry_runs++;
		break;
	case POLICYD_OUTCOME_KILL_FAILED:
		stats.kill_failures++;
		stats.deferred++;
		break;
	default:
		stats.deferred++;
		break;
	}

	if (!publish_event())
		stats.events_dropped++;

	return event.outcome == POLICYD_OUTCOME_KILLED ||
	       event.outcome == POLICYD_OUTCOME_AWAITED;
}

SEC("struct_ops.s/handle_out_of_memory")
int BPF_PROG(policyd_handle_oom, struct oom_control *oc, struct bpf_struct_ops_link *st_link)
{
	struct cgroup *scope;

	begin_event(oc);
	scope = scope_cgroup(oc);
	/* One exit: the verifier checks finish_event() once per path into it. */
	if (!scope)
		goto out;

	if (policy == POLICYD_POLICY_BADNESS) {
		kill_by_badness(oc, scope);
	} else if (policy == POLICYD_POLICY_OBSERVE) {
		event.reason = POLICYD_REASON_OBSERVE_ONLY;
		rank_cgroups(scope);
		report_ranked();
	} else if (!await_victim_in_scope(oc, scope)) {
		rank_cgroups(scope);
		kill_ranked(oc, policy == POLICYD_POLICY_LARGEST ? POLICYD_REASON_LARGEST_USAGE :
								   POLICYD_REASON_LOWEST_PRIORITY);
	}
	bpf_cgroup_release(scope);
out:
	return finish_event();
}

/* What find_ops_layout() found. */
struct policyd_ops_layout ops_layout;

/*
 * The layout of a bpf_oom_ops struct_ops map's value in the running kernel,
 * for policyd to fill it: CO-RE relocations resolved against the kernel's
 * BTF that libbpf parsed to load this object, so that policyd need not parse
 * it once more (a tenth of a second under TCG).  Run once after the load.
 * Return: 0, or -ENOENT if the kernel has no BPF OOM struct_ops.
 */
SEC("syscall")
int find_ops_layout(void *ctx)
{
	if (!bpf_core_type_exists(struct bpf_struct_ops_bpf_oom_ops) ||
	    !bpf_core_field_exists(struct bpf_oom_ops, handle_out_of_memory) ||
	    !bpf_core_field_exists(struct bpf_oom_ops, name))
		return -2; /* -ENOENT */
	ops_layout.value_type_id = bpf_core_type_id_kernel(struct bpf_struct_ops_bpf_oom_ops);
	ops_layout.data = bpf_core_field_offset(struct bpf_struct_ops_bpf_oom_ops, data);
	ops_layout.handler = bpf_core_field_offset(struct bpf_oom_ops, handle_out_of_memory);
	ops_layout.name = bpf_core_field_offset(struct bpf_oom_ops, name);
	ops_layout.ops_size = bpf_core_type_size(struct bpf_oom_ops);
	return 0;
}

/*
 * Declares an OOM of args->cgroup_id (0: the whole system) for policyd when
 * a pressure limit held: the kernel runs the OOM handlers, this object's
 * first, as for a real OOM, and its killer if none freed anything.  Never
 * waits for oom_lock: an OOM being handled already is as good (-EBUSY).
 */
SEC("syscall")
int declare_oom(struct policyd_declare *args)
{
	struct mem_cgroup *memcg = NULL;
	struct cgroup *cgrp;

	/* A weak kfunc: this object still loads on a kernel without it. */
	if (!bpf_ksym_exists(bpf_out_of_memory)) {
		args->ret = -38; /* -ENOSYS */
		return 0;
	}
	if (args->cgroup_id) {
		cgrp = bpf_cgroup_from_id(args->cgroup_id);
		if (!cgrp) {
			args->ret = -2; /* -ENOENT */
			return 0;
		}
		memcg = bpf_get_mem_cgroup(&cgrp->self);
		bpf_cgroup_release(cgrp);
		if (!memcg) {
			args->ret = -2;
			return 0;
		}
	}

	declaring_cgroup = args->cgroup_id;
	declaring_trigger = args->trigger;
	args->ret = bpf_out_of_memory(memcg, 0, 0);
	declaring_trigger = 0;
	declaring_cgroup = 0;

	if (memcg)
		bpf_put_mem_cgroup(memcg);
	return 0;
}

/* See struct policyd_find_rule.  Return: -ENOENT before policyd installs rules. */
SEC("syscall")
int find_rule_of(struct policyd_find_rule *args)
{
	struct policyd_rule *created, rule;
	struct cgroup *cgrp;
	__u64 id;

	if (!rules_table())
		return -2; /* -ENOENT */
	args->found = 0;
	if (!args->serial) {
		cgrp = bpf_cgroup_from_id(args->cgroup_id);
		if (cgrp) {
			args->serial = cgrp->self.serial_nr;
			bpf_cgroup_release(cgrp);
		}
	}
	if (table_rule(args->serial, &rule, &id)) {
		args->rule = rule;
		args->table_id = id;
		args->found = 1;
		return 0;
	}
	created = created_rule(args->cgroup_id);
	if (created) {
		args->rule = *created;
		args->found = 2;
	}
	return 0;
}

/* Room: policyd's --max-cgroups, set before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, POLICYD_MAX_CGROUPS);
	/* policyd reads the pairs through a mapping. */
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct policyd_serial);
} serials SEC(".maps");

/*
 * The id and css serial number of each cgroup of a subtree, into `serials`,
 * for policyd to key the rules table by (struct policyd_rule_slot).  The
 * kernel's css iterator: slower than the handler's walk, but this runs when
 * policyd builds a table, not in an OOM.
 */
SEC("syscall")
int cgroup_serials(struct policyd_serials *args)
{
	struct cgroup_subsys_state *pos;
	struct policyd_serial *pair;
	struct cgroup *root;
	__u32 n = 0, found = 0;

	root = bpf_cgroup_from_id(args->root_id);
	if (!root)
		return -2; /* -ENOENT */
	bpf_rcu_read_lock();
	bpf_for_each(css, pos, &root->self, BPF_CGROUP_ITER_DESCENDANTS_PRE) {
		found++;
		pair = bpf_map_lookup_elem(&serials, &n);
		if (!pair)
			continue;
		pair->cgroup_id = pos->cgroup->kn->id;
		pair->serial = pos->serial_nr;
		n++;
	}
	bpf_rcu_read_unlock();
	bpf_cgroup_release(root);
	args->stored = n;
	args->found = found;
	return 0;
}

/*
 * The cgroup tree for policyd's start-up and reloads, one record per live
 * cgroup, parents first: one read(2) of this iterator instead of a listing
 * and a listxattr(2) per cgroup directory.  The records go to a ring buffer,
 * not to the iterator's seq_file: a cgroup iterator cannot go on once its
 * 32 KiB of seq_file buffer are full (cgroup_mutex is dropped between
 * reads), a few hundred cgroups' worth.  policyd sizes `tree` before load.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} tree SEC(".maps");

/* Records of the walk under way that found `tree` full. */
static __u32 tree_dropped;

/* struct simple_xattr_limits' user.* count misses trusted.*: look at the list. */
static __always_inline __u8 kn_has_xattrs(struct kernfs_node *kn)
{
	struct kernfs_iattrs *attrs = BPF_CORE_READ(kn, iattr);
	unsigned long head, first;

	if (!attrs)
		return 0;
	head = (unsigned long)attrs + bpf_core_field_offset(struct kernfs_iattrs, xattrs);
	first = (unsigned long)BPF_CORE_READ(attrs, xattrs.next);
	return first != head;
}

SEC("iter/cgroup")
int read_tree(struct bpf_iter__cgroup *ctx)
{
	struct cgroup *cgrp = ctx->cgroup;
	struct policyd_tree_record rec = {};
	struct kernfs_node *kn;
	long len;

	if (!cgrp) {
		/* Past the last cgroup: end the walk, saying whether it all fit. */
		rec.dropped = tree_dropped;
		tree_dropped = 0;
		/* No room for it either: policyd sees a walk without an end. */
		bpf_ringbuf_output(&tree, &rec, sizeof(rec) - sizeof(rec.name), 0);
		return 0;
	}
	/* Removed (rmdir) but not freed yet: no directory, no entry. */
	if (!(BPF_CORE_READ(cgrp, self.flags) & CSS_ONLINE))
		return 0;
	kn = BPF_CORE_READ(cgrp, kn);
	rec.id = BPF_CORE_READ(kn, id);
	rec.parent_id = BPF_CORE_READ(kn, __parent, id);
	rec.level = BPF_CORE_READ(cgrp, level);
	rec.has_xattrs = kn_has_xattrs(kn);
	len = bpf_probe_read_kernel_str(rec.name, sizeof(rec.name), BPF_CORE_READ(kn, name));
	if (len < 1)
		len = 1;
	rec.name_len = len - 1;
	if (bpf_ringbuf_output(&tree, &rec,
			       sizeof(rec) - sizeof(rec.name) + (rec.name_len & (POLICYD_TREE_NAME_MAX - 1)),
			       0))
		tree_dropped++;
	return 0;
}

/* policyd writes the handler's name ("policyd_<policy>") when it attaches. */
SEC(".struct_ops.link")
struct bpf_oom_ops policyd_ops = {
	.handle_out_of_memory = (void *)policyd_handle_oom,
	.name = "policyd",
};

/*
 * Not used by the handler: puts every enum of policyd.h, and the tree
 * record read_tree only fills on its stack, into this object's BTF, which
 * otherwise holds only the types the code refers to.  The skeleton generates
 * Rust for them from there (policyd/abi.rs takes its constants and enum
 * values from it).  312 bytes of .rodata, never read.
 */
struct policyd_abi {
	enum policyd_limits limits;
	enum policyd_kill kill;
	enum policyd_policy policy;
	enum policyd_reason reason;
	enum policyd_outcome outcome;
	enum policyd_pref pref;
	struct policyd_tree_record tree_record;
	/* Complete in the BTF (libbpf sizes the table map from it), 0 bytes here. */
	struct policyd_rule_table rule_table[0];
};

const volatile struct policyd_abi policyd_abi;
