//! The checker: after the faults healed, read every row back from every node and hold the
//! history to account.
//! - every acknowledged row is present exactly once;
//! - no row of a write that was refused (definitely not applied) is present;
//! - rows of writes whose fate is unknown are present at most once;
//! - every node gives the same answer;
//! - no query answered OK with a partial result (checked by the scenario where it can).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::client::Http;
use crate::history::{History, Outcome};
use crate::Error;

/// What the checker found.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub acked_writes: usize,
    pub acked_rows: u64,
    pub refused_writes: usize,
    pub unknown_writes: usize,
    pub rows_stored: u64,
    /// Acknowledged rows missing.
    pub lost: Vec<i64>,
    /// Rows stored more than once.
    pub duplicated: Vec<i64>,
    /// Rows of refused writes that are present anyway.
    pub refused_present: Vec<i64>,
    /// Rows present that no write ever sent.
    pub phantom: Vec<i64>,
    /// Nodes whose answer differs from the first node's.
    pub disagreeing_nodes: Vec<usize>,
    pub failed_reads: usize,
    pub ok_reads: usize,
    /// Other failed expectations of the scenario (e.g. a non-zero exit code).
    pub other: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.refused_present.is_empty()
            && self.phantom.is_empty()
            && self.disagreeing_nodes.is_empty()
            && self.other.is_empty()
    }

    /// The violations, one line each (empty when passed).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let show = |v: &[i64]| {
            format!(
                "{:?}{}",
                &v[..v.len().min(10)],
                if v.len() > 10 { " ..." } else { "" }
            )
        };
        if !self.lost.is_empty() {
            out.push(format!(
                "{} acknowledged rows lost: {}",
                self.lost.len(),
                show(&self.lost)
            ));
        }
        if !self.duplicated.is_empty() {
            out.push(format!(
                "{} rows stored twice: {}",
                self.duplicated.len(),
                show(&self.duplicated)
            ));
        }
        if !self.refused_present.is_empty() {
            out.push(format!(
                "{} rows of refused writes present: {}",
                self.refused_present.len(),
                show(&self.refused_present)
            ));
        }
        if !self.phantom.is_empty() {
            out.push(format!(
                "{} rows nobody wrote: {}",
                self.phantom.len(),
                show(&self.phantom)
            ));
        }
        if !self.disagreeing_nodes.is_empty() {
            out.push(format!(
                "nodes {:?} answer differently from node 0",
                self.disagreeing_nodes
            ));
        }
        out.extend(self.other.iter().cloned());
        out
    }
}

/// Every stored id and how often, as one node answers.
pub fn stored_ids(url: &str) -> Result<BTreeMap<i64, u32>, Error> {
    let http = Http::new(url, Duration::from_secs(120));
    let a = http
        .post("/", b"SELECT id FROM chaos FORMAT CSV")
        .map_err(|e| Error::Harness(format!("final read from {url}: {e}")))?;
    if a.status != 200 {
        return Err(Error::Harness(format!(
            "final read from {url}: HTTP {}: {}",
            a.status,
            a.body.trim()
        )));
    }
    let mut out = BTreeMap::new();
    for line in a.body.lines().filter(|l| !l.is_empty()) {
        let id: i64 = line
            .trim()
            .parse()
            .map_err(|_| Error::Harness(format!("final read from {url}: bad line '{line}'")))?;
        *out.entry(id).or_insert(0) += 1;
    }
    Ok(out)
}

/// Check a history against what every node stores.
pub fn check(history: &History, urls: &[String]) -> Result<Verdict, Error> {
    let mut v = Verdict::default();
    let mut answers = Vec::with_capacity(urls.len());
    for u in urls {
        answers.push(stored_ids(u)?);
    }
    let Some(stored) = answers.first() else {
        return Err(Error::Harness("no node to check".into()));
    };
    for (i, a) in answers.iter().enumerate().skip(1) {
        if a != stored {
            v.disagreeing_nodes.push(i);
        }
    }
    let mut written: BTreeMap<i64, &Outcome> = BTreeMap::new();
    for w in &history.writes {
        match w.outcome {
            Outcome::Ok => {
                v.acked_writes += 1;
                v.acked_rows += w.count as u64;
            }
            Outcome::Failed(_) => v.refused_writes += 1,
            Outcome::Unknown(_) => v.unknown_writes += 1,
        }
        for id in w.first..w.first + w.count {
            written.insert(id, &w.outcome);
        }
    }
    for (&id, &n) in stored {
        v.rows_stored += u64::from(n);
        if n > 1 {
            v.duplicated.push(id);
        }
        match written.get(&id) {
            None => v.phantom.push(id),
            Some(Outcome::Failed(_)) => v.refused_present.push(id),
            Some(_) => {}
        }
    }
    for (&id, outcome) in &written {
        if **outcome == Outcome::Ok && !stored.contains_key(&id) {
            v.lost.push(id);
        }
    }
    v.ok_reads = history
        .reads
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .count();
    v.failed_reads = history.reads.len() - v.ok_reads;
    Ok(v)
}
