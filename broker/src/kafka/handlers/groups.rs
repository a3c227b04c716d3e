//! Consumer group APIs (classic protocol). Not handled yet: nothing is advertised.

use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};

use super::Ctx;

/// Group APIs handled, with version ranges.
pub const VERSIONS: &[(ApiKey, i16, i16)] = &[];

/// Handles a group request, or gives it back if it is not one.
pub async fn dispatch(
    _ctx: &Ctx,
    _header: &RequestHeader,
    request: RequestKind,
) -> Result<ResponseKind, RequestKind> {
    Err(request)
}
