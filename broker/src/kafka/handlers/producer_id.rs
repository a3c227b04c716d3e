//! InitProducerId: ids for idempotent producers. Transactions are not supported yet, so a
//! request with a transactional id is refused.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;

use super::Ctx;

pub fn handle(ctx: &Ctx, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        return resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    // An idempotent producer re-initialising with its id gets the next epoch of the same id.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        let epoch = req.producer_epoch.checked_add(1).unwrap_or(0);
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(epoch);
    }
    match ctx.broker.allocate_producer_id() {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            resp.with_error_code(ResponseError::KafkaStorageError.code())
        }
    }
}
