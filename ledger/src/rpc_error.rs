//! Fabric Gateway error details, as a Fabric 2.5 peer sends them.
//!
//! A chaincode that answers status ≥ 400 makes Fabric's gateway fail the call
//! with a gRPC status whose *message* is generic on Endorse ("failed to
//! endorse transaction, see attached details for more info") and whose
//! details (`grpc-status-details-bin`, a `google.rpc.Status`) carry one
//! `gateway.ErrorDetail` per endorser with "chaincode response <status>,
//! <message>". The devnet answers the same way ([`chaincode_error`]) and the
//! client reads it back from either ([`chaincode_failure`]).

use ehr_proto::gateway::ErrorDetail;
use prost::Message;
use tonic::{Code, Status};

/// `type_url` of a packed `gateway.ErrorDetail`.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/gateway.ErrorDetail";

/// `google.rpc.Status`, the payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The operation that failed, which decides Fabric's code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Evaluate,
    Endorse,
}

/// The gRPC status Fabric's gateway returns when the chaincode answered
/// `status` (≥ 400) with `message`, endorsed by `msp_id` at `address`.
pub fn chaincode_error(
    op: Operation,
    address: &str,
    msp_id: &str,
    status: i32,
    message: &str,
) -> Status {
    let detail_message = format!("chaincode response {status}, {message}");
    let (code, top) = match op {
        // evaluate.go: the endorser's own message, code Unknown.
        Operation::Evaluate => (
            Code::Unknown,
            format!("evaluate call to endorser returned error: {detail_message}"),
        ),
        // endorse.go: a generic message, code Aborted, the reason in the details.
        Operation::Endorse => (
            Code::Aborted,
            "failed to endorse transaction, see attached details for more info".to_owned(),
        ),
    };
    let detail = ErrorDetail {
        address: address.to_owned(),
        msp_id: msp_id.to_owned(),
        message: detail_message,
    };
    let rpc = RpcStatus {
        code: code as i32,
        message: top.clone(),
        details: vec![prost_types::Any {
            type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(code, top, rpc.encode_to_vec().into())
}

/// The `gateway.ErrorDetail`s attached to a status (none when absent or
/// undecodable: details are advisory, never trusted for more than messages).
pub fn error_details(status: &Status) -> Vec<ErrorDetail> {
    let Ok(rpc) = RpcStatus::decode(status.details()) else {
        return Vec::new();
    };
    rpc.details
        .iter()
        .filter(|a| a.type_url == ERROR_DETAIL_TYPE_URL)
        .filter_map(|a| ErrorDetail::decode(a.value.as_slice()).ok())
        .collect()
}

/// The chaincode's `(status, message)` when `status` reports a chaincode
/// error: read from the attached details first (Fabric's Endorse carries it
/// only there), else from the status message (Fabric's Evaluate).
pub fn chaincode_failure(status: &Status) -> Option<(i32, String)> {
    error_details(status)
        .iter()
        .find_map(|d| parse_chaincode_response(&d.message))
        .or_else(|| parse_chaincode_response(status.message()))
}

/// Parses "… chaincode response <status>, <message>".
fn parse_chaincode_response(text: &str) -> Option<(i32, String)> {
    const MARKER: &str = "chaincode response ";
    let rest = &text[text.find(MARKER)? + MARKER.len()..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let status: i32 = rest[..digits].parse().ok()?;
    let message = rest[digits..].strip_prefix(',').unwrap_or(&rest[digits..]);
    Some((status, message.trim_start().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endorse_error_carries_the_chaincode_response_only_in_details() {
        let s = chaincode_error(
            Operation::Endorse,
            "peer0:7051",
            "Org1MSP",
            403,
            r#"{"code":"forbidden"}"#,
        );
        assert_eq!(s.code(), Code::Aborted);
        assert!(!s.message().contains("chaincode response"));
        let details = error_details(&s);
        assert_eq!(details.len(), 1);
        assert_eq!(details[0].msp_id, "Org1MSP");
        assert_eq!(
            chaincode_failure(&s),
            Some((403, r#"{"code":"forbidden"}"#.to_owned()))
        );
    }

    #[test]
    fn evaluate_error_is_unknown_with_the_response_in_the_message() {
        let s = chaincode_error(Operation::Evaluate, "a", "m", 404, "gone, really");
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(
            s.message(),
            "evaluate call to endorser returned error: chaincode response 404, gone, really"
        );
        // Without details, the message alone is enough.
        let bare = Status::new(Code::Unknown, s.message());
        assert_eq!(
            chaincode_failure(&bare),
            Some((404, "gone, really".to_owned()))
        );
    }

    #[test]
    fn other_errors_are_not_chaincode_failures() {
        assert_eq!(chaincode_failure(&Status::unavailable("peer down")), None);
        let garbage = Status::with_details(Code::Aborted, "x", vec![0xff, 0x01].into());
        assert!(error_details(&garbage).is_empty());
        assert_eq!(chaincode_failure(&garbage), None);
    }
}
