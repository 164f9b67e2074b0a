//! A small blocking HTTP client with a timeout, for the workload and the checker.

use std::time::{Duration, Instant};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// The machine-readable error code of an error answer, or the body.
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.chars().take(120).collect())
    }

    /// The error code and the start of the message, for the history.
    pub fn summary(&self) -> String {
        let message = serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        format!(
            "{}: {}",
            self.code(),
            message.chars().take(200).collect::<String>()
        )
    }
}

/// One server.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    agent: ureq::Agent,
    /// `Authorization: Bearer` key, when the server has keys configured.
    key: Option<String>,
}

impl Http {
    pub fn new(base: &str, timeout: Duration) -> Http {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build();
        Http {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            key: None,
        }
    }

    /// Send `Authorization: Bearer key` with every request.
    pub fn with_key(mut self, key: Option<&str>) -> Http {
        self.key = key.map(str::to_string);
        self
    }

    /// POST; `Err` is a transport failure (refused, reset, timeout), with its text.
    pub fn post(&self, path: &str, body: &[u8]) -> Result<Answer, String> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.post(&url);
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut r = req.send(body).map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok(Answer { status, body })
    }

    /// GET.
    pub fn get(&self, path: &str) -> Result<Answer, String> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.get(&url);
        if let Some(k) = &self.key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let mut r = req.call().map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok(Answer { status, body })
    }

    /// Poll `path` until it answers 200, up to `timeout`; the time it took.
    pub fn wait_for(&self, path: &str, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        loop {
            if self.get(path).is_ok_and(|a| a.status == 200) {
                return Some(t.elapsed());
            }
            if t.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// Poll `path` until it answers anything but 200 (or nothing), up to `timeout`.
    pub fn wait_until_failing(&self, path: &str, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        loop {
            if !self.get(path).is_ok_and(|a| a.status == 200) {
                return Some(t.elapsed());
            }
            if t.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }
}
