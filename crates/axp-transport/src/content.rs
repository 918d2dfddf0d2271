//! Small constructors and readers for AXP [`Message`]s, so agents and callers
//! do not spell out the nested `Content` oneof every time.

use crate::pb::{AgentStart, Content, Message, TextContent, content};

/// The role AX uses for the model's (and sub-agents') messages.
pub const ROLE_MODEL: &str = "model";
/// The role AX uses for the user's messages.
pub const ROLE_USER: &str = "user";

/// A text message with the given role.
pub fn text_message(role: &str, text: impl Into<String>) -> Message {
    Message {
        role: role.to_owned(),
        content: Some(Content {
            r#type: Some(content::Type::Text(TextContent { text: text.into() })),
        }),
        internal_only: false,
    }
}

/// A `model` text message: what an agent sends back for the planner to read.
pub fn model_text(text: impl Into<String>) -> Message {
    text_message(ROLE_MODEL, text)
}

/// A `user` text message: what a controller sends to an agent.
pub fn user_text(text: impl Into<String>) -> Message {
    text_message(ROLE_USER, text)
}

/// The user text AX's planner sends a sub-agent: the legacy envelope that
/// agents without the structured-args extension read.
pub fn planner_envelope(history: &str, prompt: &str) -> String {
    format!("History Summary:\n{history}\n\nPrompt:\n{prompt}")
}

/// An `AgentStart` as AX's planner sends it with the structured-args
/// extension: the envelope as a user message, and the same prompt and
/// history verbatim in `subagent_prompt` / `subagent_history`.
pub fn planner_start(prompt: &str, history: &str) -> AgentStart {
    AgentStart {
        messages: vec![user_text(planner_envelope(history, prompt))],
        subagent_prompt: prompt.to_owned(),
        subagent_history: history.to_owned(),
        ..AgentStart::default()
    }
}

/// The text of a message, if its content is text.
pub fn text_of(message: &Message) -> Option<&str> {
    match message.content.as_ref()?.r#type.as_ref()? {
        content::Type::Text(text) => Some(&text.text),
        _ => None,
    }
}

/// The text of the last `user` message that holds text.
pub fn last_user_text(messages: &[Message]) -> Option<&str> {
    messages
        .iter()
        .rev()
        .filter(|m| m.role == ROLE_USER)
        .find_map(text_of)
}

/// Every text output joined with `"\n"`: exactly what the AX planner reads
/// from a sub-agent's outputs (it ignores every other content kind).
pub fn planner_view<'a>(messages: impl IntoIterator<Item = &'a Message>) -> String {
    messages
        .into_iter()
        .filter_map(text_of)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{ToolResultContent, content::Type};

    #[test]
    fn last_user_text_skips_model_messages_and_non_text_content() {
        let tool = Message {
            role: ROLE_USER.into(),
            content: Some(Content {
                r#type: Some(Type::ToolResult(ToolResultContent::default())),
            }),
            internal_only: false,
        };
        let messages = [
            user_text("first"),
            user_text("second"),
            model_text("reply"),
            tool,
        ];
        assert_eq!(last_user_text(&messages), Some("second"));
    }

    #[test]
    fn planner_view_joins_only_text_with_newlines() {
        let tool = Message {
            role: ROLE_MODEL.into(),
            content: Some(Content {
                r#type: Some(Type::ToolResult(ToolResultContent::default())),
            }),
            internal_only: false,
        };
        let outputs = [model_text("a\nb"), tool, model_text("c")];
        assert_eq!(planner_view(&outputs), "a\nb\nc");
    }
}

/// A protobuf `Struct` (as in tool calls and results) as JSON.
pub fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), value_to_json(value)))
            .collect(),
    )
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(inner)) => struct_to_json(inner),
    }
}

/// The structured result of a tool-result message, as JSON.
pub fn tool_result_json(message: &Message) -> Option<serde_json::Value> {
    use crate::pb::{function_result_content, tool_result_content};
    let content::Type::ToolResult(result) = message.content.as_ref()?.r#type.as_ref()? else {
        return None;
    };
    let tool_result_content::Type::FunctionResult(function) = result.r#type.as_ref()?;
    let function_result_content::Result::Response(response) = function.result.as_ref()?;
    Some(struct_to_json(response))
}

#[cfg(test)]
mod json_tests {
    use super::*;
    use crate::pb::{
        FunctionResultContent, ToolResultContent, function_result_content, tool_result_content,
    };

    #[test]
    fn a_tool_result_struct_reads_back_as_json() {
        let response = prost_types::Struct {
            fields: [
                (
                    "ok".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::BoolValue(true)),
                    },
                ),
                (
                    "value".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("42".into())),
                    },
                ),
                (
                    "n".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(1.5)),
                    },
                ),
            ]
            .into(),
        };
        let message = Message {
            role: ROLE_MODEL.into(),
            content: Some(Content {
                r#type: Some(content::Type::ToolResult(ToolResultContent {
                    call_id: "c".into(),
                    signature: Vec::new(),
                    r#type: Some(tool_result_content::Type::FunctionResult(
                        FunctionResultContent {
                            name: "python".into(),
                            result: Some(function_result_content::Result::Response(response)),
                        },
                    )),
                })),
            }),
            internal_only: false,
        };
        assert_eq!(
            tool_result_json(&message).unwrap(),
            serde_json::json!({"ok": true, "value": "42", "n": 1.5})
        );
        assert_eq!(tool_result_json(&model_text("x")), None);
    }
}

#[cfg(test)]
mod envelope_tests {
    use super::*;

    #[test]
    fn planner_start_carries_the_envelope_and_the_structured_args() {
        let start = planner_start("print(1)", "user: hi");
        assert_eq!(start.subagent_prompt, "print(1)");
        assert_eq!(start.subagent_history, "user: hi");
        assert_eq!(
            last_user_text(&start.messages),
            Some("History Summary:\nuser: hi\n\nPrompt:\nprint(1)")
        );
    }
}
