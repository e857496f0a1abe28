//! The rules table against the handler's search. policyd places each cgroup's entry
//! (policyd/rule_table.rs) where the handler looks for it (table_rule() in
//! policyd.bpf.c): two implementations of one hash. Tables of generated cgroups (id and
//! css serial number, the key), up to the most one holds, are built and installed into
//! a loaded policy object, whose find_rule_of program runs the handler's own search: it
//! must find every cgroup's rule and id, in the table, and nothing for cgroups left out.
//! Then real cgroups: the serial numbers policyd lists (cgroup_serials) are the
//! kernel's, and each cgroup's slot gives the handler its own id, also for cgroups past
//! the room of the listing, which go into the hash. Then the hash of cgroups created
//! after the table (policyd::kernel_rules): a new cgroup's entry, a changed one, a
//! removed one, and a change to a cgroup of the table, which calls for a new table.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// The sets of (id, serial number) pairs: a full table as the kernel numbers cgroups
/// (ids: generation 1, inode numbers some files apart; serial numbers a few apart),
/// random ids and serial numbers, dense small ones, and one inode number in 100
/// generations.
fn cgroup_sets() -> Vec<(&'static str, Vec<(u64, u64)>)> {
    let full = abi::MAX_CGROUPS as u64 - 1;
    let random = random_ids(0x5eed, 20_000);
    vec![
        (
            "kernfs, full",
            (0..full)
                .map(|i| (1 << 32 | (1000 + 53 * i), 40 + 3 * i))
                .collect(),
        ),
        (
            "random",
            random
                .iter()
                .zip(random_ids(0xca11, 20_000))
                .map(|(&i, s)| (i, s))
                .collect(),
        ),
        ("dense", (1..=1000).map(|i| (i, i)).collect()),
        (
            "generations",
            (1..=100).map(|g| (g << 32 | 5000, 7 * g)).collect(),
        ),
    ]
}

/// The serial numbers of `cgroups` as the object lists them, checked to be the
/// serial numbers of a fresh cgroup each: distinct, and growing as they were made.
fn listed_serials(obj: &PolicyObject, top: &Path, cgroups: &[u64]) -> Result<HashMap<u64, u64>> {
    let listed = obj.cgroup_serials(std::fs::metadata(top)?.ino())?;
    let mut last = 0;
    for id in cgroups {
        let serial = *listed
            .get(id)
            .with_context(|| format!("cgroup {id} is not listed"))?;
        ensure!(
            serial > last,
            "serial numbers out of order: {serial} after {last}"
        );
        last = serial;
    }
    Ok(listed)
}

/// Real cgroups' entries: listed by the handler's object with their serial numbers,
/// keyed by them in the table, found with their own ids; and, with a listing cut short
/// by the room, the rest found in the hash.
fn real_cgroups() -> Result<()> {
    let top = Path::new("/sys/fs/cgroup/rule-table");
    std::fs::create_dir_all(top)?;
    let mut ids = vec![];
    for i in 0..300 {
        let dir = top.join(format!("c{i:03}"));
        std::fs::create_dir_all(&dir)?;
        ids.push(std::fs::metadata(&dir)?.ino());
    }
    for room in [abi::MAX_CGROUPS, 101] {
        let obj = PolicyObject::open_load(&Settings {
            policy: PolicyName::Priority,
            dry_run: false,
            max_cgroups: room,
            walk_steps: abi::WALK_STEPS,
            tree_cgroups: None,
        })?;
        let listed = obj.cgroup_serials(std::fs::metadata(top)?.ino())?;
        let expected = (ids.len() + 1).min(room as usize);
        ensure!(
            listed.len() == expected,
            "room {room}: {} cgroups listed, not {expected}",
            listed.len()
        );
        // With room for 101, the listing has the top and c000-c099, and the rules the
        // defaults and c050-c148: half of them without a serial number.
        let chosen = if room == 101 { &ids[50..149] } else { &ids[..] };
        let mut entries = vec![(abi::DEFAULTS_KEY, rule(7))];
        entries.extend(
            chosen
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, rule(i as u32 + 1))),
        );
        let rules = KernelRules::build(&obj, &entries, &listed)?;
        rules.install(&obj)?;
        let mut in_table = 0;
        for (i, &id) in chosen.iter().enumerate() {
            // Serial number 0: find_rule_of reads the live cgroup's.
            let found = obj.find_rule(id, 0)?;
            let want = if listed.contains_key(&id) {
                in_table += 1;
                FoundIn::Table
            } else {
                FoundIn::Created
            };
            ensure!(
                found == Some((rule(i as u32 + 1), want)),
                "room {room}: cgroup {id} (#{i}): the handler finds {found:?}"
            );
        }
        let want = if room == 101 { 50 } else { chosen.len() };
        ensure!(
            in_table == want,
            "room {room}: {in_table} cgroups in the table, not {want}"
        );
        println!(
            "room {room}: {} cgroups listed with their serial numbers, {in_table} of {} \
             found in the table with their own ids, {} in the hash",
            listed.len(),
            chosen.len(),
            chosen.len() - in_table
        );
    }
    listed_serials(
        &PolicyObject::open_load(&Settings {
            policy: PolicyName::Priority,
            dry_run: false,
            max_cgroups: abi::MAX_CGROUPS,
            walk_steps: abi::WALK_STEPS,
            tree_cgroups: None,
        })?,
        top,
        &ids,
    )?;
    for i in 0..ids.len() {
        std::fs::remove_dir(top.join(format!("c{i:03}")))?;
    }
    std::fs::remove_dir(top)?;
    Ok(())
}

fn run() -> Result<()> {
    let obj = PolicyObject::open_load(&Settings {
        policy: PolicyName::Priority,
        dry_run: false,
        max_cgroups: abi::MAX_CGROUPS,
        walk_steps: abi::WALK_STEPS,
        tree_cgroups: None,
    })
    .context("loading the priority object")?;

    for (name, cgroups) in cgroup_sets() {
        let mut entries = vec![(abi::DEFAULTS_KEY, rule(7))];
        entries.extend(
            cgroups
                .iter()
                .enumerate()
                .map(|(i, &(id, _))| (id, rule(i as u32 + 1))),
        );
        let serials: HashMap<u64, u64> = cgroups.iter().copied().collect();
        let rules = KernelRules::build(&obj, &entries, &serials).context(name)?;
        rules.install(&obj)?;
        for (i, &(id, serial)) in cgroups.iter().enumerate() {
            // find_rule() also checks that the slot found holds `id`.
            let found = obj.find_rule(id, serial)?;
            ensure!(
                found == Some((rule(i as u32 + 1), FoundIn::Table)),
                "{name}: cgroup {id:#x}, serial number {serial} (#{i}): the handler finds \
                 {found:?}"
            );
        }
        // Cgroups left out: other serial numbers near the first 2000.
        let known: HashSet<u64> = cgroups.iter().map(|&(_, serial)| serial).collect();
        let mut others = 0;
        for &(id, serial) in cgroups.iter().take(2000) {
            for other in [serial ^ 1 << 40, serial.wrapping_add(1 << 33), serial + 1] {
                if known.contains(&other) {
                    continue;
                }
                let found = obj.find_rule(id ^ 1 << 45, other)?;
                ensure!(
                    found.is_none(),
                    "{name}: serial number {other} is not in the table, the handler finds \
                     {found:?}"
                );
                others += 1;
            }
        }
        println!(
            "{name}: {} cgroups, each found at its entry; {others} others found nowhere",
            cgroups.len()
        );
    }
    real_cgroups()?;

    // A table of a few cgroups, then cgroups created since.
    let table_ids: Vec<u64> = (1..=10).map(|i| 3 << 40 | (100 + i)).collect();
    let mut entries = vec![(abi::DEFAULTS_KEY, rule(7))];
    entries.extend(table_ids.iter().map(|&id| (id, rule(50))));
    let serials: HashMap<u64, u64> = table_ids.iter().map(|&id| (id, id & 0xffff)).collect();
    let mut rules = KernelRules::build(&obj, &entries, &serials)?;
    rules.install(&obj)?;
    let new = 3 << 40 | 500;
    ensure!(
        matches!(rules.add(new, &rule(60))?, Added::Added),
        "adding {new:#x}"
    );
    ensure!(
        obj.find_rule(new, 0)? == Some((rule(60), FoundIn::Created)),
        "a new cgroup's entry: the handler finds {:?}",
        obj.find_rule(new, 0)?
    );
    rules.change(new, &rule(61))?;
    ensure!(
        obj.find_rule(new, 0)? == Some((rule(61), FoundIn::Created))
            && !rules.outdated()
            && !rules.crowded(),
        "a new cgroup's changed entry: the handler finds {:?}",
        obj.find_rule(new, 0)?
    );
    rules.remove(new);
    ensure!(
        obj.find_rule(new, 0)?.is_none(),
        "a removed new cgroup still has an entry"
    );
    rules.change(table_ids[0], &rule(51))?;
    ensure!(
        rules.outdated()
            && obj.find_rule(table_ids[0], serials[&table_ids[0]])?
                == Some((rule(50), FoundIn::Table)),
        "a change to a cgroup of the table must wait for a new table, which must be asked for"
    );
    println!(
        "new cgroups: added, changed and removed in the hash; a table cgroup's change asks \
         for a new table"
    );

    // So many new cgroups that the handler would spend long in the hash.
    let mut rules = KernelRules::build(&obj, &entries, &serials)?;
    rules.install(&obj)?;
    let min = kernel_rules::REBUILD_MIN_CREATED as u64;
    for i in 0..min {
        ensure!(
            !rules.crowded(),
            "a new table asked for after {i} new cgroups"
        );
        rules.add(4 << 40 | i, &rule(70))?;
    }
    ensure!(
        rules.crowded() && !rules.outdated(),
        "no new table asked for after {min} new cgroups"
    );
    println!("{min} new cgroups ask for a new table, {} did not", min - 1);

    // Cgroups known but not listed with a serial number are in the hash and not new;
    // removing some leaves the count of new ones as it was.
    let unlisted: Vec<u64> = (1..=3).map(|i| 5 << 40 | i).collect();
    let mut with_unlisted = entries.clone();
    with_unlisted.extend(unlisted.iter().map(|&id| (id, rule(80))));
    let mut rules = KernelRules::build(&obj, &with_unlisted, &serials)?;
    rules.install(&obj)?;
    ensure!(
        obj.find_rule(unlisted[0], 0)? == Some((rule(80), FoundIn::Created))
            && rules.created_since() == 0,
        "an unlisted cgroup: the handler finds {:?}, {} counted as new",
        obj.find_rule(unlisted[0], 0)?,
        rules.created_since()
    );
    rules.remove(unlisted[0]);
    rules.remove(unlisted[1]);
    for i in 0..min {
        ensure!(
            !rules.crowded() && rules.created_since() == i as usize,
            "after 2 of 3 unlisted cgroups removed and {i} new: {} counted as new{}",
            rules.created_since(),
            if rules.crowded() {
                ", a new table asked for"
            } else {
                ""
            }
        );
        rules.add(6 << 40 | i, &rule(70))?;
    }
    ensure!(
        rules.crowded() && rules.created_since() == min as usize,
        "after 2 of 3 unlisted cgroups removed and {min} new: {} counted as new, {}",
        rules.created_since(),
        if rules.crowded() {
            "crowded"
        } else {
            "no new table asked for"
        }
    );
    println!(
        "3 unlisted cgroups in the hash, not new; 2 removed, the next {min} new cgroups \
         still ask for a new table"
    );
    Ok(())
}
