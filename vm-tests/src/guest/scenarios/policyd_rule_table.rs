//! The rules table against the handler's search. policyd places each cgroup's entry
//! (policyd/rule_table.rs) where the handler looks for it (table_rule() in
//! policyd.bpf.c): two implementations of one hash. Tables of generated ids, up to the
//! most one holds, are built and installed into a loaded policy object, whose
//! find_rule_of program runs the handler's own search: it must find every id's rule, in
//! the table, and nothing for ids left out. Then the hash of cgroups created after the
//! table (policyd::kernel_rules): a new cgroup's entry, a changed one, a removed one, and
//! a change to a cgroup of the table, which calls for a new table.

use std::collections::HashSet;

use anyhow::{ensure, Context, Result};
use policyd::abi::{self, PolicydRule};
use policyd::kernel_rules::{self, Added, KernelRules};
use policyd::loader::{FoundIn, PolicyObject, Settings};
use policyd::policy::PolicyName;

use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-rule-table", run)
        .needs_policyd()
        .timeout_s(300)
}

fn rule(priority: u32) -> PolicydRule {
    PolicydRule {
        priority,
        ..Default::default()
    }
}

/// xorshift64*: ids no layout of kernfs makes.
fn random_ids(mut x: u64, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1
        })
        .collect()
}

/// The sets of ids: a full table of kernfs-like ids (generation 1, inode numbers some
/// files apart), random ids, dense small ids, and one inode number in 100 generations.
fn id_sets() -> Vec<(&'static str, Vec<u64>)> {
    let full = abi::MAX_CGROUPS as u64 - 1;
    vec![
        (
            "kernfs, full",
            (0..full).map(|i| 1 << 32 | (1000 + 53 * i)).collect(),
        ),
        ("random", random_ids(0x5eed, 20_000)),
        ("dense", (1..=1000).collect()),
        ("generations", (1..=100).map(|g| g << 32 | 5000).collect()),
    ]
}

fn run() -> Result<()> {
    let mut obj = PolicyObject::open_load(&Settings {
        policy: PolicyName::Priority,
        dry_run: false,
        max_cgroups: abi::MAX_CGROUPS,
        walk_steps: abi::WALK_STEPS,
        tree_cgroups: None,
    })
    .context("loading the priority object")?;

    for (name, ids) in id_sets() {
        let mut entries = vec![(abi::DEFAULTS_KEY, rule(7))];
        entries.extend(
            ids.iter()
                .enumerate()
                .map(|(i, &id)| (id, rule(i as u32 + 1))),
        );
        let rules = KernelRules::build(&obj, &entries).context(name)?;
        rules.install(&obj)?;
        for (i, &id) in ids.iter().enumerate() {
            let found = obj.find_rule(id)?;
            ensure!(
                found == Some((rule(i as u32 + 1), FoundIn::Table)),
                "{name}: id {id:#x} (#{i}): the handler finds {found:?}"
            );
        }
        // Ids left out: other generations of the first 2000.
        let known: HashSet<u64> = ids.iter().copied().collect();
        let mut others = 0;
        for &id in ids.iter().take(2000) {
            for other in [id ^ 1 << 40, id.wrapping_add(1 << 33)] {
                if known.contains(&other) {
                    continue;
                }
                let found = obj.find_rule(other)?;
                ensure!(
                    found.is_none(),
                    "{name}: id {other:#x} is not in the table, the handler finds {found:?}"
                );
                others += 1;
            }
        }
        println!(
            "{name}: {} ids, each found at its entry; {others} others found nowhere",
            ids.len()
        );
    }

    // A table of a few cgroups, then cgroups created since.
    let table_ids: Vec<u64> = (1..=10).map(|i| 1 << 32 | (100 + i)).collect();
    let mut entries = vec![(abi::DEFAULTS_KEY, rule(7))];
    entries.extend(table_ids.iter().map(|&id| (id, rule(50))));
    let mut rules = KernelRules::build(&obj, &entries)?;
    rules.install(&obj)?;
    let new = 1 << 32 | 500;
    ensure!(
        matches!(rules.add(new, &rule(60))?, Added::Added),
        "adding {new:#x}"
    );
    ensure!(
        obj.find_rule(new)? == Some((rule(60), FoundIn::Created)),
        "a new cgroup's entry: the handler finds {:?}",
        obj.find_rule(new)?
    );
    rules.change(new, &rule(61))?;
    ensure!(
        obj.find_rule(new)? == Some((rule(61), FoundIn::Created))
            && !rules.outdated()
            && !rules.crowded(),
        "a new cgroup's changed entry: the handler finds {:?}",
        obj.find_rule(new)?
    );
    rules.remove(new);
    ensure!(
        obj.find_rule(new)?.is_none(),
        "a removed new cgroup still has an entry"
    );
    rules.change(table_ids[0], &rule(51))?;
    ensure!(
        rules.outdated() && obj.find_rule(table_ids[0])? == Some((rule(50), FoundIn::Table)),
        "a change to a cgroup of the table must wait for a new table, which must be asked for"
    );
    println!(
        "new cgroups: added, changed and removed in the hash; a table cgroup's change asks \
         for a new table"
    );

    // So many new cgroups that the handler would spend long in the hash.
    let mut rules = KernelRules::build(&obj, &entries)?;
    rules.install(&obj)?;
    let min = kernel_rules::REBUILD_MIN_CREATED as u64;
    for i in 0..min {
        ensure!(
            !rules.crowded(),
            "a new table asked for after {i} new cgroups"
        );
        rules.add(2 << 32 | i, &rule(70))?;
    }
    ensure!(
        rules.crowded() && !rules.outdated(),
        "no new table asked for after {min} new cgroups"
    );
    println!("{min} new cgroups ask for a new table, {} did not", min - 1);
    Ok(())
}
