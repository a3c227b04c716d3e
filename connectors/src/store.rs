//! Where a sink writes: an object store and a prefix in it, from a connector's config.
//!
//! `store.url` is any of `file:///dir`, `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`
//! and `az://container/prefix`. Confluent's S3 sink configs work as written: `s3.bucket.name`
//! (and `s3.region`) name the bucket, and an `http(s)://` `store.url` is the S3 endpoint (MinIO,
//! moto, Ceph). Credentials come from the config (`aws.access.key.id`, `aws.secret.access.key`,
//! `gcs.credentials.path`, `azblob.account.key`) or from the environment variables each cloud's
//! own tools read (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_…`).
//!
//! [`Location::check`] checks the store before anything is written: it lists the prefix, so an
//! unreachable endpoint, refused credentials or a missing bucket fail at start with a message
//! that names the problem.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::config::{ConnectorConfig, Key};
use crate::error::{ConnectError, Result};

pub const STORE_URL: Key = Key {
    name: "store.url",
    default: None,
    doc: "where files go: file:///dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix \
          or memory://; with s3.bucket.name, an http(s) URL is the S3 endpoint",
};
pub const S3_BUCKET: Key = Key {
    name: "s3.bucket.name",
    default: None,
    doc: "the S3 bucket (Confluent's key; store.url is then the endpoint, if given)",
};
pub const S3_REGION: Key = Key {
    name: "s3.region",
    default: None,
    doc: "the S3 region (else AWS_REGION, else us-east-1)",
};
pub const S3_PATH_STYLE: Key = Key {
    name: "s3.path.style.access.enabled",
    default: Some("true"),
    doc: "address buckets as endpoint/bucket (true) or bucket.endpoint (false)",
};
pub const AWS_ACCESS_KEY: Key = Key {
    name: "aws.access.key.id",
    default: None,
    doc: "the S3 access key id (else AWS_ACCESS_KEY_ID)",
};
pub const AWS_SECRET_KEY: Key = Key {
    name: "aws.secret.access.key",
    default: None,
    doc: "the S3 secret key (else AWS_SECRET_ACCESS_KEY)",
};
pub const AWS_SESSION_TOKEN: Key = Key {
    name: "aws.session.token",
    default: None,
    doc: "an S3 session token (else AWS_SESSION_TOKEN)",
};
pub const ALLOW_HTTP: Key = Key {
    name: "store.allow.http",
    default: None,
    doc: "allow plain http to the store (default: true when the endpoint is http://)",
};
pub const GCS_BUCKET: Key = Key {
    name: "gcs.bucket.name",
    default: None,
    doc: "the GCS bucket (with a store.url that is not gs://)",
};
pub const GCS_CREDENTIALS: Key = Key {
    name: "gcs.credentials.path",
    default: None,
    doc: "a service account JSON file (else GOOGLE_APPLICATION_CREDENTIALS)",
};
pub const AZ_ACCOUNT: Key = Key {
    name: "azblob.account.name",
    default: None,
    doc: "the Azure storage account (else AZURE_STORAGE_ACCOUNT_NAME)",
};
pub const AZ_KEY: Key = Key {
    name: "azblob.account.key",
    default: None,
    doc: "the Azure storage account key (else AZURE_STORAGE_ACCOUNT_KEY)",
};
pub const AZ_CONTAINER: Key = Key {
    name: "azblob.container.name",
    default: None,
    doc: "the Azure container (with a store.url that is not az://)",
};
pub const STORE_TIMEOUT: Key = Key {
    name: "store.request.timeout.ms",
    default: Some("30000"),
    doc: "how long one request to the store may take, retries included, before it fails",
};

/// The keys of [`Location::from_config`].
pub const KEYS: &[Key] = &[
    STORE_URL,
    S3_BUCKET,
    S3_REGION,
    S3_PATH_STYLE,
    AWS_ACCESS_KEY,
    AWS_SECRET_KEY,
    AWS_SESSION_TOKEN,
    ALLOW_HTTP,
    GCS_BUCKET,
    GCS_CREDENTIALS,
    AZ_ACCOUNT,
    AZ_KEY,
    AZ_CONTAINER,
    STORE_TIMEOUT,
];

/// An object store and the prefix files go under.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// For messages: `s3://lake/events (endpoint http://127.0.0.1:5000)`.
    pub describe: String,
    /// The directory of a `file://` store: its files are fsynced before they count as durable
    /// (object_store's local store does not).
    pub local_root: Option<PathBuf>,
}

impl Location {
    /// The location a config names, not yet checked (see [`Location::check`]).
    pub fn from_config(config: &ConnectorConfig) -> Result<Location> {
        let url_text = config.value(&STORE_URL);
        let s3_bucket = config.value(&S3_BUCKET);
        let gcs_bucket = config.value(&GCS_BUCKET);
        let az_container = config.value(&AZ_CONTAINER);
        // Confluent's shape: a bucket key, and store.url (if any) is the endpoint.
        let (scheme, bucket, prefix, endpoint) = match (
            url_text,
            s3_bucket,
            gcs_bucket,
            az_container,
        ) {
            (None, None, None, None) => {
                return Err(config.missing(&STORE_URL));
            }
            (url, Some(bucket), None, None) => match url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    ("s3", bucket.to_owned(), String::new(), Some(u.to_owned()))
                }
                None => ("s3", bucket.to_owned(), String::new(), None),
                Some(u) => {
                    let parsed = parse_url(config, u)?;
                    if parsed.scheme() != "s3" || parsed.host_str() != Some(bucket) {
                        return Err(config.invalid(
                            STORE_URL.name,
                            u,
                            &format!(
                                "s3.bucket.name={bucket} is set too: give either store.url=s3://{bucket}/… \
                                 or the bucket with an http(s) endpoint in store.url"
                            ),
                        ));
                    }
                    ("s3", bucket.to_owned(), url_path(&parsed), None)
                }
            },
            (Some(u), None, Some(bucket), None) if u.starts_with("http") => {
                ("gs", bucket.to_owned(), String::new(), Some(u.to_owned()))
            }
            (None, None, Some(bucket), None) => ("gs", bucket.to_owned(), String::new(), None),
            (Some(u), None, None, Some(container)) if u.starts_with("http") => (
                "az",
                container.to_owned(),
                String::new(),
                Some(u.to_owned()),
            ),
            (None, None, None, Some(container)) => {
                ("az", container.to_owned(), String::new(), None)
            }
            (Some(u), None, None, None) => {
                let parsed = parse_url(config, u)?;
                match parsed.scheme() {
                    "file" => return local(config, u, &parsed),
                    "memory" => {
                        return Ok(Location {
                            store: Arc::new(InMemory::new()),
                            prefix: Path::from(url_path(&parsed).as_str()),
                            describe: u.to_owned(),
                            local_root: None,
                        });
                    }
                    "s3" | "s3a" => {
                        let bucket = parsed.host_str().unwrap_or_default().to_owned();
                        ("s3", bucket, url_path(&parsed), None)
                    }
                    "gs" => {
                        let bucket = parsed.host_str().unwrap_or_default().to_owned();
                        ("gs", bucket, url_path(&parsed), None)
                    }
                    "az" | "azure" | "abfs" | "abfss" => {
                        let container = parsed.host_str().unwrap_or_default().to_owned();
                        ("az", container, url_path(&parsed), None)
                    }
                    other => {
                        return Err(config.invalid(
                            STORE_URL.name,
                            u,
                            &format!(
                                "the scheme '{other}' is not a store; use file://, s3://, gs://, \
                                 az:// or memory:// (or an http(s) endpoint with s3.bucket.name)"
                            ),
                        ));
                    }
                }
            }
            _ => {
                return Err(ConnectError::config(format!(
                    "{}: give one of s3.bucket.name, gcs.bucket.name and azblob.container.name",
                    config.origin
                )));
            }
        };
        if bucket.is_empty() {
            return Err(ConnectError::config(format!(
                "{}: store.url names no bucket: write it as {scheme}://BUCKET/prefix",
                config.origin
            )));
        }
        let timeout = config
            .millis(&STORE_TIMEOUT)?
            .unwrap_or(Duration::from_secs(30));
        let allow_http = match config.bool(&ALLOW_HTTP)? {
            Some(b) => b,
            None => endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5).min(timeout))
            .with_timeout(timeout)
            .with_allow_http(allow_http);
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: timeout,
            ..RetryConfig::default()
        };
        let failed = |e: object_store::Error| {
            ConnectError::Store(format!(
                "{}: cannot set up the {scheme} store for '{bucket}': {e}",
                config.origin
            ))
        };
        let describe = match &endpoint {
            Some(e) => format!("{scheme}://{bucket}/{prefix} (endpoint {e})"),
            None => format!("{scheme}://{bucket}/{prefix}"),
        };
        let store: Arc<dyn ObjectStore> = match scheme {
            "s3" => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_virtual_hosted_style_request(
                        !config.bool(&S3_PATH_STYLE)?.unwrap_or(true),
                    );
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(r) = config.value(&S3_REGION) {
                    b = b.with_region(r);
                }
                if let Some(k) = config.value(&AWS_ACCESS_KEY) {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = config.value(&AWS_SECRET_KEY) {
                    b = b.with_secret_access_key(k);
                }
                if let Some(t) = config.value(&AWS_SESSION_TOKEN) {
                    b = b.with_token(t);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            "gs" => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(p) = config.value(&GCS_CREDENTIALS) {
                    b = b.with_service_account_path(p);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            _ => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_container_name(&bucket)
                    .with_client_options(client)
                    .with_retry(retry);
                if let Some(a) = config.value(&AZ_ACCOUNT) {
                    b = b.with_account(a);
                }
                if let Some(k) = config.value(&AZ_KEY) {
                    b = b.with_access_key(k);
                }
                if let Some(e) = &endpoint {
                    b = b.with_endpoint(e.clone());
                }
                Arc::new(b.build().map_err(failed)?)
            }
        };
        Ok(Location {
            store,
            prefix: Path::from(prefix.as_str()),
            describe,
            local_root: None,
        })
    }

    /// Lists the prefix once, so that an unreachable endpoint, refused credentials or a
    /// missing bucket fail now, with a message that names the problem.
    pub async fn check(&self) -> Result<()> {
        if self.local_root.is_some() {
            return Ok(());
        }
        match self.store.list_with_delimiter(Some(&self.prefix)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(ConnectError::Store(describe_store_error(
                &self.describe,
                &e,
            ))),
        }
    }

    /// A path under the prefix.
    pub fn child(&self, relative: &str) -> Path {
        let mut out = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            out = out.clone().join(part);
        }
        out
    }
}

/// What went wrong talking to a store, in words a user can act on. The patterns are the
/// stores' own error codes and HTTP status lines, never bare numbers: the message also holds
/// timings such as "in 401.9ms".
pub fn describe_store_error(store: &str, e: &object_store::Error) -> String {
    let text = format!("{e}");
    let lower = text.to_ascii_lowercase();
    let what = if lower.contains("nosuchbucket") || lower.contains("bucket does not exist") {
        "the bucket does not exist: create it first".to_owned()
    } else if lower.contains("invalidaccesskeyid")
        || lower.contains("signaturedoesnotmatch")
        || lower.contains("accessdenied")
        || lower.contains("403 forbidden")
        || lower.contains("401 unauthorized")
        || matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        )
    {
        "the store refused the credentials (check aws.access.key.id / aws.secret.access.key or the \
         AWS_* environment variables)"
            .to_owned()
    } else if lower.contains("error sending request")
        || lower.contains("connection refused")
        || lower.contains("dns error")
        || lower.contains("timed out")
    {
        "cannot reach the store's endpoint (is it running, and is store.url right?)".to_owned()
    } else {
        "the store failed".to_owned()
    };
    format!("{store}: {what}: {text}")
}

fn parse_url(config: &ConnectorConfig, text: &str) -> Result<url::Url> {
    url::Url::parse(text).map_err(|e| {
        config.invalid(
            STORE_URL.name,
            text,
            &format!("not a URL ({e}); e.g. file:///data/lake or s3://bucket/prefix"),
        )
    })
}

/// A URL's path without its leading and trailing slashes.
fn url_path(url: &url::Url) -> String {
    url.path().trim_matches('/').to_owned()
}

fn local(config: &ConnectorConfig, text: &str, url: &url::Url) -> Result<Location> {
    let dir = url.to_file_path().map_err(|()| {
        config.invalid(
            STORE_URL.name,
            text,
            "a file URL needs an absolute path, e.g. file:///data/lake",
        )
    })?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        ConnectError::Store(format!(
            "{}: cannot create the directory {}: {e}",
            config.origin,
            dir.display()
        ))
    })?;
    let store = LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
        ConnectError::Store(format!(
            "{}: cannot use the directory {}: {e}",
            config.origin,
            dir.display()
        ))
    })?;
    Ok(Location {
        store: Arc::new(store),
        prefix: Path::default(),
        describe: text.to_owned(),
        local_root: Some(dir),
    })
}
