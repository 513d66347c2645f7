//! What a message means to a conversation: whether it starts one, and whether it is the
//! reset command. The engine finds the person's open conversation and applies the answer.

use regex::Regex;

use crate::channels::inbound::Command;
use crate::definitions::model::conversation::StartCondition;

/// Whether `text` starts a conversation with these `start` conditions (`patterns` are their
/// compiled `match` patterns, by index). A conversation without any is started only by a
/// workflow.
pub(crate) fn starts(start: &[StartCondition], patterns: &[Option<Regex>], text: &str) -> bool {
    let trimmed = text.trim();
    start.iter().enumerate().any(|(i, s)| match s {
        StartCondition::Keyword(k) => k.words().iter().any(|w| w.eq_ignore_ascii_case(trimmed)),
        StartCondition::Match(_) => patterns
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(|re| re.is_match(text)),
        StartCondition::Command(name) => {
            Command::parse(text).is_some_and(|c| c.name.eq_ignore_ascii_case(name))
        }
        StartCondition::AnyMessage(any) => *any,
    })
}

/// Whether `text` is the conversation's reset command (`/reset`, in any case).
pub(crate) fn is_reset(reset: &str, text: &str) -> bool {
    let reset = reset.trim();
    !reset.is_empty() && text.trim().eq_ignore_ascii_case(reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::model::trigger::Keywords;

    #[test]
    fn starts_by_keyword_pattern_command_or_anything() {
        let start = vec![
            StartCondition::Keyword(Keywords::Many(vec!["hi".into(), "hello".into()])),
            StartCondition::Match("(?i)car loan".into()),
            StartCondition::Command("start".into()),
        ];
        let patterns = vec![None, Some(Regex::new("(?i)car loan").unwrap()), None];
        assert!(starts(&start, &patterns, " Hello "));
        assert!(starts(&start, &patterns, "I need a CAR LOAN"));
        assert!(starts(&start, &patterns, "/start +15551234567"));
        assert!(!starts(&start, &patterns, "hello there"));
        assert!(!starts(&start, &patterns, "/stop"));
        assert!(starts(&[StartCondition::AnyMessage(true)], &[None], "?"));
        assert!(is_reset("/reset", " /RESET "));
        assert!(!is_reset("/reset", "/reset now"));
    }
}
