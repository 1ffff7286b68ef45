//! A test's hook between a new instance's closed check and its adoption of the carried state:
//! the window a concurrent reload must not take that state in.

use std::sync::{Mutex, PoisonError};

use super::instance::Budget;

type Hook = Box<dyn Fn(&Budget) + Send>;

/// Runs for instances of budgets with this name only (tests run in parallel).
pub const BUDGET: &str = "hooked";
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

pub fn set(hook: Option<Hook>) {
    *HOOK.lock().unwrap_or_else(PoisonError::into_inner) = hook;
}

pub(super) fn run(budget: &Budget) {
    if budget.config.name == BUDGET
        && let Some(hook) = HOOK.lock().unwrap_or_else(PoisonError::into_inner).take()
    {
        hook(budget);
    }
}
