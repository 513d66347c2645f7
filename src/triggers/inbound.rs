//! Where an inbound message goes: whether it is a compliance keyword, which event it is
//! recorded as (and so which waiting runs it wakes), and which `message` triggers it starts.
//! The engine records the message and the runs; the decisions are here, and need nothing but
//! the message and the definitions.

use regex::Regex;

use crate::definitions::model::config::Keyword;
use crate::definitions::model::trigger::MessageTrigger;

/// The keyword a message counts as, from what its text is (`classified`, see
/// `ComplianceConfig::classify`). An opt-out word always counts; an opt-in word counts only
/// from a sender who had opted out, and from anyone else is an ordinary reply.
pub(crate) fn keyword(classified: Option<Keyword>, sender_opted_out: bool) -> Option<Keyword> {
    match classified {
        Some(Keyword::OptIn) if !sender_opted_out => None,
        other => other,
    }
}

/// For a compliance keyword: the status its sender's contact gets (a HELP changes none), and
/// the event that announces it.
pub(crate) fn keyword_effect(keyword: Keyword) -> (Option<&'static str>, &'static str) {
    match keyword {
        Keyword::OptOut => (Some("opted_out"), "contact.opted_out"),
        Keyword::OptIn => (Some("subscribed"), "contact.opted_in"),
        Keyword::Help => (None, "contact.help"),
    }
}

/// The event a message is recorded as, keyed by its sender: `message.<channel>`, which wakes
/// the runs waiting for a reply from them, or, for a compliance keyword, `compliance.<channel>`,
/// which wakes none (a STOP is not an answer).
pub(crate) fn event_name(channel: &str, keyword: Option<Keyword>) -> String {
    match keyword {
        None => format!("message.{channel}"),
        Some(_) => format!("compliance.{channel}"),
    }
}

/// Whether a message wakes runs waiting for a reply.
pub(crate) fn is_reply(keyword: Option<Keyword>) -> bool {
    keyword.is_none()
}

/// Whether a `message` trigger starts a run for this message: one naming a keyword needs the
/// whole message to be one of its words, one with a `match` pattern needs it to match. A
/// compliance keyword reaches only the triggers that name it.
pub(crate) fn starts(
    trigger: &MessageTrigger,
    pattern: Option<&Regex>,
    text: &str,
    keyword: Option<Keyword>,
) -> bool {
    let trimmed = text.trim();
    let named = trigger
        .keyword
        .as_ref()
        .is_some_and(|k| k.words().iter().any(|w| w.eq_ignore_ascii_case(trimmed)));
    match keyword {
        Some(_) => named,
        None => (trigger.keyword.is_none() || named) && pattern.is_none_or(|re| re.is_match(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::model::trigger::Keywords;

    fn trigger(keyword: Option<&str>) -> MessageTrigger {
        MessageTrigger {
            channel: "sms".into(),
            keyword: keyword.map(|k| Keywords::One(k.into())),
            pattern: None,
        }
    }

    #[test]
    fn an_opt_in_word_is_a_reply_unless_the_sender_opted_out() {
        assert_eq!(keyword(Some(Keyword::OptIn), false), None);
        assert_eq!(keyword(Some(Keyword::OptIn), true), Some(Keyword::OptIn));
        assert_eq!(keyword(Some(Keyword::OptOut), false), Some(Keyword::OptOut));
        assert_eq!(event_name("sms", None), "message.sms");
        assert_eq!(event_name("sms", Some(Keyword::OptOut)), "compliance.sms");
    }

    #[test]
    fn a_keyword_reaches_only_the_triggers_naming_it() {
        let any = trigger(None);
        let stop = trigger(Some("STOP"));
        assert!(starts(&any, None, "hello", None));
        assert!(!starts(&any, None, "STOP", Some(Keyword::OptOut)));
        assert!(starts(&stop, None, " stop ", Some(Keyword::OptOut)));
        assert!(!starts(&stop, None, "hello", None));
        let re = Regex::new("^YES").unwrap();
        assert!(starts(&any, Some(&re), "YES please", None));
        assert!(!starts(&any, Some(&re), "no", None));
    }
}
