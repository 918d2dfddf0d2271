//! Small constructors and readers for AXP [`Message`]s, so agents and callers
//! do not spell out the nested `Content` oneof every time.

use crate::pb::{Content, Message, TextContent, content};

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
