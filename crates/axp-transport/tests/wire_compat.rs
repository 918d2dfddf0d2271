//! Byte-level wire compatibility with AX's protos: every message is compared
//! against bytes built by hand from the field numbers in the wire contract, so
//! a renumbered or retyped field can never pass.

use axp_transport::pb::{
    self, AgentEnd, AgentOutputs, AgentRequest, AgentResponse, AgentStart, ApprovalDecision,
    AudioContent, ConfirmationContent, Content, DocumentContent, FunctionCallContent,
    FunctionResultContent, HealthCheckResponse, ImageContent, Message, TextContent, ThoughtContent,
    ThoughtSummaryContent, ToolCallContent, ToolResultContent, VideoContent, agent_response,
    content,
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
fn harness_messages_match_the_successor_protocol_numbers() {
    let request = pb::HarnessRequest {
        conversation_id: "c".into(),
        harness_id: "h".into(),
        r#type: Some(pb::harness_request::Type::Cancel(pb::HarnessCancel {
            reason: pb::CancelReason::Timeout as i32,
        })),
    };
    let bytes = cat(&[
        ld(&[0x0a], b"c"),
        ld(&[0x12], b"h"),
        ld(&[0x22], &[0x08, 0x02]),
    ]);
    assert_wire(&request, &bytes);

    let end = pb::HarnessResponse {
        conversation_id: "c".into(),
        r#type: Some(pb::harness_response::Type::End(pb::HarnessEnd {
            state: pb::State::Canceled as i32,
            error: Some(pb::Error {
                code: 4,
                description: "d".into(),
            }),
        })),
    };
    let error = cat(&[vec![0x08, 0x04], ld(&[0x12], b"d")]);
    let bytes = cat(&[
        ld(&[0x0a], b"c"),
        ld(&[0x1a], &cat(&[vec![0x08, 0x04], ld(&[0x12], &error)])),
    ]);
    assert_wire(&end, &bytes);
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
