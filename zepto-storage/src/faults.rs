//! Named fault points, so tests (and the chaos harness, through the environment) can make
//! the engine fail exactly where a disk would: a WAL write that hits ENOSPC, an fsync that
//! returns EIO, a crash between two steps of a checkpoint.
//!
//! Off by default; when no fault is armed a check is one relaxed atomic load. Each
//! [`crate::Db`] has its own set, so tests running side by side do not see each other's.
//!
//! Faults are armed with [`Faults::set`] or with the environment variable `ZEPTO_FAILPOINTS`, read
//! once at [`crate::Db::open`]: `name=action[;name=action...]` where `action` is
//! - `enospc` / `eio`: the operation fails with that OS error (every time),
//! - `enospc@N` / `eio@N`: it fails from the N-th time it is reached on (1-based),
//! - `abort` / `abort@N`: the process aborts there (a crash at that exact point).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The fault points of one engine.
#[derive(Debug, Default)]
pub struct Faults {
    armed: AtomicBool,
    points: Mutex<HashMap<String, Point>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Enospc,
    Eio,
    Abort,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    action: Action,
    from_hit: u64,
    hits: u64,
}

impl Faults {
    /// Arm a fault point with an action string (see the module doc).
    pub fn set(&self, name: &str, action: &str) -> Result<()> {
        let (act, n) = match action.split_once('@') {
            Some((a, n)) => (
                a,
                n.parse::<u64>().map_err(|_| {
                    Error::InvalidInput(format!("bad fault point count in '{action}'"))
                })?,
            ),
            None => (action, 1),
        };
        let action = match act {
            "enospc" => Action::Enospc,
            "eio" => Action::Eio,
            "abort" => Action::Abort,
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown fault point action '{other}' (enospc, eio, abort)"
                )))
            }
        };
        self.points.lock().insert(
            name.to_string(),
            Point {
                action,
                from_hit: n.max(1),
                hits: 0,
            },
        );
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Disarm one fault point.
    pub fn clear(&self, name: &str) {
        let mut points = self.points.lock();
        points.remove(name);
        if points.is_empty() {
            self.armed.store(false, Ordering::Release);
        }
    }

    /// Arm the fault points listed in a `name=action;...` spec (the `ZEPTO_FAILPOINTS` form).
    pub fn arm_from_spec(&self, spec: &str) -> Result<()> {
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, action) = item.split_once('=').ok_or_else(|| {
                Error::InvalidInput(format!("bad fault point entry '{item}' (name=action)"))
            })?;
            self.set(name.trim(), action.trim())?;
        }
        Ok(())
    }

    /// Reached a fault point: fail, abort, or (almost always) do nothing.
    #[inline]
    pub(crate) fn check(&self, name: &str) -> Result<()> {
        if !self.armed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.check_slow(name)
    }

    #[cold]
    fn check_slow(&self, name: &str) -> Result<()> {
        let action = {
            let mut points = self.points.lock();
            let Some(p) = points.get_mut(name) else {
                return Ok(());
            };
            p.hits += 1;
            if p.hits < p.from_hit {
                return Ok(());
            }
            p.action
        };
        let errno = match action {
            Action::Enospc => libc::ENOSPC,
            Action::Eio => libc::EIO,
            Action::Abort => {
                eprintln!("zepto fault point {name}: aborting the process");
                std::process::abort()
            }
        };
        Err(Error::io(
            format!("fault point {name}"),
            std::io::Error::from_raw_os_error(errno),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_from_the_nth_hit() {
        let f = Faults::default();
        assert!(f.check("x").is_ok());
        f.arm_from_spec("x=enospc@3; y=eio").unwrap();
        assert!(f.check("x").is_ok());
        assert!(f.check("x").is_ok());
        let e = f.check("x").unwrap_err().to_string();
        assert!(e.contains("fault point x"), "{e}");
        assert!(f.check("y").is_err());
        f.clear("x");
        f.clear("y");
        assert!(f.check("x").is_ok());
        assert!(f.arm_from_spec("z=explode").is_err());
    }
}
