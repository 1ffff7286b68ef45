use std::collections::BTreeMap;

use super::*;

/// A configuration map in memory, which can be told to fail the n-th write.
#[derive(Default)]
struct Fake {
    entries: BTreeMap<u32, u32>,
    writes: usize,
    fail_at: Option<usize>,
    log: Vec<String>,
}

impl Fake {
    fn with(entries: &[(u32, u32)]) -> Self {
        Self {
            entries: entries.iter().copied().collect(),
            ..Self::default()
        }
    }

    fn write(&mut self) -> Result<(), MapError> {
        self.writes += 1;
        if self.fail_at == Some(self.writes) {
            return Err(MapError::IoError(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )));
        }
        Ok(())
    }
}

impl Table for Fake {
    type K = u32;
    type V = u32;
    const NAME: &'static str = "FAKE";

    fn entries(&self) -> Result<BTreeMap<u32, u32>, MapError> {
        Ok(self.entries.clone())
    }

    fn put(&mut self, k: &u32, v: u32) -> Result<(), MapError> {
        self.write()?;
        self.log.push(format!("put {k}"));
        self.entries.insert(*k, v);
        Ok(())
    }

    fn delete(&mut self, k: &u32) -> Result<(), MapError> {
        self.write()?;
        self.log.push(format!("delete {k}"));
        self.entries.remove(k);
        Ok(())
    }
}

fn desired(entries: &[(u32, u32)]) -> BTreeMap<u32, u32> {
    entries.iter().copied().collect()
}

#[test]
fn writes_only_the_difference() {
    let mut t = Fake::with(&[(1, 10), (2, 20), (3, 30)]);
    let applied = transact(&mut t, desired(&[(1, 10), (2, 21), (4, 40)]), 8)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied,
        Applied {
            added: 1,
            changed: 1,
            removed: 1,
            total: 3
        }
    );
    assert_eq!(t.entries, desired(&[(1, 10), (2, 21), (4, 40)]));
    // Additions before removals: no rule is missing in between.
    assert_eq!(t.log, ["put 2", "put 4", "delete 3"]);
}

#[test]
fn an_unchanged_configuration_writes_nothing() {
    let mut t = Fake::with(&[(1, 10)]);
    transact(&mut t, desired(&[(1, 10)]), 8).unwrap_or_else(|e| panic!("{e}"));
    assert!(t.log.is_empty());
}

#[test]
fn over_capacity_is_rejected_before_any_write() {
    let mut t = Fake::with(&[(1, 10), (2, 20)]);
    let e = transact(&mut t, desired(&[(1, 10), (2, 20), (3, 30), (4, 40)]), 3)
        .expect_err("over capacity");
    let msg = e.to_string();
    assert!(
        msg.contains("FAKE map is full")
            && msg.contains("needs 4")
            && msg.contains("capacity is 3"),
        "{msg}"
    );
    assert!(msg.contains("previous 2 entries stay"), "{msg}");
    assert!(t.log.is_empty());
    assert_eq!(t.entries, desired(&[(1, 10), (2, 20)]));
}

#[test]
fn a_full_replacement_removes_first_when_both_do_not_fit() {
    let mut t = Fake::with(&[(1, 10), (2, 20)]);
    transact(&mut t, desired(&[(3, 30), (4, 40)]), 2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.log, ["delete 1", "delete 2", "put 3", "put 4"]);
    assert_eq!(t.entries, desired(&[(3, 30), (4, 40)]));
}

#[test]
fn a_failed_write_restores_the_previous_contents() {
    let mut t = Fake::with(&[(1, 10), (2, 20)]);
    t.fail_at = Some(2);
    let e = transact(&mut t, desired(&[(1, 11), (3, 30)]), 8).expect_err("injected failure");
    assert!(matches!(e, Error::Write { restored: true, .. }), "{e:?}");
    assert_eq!(t.entries, desired(&[(1, 10), (2, 20)]));
}
