//! The semantic checks of a conversation: its own settings (channels, starts, slots), and the
//! conversation steps, which only a conversation may have. Its other steps are checked as a
//! workflow's are.

use super::{Diagnostic, TextKind, WorkflowCheck, did_you_mean, escape_token};
use crate::definitions::model::Template;
use crate::definitions::model::conversation::{EndStep, OnFail, SlotType, StartCondition};
use crate::definitions::model::step::{Action, Step};

/// The names a conversation's templates see besides a workflow's.
pub(super) const ROOTS: &[&str] = &["conversation", "slots"];

impl WorkflowCheck<'_> {
    pub(super) fn check_conversation(&mut self) {
        let Some(c) = self.def.as_conversation() else {
            return;
        };
        for (i, ch) in c.channels.iter().enumerate() {
            self.check_channel(ch, &format!("/channels/{i}"));
        }
        for (i, s) in c.start.iter().enumerate() {
            match s {
                StartCondition::Match(p) => {
                    if let Err(e) = regex::Regex::new(p) {
                        self.regex_error(&format!("/start/{i}/match"), &e);
                    }
                }
                StartCondition::Command(name) if name.starts_with('/') => {
                    let d = Diagnostic::error(
                        "invalid-command",
                        format!("the command is named without its slash: `{}`", &name[1..]),
                    );
                    self.error(&format!("/start/{i}/command"), d);
                }
                _ => {}
            }
        }
        if let Some(t) = &c.inactivity.say {
            self.check_text("/inactivity/say", t.as_str(), TextKind::Template, roots());
        }
        for (name, slot) in &c.slots {
            if slot.kind == SlotType::Choice && slot.choices.is_empty() {
                let d = Diagnostic::error(
                    "missing-choices",
                    format!("slot `{name}` is a `choice` with no `choices`"),
                )
                .with_hint("list the values, each with the words that mean it: `choices: { new: [new car], used: [used, pre-owned] }`");
                self.error(&format!("/slots/{}", escape_token(&name.0)), d);
            }
        }
    }

    fn regex_error(&mut self, pointer: &str, e: &regex::Error) {
        let msg = e.to_string();
        let last = msg.lines().last().unwrap_or(&msg).trim();
        let last = last.strip_prefix("error: ").unwrap_or(last).to_owned();
        self.error(
            pointer,
            Diagnostic::error(
                "invalid-regex",
                format!("invalid regular expression: {last}"),
            ),
        );
    }

    /// A `goto` target: a step at the top level of the conversation (a step inside a branch
    /// or loop would be entered without its enclosing step).
    /// An `ai_reply` or `classify` names a provider under `ai:` in herald.yaml.
    fn check_ai_provider(&mut self, provider: &str, pointer: &str) {
        if self.ai.iter().any(|p| p == provider) {
            return;
        }
        let mut d = Diagnostic::error(
            "unknown-ai-provider",
            format!("ai provider `{provider}` is not defined in herald.yaml"),
        );
        d = match did_you_mean(provider, self.ai.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!(
                "add it under `ai:` in herald.yaml: `ai: {{ {provider}: {{ base_url: https://api.openai.com/v1, model: gpt-4o-mini, api_key: \"${{env:OPENAI_API_KEY}}\" }} }}`"
            )),
        };
        self.error(pointer, d);
    }

    fn check_goto(&mut self, target: &str, pointer: &str) {
        if self.wf.steps.iter().any(|s| s.id == target) {
            return;
        }
        let top: Vec<&str> = self.wf.steps.iter().map(|s| s.id.as_str()).collect();
        let d = if self.step_ids.contains(target) {
            Diagnostic::error(
                "invalid-goto",
                format!(
                    "step `{target}` is inside another step; `goto` goes only to a top-level step"
                ),
            )
        } else {
            let d = Diagnostic::error("unknown-step", format!("no step `{target}` to go to"));
            match did_you_mean(target, top.iter().copied()) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!(
                    "top-level steps with an id: {}",
                    top.iter()
                        .filter(|s| !s.starts_with('_'))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        };
        self.error(pointer, d);
    }

    fn check_opt_text(&mut self, pointer: &str, t: &Option<Template>, scope: &[String]) {
        if let Some(t) = t {
            self.check_text(pointer, t.as_str(), TextKind::Template, scope);
        }
    }

    pub(super) fn check_conversation_step(&mut self, step: &Step, scope: &[String]) {
        let p = &step.pointer;
        let Some(c) = self.def.as_conversation() else {
            let d = Diagnostic::error(
                "conversation-step",
                format!(
                    "`{}` is a conversation step; a workflow cannot use it",
                    step.action.key()
                ),
            )
            .with_hint("write it in a `kind: conversation`, or use `send` and `wait_for` here");
            let d = self.def.at_key(&format!("{p}/{}", step.action.key()), d);
            self.out.push(d);
            return;
        };
        match &step.action {
            Action::Say(t) => {
                self.check_text(&format!("{p}/say"), t.as_str(), TextKind::Template, scope)
            }
            Action::Ask(a) => {
                let b = format!("{p}/ask");
                self.check_opt_text(&format!("{b}/prompt"), &a.prompt, scope);
                self.check_opt_text(&format!("{b}/reprompt"), &a.reprompt, scope);
                self.check_opt_text(&format!("{b}/give_up"), &a.give_up, scope);
                if let Some(slot) = &a.slot
                    && !c.slots.contains_key(slot)
                {
                    let mut d = Diagnostic::error(
                        "unknown-slot",
                        format!("slot `{slot}` is not declared under `slots:`"),
                    );
                    d = match did_you_mean(&slot.0, c.slots.keys().map(|k| k.0.as_str())) {
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None => d.with_hint(format!(
                            "declare it, such as `slots: {{ {slot}: {{ type: text }} }}`"
                        )),
                    };
                    self.error(&format!("{b}/slot"), d);
                }
                if let OnFail::Goto(target) = &a.on_fail {
                    self.check_goto(target.as_str(), &format!("{b}/on_fail/goto"));
                }
            }
            Action::Classify(cl) => {
                let b = format!("{p}/classify");
                self.check_opt_text(&format!("{b}/text"), &cl.text, scope);
                for (name, intent) in &cl.intents {
                    let ib = format!("{b}/intents/{}", escape_token(&name.0));
                    if let Some(pattern) = &intent.pattern
                        && let Err(e) = regex::Regex::new(pattern)
                    {
                        self.regex_error(&format!("{ib}/match"), &e);
                    }
                    if intent.keywords.is_empty() && intent.pattern.is_none() && cl.ai.is_none() {
                        let d = Diagnostic::error(
                            "empty-intent",
                            format!(
                                "intent `{name}` has neither `keywords` nor `match`, so it is never chosen"
                            ),
                        );
                        self.error(&ib, d);
                    }
                    if let Some(g) = &intent.goto {
                        self.check_goto(g.as_str(), &format!("{ib}/goto"));
                    }
                }
                if let Some(g) = &cl.fallback_goto {
                    self.check_goto(g.as_str(), &format!("{b}/fallback_goto"));
                }
                if let Some(ai) = &cl.ai {
                    self.check_opt_text(&format!("{b}/ai/instructions"), &ai.instructions, scope);
                    self.check_ai_provider(&ai.provider, &format!("{b}/ai/provider"));
                }
            }
            Action::AiReply(a) => {
                let b = format!("{p}/ai_reply");
                self.check_text(
                    &format!("{b}/system"),
                    a.system.as_str(),
                    TextKind::Template,
                    scope,
                );
                self.check_text(
                    &format!("{b}/fallback"),
                    a.fallback.as_str(),
                    TextKind::Template,
                    scope,
                );
                self.check_ai_provider(&a.provider, &format!("{b}/provider"));
            }
            Action::Goto(target) => self.check_goto(target, &format!("{p}/goto")),
            Action::End(EndStep::Say(t)) => {
                self.check_text(&format!("{p}/end"), t.as_str(), TextKind::Template, scope)
            }
            Action::End(EndStep::Now(_)) => {}
            Action::Handoff(h) => {
                let b = format!("{p}/handoff");
                self.check_opt_text(&format!("{b}/say"), &h.say, scope);
                self.check_opt_text(&format!("{b}/reason"), &h.reason, scope);
                self.check_opt_text(&format!("{b}/timeout_say"), &h.timeout_say, scope);
            }
            _ => {}
        }
    }
}

fn roots() -> &'static [String] {
    static R: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    R.get_or_init(|| ROOTS.iter().map(|r| (*r).to_owned()).collect())
}
