//! InitProducerId: ids for idempotent producers, and for transactional producers through the
//! transaction coordinator (which bumps the epoch of a transactional id, fencing older
//! instances, and aborts a transaction they left open).
//!
//! Without a transactional id every request gets a producer id never handed out before, with
//! epoch 0, whatever producer id and epoch the client names: that is Kafka's behaviour (its
//! transaction coordinator "blindly accepts" a request with a null transactional id and uses a
//! named producer only for transactional ids, KIP-360). Bumping the epoch of a named id instead
//! would trust the client: any client could name another producer's id and fence it, and an
//! epoch at `i16::MAX` would have nowhere to go. The named pair is still checked for shape, as
//! Kafka's broker does: both set or both -1, else INVALID_REQUEST.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;

use super::Ctx;
use crate::txn::state::{ExpectedProducer, TxnApi};

/// Answers one InitProducerId request (see the module docs).
pub async fn handle(ctx: &Ctx, version: i16, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match &req.transactional_id {
        // Kafka refuses an empty transactional id rather than reading it as "none".
        Some(t) if t.is_empty() => {
            return resp.with_error_code(ResponseError::InvalidRequest.code());
        }
        Some(t) => {
            let result = match ExpectedProducer::from_request(req.producer_id.0, req.producer_epoch)
            {
                Ok(expected) => {
                    ctx.broker
                        .transactions()
                        .init_producer_id(t.0.as_str(), req.transaction_timeout_ms, expected)
                        .await
                }
                Err(e) => Err(e),
            };
            return match result {
                Ok((id, epoch)) => resp
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch),
                Err(e) => {
                    tracing::debug!(transactional_id = %t.0.as_str(), code = ?e.code, error = %e, "InitProducerId refused");
                    resp.with_error_code(e.code_for(TxnApi::InitProducerId, version).code())
                }
            };
        }
        None => {}
    }
    let named = (req.producer_id.0, req.producer_epoch);
    let well_formed = named == (-1, -1) || (named.0 >= 0 && named.1 >= 0);
    if !well_formed {
        return resp.with_error_code(ResponseError::InvalidRequest.code());
    }
    match ctx.broker.allocate_producer_id() {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            resp.with_error_code(ResponseError::KafkaStorageError.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::protocol::StrBytes;

    async fn ctx(dir: &std::path::Path) -> Ctx {
        let broker = Ctx::open_test_broker(dir).await;
        Ctx::for_tests(broker)
    }

    fn request(producer_id: i64, epoch: i16) -> InitProducerIdRequest {
        InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
    }

    #[tokio::test]
    async fn producer_at_the_maximum_epoch_gets_a_new_id_instead_of_wrapping() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ctx = ctx(dir.path()).await;
        let first = handle(&ctx, 4, request(-1, -1)).await;
        assert_eq!(first.error_code, 0);
        assert_eq!(first.producer_epoch, 0);
        let exhausted = handle(&ctx, 4, request(first.producer_id.0, i16::MAX)).await;
        assert_eq!(exhausted.error_code, 0);
        assert_ne!(exhausted.producer_id, first.producer_id);
        assert_eq!(exhausted.producer_epoch, 0, "no wrap, no negative epoch");
    }

    #[tokio::test]
    async fn a_named_producer_id_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ctx = ctx(dir.path()).await;
        let victim = handle(&ctx, 4, request(-1, -1)).await;
        // Naming someone else's id (or one never handed out) must not give its next epoch,
        // which would fence that producer.
        for named in [victim.producer_id.0, 999_999] {
            let r = handle(&ctx, 4, request(named, 3)).await;
            assert_eq!(r.error_code, 0);
            assert_ne!(r.producer_id.0, named);
            assert_ne!(r.producer_id, victim.producer_id);
            assert_eq!(r.producer_epoch, 0);
        }
    }

    #[tokio::test]
    async fn half_named_or_negative_producers_and_empty_transactional_ids_are_invalid_requests() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ctx = ctx(dir.path()).await;
        let invalid = ResponseError::InvalidRequest.code();
        for (id, epoch) in [(5, -1), (-1, 0), (-7, 2), (5, -3)] {
            let r = handle(&ctx, 4, request(id, epoch)).await;
            assert_eq!(r.error_code, invalid, "({id}, {epoch})");
            assert_eq!((r.producer_id.0, r.producer_epoch), (-1, -1));
        }
        let empty = request(-1, -1)
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(""))));
        assert_eq!(handle(&ctx, 4, empty).await.error_code, invalid);
        let half_named = request(5, -1)
            .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))));
        assert_eq!(handle(&ctx, 4, half_named).await.error_code, invalid);
    }
}
