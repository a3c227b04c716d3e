//! ApiVersions: what this server speaks. Default-valued tagged fields are left out (the
//! `kafka-protocol` encoder omits them), which old librdkafka (2.0.x, Debian's kcat) needs.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{ApiVersion, ApiVersionsResponse};

use super::supported;

fn versions() -> Vec<ApiVersion> {
    supported()
        .map(|(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect()
}

/// The answer to a supported ApiVersions request.
pub fn handle() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(versions())
}

/// The answer to an ApiVersions request of a version we do not speak (sent as v0).
pub fn unsupported_version() -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(versions())
}
