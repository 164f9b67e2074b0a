//! API keys and roles. Keys are kept only as SHA-256 hashes and a presented key is compared
//! against every stored hash in constant time. Roles nest: `admin` > `writer` > `reader`.
//!
//! Keys file (`--api-keys-file`): one `role:sha256-hex` per line, `#` comments, e.g.
//! `writer:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08`
//! (make the hash with `printf %s "$KEY" | sha256sum`).
//!
//! With no key at all, data endpoints answer loopback clients only; `/admin/*` then answers
//! 403 with how to configure a key.

use std::net::IpAddr;
use std::path::Path;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s.trim() {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    hash: [u8; 32],
    role: Role,
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auth {
    keys: Vec<Key>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

const HOW_TO: &str = "set an admin key with --admin-key or ZEPTO_ADMIN_KEY, or add an \
    'admin:<sha256-hex of the key>' line to --api-keys-file, then send \
    'Authorization: Bearer <key>'";

impl Auth {
    /// Build from the admin key and the keys file.
    pub(crate) fn load(admin_key: Option<&str>, keys_file: Option<&Path>) -> Result<Auth> {
        let mut keys = Vec::new();
        if let Some(k) = admin_key {
            keys.push(Key {
                hash: sha256(k.as_bytes()),
                role: Role::Admin,
            });
        }
        if let Some(path) = keys_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("read API keys file {}: {e}", path.display()))
            })?;
            keys.extend(
                Self::parse_file(&text)
                    .map_err(|e| Error::Config(format!("API keys file {}: {e}", path.display())))?,
            );
        }
        Ok(Auth { keys })
    }

    fn parse_file(text: &str) -> std::result::Result<Vec<Key>, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (role, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected role:sha256-hex", i + 1))?;
            let role = Role::parse(role)
                .ok_or_else(|| format!("line {}: role must be admin, writer or reader", i + 1))?;
            let hash = parse_hex32(hash)
                .ok_or_else(|| format!("line {}: expected 64 hex digits of SHA-256", i + 1))?;
            keys.push(Key { hash, role });
        }
        Ok(keys)
    }

    /// True when at least one key is configured.
    pub(crate) fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    fn has_admin(&self) -> bool {
        self.keys.iter().any(|k| k.role == Role::Admin)
    }

    /// The role of a presented key, comparing against every key in constant time.
    fn role_of(&self, presented: &str) -> Option<Role> {
        let h = sha256(presented.as_bytes());
        let mut found: Option<Role> = None;
        for k in &self.keys {
            if bool::from(k.hash.ct_eq(&h)) {
                found = Some(found.map_or(k.role, |r| r.max(k.role)));
            }
        }
        found
    }

    fn bearer(headers: &HeaderMap) -> Result<Option<&str>> {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let v = v
            .to_str()
            .map_err(|_| Error::Unauthorized("Authorization header is not ASCII".into()))?;
        match v.split_once(' ') {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(key.trim())),
            _ => Err(Error::Unauthorized(
                "use 'Authorization: Bearer <key>'".into(),
            )),
        }
    }

    /// Check a data request that needs `need` (reader or writer).
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        need: Role,
    ) -> Result<()> {
        if !self.enabled() {
            return match peer {
                Some(ip) if ip.is_loopback() => Ok(()),
                _ => Err(Error::Forbidden(
                    "no API keys are configured, so data endpoints answer loopback clients only; \
                     configure --api-keys-file (or --admin-key) to serve other clients"
                        .into(),
                )),
            };
        }
        let key = Self::bearer(headers)?.ok_or_else(|| {
            Error::Unauthorized("missing 'Authorization: Bearer <key>' header".into())
        })?;
        let role = self
            .role_of(key)
            .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?;
        if role < need {
            return Err(Error::Forbidden(format!(
                "this key has role '{}'; this request needs '{}'",
                role.name(),
                need.name()
            )));
        }
        Ok(())
    }

    /// Check an admin request.
    pub(crate) fn check_admin(&self, headers: &HeaderMap) -> Result<()> {
        if !self.has_admin() {
            return Err(Error::Forbidden(format!(
                "admin endpoints are disabled because no admin key is configured: {HOW_TO}"
            )));
        }
        self.check(headers, None, Role::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn hdr(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    fn hex(b: &[u8; 32]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn roles_nest_and_unknown_keys_fail() {
        let file = format!(
            "# keys\nreader:{}\nwriter:{}  # w\n",
            hex(&sha256(b"r-key")),
            hex(&sha256(b"w-key"))
        );
        let auth = Auth {
            keys: Auth::parse_file(&file).unwrap(),
        };
        let ip = Some("10.0.0.1".parse().unwrap());
        auth.check(&hdr("r-key"), ip, Role::Reader).unwrap();
        assert!(matches!(
            auth.check(&hdr("r-key"), ip, Role::Writer),
            Err(Error::Forbidden(_))
        ));
        auth.check(&hdr("w-key"), ip, Role::Reader).unwrap();
        assert!(matches!(
            auth.check(&hdr("nope"), ip, Role::Reader),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            auth.check(&HeaderMap::new(), ip, Role::Reader),
            Err(Error::Unauthorized(_))
        ));
        // No admin key configured: admin endpoints say how to get one.
        let e = auth.check_admin(&hdr("w-key")).unwrap_err().to_string();
        assert!(e.contains("--admin-key"), "{e}");
        assert!(Auth::parse_file("boss:00").is_err());
    }

    #[test]
    fn no_keys_means_loopback_only() {
        let auth = Auth::default();
        auth.check(
            &HeaderMap::new(),
            Some("127.0.0.1".parse().unwrap()),
            Role::Writer,
        )
        .unwrap();
        assert!(matches!(
            auth.check(
                &HeaderMap::new(),
                Some("192.168.1.2".parse().unwrap()),
                Role::Reader
            ),
            Err(Error::Forbidden(_))
        ));
    }
}
