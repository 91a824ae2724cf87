//! Where blobs live and the limits that apply to them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where blobs are stored. Deserializes from the server's configuration file, e.g.
///
/// ```toml
/// [fleet.blobs]
/// kind = "s3"
/// bucket = "kernels"
/// prefix = "prod"
/// endpoint = "https://minio.internal:9000"
/// ```
#[derive(Clone, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlobConfig {
    /// A directory on the local filesystem (created if missing).
    Local {
        /// The directory.
        dir: PathBuf,
    },
    /// An S3 bucket, on AWS or any S3-compatible server (MinIO, Ceph, R2, moto, ...).
    S3 {
        /// The bucket (must exist).
        bucket: String,
        /// Key prefix inside the bucket, `/`-separated, without leading or trailing `/`
        /// (empty: the bucket's root).
        #[serde(default)]
        prefix: String,
        /// Endpoint URL for S3-compatible servers (path-style requests); `None` = AWS.
        #[serde(default)]
        endpoint: Option<String>,
        /// Region (`us-east-1` if absent).
        #[serde(default = "default_region")]
        region: String,
        /// Access key id; with `secret_access_key`, or neither to take the credentials
        /// from the environment (`AWS_ACCESS_KEY_ID`, ..., instance metadata).
        #[serde(default)]
        access_key_id: Option<String>,
        /// Secret access key (never printed by `Debug`, never serialized).
        #[serde(default, skip_serializing)]
        secret_access_key: Option<String>,
        /// Allow plain `http://` endpoints (test servers only).
        #[serde(default)]
        allow_http: bool,
    },
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl fmt::Debug for BlobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobConfig::Local { dir } => f.debug_struct("Local").field("dir", dir).finish(),
            BlobConfig::S3 { bucket, prefix, endpoint, region, access_key_id, secret_access_key, allow_http } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .field("endpoint", endpoint)
                .field("region", region)
                .field("access_key_id", access_key_id)
                .field("secret_access_key", &secret_access_key.as_ref().map(|_| "<redacted>"))
                .field("allow_http", allow_http)
                .finish(),
        }
    }
}

/// Limits and tuning. Every field has a default (`#[serde(default)]`).
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlobOptions {
    /// Largest blob accepted by a put or fetched by `get_to_file`, in bytes (16 GiB).
    pub max_blob_len: u64,
    /// Multipart part size in bytes, 5 MiB ..= 512 MiB (8 MiB); files at most this long
    /// are uploaded in one request. Grown automatically to stay under 10,000 parts.
    pub part_size: u64,
    /// Parts uploaded at the same time by one put (4).
    pub upload_concurrency: usize,
    /// A put of a blob that already exists does nothing if the blob was written less
    /// than this long ago, and rewrites it otherwise (3600 s), so that a blob a put just
    /// returned is never old enough for `gc` to collect.
    pub refresh_after_secs: u64,
    /// Timeout of one HTTP request to the object store, in seconds (120).
    pub request_timeout_secs: u64,
    /// Timeout of opening a connection to the object store, in seconds (5).
    pub connect_timeout_secs: u64,
    /// Retries of a failed request (network error, 5xx, timeout) with exponential backoff (5).
    pub max_retries: usize,
    /// Stop retrying a request this long after its first attempt, in seconds (180).
    pub retry_timeout_secs: u64,
}

impl Default for BlobOptions {
    fn default() -> Self {
        BlobOptions {
            max_blob_len: 16 << 30,
            part_size: 8 << 20,
            upload_concurrency: 4,
            refresh_after_secs: 3600,
            request_timeout_secs: 120,
            connect_timeout_secs: 5,
            max_retries: 5,
            retry_timeout_secs: 180,
        }
    }
}

/// S3's limits: parts of 5 MiB at least (but the last), 10,000 parts, 5 TiB objects.
pub(crate) const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 512 << 20;
pub(crate) const MAX_PARTS: u64 = 10_000;
const MAX_OBJECT: u64 = 5 << 40;

impl BlobOptions {
    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_PART..=MAX_PART).contains(&self.part_size) {
            return Err(format!("part_size {} is outside {MIN_PART}..={MAX_PART} bytes", self.part_size));
        }
        if self.max_blob_len == 0 || self.max_blob_len > MAX_OBJECT {
            return Err(format!("max_blob_len {} is outside 1..={MAX_OBJECT}", self.max_blob_len));
        }
        if !(1..=64).contains(&self.upload_concurrency) {
            return Err(format!("upload_concurrency {} is outside 1..=64", self.upload_concurrency));
        }
        for (name, v) in [
            ("request_timeout_secs", self.request_timeout_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("retry_timeout_secs", self.retry_timeout_secs),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// The part size for a blob of `len` bytes: `part_size`, grown (in whole MiB) so that
    /// the blob takes at most 10,000 parts.
    pub(crate) fn part_size_for(&self, len: u64) -> u64 {
        let needed = len.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
        self.part_size.max(needed)
    }

    /// `refresh_after_secs` as a duration.
    pub fn refresh_after(&self) -> Duration {
        Duration::from_secs(self.refresh_after_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_stay_under_the_part_limit() {
        let o = BlobOptions::default();
        assert_eq!(o.part_size_for(20 << 20), 8 << 20);
        let big = 5u64 << 40;
        let p = o.part_size_for(big);
        assert!(big.div_ceil(p) <= MAX_PARTS, "{p}");
        assert_eq!(p % (1 << 20), 0);
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = BlobConfig::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: None,
            region: default_region(),
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("hunter2".into()),
            allow_http: false,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && s.contains("<redacted>"), "{s}");
    }

    #[test]
    fn options_reject_out_of_range_values() {
        let mut o = BlobOptions::default();
        assert!(o.validate().is_ok());
        o.part_size = 1 << 20;
        assert!(o.validate().unwrap_err().contains("part_size"));
        let o = BlobOptions { upload_concurrency: 0, ..Default::default() };
        assert!(o.validate().unwrap_err().contains("upload_concurrency"));
    }
}
