//! Byte-level wire compatibility with AX's protos (AgentService and
//! HarnessService): every message is compared against bytes built by hand
//! from the field numbers in the wire contract, so a renumbered or retyped
//! field can never pass.

use axp_transport::pb::{
    self, AgentEnd, AgentOutputs, AgentRequest, AgentResponse, AgentStart, ApprovalDecision,
    AudioContent, CancelReason, ConfirmationContent, Content, DocumentContent, FunctionCallContent,
    FunctionResultContent, HarnessCancel, HarnessEnd, HarnessOutputs, HarnessRequest,
    HarnessResponse, HarnessStart, HealthCheckResponse, ImageContent, Message, State, TextContent,
    ThoughtContent, ThoughtSummaryContent, ToolCallContent, ToolResultContent, VideoContent,
    agent_response, content, harness_request, harness_response,
};
use prost::Message as _;

/// A length-delimited field: tag bytes, length, payload.
fn ld(tag: &[u8], payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 128, "test helper writes one-byte lengths");
    let mut out = tag.to_vec();
    out.push(payload.len() as u8);
    out.extend_from_slice(payload);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Both directions: our encoding equals the hand-built bytes, and the
/// hand-built bytes decode to the same value.
fn assert_wire<M: prost::Message + Default + PartialEq + std::fmt::Debug>(value: &M, bytes: &[u8]) {
    assert_eq!(value.encode_to_vec(), bytes, "encoding of {value:?}");
    assert_eq!(
        &M::decode(bytes).unwrap(),
        value,
        "decoding into {}",
        std::any::type_name::<M>()
    );
}

fn content(kind: content::Type) -> Content {
    Content { r#type: Some(kind) }
}

fn text(t: &str) -> TextContent {
    TextContent { text: t.into() }
}

#[test]
fn agent_request_uses_fields_1_2_3_and_agent_start_fields_1_to_5() {
    let start = AgentStart {
        agent_id: "py".into(),
        agent_config: b"{}".to_vec(),
        messages: vec![Message {
            role: "user".into(),
            content: Some(content(content::Type::Text(text("hi")))),
            internal_only: true,
        }],
        subagent_prompt: "p".into(),
        subagent_history: "h".into(),
    };
    let message = cat(&[
        ld(&[0x0a], b"user"),                           // role = 1
        ld(&[0x12], &ld(&[0x52], &ld(&[0x1a], b"hi"))), // content = 2 → text = 10 → text = 3
        vec![0x18, 0x01],                               // internal_only = 3
    ]);
    let start_bytes = cat(&[
        ld(&[0x0a], b"py"),    // agent_id = 1
        ld(&[0x12], b"{}"),    // agent_config = 2
        ld(&[0x1a], &message), // messages = 3
        ld(&[0x22], b"p"),     // subagent_prompt = 4
        ld(&[0x2a], b"h"),     // subagent_history = 5
    ]);
    assert_wire(&start, &start_bytes);

    let request = AgentRequest {
        conversation_id: "c".into(),
        exec_id: "e".into(),
        start: Some(start),
    };
    let bytes = cat(&[
        ld(&[0x0a], b"c"),
        ld(&[0x12], b"e"),
        ld(&[0x1a], &start_bytes),
    ]);
    assert_wire(&request, &bytes);
}

#[test]
fn agent_response_outputs_is_3_and_end_is_4() {
    let outputs = AgentResponse {
        conversation_id: "c".into(),
        exec_id: "e".into(),
        r#type: Some(agent_response::Type::Outputs(AgentOutputs {
            messages: vec![Message {
                role: "model".into(),
                ..Message::default()
            }],
        })),
    };
    let message = ld(&[0x0a], b"model");
    let bytes = cat(&[
        ld(&[0x0a], b"c"),
        ld(&[0x12], b"e"),
        ld(&[0x1a], &ld(&[0x0a], &message)),
    ]);
    assert_wire(&outputs, &bytes);

    let end = AgentResponse {
        conversation_id: "c".into(),
        exec_id: "e".into(),
        r#type: Some(agent_response::Type::End(AgentEnd {})),
    };
    // An empty AgentEnd is still present on the wire: tag 4, length 0.
    let bytes = cat(&[ld(&[0x0a], b"c"), ld(&[0x12], b"e"), vec![0x22, 0x00]]);
    assert_wire(&end, &bytes);
}

#[test]
fn health_check_response_is_healthy_1_message_2() {
    let response = HealthCheckResponse {
        healthy: true,
        message: "ok".into(),
    };
    assert_wire(&response, &cat(&[vec![0x08, 0x01], ld(&[0x12], b"ok")]));
}

#[test]
fn text_content_is_content_10_and_text_3() {
    assert_wire(
        &content(content::Type::Text(text("hi"))),
        &ld(&[0x52], &ld(&[0x1a], b"hi")),
    );
}

#[test]
fn thought_content_is_content_5_with_signature_7_and_summary_9() {
    let thought = ThoughtContent {
        signature: b"s".to_vec(),
        summary: vec![ThoughtSummaryContent {
            r#type: Some(pb::thought_summary_content::Type::Text(text("t"))),
        }],
    };
    let inner = cat(&[
        ld(&[0x3a], b"s"),
        ld(&[0x4a], &ld(&[0x0a], &ld(&[0x1a], b"t"))),
    ]);
    assert_wire(
        &content(content::Type::Thought(thought)),
        &ld(&[0x2a], &inner),
    );
}

#[test]
fn image_content_is_content_11_with_mime_1_data_2_resolution_5_uri_6() {
    let image = ImageContent {
        mime_type: pb::image_content::MimeType::TypeGif as i32,
        resolution: pb::MediaResolution::High as i32,
        data_or_uri: Some(pb::image_content::DataOrUri::Uri("u".into())),
    };
    // GIF is 7 (6 is skipped upstream); HIGH is 3. prost writes fields in
    // declaration order (the oneof before `resolution`); any order decodes.
    let inner = cat(&[vec![0x08, 0x07], ld(&[0x32], b"u"), vec![0x28, 0x03]]);
    assert_wire(&content(content::Type::Image(image)), &ld(&[0x5a], &inner));

    let data = ImageContent {
        mime_type: pb::image_content::MimeType::TypePng as i32,
        resolution: 0,
        data_or_uri: Some(pb::image_content::DataOrUri::Data(vec![1, 2])),
    };
    let inner = cat(&[vec![0x08, 0x01], ld(&[0x12], &[1, 2])]);
    assert_wire(&content(content::Type::Image(data)), &ld(&[0x5a], &inner));
}

#[test]
fn audio_content_is_content_12_with_uri_5_channels_7_sample_rate_8() {
    let audio = AudioContent {
        mime_type: pb::audio_content::MimeType::TypeOpus as i32,
        channels: 2,
        sample_rate: 100,
        data_or_uri: Some(pb::audio_content::DataOrUri::Uri("a".into())),
    };
    let inner = cat(&[
        vec![0x08, 11],
        ld(&[0x2a], b"a"),
        vec![0x38, 0x02],
        vec![0x40, 100],
    ]);
    assert_wire(&content(content::Type::Audio(audio)), &ld(&[0x62], &inner));
}

#[test]
fn document_content_is_content_13_with_python_mime_3_and_uri_5() {
    let document = DocumentContent {
        mime_type: pb::document_content::MimeType::TypePython as i32,
        data_or_uri: Some(pb::document_content::DataOrUri::Uri("d".into())),
    };
    let inner = cat(&[vec![0x08, 0x03], ld(&[0x2a], b"d")]);
    assert_wire(
        &content(content::Type::Document(document)),
        &ld(&[0x6a], &inner),
    );
}

#[test]
fn video_content_is_content_14_with_3gpp_9_and_uri_6() {
    let video = VideoContent {
        mime_type: pb::video_content::MimeType::Type3gpp as i32,
        resolution: pb::MediaResolution::UltraHigh as i32,
        data_or_uri: Some(pb::video_content::DataOrUri::Uri("v".into())),
    };
    let inner = cat(&[vec![0x08, 0x09], ld(&[0x32], b"v"), vec![0x28, 0x04]]);
    assert_wire(&content(content::Type::Video(video)), &ld(&[0x72], &inner));
}

fn one_field_struct() -> (prost_types::Struct, Vec<u8>) {
    let value = prost_types::Struct {
        fields: [(
            "k".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    };
    // Struct.fields = 1 (map entry: key = 1, value = 2 → Value.bool_value = 4).
    let entry = cat(&[ld(&[0x0a], b"k"), ld(&[0x12], &[0x20, 0x01])]);
    (value, ld(&[0x0a], &entry))
}

#[test]
fn tool_call_content_is_content_24_with_id_1_function_call_2_signature_9() {
    let (arguments, arguments_bytes) = one_field_struct();
    let call = ToolCallContent {
        id: "i".into(),
        signature: b"s".to_vec(),
        r#type: Some(pb::tool_call_content::Type::FunctionCall(
            FunctionCallContent {
                name: "f".into(),
                arguments: Some(arguments),
            },
        )),
    };
    let function = cat(&[ld(&[0x1a], b"f"), ld(&[0x22], &arguments_bytes)]);
    let inner = cat(&[ld(&[0x0a], b"i"), ld(&[0x12], &function), ld(&[0x4a], b"s")]);
    // Field 24, wire type 2: varint tag 0xc2 0x01.
    assert_wire(
        &content(content::Type::ToolCall(call)),
        &ld(&[0xc2, 0x01], &inner),
    );
}

#[test]
fn tool_result_content_is_content_25_with_function_result_2_call_id_8() {
    let (response, response_bytes) = one_field_struct();
    let result = ToolResultContent {
        call_id: "c".into(),
        signature: Vec::new(),
        r#type: Some(pb::tool_result_content::Type::FunctionResult(
            FunctionResultContent {
                name: "n".into(),
                result: Some(pb::function_result_content::Result::Response(response)),
            },
        )),
    };
    let function = cat(&[ld(&[0x1a], &response_bytes), ld(&[0x42], b"n")]);
    let inner = cat(&[ld(&[0x12], &function), ld(&[0x42], b"c")]);
    assert_wire(
        &content(content::Type::ToolResult(result)),
        &ld(&[0xca, 0x01], &inner),
    );
}

#[test]
fn confirmation_content_is_content_26_with_id_3_question_4_approval_5_decline_6() {
    let approval = ConfirmationContent {
        id: "i".into(),
        question: "q".into(),
        decision: Some(pb::confirmation_content::Decision::Approval(
            ApprovalDecision { approved: true },
        )),
    };
    let inner = cat(&[
        ld(&[0x1a], b"i"),
        ld(&[0x22], b"q"),
        ld(&[0x2a], &[0x08, 0x01]),
    ]);
    assert_wire(
        &content(content::Type::Confirmation(approval)),
        &ld(&[0xd2, 0x01], &inner),
    );

    let decline = ConfirmationContent {
        id: String::new(),
        question: String::new(),
        decision: Some(pb::confirmation_content::Decision::Decline(
            pb::DeclineDecision { declined: true },
        )),
    };
    assert_wire(
        &content(content::Type::Confirmation(decline)),
        &ld(&[0xd2, 0x01], &ld(&[0x32], &[0x08, 0x01])),
    );
}

#[test]
fn harness_request_start_is_3_with_conversation_1_harness_id_2_and_harness_start_config_1_messages_2()
 {
    let start = HarnessStart {
        harness_config: b"{}".to_vec(),
        messages: vec![Message {
            role: "user".into(),
            content: Some(content(content::Type::Text(text("hi")))),
            internal_only: false,
        }],
    };
    let message = cat(&[
        ld(&[0x0a], b"user"),                           // role = 1
        ld(&[0x12], &ld(&[0x52], &ld(&[0x1a], b"hi"))), // content = 2 → text = 10 → text = 3
    ]);
    let start_bytes = cat(&[
        ld(&[0x0a], b"{}"),    // harness_config = 1
        ld(&[0x12], &message), // messages = 2
    ]);
    assert_wire(&start, &start_bytes);

    let request = HarnessRequest {
        conversation_id: "c".into(),
        harness_id: "h".into(),
        r#type: Some(harness_request::Type::Start(start)),
    };
    let bytes = cat(&[
        ld(&[0x0a], b"c"),         // conversation_id = 1
        ld(&[0x12], b"h"),         // harness_id = 2
        ld(&[0x1a], &start_bytes), // start = 3
    ]);
    assert_wire(&request, &bytes);
}

#[test]
fn harness_request_cancel_is_4_with_reason_1_and_every_reason_keeps_its_number() {
    let reasons = [
        (CancelReason::Unspecified, 0, "CANCEL_REASON_UNSPECIFIED"),
        (
            CancelReason::UserRequested,
            1,
            "CANCEL_REASON_USER_REQUESTED",
        ),
        (CancelReason::Timeout, 2, "CANCEL_REASON_TIMEOUT"),
        (
            CancelReason::InternalError,
            3,
            "CANCEL_REASON_INTERNAL_ERROR",
        ),
    ];
    for (reason, number, name) in reasons {
        assert_eq!(reason as i32, number, "{name}");
        assert_eq!(reason.as_str_name(), name);
        let request = HarnessRequest {
            conversation_id: "c".into(),
            harness_id: String::new(),
            r#type: Some(harness_request::Type::Cancel(HarnessCancel {
                reason: reason as i32,
            })),
        };
        // proto3 leaves a zero enum off the wire; the cancel itself is still present.
        let cancel = if number == 0 {
            Vec::new()
        } else {
            vec![0x08, number as u8]
        };
        let bytes = cat(&[ld(&[0x0a], b"c"), ld(&[0x22], &cancel)]);
        assert_wire(&request, &bytes);
    }
}

#[test]
fn harness_response_outputs_is_2_with_messages_1() {
    let response = HarnessResponse {
        conversation_id: "c".into(),
        r#type: Some(harness_response::Type::Outputs(HarnessOutputs {
            messages: vec![Message {
                role: "model".into(),
                ..Message::default()
            }],
        })),
    };
    let message = ld(&[0x0a], b"model");
    let bytes = cat(&[ld(&[0x0a], b"c"), ld(&[0x12], &ld(&[0x0a], &message))]);
    assert_wire(&response, &bytes);
}

#[test]
fn harness_response_end_is_3_with_state_1_and_error_2_of_code_1_and_description_2() {
    let failed = HarnessResponse {
        conversation_id: "c".into(),
        r#type: Some(harness_response::Type::End(HarnessEnd {
            state: State::Failed as i32,
            error: Some(pb::Error {
                code: 9,
                description: "d".into(),
            }),
        })),
    };
    let error = cat(&[vec![0x08, 0x09], ld(&[0x12], b"d")]);
    let end = cat(&[vec![0x08, 0x02], ld(&[0x12], &error)]);
    assert_wire(&failed, &cat(&[ld(&[0x0a], b"c"), ld(&[0x1a], &end)]));

    for (state, number) in [(State::Completed, 3u8), (State::Canceled, 4)] {
        let response = HarnessResponse {
            conversation_id: "c".into(),
            r#type: Some(harness_response::Type::End(HarnessEnd {
                state: state as i32,
                error: None,
            })),
        };
        let bytes = cat(&[ld(&[0x0a], b"c"), ld(&[0x1a], &[0x08, number])]);
        assert_wire(&response, &bytes);
    }
}

#[test]
fn state_numbers_match_ax_with_canceled_4_added_for_harness_service() {
    let states = [
        (State::Unspecified, 0, "STATE_UNSPECIFIED"),
        (State::Pending, 1, "STATE_PENDING"),
        (State::Failed, 2, "STATE_FAILED"),
        (State::Completed, 3, "STATE_COMPLETED"),
        (State::Canceled, 4, "STATE_CANCELED"),
    ];
    for (state, number, name) in states {
        assert_eq!(state as i32, number, "{name}");
        assert_eq!(state.as_str_name(), name);
    }
}

#[test]
fn a_message_from_the_harness_lineage_without_internal_only_decodes() {
    // Upstream removed Message.internal_only (field 3); its messages have only 1 and 2.
    let bytes = cat(&[
        ld(&[0x0a], b"user"),
        ld(&[0x12], &ld(&[0x52], &ld(&[0x1a], b"hi"))),
    ]);
    let message = Message::decode(&bytes[..]).unwrap();
    assert_eq!(message.role, "user");
    assert!(!message.internal_only);
    assert_eq!(axp_transport::content::text_of(&message), Some("hi"));
}

#[test]
fn harness_service_connect_is_bidirectional_from_harness_request_to_harness_response() {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let service = set
        .file
        .iter()
        .filter(|f| f.package() == "ax")
        .flat_map(|f| f.service.iter())
        .find(|s| s.name() == "HarnessService")
        .expect("ax.HarnessService");
    let methods: Vec<_> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["Connect"],
        "one RPC at /ax.HarnessService/Connect"
    );
    let connect = &service.method[0];
    assert_eq!(connect.input_type(), ".ax.HarnessRequest");
    assert_eq!(connect.output_type(), ".ax.HarnessResponse");
    assert!(
        connect.client_streaming(),
        "the client streams start/cancel"
    );
    assert!(connect.server_streaming(), "the server streams outputs/end");
}

#[test]
fn the_descriptor_set_names_the_services_ax_dials() {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "ax")
        .flat_map(|f| f.service.iter().map(|s| format!("ax.{}", s.name())))
        .collect();
    assert!(
        services.contains(&"ax.AgentService".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"ax.HarnessService".to_owned()),
        "{services:?}"
    );
}
