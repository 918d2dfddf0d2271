//! Which code an execution runs: from `AgentStart.subagent_prompt` (the planner's structured prompt) when it is
//! non-empty, otherwise from the last user text message with the legacy `History Summary: … Prompt:` envelope
//! stripped. HarnessService has no structured args, so its executions always take the second path. Fenced code blocks (```` ```python ````, ```` ```py ````, ```` ``` ````) are run in order, joined into
//! one cell; text without fences is run as it is.

use axp_transport::{content, pb::AgentStart};

/// Why no code could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Neither `subagent_prompt` (AgentService only) nor a user text message was sent.
    #[error(
        "no code to run: the request has no user text message (and no AgentStart.subagent_prompt)"
    )]
    NoPrompt,
    /// The prompt holds no code (empty, whitespace, or empty fences).
    #[error("no code to run: the {0} is empty")]
    Empty(&'static str),
}

/// Where the code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `AgentStart.subagent_prompt`.
    SubagentPrompt,
    /// The last user text message (envelope stripped if present).
    UserMessage,
}

/// The code to run and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// Python source.
    pub text: String,
    /// Its origin.
    pub source: Source,
    /// Whether it was taken from fenced blocks.
    pub fenced: bool,
}

/// The separator the AX planner puts between the history summary and the prompt.
const ENVELOPE_PROMPT: &str = "\nPrompt:\n";
const ENVELOPE_HEAD: &str = "History Summary:";

/// Finds the code an [`AgentStart`] asks to run.
///
/// # Errors
///
/// [`Error`] when there is no prompt or no code in it (sent to the caller as `INVALID_ARGUMENT`).
pub fn extract(start: &AgentStart) -> Result<Code, Error> {
    let (text, source, what) = if !start.subagent_prompt.trim().is_empty() {
        (
            start.subagent_prompt.as_str(),
            Source::SubagentPrompt,
            "subagent_prompt",
        )
    } else {
        let text = content::last_user_text(&start.messages).ok_or(Error::NoPrompt)?;
        (strip_envelope(text), Source::UserMessage, "user message")
    };
    let (code, fenced) = match fenced_blocks(text) {
        Some(blocks) => (blocks, true),
        None => (text.to_owned(), false),
    };
    let code = dedent(&code);
    if code.trim().is_empty() {
        return Err(Error::Empty(what));
    }
    Ok(Code {
        text: code,
        source,
        fenced,
    })
}

/// The text after the last `"\nPrompt:\n"` of a legacy planner envelope; other text unchanged.
pub fn strip_envelope(text: &str) -> &str {
    if !text.trim_start().starts_with(ENVELOPE_HEAD) {
        return text;
    }
    match text.rfind(ENVELOPE_PROMPT) {
        Some(at) => &text[at + ENVELOPE_PROMPT.len()..],
        // "History Summary:\n...\nPrompt:" with nothing after it, or no prompt at all.
        None => text.rsplit_once("\nPrompt:").map_or("", |(_, after)| after),
    }
}

/// The Python fenced blocks of `text`, joined with a blank line, or `None` when it has none.
///
/// A block opens with a line of three or more backticks (up to three spaces of indentation) whose info string is
/// empty or `python`/`py`/`python3`/`py3`, and closes with a line of at least as many backticks; an unclosed block
/// runs to the end of the text. Blocks in other languages are skipped.
pub fn fenced_blocks(text: &str) -> Option<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<(usize, bool, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start_matches(' ');
        let indent = line.len() - trimmed.len();
        let ticks = trimmed.bytes().take_while(|&b| b == b'`').count();
        match &mut current {
            None => {
                if indent <= 3 && ticks >= 3 {
                    let info = trimmed[ticks..].trim().to_ascii_lowercase();
                    let lang = info.split_whitespace().next().unwrap_or("");
                    let python = matches!(
                        lang,
                        "" | "python" | "py" | "python3" | "py3" | "{python}" | "ipython"
                    );
                    current = Some((ticks, python, Vec::new()));
                }
            }
            Some((open, python, lines)) => {
                if indent <= 3 && ticks >= *open && trimmed[ticks..].trim().is_empty() {
                    if *python {
                        blocks.push(lines.join("\n"));
                    }
                    current = None;
                } else {
                    lines.push(line);
                }
            }
        }
    }
    if let Some((_, true, lines)) = current {
        blocks.push(lines.join("\n"));
    }
    (!blocks.is_empty()).then(|| blocks.join("\n\n"))
}

/// Removes the indentation every non-blank line shares (as `textwrap.dedent`), so an indented prompt still parses.
pub fn dedent(text: &str) -> String {
    let margin = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    if margin == 0 {
        return text.to_owned();
    }
    text.lines()
        // Non-blank lines start with at least `margin` ASCII spaces/tabs; a blank line may hold Unicode whitespace,
        // where byte `margin` can fall inside a character.
        .map(|l| l.get(margin..).unwrap_or_else(|| l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axp_transport::content::{model_text, user_text};

    fn start(prompt: &str, messages: Vec<axp_transport::pb::Message>) -> AgentStart {
        AgentStart {
            subagent_prompt: prompt.into(),
            messages,
            ..AgentStart::default()
        }
    }

    #[test]
    fn subagent_prompt_wins_over_the_messages() {
        let code = extract(&start("print(1)", vec![user_text("print(2)")])).unwrap();
        assert_eq!(code.text, "print(1)");
        assert_eq!(code.source, Source::SubagentPrompt);
    }

    #[test]
    fn the_legacy_envelope_is_stripped_from_the_last_user_message() {
        let text = "History Summary:\nuser: hi\nmodel: hello\n\nPrompt:\nx = 6 * 7\nx";
        let code = extract(&start(
            "",
            vec![user_text("print(0)"), user_text(text), model_text("nope")],
        ))
        .unwrap();
        assert_eq!(code.text, "x = 6 * 7\nx");
        assert_eq!(code.source, Source::UserMessage);
    }

    #[test]
    fn text_without_an_envelope_is_left_alone() {
        assert_eq!(strip_envelope("a = 1\nPrompt:\nb"), "a = 1\nPrompt:\nb");
        assert_eq!(
            strip_envelope("History Summary:\n\n\nPrompt:\nprint(1)"),
            "print(1)"
        );
    }

    #[test]
    fn python_fences_run_in_order_and_other_languages_are_skipped() {
        let text = "Run this:\n```python\na = 1\n```\nthen\n```bash\nls\n```\n```py\nprint(a)\n```\n```\nb = 2\n```";
        assert_eq!(fenced_blocks(text).unwrap(), "a = 1\n\nprint(a)\n\nb = 2");
    }

    #[test]
    fn an_unclosed_fence_runs_to_the_end() {
        assert_eq!(
            fenced_blocks("```python\nprint(1)\nprint(2)").unwrap(),
            "print(1)\nprint(2)"
        );
    }

    #[test]
    fn text_without_fences_is_run_as_is_and_dedented() {
        let code = extract(&start("    x = 1\n    if x:\n        print(x)", vec![])).unwrap();
        assert_eq!(code.text, "x = 1\nif x:\n    print(x)");
        assert!(!code.fenced);
    }

    #[test]
    fn dedent_survives_unicode_whitespace_on_blank_lines() {
        // A blank line whose byte at the margin is inside a multi-byte space (U+00A0) used to panic.
        let text = "    x = 1\n   \u{a0}\n    print(x)";
        assert_eq!(dedent(text), "x = 1\n\nprint(x)");
        let code = extract(&start(text, vec![])).unwrap();
        assert_eq!(code.text, "x = 1\n\nprint(x)");
    }

    #[test]
    fn missing_or_empty_code_is_an_error() {
        assert_eq!(extract(&start("", vec![])), Err(Error::NoPrompt));
        assert_eq!(
            extract(&start("  \n ", vec![model_text("x")])),
            Err(Error::NoPrompt)
        );
        assert_eq!(
            extract(&start("```python\n\n```", vec![])),
            Err(Error::Empty("subagent_prompt"))
        );
        assert_eq!(
            extract(&start(
                "",
                vec![user_text("History Summary:\nx\n\nPrompt:\n")]
            )),
            Err(Error::Empty("user message"))
        );
    }
}
