//! `kind: conversation`: a dialogue with one person on a channel. It is written in the workflow
//! step language plus the conversation steps (`say`, `ask`, `classify`, `ai_reply`, `goto`,
//! `end`), and runs as a workflow run keyed by (conversation, channel, address).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

use super::common::{DefinitionId, Duration, Ident, Metadata, StepId, Template};
use super::step::RawStep;
use super::trigger::Keywords;
use super::workflow::OnUpdate;

/// A conversation definition, as written in a file under workflows/ beside the workflows.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald conversation")]
pub struct ConversationDef {
    /// Always `conversation` for this kind.
    pub kind: ConversationKind,
    /// A unique id across all definitions.
    pub id: DefinitionId,
    /// What this conversation is for, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    /// What happens to open conversations when this file changes. Conversations move to the
    /// new version at their next step by default (`latest`), matched by step id, so a waiting
    /// `ask` asks again with the new text; `pinned` keeps them on the version that started them.
    #[serde(default = "ConversationDef::default_on_update")]
    pub on_update: OnUpdate,
    /// Labels every run of this conversation carries, as for a workflow.
    #[serde(default)]
    pub labels: IndexMap<String, Template>,
    /// The channels it listens on, as named in herald.yaml. It replies on the channel the
    /// person wrote on.
    #[schemars(length(min = 1))]
    pub channels: Vec<String>,
    /// What starts it, from someone with no open conversation: any one of these. Without
    /// `start`, it is started only by a workflow (`call`).
    #[serde(default)]
    pub start: Vec<StartCondition>,
    /// What a new start does while the person already has an open conversation: `ignore` it
    /// (the message goes to the open conversation) or `restart` (the open one is cancelled and
    /// a new one starts).
    #[serde(default)]
    pub while_open: WhileOpen,
    /// How long the conversation waits for the person before it ends, and what it says then.
    #[serde(default)]
    pub inactivity: Inactivity,
    /// The message that ends an open conversation at once, whatever it is doing.
    #[serde(default = "ConversationDef::default_reset")]
    pub reset: String,
    /// The values the conversation collects with `ask`, by name, each with its type. A filled
    /// slot is `slots.<name>` in templates.
    #[serde(default)]
    pub slots: IndexMap<Ident, SlotDef>,
    /// The steps, run in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<RawStep>,
}

impl ConversationDef {
    fn default_on_update() -> OnUpdate {
        OnUpdate::Latest
    }
    fn default_reset() -> String {
        "/reset".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Conversation,
}

/// One way a conversation starts.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartCondition {
    /// The whole message is one of these words, in any case: `keyword: [hi, hello]`.
    Keyword(Keywords),
    /// The message matches this regular expression: `match: "(?i)car loan"`.
    Match(String),
    /// A bot command, such as `start` for `/start +15551234567`; the rest of the message is
    /// `message.command.payload`.
    Command(String),
    /// `any_message: true`: any message from someone with no open conversation.
    AnyMessage(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhileOpen {
    /// The start is an ordinary message to the open conversation.
    #[default]
    Ignore,
    /// The open conversation is cancelled and a new one starts.
    Restart,
    /// The new one waits, holding no worker, and starts with the message that started it
    /// once the open one ends (within a second of it). Messages meanwhile go to the open
    /// one; `/reset` ends it and drops what waits behind it.
    Queue,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inactivity {
    /// How long an `ask` waits for an answer before the conversation ends.
    #[serde(default = "Inactivity::default_after")]
    pub after: Duration,
    /// What the conversation says when it ends for inactivity.
    #[serde(default)]
    pub say: Option<Template>,
}

impl Inactivity {
    fn default_after() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

impl Default for Inactivity {
    fn default() -> Self {
        Inactivity {
            after: Inactivity::default_after(),
            say: None,
        }
    }
}

/// A value to collect.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotDef {
    /// What the answer must be.
    #[serde(rename = "type")]
    pub kind: SlotType,
    /// For `choice`: each value with the words and phrases that mean it, such as
    /// `{ new: [new car, brand new], used: [used, pre-owned] }`. The value itself counts too.
    #[serde(default)]
    pub choices: IndexMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlotType {
    /// Any text that is not blank.
    Text,
    /// A phone number, stored in E.164 form (+18015551234), read in `contacts.default_region`.
    Phone,
    /// An e-mail address, stored in lower case.
    Email,
    /// A number (`1,200`, `$35.50`).
    Number,
    /// A date (`2026-11-05`, `11/05/2026`, `today`, `tomorrow`), stored as YYYY-MM-DD.
    Date,
    /// One of `choices`, by its value or one of its words.
    Choice,
    /// Yes or no (`yes`, `y`, `sure`, `no`, `nope`...), stored as true or false.
    YesNo,
}

impl SlotType {
    pub fn as_str(self) -> &'static str {
        match self {
            SlotType::Text => "text",
            SlotType::Phone => "phone",
            SlotType::Email => "email",
            SlotType::Number => "number",
            SlotType::Date => "date",
            SlotType::Choice => "choice",
            SlotType::YesNo => "yes_no",
        }
    }
}

/// `ask`: says the prompt, then waits for the person's next message and fills the slot with
/// it, asking again while the answer does not fit.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskStep {
    /// What to ask. Without it, the step only waits for the next message.
    #[serde(default)]
    pub prompt: Option<Template>,
    /// The slot the answer fills (see `slots`). Without it, any text is the answer.
    #[serde(default)]
    pub slot: Option<Ident>,
    /// What to say when an answer does not fit, before waiting again. Defaults to the prompt.
    #[serde(default)]
    pub reprompt: Option<Template>,
    /// How many answers to try before giving up.
    #[serde(default = "AskStep::default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// What to do when the attempts run out: `end` the conversation (the default),
    /// `continue` with the slot empty, or `goto: <step id>`.
    #[serde(default)]
    pub on_fail: OnFail,
    /// What to say when the attempts run out.
    #[serde(default)]
    pub give_up: Option<Template>,
    /// How long to wait for an answer; defaults to the conversation's `inactivity.after`.
    #[serde(default)]
    pub timeout: Option<Duration>,
}

impl AskStep {
    fn default_max_attempts() -> u32 {
        3
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    #[default]
    End,
    Continue,
    Goto(StepId),
}

/// `classify`: picks the intent of a text (the person's last message unless `text` says
/// otherwise) by its keywords or patterns, first match wins; when none matches and `ai` is
/// set, a language model chooses, and its answer counts only if it is one of the intents.
/// The output is `intent`, with `source` (`keywords`, `ai` or `fallback`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyStep {
    /// The text to classify; defaults to the person's last message.
    #[serde(default)]
    pub text: Option<Template>,
    /// The intents by name, in the order they are tried.
    #[schemars(length(min = 1))]
    pub intents: IndexMap<Ident, Intent>,
    /// The intent when none matches.
    #[serde(default = "ClassifyStep::default_fallback")]
    pub fallback: String,
    /// Where the fallback goes, as an intent's `goto` does.
    #[serde(default)]
    pub fallback_goto: Option<StepId>,
    /// Ask a language model when no keyword or pattern matches.
    #[serde(default)]
    pub ai: Option<ClassifyAi>,
}

/// How `classify` asks a model: it is shown the intents (with their descriptions) and the
/// text, and told to answer with one intent's name or the fallback's. Any other answer, a
/// timeout or an error is the fallback.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyAi {
    /// The provider, as named under `ai:` in herald.yaml.
    pub provider: String,
    /// More to tell the model about the choice (a template), such as who is writing.
    #[serde(default)]
    pub instructions: Option<Template>,
}

impl ClassifyStep {
    fn default_fallback() -> String {
        "none".into()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Words or phrases that mean this intent, found as whole words in any case.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// A regular expression that means this intent.
    #[serde(default, rename = "match")]
    pub pattern: Option<String>,
    /// What the intent means, for `ai` to choose by, such as "wants to pay a bill".
    #[serde(default)]
    pub description: Option<String>,
    /// The step to go to when this intent is chosen; without it, the next step runs.
    #[serde(default)]
    pub goto: Option<StepId>,
}

/// `ai_reply`: answers the person with a language model, within guardrails, through the
/// outbox like any other reply.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiReplyStep {
    /// The provider, as named under `ai:` in herald.yaml.
    pub provider: String,
    /// The system prompt, a template.
    pub system: Template,
    /// How many of the last messages (both ways) the model sees.
    #[serde(default = "AiReplyStep::default_turns")]
    #[schemars(range(min = 1, max = 100))]
    pub turns: u32,
    /// Phrases the reply must never contain, compared ignoring case and spacing. A reply with
    /// one is sent back once to be rewritten; if the rewrite still has one, `fallback` is sent.
    #[serde(default)]
    pub never_say: Vec<String>,
    /// The longest reply, in characters; a longer one is sent back once to be shortened.
    #[serde(default)]
    pub max_chars: Option<u32>,
    /// What to say when the provider times out, fails, or keeps breaking a guardrail.
    pub fallback: Template,
}

impl AiReplyStep {
    fn default_turns() -> u32 {
        10
    }
}

/// `end: true`, or `end: "Thanks, goodbye!"` to say something first.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EndStep {
    Now(bool),
    Say(Template),
}

/// `handoff`: a person (an agent) takes the conversation over. The bot says nothing while it
/// lasts; the person's messages go to the agent inbox (`GET /api/conversations/{run}/messages`)
/// and each is announced as the event `conversation.message`, the handoff itself as
/// `conversation.handoff`, both keyed by the run id. It ends when an agent releases the
/// conversation (`POST /api/conversations/{run}/release`) or at its `timeout`, and the steps
/// after it run.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffStep {
    /// What to tell the person as the handoff begins, such as "A colleague will answer you here."
    #[serde(default)]
    pub say: Option<Template>,
    /// Why the conversation needs a person, for the agents' notification (a template).
    #[serde(default)]
    pub reason: Option<Template>,
    /// How long the bot stays silent without a release before it takes the conversation back.
    #[serde(default = "HandoffStep::default_timeout")]
    pub timeout: Duration,
    /// What to tell the person when no agent released the conversation in time.
    #[serde(default)]
    pub timeout_say: Option<Template>,
}

impl HandoffStep {
    fn default_timeout() -> Duration {
        Duration::from_secs(3600)
    }
}

/// An OpenAI-compatible chat completions provider (`POST {base_url}/chat/completions`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AiProviderConfig {
    /// The API's base URL, such as https://api.openai.com/v1.
    pub base_url: String,
    /// The model, such as gpt-4o-mini.
    pub model: String,
    /// The API key, usually "${env:OPENAI_API_KEY}"; sent as a bearer token.
    #[serde(default)]
    pub api_key: Option<String>,
    /// How long to wait for an answer before the step says its fallback.
    #[serde(default = "AiProviderConfig::default_timeout")]
    pub timeout: Duration,
    /// The most tokens an answer may use.
    #[serde(default = "AiProviderConfig::default_max_tokens")]
    pub max_tokens: u32,
}

impl AiProviderConfig {
    fn default_timeout() -> Duration {
        Duration::from_secs(20)
    }
    fn default_max_tokens() -> u32 {
        300
    }
}
