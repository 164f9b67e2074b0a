//! Where backups go: an object store named by a URL (`s3://bucket/prefix`, `gs://...`,
//! `az://container/prefix`, `file:///path`), opened with the `object_store` crate, and the
//! few operations the backup code needs, with errors that say what to check.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::error::{Error, Result};

/// How to reach S3-compatible stores (flags and `ZEPTO_S3_*`); credentials come from the
/// standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, ...), GCS from `GOOGLE_*`, Azure from `AZURE_*`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct StoreArgs {
    /// S3 endpoint for S3-compatible stores (MinIO, moto, Ceph...), e.g.
    /// `http://127.0.0.1:9000`. An `http://` endpoint allows plain HTTP.
    #[arg(long, env = "ZEPTO_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// S3 region (else `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1).
    #[arg(long, env = "ZEPTO_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Address buckets as `https://bucket.endpoint/` instead of the path style
    /// `https://endpoint/bucket/` (the default, which every S3-compatible store accepts).
    #[arg(long, env = "ZEPTO_S3_VIRTUAL_HOSTED_STYLE")]
    pub(crate) s3_virtual_hosted_style: bool,
    /// Give up on one object store request after this long, retries included.
    #[arg(long, env = "ZEPTO_STORE_TIMEOUT", default_value = "30s", value_parser = crate::config::parse_duration_arg)]
    pub(crate) store_timeout: Duration,
}

/// An opened backup location: the store with the URL's prefix applied.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    url: String,
    inner: Arc<dyn ObjectStore>,
}

impl Store {
    /// Open `url` (no request is made; see [`Store::check`]).
    pub(crate) fn open(url: &str, args: &StoreArgs) -> Result<Store> {
        let bad = |m: String| Error::Config(format!("backup location '{url}': {m}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected s3://, gs://, az:// or file:// URL".into()))?;
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: args.store_timeout,
            ..RetryConfig::default()
        };
        let client = object_store::ClientOptions::new()
            .with_timeout(args.store_timeout)
            .with_connect_timeout(Duration::from_secs(5));
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "file" => {
                // file:///abs/path: everything after the scheme is the path.
                let dir = std::path::Path::new(rest);
                if !dir.is_absolute() {
                    return Err(bad(
                        "file:// URLs need an absolute path (file:///dir)".into()
                    ));
                }
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(format!("create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?;
                return Ok(Store {
                    url: url.to_string(),
                    inner: Arc::new(fs),
                });
            }
            "s3" | "s3a" => {
                if bucket.is_empty() {
                    return Err(bad("no bucket".into()));
                }
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client)
                    .with_virtual_hosted_style_request(args.s3_virtual_hosted_style);
                if let Some(ep) = &args.s3_endpoint {
                    b = b
                        .with_endpoint(ep.trim_end_matches('/'))
                        .with_allow_http(ep.starts_with("http://"));
                }
                if let Some(r) = &args.s3_region {
                    b = b.with_region(r);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => {
                let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "azure" | "abfs" => {
                let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            other => {
                return Err(bad(format!(
                    "unknown scheme '{other}' (use s3://, gs://, az:// or file://)"
                )))
            }
        };
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Store {
            url: url.to_string(),
            inner,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn fail(&self, verb: &str, key: &str, e: object_store::Error) -> Error {
        let hint = match &e {
            object_store::Error::NotFound { .. } => " (no such object)",
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                " (the store refused the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_*, AZURE_*)"
            }
            _ => "",
        };
        let mut msg = format!("{verb} {key} at {}: {e}", self.url);
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            let t = s.to_string();
            if !msg.contains(&t) {
                msg.push_str(&format!(": {t}"));
            }
            src = s.source();
        }
        // Most stores' refusals come back as generic HTTP errors: say what they mean.
        let said = |needles: &[&str]| needles.iter().any(|n| msg.contains(n));
        let hint = if !hint.is_empty() {
            hint
        } else if said(&[
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "403 Forbidden",
            "401 Unauthorized",
            "AuthenticationFailed",
        ]) {
            " (the store refused the credentials: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_*, AZURE_*)"
        } else if said(&["NoSuchBucket", "ContainerNotFound", "bucket does not exist"]) {
            " (the bucket does not exist)"
        } else if said(&[
            "error sending request",
            "Connection refused",
            "dns error",
            "timed out",
            "connect",
        ]) {
            " (the endpoint is unreachable: check the URL, --s3-endpoint and the network)"
        } else {
            ""
        };
        msg.push_str(hint);
        Error::Backup(msg)
    }

    /// One request that shows whether the location is usable (reachable, the bucket
    /// exists, the credentials are accepted).
    pub(crate) async fn check(&self) -> Result<()> {
        self.inner
            .list_with_delimiter(Some(&ObjPath::from("backups")))
            .await
            .map(|_| ())
            .map_err(|e| self.fail("list", "backups/", e))
    }

    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.inner
            .put(&ObjPath::from(key), PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.fail("upload", key, e))
    }

    /// The object's bytes; `Ok(None)` when it does not exist.
    pub(crate) async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        let got = match self.inner.get(&ObjPath::from(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fail("download", key, e)),
        };
        got.bytes()
            .await
            .map(Some)
            .map_err(|e| self.fail("download", key, e))
    }

    /// The object's bytes; a missing object is an error naming it.
    pub(crate) async fn get(&self, key: &str) -> Result<Bytes> {
        self.get_opt(key).await?.ok_or_else(|| {
            Error::Backup(format!(
                "object {key} is missing from {} (the backup is incomplete)",
                self.url
            ))
        })
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        match self.inner.head(&ObjPath::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.fail("look up", key, e)),
        }
    }

    /// Every object under `prefix` (recursively): `(key, size, last modified unix ms)`.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>> {
        let p = ObjPath::from(prefix);
        let mut s = self.inner.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            let m = m.map_err(|e| self.fail("list", prefix, e))?;
            out.push((
                m.location.to_string(),
                m.size,
                m.last_modified.timestamp_millis(),
            ));
        }
        out.sort();
        Ok(out)
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        match self.inner.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }
}
