//! Golden bytes: each message below is encoded and compared with bytes derived
//! by hand from the protobuf encoding rules and Fabric's field numbers, then
//! decoded back. A wrong field number, wire type or enum value changes the
//! bytes and fails the test.
//!
//! Encoding rules used in the derivations:
//! - tag byte = (field_number << 3) | wire_type; wire type 0 = varint
//!   (int32, int64, uint64, bool, enum), 2 = length-delimited (string, bytes,
//!   embedded message, map entry).
//! - proto3 fields at their default (0, "", empty, false) are not written.
//! - a varint is little-endian groups of 7 bits, high bit set on all but the
//!   last byte: 200 = 0xc8 0x01, 500 = 0xf4 0x03,
//!   1_700_000_000 = 0x80 0xe2 0xcf 0xaa 0x06.
//! - a map<K,V> entry is an embedded message {key = 1, value = 2}.

use ehr_proto::{common, gateway, kvrwset, msp, orderer, protos};
use prost::Message;

/// Encodes `msg`, checks it against `expected_hex`, decodes it back and
/// checks it equals `msg`.
fn golden<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, expected_hex: &str) {
    let expected = hex::decode(expected_hex.replace([' ', '\n'], "")).unwrap();
    let got = msg.encode_to_vec();
    assert_eq!(
        hex::encode(&got),
        hex::encode(&expected),
        "encoding of {msg:?}"
    );
    let back = M::decode(expected.as_slice()).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn serialized_identity() {
    let id = msp::SerializedIdentity {
        mspid: "Org1MSP".into(),
        id_bytes: b"cert".to_vec(),
    };
    // mspid    field 1, wt 2: 0x0a, len 7, "Org1MSP" = 4f 72 67 31 4d 53 50
    // id_bytes field 2, wt 2: 0x12, len 4, "cert"    = 63 65 72 74
    golden(&id, "0a07 4f7267314d5350 1204 63657274");
}

#[test]
fn channel_header_with_timestamp_and_extension() {
    let ext = protos::ChaincodeHeaderExtension {
        chaincode_id: Some(protos::ChaincodeId {
            name: "ehr".into(),
            ..Default::default()
        }),
    };
    // ChaincodeID.name field 2: 0x12, len 3, "ehr" = 65 68 72           -> 5 bytes
    // ChaincodeHeaderExtension.chaincode_id field 2: 0x12, len 5, ...  -> 7 bytes
    golden(&ext, "1205 1203 656872");

    let ch = common::ChannelHeader {
        r#type: common::HeaderType::EndorserTransaction as i32,
        version: 0,
        timestamp: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        channel_id: "mychannel".into(),
        tx_id: "ab12".into(),
        epoch: 0,
        extension: ext.encode_to_vec(),
        tls_cert_hash: Vec::new(),
    };
    // type field 1, wt 0: 0x08, ENDORSER_TRANSACTION = 3
    // version = 0: omitted
    // timestamp field 3, wt 2: 0x1a, len 8:
    //   seconds field 1 wt 0: 0x08 80 e2 cf aa 06; nanos field 2 wt 0: 0x10 05
    // channel_id field 4, wt 2: 0x22, len 9, "mychannel"
    // tx_id field 5, wt 2: 0x2a, len 4, "ab12"
    // epoch = 0: omitted
    // extension field 7, wt 2: 0x3a, len 7, the extension above
    // tls_cert_hash empty: omitted
    golden(
        &ch,
        "0803
         1a08 0880e2cfaa06 1005
         2209 6d796368616e6e656c
         2a04 61623132
         3a07 12051203656872",
    );
}

#[test]
fn header_and_envelope() {
    let h = common::Header {
        channel_header: b"C".to_vec(),
        signature_header: b"S".to_vec(),
    };
    // channel_header field 1: 0a 01 43; signature_header field 2: 12 01 53
    golden(&h, "0a0143 120153");

    let sh = common::SignatureHeader {
        creator: b"id".to_vec(),
        nonce: vec![0xff, 0x00],
    };
    // creator field 1: 0a 02 69 64; nonce field 2: 12 02 ff 00
    golden(&sh, "0a026964 1202ff00");

    let payload = common::Payload {
        header: Some(h),
        data: b"D".to_vec(),
    };
    // header field 1: 0a 06 <header, 6 bytes>; data field 2: 12 01 44
    golden(&payload, "0a06 0a0143120153 120144");

    let env = common::Envelope {
        payload: payload.encode_to_vec(),
        signature: b"sig".to_vec(),
    };
    // payload field 1: 0a 0b <payload, 11 bytes>; signature field 2: 12 03 73 69 67
    golden(&env, "0a0b 0a060a0143120153120144 1203736967");
}

#[test]
fn block() {
    let b = common::Block {
        header: Some(common::BlockHeader {
            number: 1,
            previous_hash: vec![0xaa],
            data_hash: vec![0xbb],
        }),
        data: Some(common::BlockData {
            data: vec![b"e1".to_vec(), b"e2".to_vec()],
        }),
        metadata: Some(common::BlockMetadata {
            metadata: vec![Vec::new(), Vec::new(), vec![0x00]],
        }),
    };
    // header field 1: 0a 08 { number f1: 08 01; previous_hash f2: 12 01 aa; data_hash f3: 1a 01 bb }
    // data field 2: 12 08 { data f1 repeated: 0a 02 65 31, 0a 02 65 32 }
    // metadata field 3: 1a 07 { metadata f1 repeated: 0a 00, 0a 00, 0a 01 00 }
    //   (repeated bytes elements are written even when empty)
    golden(
        &b,
        "0a08 0801 1201aa 1a01bb
         1208 0a026531 0a026532
         1a07 0a00 0a00 0a0100",
    );
}

#[test]
fn chaincode_input_with_decorations_and_is_init() {
    let input = protos::ChaincodeInput {
        args: vec![b"get".to_vec(), b"k1".to_vec()],
        decorations: [("a".to_string(), b"b".to_vec())].into_iter().collect(),
        is_init: true,
    };
    // args field 1 repeated bytes: 0a 03 67 65 74, 0a 02 6b 31
    // decorations field 2, one map entry {key f1: 0a 01 61; value f2: 12 01 62}: 12 06 ...
    // is_init field 3, wt 0: 18 01
    golden(&input, "0a03676574 0a026b31 1206 0a0161120162 1801");
}

#[test]
fn chaincode_message_transaction() {
    let input = protos::ChaincodeInput {
        args: vec![b"get".to_vec(), b"k1".to_vec()],
        ..Default::default()
    };
    let msg = protos::ChaincodeMessage {
        r#type: protos::chaincode_message::Type::Transaction as i32,
        timestamp: None,
        payload: input.encode_to_vec(),
        txid: "tx1".into(),
        proposal: Some(protos::SignedProposal {
            proposal_bytes: b"P".to_vec(),
            signature: b"S".to_vec(),
        }),
        chaincode_event: None,
        channel_id: "ch".into(),
    };
    // type field 1, wt 0: 08, TRANSACTION = 5
    // payload field 3, wt 2: 1a 09 <ChaincodeInput: 0a03676574 0a026b31>
    // txid field 4: 22 03 "tx1" = 74 78 31
    // proposal field 5: 2a 06 <SignedProposal: proposal_bytes f1 0a 01 50, signature f2 12 01 53>
    // channel_id field 7: 3a 02 "ch" = 63 68
    golden(
        &msg,
        "0805
         1a09 0a03676574 0a026b31
         2203 747831
         2a06 0a0150 120153
         3a02 6368",
    );
}

#[test]
fn chaincode_message_completed_with_event() {
    let msg = protos::ChaincodeMessage {
        r#type: protos::chaincode_message::Type::Completed as i32,
        payload: protos::Response {
            status: 500,
            message: "no".into(),
            payload: Vec::new(),
        }
        .encode_to_vec(),
        txid: "t".into(),
        chaincode_event: Some(protos::ChaincodeEvent {
            chaincode_id: String::new(),
            tx_id: String::new(),
            event_name: "E".into(),
            payload: b"p".to_vec(),
        }),
        channel_id: "c".into(),
        ..Default::default()
    };
    // type: 08 06 (COMPLETED)
    // payload field 3: 1a 07 <Response: status f1 08 f4 03 (500); message f2 12 02 6e 6f>
    // txid field 4: 22 01 74
    // chaincode_event field 6: 32 06 <event_name f3: 1a 01 45; payload f4: 22 01 70>
    // channel_id field 7: 3a 01 63
    golden(
        &msg,
        "0806 1a07 08f403 12026e6f 220174 3206 1a0145 220170 3a0163",
    );
}

#[test]
fn shim_payloads() {
    // GetState{key f1, collection f2}: 0a 01 6b, 12 01 63
    golden(
        &protos::GetState {
            key: "k".into(),
            collection: "c".into(),
        },
        "0a016b 120163",
    );
    // PutState{key f1, value f2, collection f3}: 0a 01 6b, 12 01 76, 1a 01 63
    golden(
        &protos::PutState {
            key: "k".into(),
            value: b"v".to_vec(),
            collection: "c".into(),
        },
        "0a016b 120176 1a0163",
    );
    // GetStateByRange{startKey f1, endKey f2, collection f3 (empty), metadata f4}
    // metadata = QueryMetadata{pageSize f1 = 2: 08 02; bookmark f2 "b": 12 01 62}
    let qm = protos::QueryMetadata {
        page_size: 2,
        bookmark: "b".into(),
    };
    golden(&qm, "0802 120162");
    golden(
        &protos::GetStateByRange {
            start_key: "a".into(),
            end_key: "z".into(),
            collection: String::new(),
            metadata: qm.encode_to_vec(),
        },
        "0a0161 12017a 2205 0802120162",
    );
    // QueryResponse{results f1: [{resultBytes f1: "r"}], has_more f2: true, id f3: "i",
    //               metadata f4: QueryResponseMetadata{fetched_records_count f1 = 1}}
    golden(
        &protos::QueryResponse {
            results: vec![protos::QueryResultBytes {
                result_bytes: b"r".to_vec(),
            }],
            has_more: true,
            id: "i".into(),
            metadata: protos::QueryResponseMetadata {
                fetched_records_count: 1,
                bookmark: String::new(),
            }
            .encode_to_vec(),
        },
        "0a03 0a0172 1001 1a0169 2202 0801",
    );
    // PutStateMetadata{key f1, collection f3, metadata f4 = StateMetadata{metakey f1, value f2}}
    golden(
        &protos::PutStateMetadata {
            key: "k".into(),
            collection: "c".into(),
            metadata: Some(protos::StateMetadata {
                metakey: "m".into(),
                value: b"v".to_vec(),
            }),
        },
        "0a016b 1a0163 2206 0a016d120176",
    );
    // REGISTER payload: ChaincodeID{name f2 = "pkg:1"}: 12 05 70 6b 67 3a 31 (never field 1)
    golden(
        &protos::ChaincodeId {
            name: "pkg:1".into(),
            ..Default::default()
        },
        "1205 706b673a31",
    );
    // Fabric 3.x READY payload ChaincodeAdditionalParams{use_write_batch f1 true,
    // max_size_write_batch f2 = 1000 (e8 07)}
    golden(
        &protos::ChaincodeAdditionalParams {
            use_write_batch: true,
            max_size_write_batch: 1000,
            ..Default::default()
        },
        "0801 10e807",
    );
}

#[test]
fn proposal_response() {
    let pr = protos::ProposalResponse {
        version: 1,
        timestamp: None,
        response: Some(protos::Response {
            status: 200,
            message: "OK".into(),
            payload: b"x".to_vec(),
        }),
        payload: b"pp".to_vec(),
        endorsement: Some(protos::Endorsement {
            endorser: b"E".to_vec(),
            signature: b"G".to_vec(),
        }),
        interest: None,
    };
    // version field 1, wt 0: 08 01
    // (field 3 does not exist in ProposalResponse)
    // response field 4: 22 0a <Response: status f1 08 c8 01 (200); message f2 12 02 4f 4b; payload f3 1a 01 78>
    // payload field 5: 2a 02 70 70
    // endorsement field 6: 32 06 <endorser f1 0a 01 45; signature f2 12 01 47>
    golden(
        &pr,
        "0801
         220a 08c801 12024f4b 1a0178
         2a02 7070
         3206 0a0145 120147",
    );

    let prp = protos::ProposalResponsePayload {
        proposal_hash: vec![0x01, 0x02],
        extension: protos::ChaincodeAction {
            results: b"R".to_vec(),
            events: Vec::new(),
            response: Some(protos::Response {
                status: 200,
                ..Default::default()
            }),
            chaincode_id: Some(protos::ChaincodeId {
                name: "cc".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec(),
    };
    // ChaincodeAction: results f1 0a 01 52; response f3 1a 03 <08 c8 01>;
    //                  chaincode_id f4 22 04 <name f2 12 02 63 63>   -> 14 bytes
    // ProposalResponsePayload: proposal_hash f1 0a 02 01 02; extension f2 12 0e <...>
    golden(&prp, "0a020102 120e 0a0152 1a0308c801 2204 12026363");
}

#[test]
fn gateway_endorse_request() {
    let req = gateway::EndorseRequest {
        transaction_id: "t1".into(),
        channel_id: "ch".into(),
        proposed_transaction: Some(protos::SignedProposal {
            proposal_bytes: b"P".to_vec(),
            signature: b"S".to_vec(),
        }),
        endorsing_organizations: vec!["Org1MSP".into(), "Org2MSP".into()],
    };
    // transaction_id f1: 0a 02 74 31
    // channel_id f2: 12 02 63 68
    // proposed_transaction f3: 1a 06 <0a 01 50 12 01 53>
    // endorsing_organizations f4 repeated string: 22 07 "Org1MSP", 22 07 "Org2MSP"
    golden(
        &req,
        "0a027431 12026368 1a06 0a0150120153
         2207 4f7267314d5350 2207 4f7267324d5350",
    );
}

#[test]
fn gateway_commit_status_and_events_request() {
    let resp = gateway::CommitStatusResponse {
        result: protos::TxValidationCode::MvccReadConflict as i32,
        block_number: 7,
    };
    // result f1 enum: 08 0b (MVCC_READ_CONFLICT = 11); block_number f2: 10 07
    golden(&resp, "080b 1007");

    let req = gateway::ChaincodeEventsRequest {
        channel_id: "c".into(),
        chaincode_id: "e".into(),
        identity: Vec::new(),
        start_position: Some(orderer::SeekPosition {
            r#type: Some(orderer::seek_position::Type::Specified(
                orderer::SeekSpecified { number: 10 },
            )),
        }),
        after_transaction_id: "t".into(),
    };
    // channel_id f1: 0a 01 63; chaincode_id f2: 12 01 65
    // start_position f4: 22 04 <SeekPosition.specified f3: 1a 02 <number f1: 08 0a>>
    // after_transaction_id f5: 2a 01 74
    golden(&req, "0a0163 120165 2204 1a02080a 2a0174");

    // SeekPosition.newest f1 is an empty message: 0a 00 (written: a oneof is set)
    golden(
        &orderer::SeekPosition {
            r#type: Some(orderer::seek_position::Type::Newest(orderer::SeekNewest {})),
        },
        "0a00",
    );
    // next_commit f4: 22 00
    golden(
        &orderer::SeekPosition {
            r#type: Some(orderer::seek_position::Type::NextCommit(
                orderer::SeekNextCommit {},
            )),
        },
        "2200",
    );
}

#[test]
fn kv_rwset() {
    let set = kvrwset::KvrwSet {
        reads: vec![
            kvrwset::KvRead {
                key: "a".into(),
                version: Some(kvrwset::Version {
                    block_num: 5,
                    tx_num: 1,
                }),
            },
            kvrwset::KvRead {
                key: "b".into(),
                version: None,
            },
        ],
        range_queries_info: Vec::new(),
        writes: vec![
            kvrwset::KvWrite {
                key: "a".into(),
                is_delete: false,
                value: b"v".to_vec(),
            },
            kvrwset::KvWrite {
                key: "c".into(),
                is_delete: true,
                value: Vec::new(),
            },
        ],
        metadata_writes: Vec::new(),
    };
    // reads f1: 0a 09 <key f1 0a 01 61; version f2 12 04 <block_num f1 08 05; tx_num f2 10 01>>
    //           0a 03 <key f1 0a 01 62>   (a read of a missing key has no version)
    // writes f3: 1a 06 <key 0a 01 61; value f3 1a 01 76>
    //            1a 05 <key 0a 01 63; is_delete f2 10 01>
    golden(
        &set,
        "0a09 0a0161 1204 08051001
         0a03 0a0162
         1a06 0a0161 1a0176
         1a05 0a0163 1001",
    );
}

#[test]
fn rwset_and_query_results() {
    let tx = ehr_proto::rwset::TxReadWriteSet {
        data_model: ehr_proto::rwset::tx_read_write_set::DataModel::Kv as i32,
        ns_rwset: vec![ehr_proto::rwset::NsReadWriteSet {
            namespace: "ehr".into(),
            rwset: vec![0x01],
            collection_hashed_rwset: vec![ehr_proto::rwset::CollectionHashedReadWriteSet {
                collection_name: "p".into(),
                hashed_rwset: Vec::new(),
                pvt_rwset_hash: vec![0x02],
            }],
        }],
    };
    // data_model KV = 0: omitted
    // ns_rwset f2: 12 10 (16 bytes) <namespace f1 0a 03 65 68 72; rwset f2 12 01 01;
    //                     collection_hashed_rwset f3 1a 06 <collection_name f1 0a 01 70; pvt_rwset_hash f3 1a 01 02>>
    golden(&tx, "1210 0a03656872 120101 1a06 0a0170 1a0102");

    let km = ehr_proto::queryresult::KeyModification {
        tx_id: "t".into(),
        value: Vec::new(),
        timestamp: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        }),
        is_delete: true,
    };
    // tx_id f1: 0a 01 74; timestamp f3: 1a 02 <seconds 08 01>; is_delete f4: 20 01
    golden(&km, "0a0174 1a020801 2001");

    let kv = ehr_proto::queryresult::Kv {
        namespace: "n".into(),
        key: "k".into(),
        value: b"v".to_vec(),
    };
    golden(&kv, "0a016e 12016b 1a0176");
}

#[test]
fn chaincode_message_type_values_match_fabric() {
    use protos::chaincode_message::Type;
    // (Fabric name, Fabric number) from fabric-protos peer/chaincode_shim.proto.
    let fabric: &[(&str, i32)] = &[
        ("UNDEFINED", 0),
        ("REGISTER", 1),
        ("REGISTERED", 2),
        ("INIT", 3),
        ("READY", 4),
        ("TRANSACTION", 5),
        ("COMPLETED", 6),
        ("ERROR", 7),
        ("GET_STATE", 8),
        ("PUT_STATE", 9),
        ("DEL_STATE", 10),
        ("INVOKE_CHAINCODE", 11),
        ("RESPONSE", 13),
        ("GET_STATE_BY_RANGE", 14),
        ("GET_QUERY_RESULT", 15),
        ("QUERY_STATE_NEXT", 16),
        ("QUERY_STATE_CLOSE", 17),
        ("KEEPALIVE", 18),
        ("GET_HISTORY_FOR_KEY", 19),
        ("GET_STATE_METADATA", 20),
        ("PUT_STATE_METADATA", 21),
        ("GET_PRIVATE_DATA_HASH", 22),
        ("PURGE_PRIVATE_DATA", 23),
        // Fabric 3.x additions.
        ("WRITE_BATCH_STATE", 24),
        ("GET_STATE_MULTIPLE", 25),
    ];
    for &(name, number) in fabric {
        let t = Type::from_str_name(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t as i32, number, "{name}");
        assert_eq!(Type::try_from(number).unwrap().as_str_name(), name);
    }
    // No value of ours is missing from Fabric's list, and 12 is unused.
    for n in 0..64 {
        assert_eq!(
            Type::try_from(n).is_ok(),
            fabric.iter().any(|&(_, f)| f == n),
            "value {n}"
        );
    }
}

#[test]
fn tx_validation_code_values_match_fabric() {
    use protos::TxValidationCode as C;
    let fabric: &[(&str, i32)] = &[
        ("VALID", 0),
        ("NIL_ENVELOPE", 1),
        ("BAD_PAYLOAD", 2),
        ("BAD_COMMON_HEADER", 3),
        ("BAD_CREATOR_SIGNATURE", 4),
        ("INVALID_ENDORSER_TRANSACTION", 5),
        ("INVALID_CONFIG_TRANSACTION", 6),
        ("UNSUPPORTED_TX_PAYLOAD", 7),
        ("BAD_PROPOSAL_TXID", 8),
        ("DUPLICATE_TXID", 9),
        ("ENDORSEMENT_POLICY_FAILURE", 10),
        ("MVCC_READ_CONFLICT", 11),
        ("PHANTOM_READ_CONFLICT", 12),
        ("UNKNOWN_TX_TYPE", 13),
        ("TARGET_CHAIN_NOT_FOUND", 14),
        ("MARSHAL_TX_ERROR", 15),
        ("NIL_TXACTION", 16),
        ("EXPIRED_CHAINCODE", 17),
        ("CHAINCODE_VERSION_CONFLICT", 18),
        ("BAD_HEADER_EXTENSION", 19),
        ("BAD_CHANNEL_HEADER", 20),
        ("BAD_RESPONSE_PAYLOAD", 21),
        ("BAD_RWSET", 22),
        ("ILLEGAL_WRITESET", 23),
        ("INVALID_WRITESET", 24),
        ("INVALID_CHAINCODE", 25),
        ("NOT_VALIDATED", 254),
        ("INVALID_OTHER_REASON", 255),
    ];
    for &(name, number) in fabric {
        let c = C::from_str_name(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(c as i32, number, "{name}");
    }
    for n in 0..256 {
        assert_eq!(
            C::try_from(n).is_ok(),
            fabric.iter().any(|&(_, f)| f == n),
            "value {n}"
        );
    }
}

#[test]
fn header_type_and_status_values_match_fabric() {
    use common::{BlockMetadataIndex as B, HeaderType as H, Status as S};
    assert_eq!(H::Message as i32, 0);
    assert_eq!(H::Config as i32, 1);
    assert_eq!(H::ConfigUpdate as i32, 2);
    assert_eq!(H::EndorserTransaction as i32, 3);
    assert_eq!(H::DeliverSeekInfo as i32, 5);
    assert_eq!(H::ChaincodePackage as i32, 6);
    assert_eq!(S::Success as i32, 200);
    assert_eq!(S::BadRequest as i32, 400);
    assert_eq!(S::Forbidden as i32, 403);
    assert_eq!(S::NotFound as i32, 404);
    assert_eq!(S::RequestEntityTooLarge as i32, 413);
    assert_eq!(S::InternalServerError as i32, 500);
    assert_eq!(S::NotImplemented as i32, 501);
    assert_eq!(S::ServiceUnavailable as i32, 503);
    assert_eq!(B::Signatures as i32, 0);
    assert_eq!(B::TransactionsFilter as i32, 2);
    assert_eq!(B::CommitHash as i32, 4);
}

/// Fabric messages carry fields that a newer peer may add; decoding must skip
/// unknown fields rather than fail (e.g. a Fabric 3.x field on a message).
#[test]
fn unknown_fields_are_skipped() {
    // GetState{key "k"} followed by an unknown field 9 (varint 1): 48 01
    let bytes = hex::decode("0a016b4801").unwrap();
    let m = protos::GetState::decode(bytes.as_slice()).unwrap();
    assert_eq!(m.key, "k");
}
