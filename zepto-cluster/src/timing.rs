//! Every timing constant of the cluster, derived in one place from `--heartbeat-interval`.
//!
//! Nothing else in the cluster code may invent a timeout: it takes a [`Timings`]. The defaults
//! (heartbeat `hb` = 1 s) are
//!
//! | timing                  | rule                         | at hb = 1 s | at hb = 200 ms |
//! |-------------------------|------------------------------|-------------|----------------|
//! | suspect after           | 3 x hb                       | 3 s         | 600 ms         |
//! | dead after              | 10 x hb                      | 10 s        | 2 s            |
//! | primary write lease     | dead / 2                     | 5 s         | 1 s            |
//! | raft tick               | hb / 10                      | 100 ms      | 20 ms          |
//! | raft election timeout   | 10 ticks (randomised 10..20) | 1 s .. 2 s  | 200 .. 400 ms  |
//! | raft heartbeat          | 2 ticks                      | 200 ms      | 40 ms          |
//! | replica lag bound       | 3 x hb (= suspect)           | 3 s         | 600 ms         |
//!
//! # Why the lease is safe
//!
//! A primary renews its write lease with each heartbeat the metadata leader acknowledges; the
//! lease runs from the moment the heartbeat was *sent*, so it ends no later than
//! `send + lease`. The leader that received it declares the primary dead no earlier than
//! `receive + dead >= send + dead`. A deposed leader (cut off from the majority) can still
//! acknowledge heartbeats until raft's check-quorum makes it step down, at most two election
//! timeouts after its last majority contact `T0`; the new leader is elected no earlier than one
//! election timeout after `T0` and restarts every failure-detector clock at its election, so it
//! declares the primary dead no earlier than `T0 + election + dead`, while the primary's lease
//! ends by `T0 + 2 x election + lease`. Hence the rule checked by [`Timings::derive`]:
//!
//! `lease + election_timeout + hb <= dead` (one extra hb of margin for delivery delay and
//! clock-rate skew). At the defaults: 5 + 1 + 1 = 7 <= 10 s. At 200 ms: 1 + 0.2 + 0.2 = 1.4 <= 2 s.
//!
//! # Failover budget with `--heartbeat-interval 200ms` (must be under 3 s)
//!
//! - the node is SIGKILLed at t = 0; its last heartbeat reached the leader at t >= -0.2 s;
//! - the leader's detector runs every raft tick (20 ms) and sees DEAD at t <= 2.0 + 0.02 s;
//! - the promotion is one raft proposal: one round trip plus an fsync on a majority
//!   (a few ms on a LAN, budget 50 ms), so the replica is primary at t <= 2.07 s;
//! - a client retry after `NotPrimary`/`Unavailable` refreshes the map (budget 100 ms):
//!   first successful write at t <= ~2.2 s.
//! - If the killed node was also the raft leader, a new leader is elected within the maximum
//!   election timeout (400 ms) and restarts the detector clocks at its election, so DEAD is seen
//!   at t <= 0.4 + 2.0 + 0.02 s and the first write succeeds at t <= ~2.6 s. Still under 3 s.
//!
//! # Metadata availability after a leader crash at the defaults
//!
//! Followers notice after their randomised election timeout (1 s .. 2 s) and one round of
//! (pre-)votes elects a new leader: metadata changes resume within ~2 s (< 3 s).

use std::fmt;
use std::ops::Add;
use std::time::Duration;

use crate::error::{Error, Result};

/// A point on a monotonic clock, in milliseconds since an arbitrary origin (the process start,
/// or zero in tests). Passed in from outside: no cluster logic reads the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(u64);

impl MonoTime {
    pub const ZERO: MonoTime = MonoTime(0);

    pub fn from_millis(ms: u64) -> MonoTime {
        MonoTime(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;
    fn add(self, d: Duration) -> MonoTime {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_add(ms))
    }
}

impl fmt::Display for MonoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Operator overrides; `None` means "derive from the heartbeat interval".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimingOverrides {
    pub suspect_after: Option<Duration>,
    pub dead_after: Option<Duration>,
    pub write_lease: Option<Duration>,
    pub raft_tick: Option<Duration>,
    pub election_ticks: Option<usize>,
    pub raft_heartbeat_ticks: Option<usize>,
    pub replica_lag_bound: Option<Duration>,
}

/// The validated timings of a cluster. Build with [`Timings::derive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often every node heartbeats the metadata leader.
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long: ACTIVE -> SUSPECT.
    pub suspect_after: Duration,
    /// No heartbeat for this long: -> DEAD, and its primaries fail over.
    pub dead_after: Duration,
    /// How long a primary keeps accepting writes after the last heartbeat the metadata
    /// majority acknowledged (measured from the send time).
    pub write_lease: Duration,
    /// Interval between `MetaNode::tick` calls.
    pub raft_tick: Duration,
    /// raft election timeout in ticks (randomised by raft-rs into `[e, 2e)`).
    pub election_ticks: usize,
    /// raft leader heartbeat interval in ticks.
    pub raft_heartbeat_ticks: usize,
    /// A replica that has not acknowledged replicated records for this long is lagging: the
    /// primary commits a shrink of the in-sync set before acking writes alone.
    pub replica_lag_bound: Duration,
}

/// The smallest heartbeat interval we accept (the raft tick is a tenth of it).
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

impl Timings {
    /// The default heartbeat interval.
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

    /// Derive every timing from the heartbeat interval, apply `overrides`, and validate.
    pub fn derive(heartbeat_interval: Duration, overrides: &TimingOverrides) -> Result<Timings> {
        let hb = heartbeat_interval;
        if hb < MIN_HEARTBEAT {
            return Err(Error::InvalidTimings(format!(
                "heartbeat interval {hb:?} is below the minimum {MIN_HEARTBEAT:?}"
            )));
        }
        let suspect_after = overrides.suspect_after.unwrap_or(hb * 3);
        let dead_after = overrides.dead_after.unwrap_or(hb * 10);
        let write_lease = overrides.write_lease.unwrap_or(dead_after / 2);
        let raft_tick = overrides.raft_tick.unwrap_or(hb / 10);
        let election_ticks = overrides.election_ticks.unwrap_or(10);
        let raft_heartbeat_ticks = overrides.raft_heartbeat_ticks.unwrap_or(2);
        let replica_lag_bound = overrides.replica_lag_bound.unwrap_or(suspect_after);
        let t = Timings {
            heartbeat_interval: hb,
            suspect_after,
            dead_after,
            write_lease,
            raft_tick,
            election_ticks,
            raft_heartbeat_ticks,
            replica_lag_bound,
        };
        t.validate()?;
        Ok(t)
    }

    /// The defaults (heartbeat 1 s, nothing overridden).
    pub fn defaults() -> Timings {
        // The defaults satisfy every rule in `validate`; the test `defaults_are_valid` pins it.
        Timings {
            heartbeat_interval: Self::DEFAULT_HEARTBEAT,
            suspect_after: Duration::from_secs(3),
            dead_after: Duration::from_secs(10),
            write_lease: Duration::from_secs(5),
            raft_tick: Duration::from_millis(100),
            election_ticks: 10,
            raft_heartbeat_ticks: 2,
            replica_lag_bound: Duration::from_secs(3),
        }
    }

    /// The base raft election timeout (raft-rs randomises it into `[this, 2 x this)`).
    pub fn election_timeout(&self) -> Duration {
        self.raft_tick * tick_count(self.election_ticks)
    }

    /// The longest a follower waits before campaigning.
    pub fn max_election_timeout(&self) -> Duration {
        self.election_timeout() * 2
    }

    /// The raft leader's heartbeat period.
    pub fn raft_heartbeat(&self) -> Duration {
        self.raft_tick * tick_count(self.raft_heartbeat_ticks)
    }

    /// Deadline of one peer RPC (heartbeat, raft batch): the suspect time, clamped to
    /// 0.5 s .. 5 s. Long enough for a loaded peer; a dead one is given up on before it
    /// could turn SUSPECT twice.
    pub fn peer_call_timeout(&self) -> Duration {
        self.suspect_after
            .clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// How long a metadata change (e.g. DDL) may take, leader elections and retries
    /// included, before the client is told UNAVAILABLE: ten worst-case elections, at least
    /// 5 s (20 s at hb = 1 s, 5 s at hb = 200 ms).
    pub fn metadata_change_timeout(&self) -> Duration {
        (self.max_election_timeout() * 10).max(Duration::from_secs(5))
    }

    /// How many raft ticks fit in `d` (rounded up), for code that counts ticks.
    pub fn ticks_for(&self, d: Duration) -> usize {
        let tick = self.raft_tick.as_micros().max(1);
        usize::try_from(d.as_micros().div_ceil(tick)).unwrap_or(usize::MAX)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidTimings(m));
        let hb = self.heartbeat_interval;
        if self.suspect_after < hb * 2 {
            return bad(format!(
                "suspect time {:?} must be at least 2 heartbeat intervals ({:?}) so one lost heartbeat does not suspect a node",
                self.suspect_after,
                hb * 2
            ));
        }
        if self.dead_after <= self.suspect_after {
            return bad(format!(
                "dead time {:?} must be longer than suspect time {:?}",
                self.dead_after, self.suspect_after
            ));
        }
        if self.raft_tick < Duration::from_millis(1) {
            return bad(format!("raft tick {:?} is below 1ms", self.raft_tick));
        }
        if self.raft_heartbeat_ticks == 0 {
            return bad("raft heartbeat ticks must be at least 1".to_string());
        }
        if self.election_ticks <= self.raft_heartbeat_ticks {
            return bad(format!(
                "raft election ticks ({}) must exceed raft heartbeat ticks ({})",
                self.election_ticks, self.raft_heartbeat_ticks
            ));
        }
        if self.write_lease < hb * 2 {
            return bad(format!(
                "write lease {:?} must be at least 2 heartbeat intervals ({:?}) so one lost heartbeat does not stop writes",
                self.write_lease,
                hb * 2
            ));
        }
        let needed = self.write_lease + self.election_timeout() + hb;
        if needed > self.dead_after {
            return bad(format!(
                "write lease {:?} + election timeout {:?} + heartbeat {:?} = {:?} exceeds dead time {:?}: \
                 a primary cut off from the metadata majority could still accept writes after its replica is promoted",
                self.write_lease,
                self.election_timeout(),
                hb,
                needed,
                self.dead_after
            ));
        }
        if self.replica_lag_bound < hb {
            return bad(format!(
                "replica lag bound {:?} must be at least one heartbeat interval {:?}",
                self.replica_lag_bound, hb
            ));
        }
        Ok(())
    }
}

fn tick_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid_and_match_derive() {
        let d = Timings::derive(Timings::DEFAULT_HEARTBEAT, &TimingOverrides::default()).unwrap();
        assert_eq!(d, Timings::defaults());
        assert_eq!(d.suspect_after, ms(3_000));
        assert_eq!(d.dead_after, ms(10_000));
        assert_eq!(d.write_lease, ms(5_000));
        assert!(d.write_lease < d.dead_after);
        assert_eq!(d.election_timeout(), ms(1_000));
        // Metadata changes resume within 3 s of a leader crash: worst-case election (2 s)
        // plus one vote round well inside the remaining second.
        assert!(d.max_election_timeout() < ms(3_000));
        assert_eq!(d.raft_heartbeat(), ms(200));
        assert_eq!(d.peer_call_timeout(), ms(3_000));
        assert_eq!(d.metadata_change_timeout(), ms(20_000));
        let fast = Timings::derive(ms(200), &TimingOverrides::default()).unwrap();
        assert_eq!(fast.peer_call_timeout(), ms(600));
        assert_eq!(fast.metadata_change_timeout(), ms(5_000));
    }

    #[test]
    fn fast_heartbeat_failover_fits_in_three_seconds() {
        let t = Timings::derive(ms(200), &TimingOverrides::default()).unwrap();
        assert_eq!(t.suspect_after, ms(600));
        assert_eq!(t.dead_after, ms(2_000));
        assert_eq!(t.write_lease, ms(1_000));
        assert_eq!(t.raft_tick, ms(20));
        // The worst case of the module doc: leader and primary die together.
        let budget = t.max_election_timeout() + t.dead_after + t.raft_tick + ms(50) + ms(100);
        assert!(budget < ms(3_000), "failover budget {budget:?}");
    }

    #[test]
    fn lease_must_leave_room_before_dead() {
        let o = TimingOverrides {
            write_lease: Some(ms(9_500)),
            ..Default::default()
        };
        let e = Timings::derive(ms(1_000), &o).unwrap_err().to_string();
        assert!(e.contains("exceeds dead time"), "{e}");
        // Exactly at the bound is fine: 8 + 1 + 1 = 10.
        let o = TimingOverrides {
            write_lease: Some(ms(8_000)),
            ..Default::default()
        };
        assert!(Timings::derive(ms(1_000), &o).is_ok());
    }

    #[test]
    fn rejects_inconsistent_overrides() {
        let cases: Vec<(TimingOverrides, &str)> = vec![
            (
                TimingOverrides {
                    suspect_after: Some(ms(1_500)),
                    ..Default::default()
                },
                "suspect time",
            ),
            (
                TimingOverrides {
                    dead_after: Some(ms(3_000)),
                    ..Default::default()
                },
                "must be longer than suspect",
            ),
            (
                TimingOverrides {
                    write_lease: Some(ms(1_000)),
                    ..Default::default()
                },
                "write lease",
            ),
            (
                TimingOverrides {
                    election_ticks: Some(2),
                    ..Default::default()
                },
                "election ticks",
            ),
            (
                TimingOverrides {
                    raft_heartbeat_ticks: Some(0),
                    ..Default::default()
                },
                "heartbeat ticks",
            ),
            (
                TimingOverrides {
                    raft_tick: Some(Duration::from_micros(10)),
                    ..Default::default()
                },
                "raft tick",
            ),
            (
                TimingOverrides {
                    replica_lag_bound: Some(ms(10)),
                    ..Default::default()
                },
                "replica lag",
            ),
            (
                // A slow raft eats into the lease margin: 5 + 5 + 1 > 10.
                TimingOverrides {
                    raft_tick: Some(ms(500)),
                    ..Default::default()
                },
                "exceeds dead time",
            ),
        ];
        for (o, want) in cases {
            let e = Timings::derive(ms(1_000), &o).unwrap_err();
            assert!(matches!(e, Error::InvalidTimings(_)));
            assert!(e.to_string().contains(want), "{o:?}: {e}");
        }
        let e = Timings::derive(ms(5), &TimingOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("below the minimum"), "{e}");
    }

    #[test]
    fn overrides_flow_into_derived_values() {
        let o = TimingOverrides {
            suspect_after: Some(ms(4_000)),
            dead_after: Some(ms(20_000)),
            ..Default::default()
        };
        let t = Timings::derive(ms(1_000), &o).unwrap();
        // lease and lag bound follow the overridden values they derive from.
        assert_eq!(t.write_lease, ms(10_000));
        assert_eq!(t.replica_lag_bound, ms(4_000));
        assert_eq!(t.ticks_for(ms(1_050)), 11);
    }

    #[test]
    fn mono_time_arithmetic_saturates() {
        let t = MonoTime::from_millis(1_000);
        assert_eq!(t + ms(500), MonoTime::from_millis(1_500));
        assert_eq!(
            t.saturating_since(MonoTime::from_millis(2_000)),
            Duration::ZERO
        );
        assert_eq!(t.saturating_since(MonoTime::ZERO), ms(1_000));
        assert_eq!(
            MonoTime::from_millis(u64::MAX) + ms(1),
            MonoTime::from_millis(u64::MAX)
        );
    }
}
