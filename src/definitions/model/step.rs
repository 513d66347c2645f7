//! Steps: the tree a workflow run walks.
//!
//! In YAML a step is a mapping with an optional `id`, `retry` and `timeout`, and exactly one
//! action key (`send`, `wait`, `if`, ...). `if` and `switch` bring their branches as sibling keys
//! (`then`/`else`, `cases`/`default`), which reads naturally but is not a serde enum shape. So a
//! step is read as a [`RawStep`] with every key optional, and turned into a [`Step`] by
//! [`RawStep::into_step`]. The schema carries the same rules (exactly one action, branch keys only
//! beside their action) so editors and `herald validate` report them with positions.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::common::{Duration, Expr, Ident, RetryPolicy, StepId, Template};
use super::conversation::{AiReplyStep, AskStep, ClassifyStep, EndStep, HandoffStep};
use super::trigger::HttpMethod;

/// The action keys a step may have, exactly one per step.
pub const ACTION_KEYS: &[&str] = &[
    "set",
    "if",
    "switch",
    "send",
    "wait",
    "wait_for",
    "http",
    "emit",
    "call",
    "for_each",
    "upsert_contact",
    "respond",
    "fail",
    "try",
];

/// The action keys only a conversation's steps may have.
pub const CONVERSATION_ACTION_KEYS: &[&str] = &[
    "say", "ask", "classify", "ai_reply", "goto", "end", "handoff",
];

/// One step, as written.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Step",
    extend(
        "oneOf" = [
            {"required": ["set"]}, {"required": ["if"]}, {"required": ["switch"]},
            {"required": ["send"]}, {"required": ["wait"]}, {"required": ["wait_for"]},
            {"required": ["http"]}, {"required": ["emit"]}, {"required": ["call"]},
            {"required": ["for_each"]}, {"required": ["upsert_contact"]},
            {"required": ["respond"]}, {"required": ["fail"]}, {"required": ["try"]},
            {"required": ["say"]}, {"required": ["ask"]}, {"required": ["classify"]},
            {"required": ["ai_reply"]}, {"required": ["goto"]}, {"required": ["end"]},
            {"required": ["handoff"]}
        ],
        "dependentRequired" = {
            "if": ["then"], "then": ["if"], "else": ["if"],
            "switch": ["cases"], "cases": ["switch"], "default": ["switch"]
        }
    )
)]
pub struct RawStep {
    /// A unique id, used in expressions as steps.<id> and to match steps across versions.
    #[serde(default)]
    pub id: Option<StepId>,
    /// Retry this step on transient failure.
    #[serde(default)]
    pub retry: Option<Box<RetryPolicy>>,
    /// Fail the attempt if the step takes longer than this.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Steps to run when this step fails for good (after its retries), or when a step inside
    /// it (a `try`, `if`, `switch` or `for_each` body) fails and has no `on_error` of its own.
    /// They see the failure as `error` (`error.message`, `error.step`); then the run carries
    /// on after this step. A failure inside `on_error` goes to the next enclosing handler.
    #[serde(default)]
    pub on_error: Option<Vec<RawStep>>,
    /// Carry on after this step if it fails for good, as an empty `on_error` would. The
    /// failure is in `steps.<id>.error`.
    #[serde(default)]
    pub continue_on_error: Option<bool>,

    /// Set variables, available as vars.<name>. Values are templates; later names can use
    /// earlier ones.
    #[serde(default, deserialize_with = "super::compact::boxed_map")]
    pub set: Option<Box<IndexMap<Ident, Value>>>,

    /// Run `then` when this expression is true, else `else`.
    #[serde(default, rename = "if")]
    pub if_: Option<Expr>,
    /// The steps to run when `if` is true.
    #[serde(default)]
    pub then: Option<Vec<RawStep>>,
    /// The steps to run when `if` is false.
    #[serde(default, rename = "else")]
    pub else_: Option<Vec<RawStep>>,

    /// Run the `cases` entry named by this expression's value, else `default`.
    #[serde(default)]
    pub switch: Option<Expr>,
    /// Steps per value of the `switch` expression.
    #[serde(default)]
    pub cases: Option<Box<IndexMap<String, Vec<RawStep>>>>,
    /// The steps to run when no case matches.
    #[serde(default)]
    pub default: Option<Vec<RawStep>>,

    /// Send a message through a channel.
    #[serde(default)]
    pub send: Option<Box<SendStep>>,
    /// Pause the run for a while, or until a time. The worker is released meanwhile.
    #[serde(default)]
    pub wait: Option<WaitStep>,
    /// Pause until an event or a reply arrives, or a timeout passes.
    #[serde(default)]
    pub wait_for: Option<Box<WaitForStep>>,
    /// Make an HTTP request. The response is the step's output.
    #[serde(default)]
    pub http: Option<Box<HttpStep>>,
    /// Emit an event, which starts the workflows that listen for it and wakes runs waiting for it.
    #[serde(default)]
    pub emit: Option<Box<EmitStep>>,
    /// Run another workflow and wait for it to finish; its variables are the step's output.
    #[serde(default)]
    pub call: Option<Box<CallStep>>,
    /// Run steps once per item of a list.
    #[serde(default)]
    pub for_each: Option<Box<ForEachStep>>,
    /// Create or update a contact; it becomes `contact` for the rest of the run.
    #[serde(default)]
    pub upsert_contact: Option<Box<UpsertContactStep>>,
    /// Reply to a `sync` webhook.
    #[serde(default)]
    pub respond: Option<Box<RespondStep>>,
    /// End the run as failed, with this message (a template). Inside a step with `on_error`,
    /// the handler catches it.
    #[serde(default)]
    pub fail: Option<Template>,
    /// Run these steps as one unit whose failures its `on_error` handles (try/catch).
    #[serde(default, rename = "try")]
    #[schemars(length(min = 1))]
    pub try_: Option<Vec<RawStep>>,

    /// Conversations only: reply to the person, on their channel (a template).
    #[serde(default)]
    pub say: Option<Template>,
    /// Conversations only: ask, and wait for an answer that fits a slot.
    #[serde(default)]
    pub ask: Option<Box<AskStep>>,
    /// Conversations only: choose the intent of the person's last message.
    #[serde(default)]
    pub classify: Option<Box<ClassifyStep>>,
    /// Conversations only: answer with a language model, within guardrails.
    #[serde(default)]
    pub ai_reply: Option<Box<AiReplyStep>>,
    /// Conversations only: carry on at this step.
    #[serde(default)]
    pub goto: Option<StepId>,
    /// Conversations only: end the conversation (`true`, or a last thing to say).
    #[serde(default)]
    pub end: Option<EndStep>,
    /// Conversations only: a person takes over until released or the timeout.
    #[serde(default)]
    pub handoff: Option<Box<HandoffStep>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["template"]}, {"required": ["body"]}, {"required": ["whatsapp_template"]}
]))]
pub struct SendStep {
    /// The channel, as named in herald.yaml.
    pub channel: String,
    /// The recipient: an e-mail address, a phone number, a chat id or a URL, by channel.
    pub to: Template,
    /// A template file under templates/, such as emails/nudge.html.j2. Use this, `body` or
    /// `whatsapp_template`.
    #[serde(default)]
    pub template: Option<String>,
    /// The message text, inline. Use this, `template` or `whatsapp_template`.
    #[serde(default)]
    pub body: Option<Template>,
    /// A message template approved in WhatsApp Manager, sent by name with its parameters
    /// filled in for each recipient: the only message that reaches a person more than 24
    /// hours after their last message. Only on a `whatsapp` channel; use this, `template` or
    /// `body`.
    #[serde(default)]
    pub whatsapp_template: Option<Box<WhatsappTemplate>>,
    /// The subject, for channels that have one.
    #[serde(default)]
    pub subject: Option<Template>,
    /// The sender, when the channel's default will not do.
    #[serde(default)]
    pub from: Option<Template>,
    /// Extra headers, for channels that have them.
    #[serde(default)]
    pub headers: IndexMap<String, Template>,
    /// What the message is, which decides who may not receive it: `marketing` (the default)
    /// is suppressed for contacts who opted out, unsubscribed, bounced or complained;
    /// `transactional` (receipts, appointment details, the letter someone paid for) still
    /// reaches contacts who unsubscribed from marketing; `compliance` is only for confirming
    /// an opt-out or opt-in and reaches everyone but addresses that bounced.
    #[serde(default)]
    pub category: MessageCategory,
}

/// `send: { whatsapp_template: ... }`: which approved template, in which language, and the
/// values of its variables. Every value is a template rendered per recipient.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    /// The template's name as approved in WhatsApp Manager: lower-case letters, digits and
    /// underscores, such as `application_reminder`.
    pub name: Template,
    /// The code of the approved language the template is sent in, such as `en_US`, `es` or
    /// `pt_BR`. A template is approved per language; another code is "template does not
    /// exist" (132001).
    pub language: Template,
    /// The header's variable, when the approved header text has one: a list for `{{1}}`, or
    /// a mapping for a named variable.
    #[serde(default)]
    pub header: Option<TemplateParameters>,
    /// The body's variables, in the template's order: a list for positional variables
    /// (`{{1}}`, `{{2}}`), or a mapping from name to value for named ones (`{{first_name}}`).
    /// As many as the approved template has (132000 otherwise).
    #[serde(default)]
    pub body: Option<TemplateParameters>,
    /// Values for the template's dynamic buttons.
    #[serde(default)]
    pub buttons: Vec<TemplateButton>,
}

impl WhatsappTemplate {
    /// The names WhatsApp Manager accepts for a template.
    pub fn is_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 512
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }

    /// A language code as the Cloud API takes it: `en`, `en_US`, `zh_HK`, `fil`.
    pub fn is_language_code(code: &str) -> bool {
        let (language, region) = code.split_once('_').unwrap_or((code, ""));
        (2..=3).contains(&language.len())
            && language.chars().all(|c| c.is_ascii_lowercase())
            && (region.is_empty()
                || (region.len() == 2 && region.chars().all(|c| c.is_ascii_uppercase())))
    }

    /// A named variable's name as Meta takes it: lower-case letters, digits and underscores.
    pub fn is_variable_name(name: &str) -> bool {
        Self::is_name(name)
    }
}

/// A template's variables, by position or by name.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TemplateParameters {
    /// `["{{ contact.first_name }}", "{{ vars.date }}"]` for `{{1}}` and `{{2}}`.
    Positional(Vec<Template>),
    /// `{first_name: "{{ contact.first_name }}"}` for `{{first_name}}`.
    Named(IndexMap<String, Template>),
}

impl TemplateParameters {
    /// Each value with its name (`None` by position), in order.
    pub fn entries(&self) -> Vec<(Option<&str>, &Template)> {
        match self {
            TemplateParameters::Positional(values) => values.iter().map(|v| (None, v)).collect(),
            TemplateParameters::Named(values) => {
                values.iter().map(|(k, v)| (Some(k.as_str()), v)).collect()
            }
        }
    }
}

/// The value of one dynamic button: the end of a URL button's address, or what a quick-reply
/// button sends back.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["url"]}, {"required": ["payload"]}]))]
pub struct TemplateButton {
    /// Which button, counting from 0 in the approved template's order. Defaults to the
    /// entry's place in `buttons`.
    #[serde(default)]
    #[schemars(range(max = 9))]
    pub index: Option<u8>,
    /// A URL button's variable: what replaces `{{1}}` at the end of its approved address.
    #[serde(default)]
    pub url: Option<Template>,
    /// A quick-reply button's payload, which Meta returns when the button is pressed (a
    /// workflow sees the press as a reply whose text is the button's label).
    #[serde(default)]
    pub payload: Option<Template>,
}

/// What a message is, for suppression. Checked when the step runs and again at delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageCategory {
    /// Promotions, nudges, win-backs: anything a person can say no to.
    #[default]
    Marketing,
    /// Messages a person needs about something they asked for or bought.
    Transactional,
    /// The confirmation of an opt-out or opt-in, which carriers and the FCC require.
    Compliance,
}

impl MessageCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageCategory::Marketing => "marketing",
            MessageCategory::Transactional => "transactional",
            MessageCategory::Compliance => "compliance",
        }
    }

    pub fn parse(s: &str) -> Option<MessageCategory> {
        [
            MessageCategory::Marketing,
            MessageCategory::Transactional,
            MessageCategory::Compliance,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// Why a contact with this status must not get a message of this category, if they
    /// must not.
    pub(crate) fn blocked_by(self, status: &str) -> bool {
        match self {
            MessageCategory::Marketing => {
                matches!(
                    status,
                    "opted_out" | "unsubscribed" | "bounced" | "complained"
                )
            }
            MessageCategory::Transactional => {
                matches!(status, "opted_out" | "bounced" | "complained")
            }
            MessageCategory::Compliance => status == "bounced",
        }
    }
}

/// `wait: 30m`, or `wait: {until: "{{ ... }}"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WaitStep {
    /// How long to wait.
    For(Duration),
    /// A time to wait until.
    Until(WaitUntil),
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitUntil {
    /// A template giving an RFC 3339 timestamp, such as {{ vars.appointment_at }}.
    pub until: Template,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["event"]}, {"required": ["reply"]}]))]
pub struct WaitForStep {
    /// The event to wait for, as named in `emit`.
    #[serde(default)]
    pub event: Option<String>,
    /// Wait for an inbound message on this channel instead of an event.
    #[serde(default)]
    pub reply: Option<String>,
    /// Correlates the wait with the event: the event's key (or the reply's sender) must equal
    /// this. Events that arrived after the run started count, so none is missed.
    pub key: Template,
    /// How long to wait.
    pub timeout: Duration,
    /// What to do when the timeout passes: carry on (the output says `timed_out: true`) or fail.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    #[default]
    Continue,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    #[serde(default = "HttpStep::default_method")]
    pub method: HttpMethod,
    pub url: Template,
    #[serde(default)]
    pub headers: IndexMap<String, Template>,
    /// A JSON body; strings in it are templates.
    #[serde(default, deserialize_with = "super::compact::option")]
    pub json: Option<Value>,
    /// The status codes that count as success. Others fail the step: 4xx permanently, 5xx and
    /// 429 as retryable.
    #[serde(default)]
    pub expect: Option<Vec<u16>>,
}

impl HttpStep {
    fn default_method() -> HttpMethod {
        HttpMethod::Get
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitStep {
    /// The event's name.
    #[schemars(length(min = 1))]
    pub event: String,
    /// The correlation key runs waiting for this event match on.
    #[serde(default)]
    pub key: Option<Template>,
    /// The event's data; strings in it are templates.
    #[serde(default, deserialize_with = "super::compact::option")]
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallStep {
    /// The id of the workflow to run.
    pub workflow: String,
    /// Its input; strings in it are templates.
    #[serde(default, deserialize_with = "super::compact::option")]
    pub input: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEachStep {
    /// An expression giving the list.
    pub items: Expr,
    /// The loop variable's name.
    #[serde(rename = "as", default = "ForEachStep::default_as")]
    pub as_: Ident,
    /// The steps to run for each item.
    #[schemars(length(min = 1))]
    pub steps: Vec<RawStep>,
}

impl ForEachStep {
    fn default_as() -> Ident {
        Ident("item".into())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("anyOf" = [{"required": ["email"]}, {"required": ["phone"]}, {"required": ["addresses"]}]))]
pub struct UpsertContactStep {
    /// Contacts are matched by e-mail, then by phone; by a channel address in `addresses` only
    /// when neither is given.
    #[serde(default)]
    pub email: Option<Template>,
    /// Stored in E.164 form (+18015551234).
    #[serde(default)]
    pub phone: Option<Template>,
    #[serde(default)]
    pub first_name: Option<Template>,
    #[serde(default)]
    pub last_name: Option<Template>,
    /// A lifecycle status of your own, such as new, contacted, qualified or closed.
    #[serde(default)]
    pub status: Option<Template>,
    /// The contact's IANA time zone.
    #[serde(default)]
    pub timezone: Option<Template>,
    /// Other attributes, merged into the stored ones; strings are templates.
    #[serde(default, deserialize_with = "super::compact::map")]
    pub attributes: IndexMap<String, Value>,
    /// Addresses on channels that use neither e-mail nor phone, by channel name, such as
    /// `{ tg: "{{ message.from }}" }` for a Telegram chat: linked to the contact (moved from
    /// another contact that held it), and readable as `contact.addresses.tg`.
    #[serde(default)]
    pub addresses: IndexMap<String, Template>,
    /// Channels whose address to unlink from the contact, such as `[tg]` for a `/reset`.
    #[serde(default)]
    pub unlink: Vec<String>,
    /// Lists to add the contact to, such as `[newsletter]`: what a campaign's audience selects.
    #[serde(default)]
    pub lists: Vec<String>,
    /// Tags to give the contact, such as `[vip]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Lists to take the contact off.
    #[serde(default)]
    pub remove_lists: Vec<String>,
    /// Tags to take from the contact.
    #[serde(default)]
    pub remove_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondStep {
    /// The HTTP status: a number, or a template giving one (`"{{ 503 if vars.degraded else 200 }}"`).
    #[serde(default = "RespondStep::default_status")]
    pub status: ResponseStatus,
    #[serde(default)]
    pub headers: IndexMap<String, Template>,
    /// The body: JSON whose strings are templates, or one template for a text body.
    #[serde(default, deserialize_with = "super::compact::option")]
    pub body: Option<Value>,
}

impl RespondStep {
    fn default_status() -> ResponseStatus {
        ResponseStatus::Code(200)
    }
}

/// A `respond` status: fixed, or chosen when the step runs.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ResponseStatus {
    Code(#[schemars(range(min = 100, max = 599))] u16),
    Template(Template),
}

/// A step, with its id settled and its action resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// False when Herald generated the id from the step's position.
    pub explicit_id: bool,
    /// The JSON pointer of the step in its file, for positions in later diagnostics.
    pub pointer: String,
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    pub action: Action,
    /// What runs when this step (or one inside it) fails for good; `Some(vec![])` carries on
    /// at once (`continue_on_error: true`).
    pub on_error: Option<Vec<Step>>,
}

impl Step {
    /// The step lists nested in this step, with the key each sits under: its action's
    /// branches, then its `on_error` handler.
    pub fn nested(&self) -> Vec<(String, &[Step])> {
        let mut out = self.action.branches();
        if let Some(h) = &self.on_error {
            out.push(("on_error".into(), h.as_slice()));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
/// The large kinds are boxed: a project keeps every step in memory, and an enum is as large as
/// its largest variant.
pub enum Action {
    Set(IndexMap<Ident, Value>),
    If {
        condition: Expr,
        then: Vec<Step>,
        else_: Vec<Step>,
    },
    Switch {
        on: Expr,
        cases: IndexMap<String, Vec<Step>>,
        default: Vec<Step>,
    },
    Send(Box<SendStep>),
    Wait(WaitStep),
    WaitFor(WaitForStep),
    Http(Box<HttpStep>),
    Emit(Box<EmitStep>),
    Call(CallStep),
    ForEach {
        items: Expr,
        as_: Ident,
        steps: Vec<Step>,
    },
    UpsertContact(Box<UpsertContactStep>),
    Respond(Box<RespondStep>),
    Fail(Template),
    Try {
        steps: Vec<Step>,
    },
    Say(Template),
    Ask(Box<AskStep>),
    Classify(Box<ClassifyStep>),
    AiReply(Box<AiReplyStep>),
    Goto(String),
    End(EndStep),
    Handoff(Box<HandoffStep>),
}

impl Action {
    pub fn key(&self) -> &'static str {
        match self {
            Action::Set(_) => "set",
            Action::If { .. } => "if",
            Action::Switch { .. } => "switch",
            Action::Send(_) => "send",
            Action::Wait(_) => "wait",
            Action::WaitFor(_) => "wait_for",
            Action::Http(_) => "http",
            Action::Emit(_) => "emit",
            Action::Call(_) => "call",
            Action::ForEach { .. } => "for_each",
            Action::UpsertContact(_) => "upsert_contact",
            Action::Respond(_) => "respond",
            Action::Fail(_) => "fail",
            Action::Try { .. } => "try",
            Action::Say(_) => "say",
            Action::Ask(_) => "ask",
            Action::Classify(_) => "classify",
            Action::AiReply(_) => "ai_reply",
            Action::Goto(_) => "goto",
            Action::End(_) => "end",
            Action::Handoff(_) => "handoff",
        }
    }

    /// The nested step lists, with the key each sits under.
    pub fn branches(&self) -> Vec<(String, &[Step])> {
        match self {
            Action::If { then, else_, .. } => {
                vec![
                    ("then".into(), then.as_slice()),
                    ("else".into(), else_.as_slice()),
                ]
            }
            Action::Switch { cases, default, .. } => {
                let mut out: Vec<(String, &[Step])> = cases
                    .iter()
                    .map(|(k, v)| {
                        (
                            format!("cases/{}", crate::definitions::source::escape_token(k)),
                            v.as_slice(),
                        )
                    })
                    .collect();
                out.push(("default".into(), default.as_slice()));
                out
            }
            Action::ForEach { steps, .. } => vec![("for_each/steps".into(), steps.as_slice())],
            Action::Try { steps } => vec![("try".into(), steps.as_slice())],
            _ => Vec::new(),
        }
    }
}

impl RawStep {
    /// Resolves the action and assigns ids. `pointer` is the step's JSON pointer, and
    /// `generated_id` the id it gets if it has none.
    ///
    /// The schema pass has already enforced "exactly one action"; this still checks, so that a
    /// step built without the schema cannot slip through.
    pub(crate) fn into_step(self, pointer: &str, generated_id: &str) -> Result<Step, String> {
        let explicit_id = self.id.is_some();
        let id = self
            .id
            .map(|i| i.0)
            .unwrap_or_else(|| generated_id.to_owned());
        let present: Vec<&str> = [
            ("set", self.set.is_some()),
            ("if", self.if_.is_some()),
            ("switch", self.switch.is_some()),
            ("send", self.send.is_some()),
            ("wait", self.wait.is_some()),
            ("wait_for", self.wait_for.is_some()),
            ("http", self.http.is_some()),
            ("emit", self.emit.is_some()),
            ("call", self.call.is_some()),
            ("for_each", self.for_each.is_some()),
            ("upsert_contact", self.upsert_contact.is_some()),
            ("respond", self.respond.is_some()),
            ("fail", self.fail.is_some()),
            ("try", self.try_.is_some()),
            ("say", self.say.is_some()),
            ("ask", self.ask.is_some()),
            ("classify", self.classify.is_some()),
            ("ai_reply", self.ai_reply.is_some()),
            ("goto", self.goto.is_some()),
            ("end", self.end.is_some()),
            ("handoff", self.handoff.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.then_some(k))
        .collect();
        if present.len() != 1 {
            return Err(format!(
                "a step needs exactly one action ({}), found {}",
                ACTION_KEYS.join(", "),
                if present.is_empty() {
                    "none".to_owned()
                } else {
                    present.join(" and ")
                }
            ));
        }
        let orphan = |key: &str, owner: &str| format!("`{key}` belongs beside `{owner}`");
        if self.if_.is_none() && (self.then.is_some() || self.else_.is_some()) {
            return Err(orphan("then/else", "if"));
        }
        if self.switch.is_none() && (self.cases.is_some() || self.default.is_some()) {
            return Err(orphan("cases/default", "switch"));
        }
        if self.on_error.is_some() && self.continue_on_error.is_some() {
            return Err(
                "a step takes `on_error` or `continue_on_error`, not both: `continue_on_error: true` is an empty `on_error`"
                    .into(),
            );
        }
        // Generated ids start with `_`, which explicit ids cannot, so the two never collide.
        let base = if id.starts_with('_') {
            id.clone()
        } else {
            format!("_{id}")
        };
        let list = |steps: Vec<RawStep>, key: &str| -> Result<Vec<Step>, String> {
            resolve_list(steps, |i| {
                (
                    format!("{pointer}/{key}/{i}"),
                    format!("{base}_{}_{}", key.rsplit('/').next().unwrap_or(key), i + 1),
                )
            })
        };
        let action = if let Some(set) = self.set {
            Action::Set(*set)
        } else if let Some(condition) = self.if_ {
            Action::If {
                condition,
                then: list(self.then.ok_or("`if` needs `then`")?, "then")?,
                else_: list(self.else_.unwrap_or_default(), "else")?,
            }
        } else if let Some(on) = self.switch {
            let mut cases = IndexMap::new();
            for (n, (k, v)) in self
                .cases
                .ok_or("`switch` needs `cases`")?
                .into_iter()
                .enumerate()
            {
                let p = format!(
                    "{pointer}/cases/{}",
                    crate::definitions::source::escape_token(&k)
                );
                let steps = v
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        s.into_step(
                            &format!("{p}/{i}"),
                            &format!("{base}_case{}_{}", n + 1, i + 1),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                cases.insert(k, steps);
            }
            Action::Switch {
                on,
                cases,
                default: list(self.default.unwrap_or_default(), "default")?,
            }
        } else if let Some(s) = self.send {
            Action::Send(s)
        } else if let Some(w) = self.wait {
            Action::Wait(w)
        } else if let Some(w) = self.wait_for {
            Action::WaitFor(*w)
        } else if let Some(h) = self.http {
            Action::Http(h)
        } else if let Some(e) = self.emit {
            Action::Emit(e)
        } else if let Some(c) = self.call {
            Action::Call(*c)
        } else if let Some(f) = self.for_each {
            Action::ForEach {
                items: f.items,
                as_: f.as_,
                steps: list(f.steps, "for_each/steps")?,
            }
        } else if let Some(u) = self.upsert_contact {
            Action::UpsertContact(u)
        } else if let Some(r) = self.respond {
            Action::Respond(r)
        } else if let Some(f) = self.fail {
            Action::Fail(f)
        } else if let Some(body) = self.try_ {
            Action::Try {
                steps: list(body, "try")?,
            }
        } else if let Some(t) = self.say {
            Action::Say(t)
        } else if let Some(a) = self.ask {
            Action::Ask(a)
        } else if let Some(c) = self.classify {
            Action::Classify(c)
        } else if let Some(a) = self.ai_reply {
            Action::AiReply(a)
        } else if let Some(g) = self.goto {
            Action::Goto(g.0)
        } else if let Some(e) = self.end {
            Action::End(e)
        } else if let Some(h) = self.handoff {
            Action::Handoff(h)
        } else {
            unreachable!("exactly one action was checked above")
        };
        let on_error = match (self.on_error, self.continue_on_error) {
            (Some(h), _) => Some(list(h, "on_error")?),
            (None, Some(true)) => Some(Vec::new()),
            (None, _) => None,
        };
        Ok(Step {
            id,
            explicit_id,
            pointer: pointer.to_owned(),
            retry: self.retry.map(|r| *r),
            timeout: self.timeout,
            action,
            on_error,
        })
    }
}

/// Turns a workflow's top-level steps into resolved [`Step`]s.
pub(crate) fn resolve_steps(raw: Vec<RawStep>, pointer: &str) -> Result<Vec<Step>, String> {
    resolve_list(raw, |i| (format!("{pointer}/{i}"), format!("_{}", i + 1)))
}

/// Resolves a list of steps into a vector of its exact size (collecting a `Result` would grow
/// it by doubling, which for a file of many steps is most of the memory at that moment).
fn resolve_list(
    raw: Vec<RawStep>,
    place: impl Fn(usize) -> (String, String),
) -> Result<Vec<Step>, String> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let (pointer, generated) = place(i);
        out.push(s.into_step(&pointer, &generated)?);
    }
    Ok(out)
}
