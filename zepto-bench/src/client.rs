//! A small blocking HTTP client for the server's SQL and ingest endpoints.

use std::time::{Duration, Instant};

use crate::Error;

/// A zeptod endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(base: &str, token: Option<String>) -> Client {
        // Timeouts per phase, none on name resolution: with a global (or resolve) timeout,
        // ureq resolves the address on a freshly spawned thread for every request, even on a
        // pooled connection, and on a busy machine that spawn alone cost ~3.5 ms per request
        // (more than the queries measured).
        let limit = Some(Duration::from_secs(600));
        let config = ureq::Agent::config_builder()
            .timeout_connect(limit)
            .timeout_send_request(limit)
            .timeout_send_body(limit)
            .timeout_recv_response(limit)
            .timeout_recv_body(limit)
            .http_status_as_error(false)
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            token,
        }
    }

    fn post(&self, path_and_query: &str, body: &[u8]) -> Result<(Duration, String), Error> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self.agent.post(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let t = Instant::now();
        let mut resp = req
            .send(body)
            .map_err(|e| Error::Http(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Http(format!("read answer of POST {url}: {e}")))?;
        let took = t.elapsed();
        if status != 200 {
            return Err(Error::Http(format!(
                "POST {url}: HTTP {status}: {}",
                text.trim()
            )));
        }
        Ok((took, text))
    }

    /// Run one SQL statement; returns the elapsed time and the answer body.
    pub(crate) fn sql(&self, sql: &str) -> Result<(Duration, String), Error> {
        self.post("/", sql.as_bytes())
    }

    /// Send one ingest body; returns the time until the durable acknowledgement.
    pub(crate) fn ingest(
        &self,
        table: &str,
        format: crate::encode::Format,
        body: &[u8],
    ) -> Result<Duration, Error> {
        let path = match format {
            crate::encode::Format::Arrow => {
                format!("/?query=INSERT%20INTO%20{table}%20FORMAT%20Arrow")
            }
            crate::encode::Format::Csv => format!("/?query=INSERT%20INTO%20{table}%20FORMAT%20CSV"),
            crate::encode::Format::Ilp => "/write?precision=ns".to_string(),
        };
        Ok(self.post(&path, body)?.0)
    }

    /// Wait until `/ready` answers 200 (the server finished recovery), up to `timeout`.
    /// False when it never did.
    pub(crate) fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let ready = self
                .agent
                .get(&format!("{}/ready", self.base))
                .call()
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ready {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }
}
