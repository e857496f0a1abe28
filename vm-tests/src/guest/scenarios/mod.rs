//! The guest scenarios. Each module has a `pub fn scenario() -> Scenario`; list it in
//! `all()` below. Helpers for writing one are in `super::util`.

use super::Scenario;

mod oom_default_memcg;

/// Every scenario, in the order `test` runs them.
pub fn all() -> Vec<Scenario> {
    vec![oom_default_memcg::scenario()]
}
