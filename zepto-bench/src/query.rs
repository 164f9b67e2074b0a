//! The query set Q1-Q8 and its runner: warm-up, then many timed runs; p50/p99/max.

use std::time::Duration;

use serde::Serialize;

use crate::client::Client;
use crate::gen::{symbol_name, DAY_OPEN_NS};
use crate::Error;

/// One benchmark query, in zeptodb SQL and in DuckDB SQL.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Query {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) zepto: String,
    pub(crate) duckdb: String,
}

/// The queries named in `only` (all when it is empty), in the set's order; an unknown name
/// is an error that lists the known ones.
pub(crate) fn select(all: Vec<Query>, only: &[String]) -> Result<Vec<Query>, Error> {
    if let Some(bad) = only
        .iter()
        .find(|n| !all.iter().any(|q| q.name.eq_ignore_ascii_case(n.trim())))
    {
        return Err(Error::Usage(format!(
            "no query named `{bad}` (the set is {})",
            names(&all)
        )));
    }
    Ok(all
        .into_iter()
        .filter(|q| only.is_empty() || only.iter().any(|n| q.name.eq_ignore_ascii_case(n.trim())))
        .collect())
}

/// `Q1,Q3`: the names of a query list, for progress lines.
pub(crate) fn names(qs: &[Query]) -> String {
    qs.iter().map(|q| q.name).collect::<Vec<_>>().join(",")
}

/// The symbol single-symbol queries use.
pub(crate) fn probe_symbol(symbols: usize) -> String {
    symbol_name(42 % symbols.max(1))
}

pub(crate) fn queries(symbols: usize) -> Vec<Query> {
    let s = probe_symbol(symbols);
    // One hour: 10:00 to 11:00 UTC.
    let from = DAY_OPEN_NS + 30 * 60 * 1_000_000_000;
    let to = from + 3_600 * 1_000_000_000;
    let q = |name, what, zepto: String, duckdb: String| Query {
        name,
        what,
        zepto,
        duckdb,
    };
    vec![
        q("Q1", "count(*)", "SELECT count(*) FROM trades".into(), "SELECT count(*) FROM trades".into()),
        q(
            "Q2",
            "count by symbol",
            "SELECT symbol, count(*) FROM trades GROUP BY symbol".into(),
            "SELECT symbol, count(*) FROM trades GROUP BY symbol".into(),
        ),
        q(
            "Q3",
            "VWAP of one symbol",
            format!("SELECT vwap(price, volume) FROM trades WHERE symbol = '{s}'"),
            format!("SELECT sum(price * volume) / sum(volume) FROM trades WHERE symbol = '{s}'"),
        ),
        q(
            "Q4",
            "1-minute OHLC bars of one symbol",
            format!(
                "SELECT xbar(ts, INTERVAL '1 minute') AS bar, first(price) AS open, max(price) AS high, \
                 min(price) AS low, last(price) AS close, sum(volume) AS volume \
                 FROM trades WHERE symbol = '{s}' GROUP BY bar ORDER BY bar"
            ),
            format!(
                "SELECT time_bucket(INTERVAL '1 minute', ts) AS bar, arg_min(price, ts) AS open, max(price) AS high, \
                 min(price) AS low, arg_max(price, ts) AS close, sum(volume) AS volume \
                 FROM trades WHERE symbol = '{s}' GROUP BY bar ORDER BY bar"
            ),
        ),
        q(
            "Q5",
            "avg price by symbol over one hour",
            format!("SELECT symbol, avg(price) FROM trades WHERE ts >= {from} AND ts < {to} GROUP BY symbol"),
            format!(
                "SELECT symbol, avg(price) FROM trades WHERE ts >= make_timestamp({}) AND ts < make_timestamp({}) GROUP BY symbol",
                from / 1000,
                to / 1000
            ),
        ),
        q(
            "Q6",
            "ASOF JOIN of one symbol's trades to its quotes, counted",
            format!(
                "SELECT count(*) FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = '{s}'"
            ),
            format!(
                "SELECT count(*) FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = '{s}'"
            ),
        ),
        q(
            "Q7",
            "latest row per symbol",
            "SELECT symbol, last(price), max(ts) FROM trades GROUP BY symbol".into(),
            "SELECT symbol, arg_max(price, ts), max(ts) FROM trades GROUP BY symbol".into(),
        ),
        q(
            "Q8",
            "full scan: sum(price * volume)",
            "SELECT sum(price * volume) FROM trades".into(),
            "SELECT sum(price * volume) FROM trades".into(),
        ),
    ]
}

/// Latency summary of one query.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Timing {
    pub(crate) name: String,
    pub(crate) runs: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    /// The server's own `elapsed_us` (from the request's start in its handler to the end
    /// of the encoding), when every answer reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_p50_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_p99_us: Option<f64>,
}

pub(crate) fn summarize(name: &str, mut samples: Vec<Duration>) -> Timing {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    Timing {
        name: name.to_string(),
        runs: samples.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: at(1.0),
        server_p50_us: None,
        server_p99_us: None,
    }
}

/// The `elapsed_us` statistic of a JSON answer.
fn server_elapsed(answer: &str) -> Option<Duration> {
    let at = answer.rfind("\"elapsed_us\":")? + "\"elapsed_us\":".len();
    let digits: String = answer[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok().map(Duration::from_micros)
}

/// Run each query `warmup` times untimed, then `runs` times timed, over HTTP.
pub(crate) fn run(
    client: &Client,
    qs: &[Query],
    warmup: usize,
    runs: usize,
) -> Result<Vec<Timing>, Error> {
    let mut out = Vec::new();
    for q in qs {
        for _ in 0..warmup {
            client.sql(&q.zepto)?;
        }
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs.max(1) {
            samples.push(client.sql(&q.zepto)?.0);
        }
        out.push(summarize(q.name, samples));
    }
    Ok(out)
}

/// Run Q1..Q8 in rounds (each query once per round), `warmup` untimed rounds first: every
/// query sees the same conditions, e.g. a concurrent load and its effects, over the run.
pub(crate) fn run_interleaved(
    client: &Client,
    qs: &[Query],
    warmup: usize,
    runs: usize,
) -> Result<Vec<Timing>, Error> {
    let mut samples = vec![Vec::with_capacity(runs); qs.len()];
    let mut server = vec![Vec::with_capacity(runs); qs.len()];
    for round in 0..warmup + runs.max(1) {
        for (k, q) in qs.iter().enumerate() {
            let (took, answer) = client.sql(&q.zepto)?;
            if round >= warmup {
                samples[k].push(took);
                server[k].extend(server_elapsed(&answer));
            }
        }
    }
    Ok(qs
        .iter()
        .zip(samples.into_iter().zip(server))
        .map(|(q, (s, srv))| {
            let complete = srv.len() == s.len();
            let srv = summarize(q.name, srv);
            Timing {
                server_p50_us: complete.then_some(srv.p50_us),
                server_p99_us: complete.then_some(srv.p99_us),
                ..summarize(q.name, s)
            }
        })
        .collect())
}
