//! What each step kind does, one file per kind.
//!
//! The interpreter (`engine::interpreter`) decides *when* a step runs, what happens to its
//! outcome (the step log, retries, `on_error`, commits); the files here decide only *what* a
//! step of their kind does. A step sees the run through [`StepCx`]: the run's cursor and
//! context, the segment's pending writes, and its [`Host`] (the registry snapshot, the store to
//! read, the HTTP client), and nothing else of the engine. A step never writes to the store
//! itself: what it produces (messages, events, runs, contacts) goes into the segment's pending
//! writes, committed with the run in one transaction.
//!
//! # Adding a step kind
//!
//! A step kind touches these places, in this order:
//!
//! 1. **The model**: a variant of `Action` in `definitions/model/step.rs` (with doc comments:
//!    they become the schema's descriptions), its name in `Action::key`, and, for a compound
//!    step, its nested lists in `Action::branches`.
//! 2. **The semantic check**: its arm in `definitions/semantic.rs` (templates and expressions
//!    it renders, names it refers to, outputs it makes available to later steps).
//! 3. **Its file here**: `engine/steps/<kind>.rs`, with a function taking a [`StepCx`] and the
//!    step's settings and giving an [`Outcome`] or a [`StepError`] (permanent, or transient and
//!    retried under the step's `retry`). A step that waits gives an `Outcome::Wait` with a new
//!    variant of `Wait` (`engine/cursor.rs`), resolved by a `resume` function in its own file,
//!    called from `Interpreter::resume` (`engine/interpreter/mod.rs`). A step that calls out of
//!    the process must be committed before it runs: see the `http` barrier in
//!    `Interpreter::step`.
//! 4. **The dispatch**: one line in [`execute`] below.
//! 5. **The schemas**: `herald schema --write schemas` regenerates `schemas/`, and
//!    `tests/schemas.rs` fails until it is run.
//! 6. **The README**: the **Steps** paragraph of README.md's "Definitions" section.
//!
//! An effect that leaves the process (a message, an event, a child run) needs a key derived
//! from the run, the step and the loop position ([`StepCx::effect_key`]), so a segment that is
//! executed again after a crash does not repeat it.

mod ai_reply;
mod ask;
mod branch;
mod call;
mod classify;
pub(crate) mod conversation;
mod emit;
mod fail;
mod flow;
mod for_each;
pub(crate) mod handoff;
pub(crate) mod http;
mod respond;
mod say;
mod send;
mod set;
pub(crate) mod slots;
mod r#try;
mod upsert_contact;
mod wait;
mod wait_for;

use std::sync::Arc;

use minijinja::value::Value as JValue;
use serde_json::Value;

use super::interpreter::{Active, Outcome, Pending, StepError};
use super::program::Node;
use super::registry::Registry;
use crate::definitions::model::Template;
use crate::definitions::model::step::{Action, Step};
use crate::store::{DynStore, Millis};
use crate::templates::Templates;

pub(crate) use call::resume as resume_call;
pub(crate) use wait::resume as resume_timer;
pub(crate) use wait_for::{EventWait, resume as resume_event};

/// The part of the engine a step may use.
#[derive(Clone, Copy)]
pub(crate) struct Host<'a> {
    /// The definitions in force when the step started.
    pub registry: &'a Registry,
    pub store: &'a DynStore,
    pub http: &'a reqwest::Client,
    /// Set only under `herald test`: answers `http` steps instead of the network.
    pub http_stub: Option<&'a dyn http::HttpStub>,
}

/// What a step sees while it executes: the run, the segment, and the services it may use.
pub(crate) struct StepCx<'a> {
    /// The run being executed: its cursor, its context, its contact and response.
    pub run: &'a mut Active,
    /// What the segment commits with the run.
    pub pending: &'a mut Pending,
    /// The step, and where its branches lead.
    pub node: &'a Node,
    pub host: Host<'a>,
    pub now: Millis,
    /// The values templates see. It shares the run's context, so it is let go of (see
    /// [`StepCx::context_mut`]) before the context changes, which then needs no copy.
    ctx: JValue,
    key_suffix: String,
}

impl<'a> StepCx<'a> {
    pub(crate) fn new(
        run: &'a mut Active,
        pending: &'a mut Pending,
        node: &'a Node,
        host: Host<'a>,
        now: Millis,
        ctx: JValue,
    ) -> StepCx<'a> {
        let mut key_suffix = run.cursor.loop_suffix();
        // A conversation comes back to its steps (`goto`, a re-asked question): each visit's
        // effects are its own, told apart by the step-log position, which a segment executed
        // again after a crash reaches again.
        if run.workflow.conversation.is_some() {
            key_suffix.push_str(&format!("#{}", run.cursor.seq));
        }
        StepCx {
            run,
            pending,
            node,
            host,
            now,
            ctx,
            key_suffix,
        }
    }

    pub(crate) fn step(&self) -> &'a Step {
        &self.node.step
    }

    pub(crate) fn templates(&self) -> &'a Templates {
        &self.host.registry.templates
    }

    /// The values templates see (the run's context, loop variables, the clock).
    pub(crate) fn ctx(&self) -> &JValue {
        &self.ctx
    }

    pub(crate) fn render(&self, s: &str) -> Result<String, StepError> {
        Ok(self.templates().render_str(s, &self.ctx)?)
    }

    /// An optional template, rendered; blank text counts as absent.
    pub(crate) fn render_opt(&self, s: &Option<Template>) -> Result<Option<String>, StepError> {
        s.as_ref()
            .map(|v| self.render(v.as_str()))
            .transpose()
            .map(|o| o.filter(|s| !s.trim().is_empty()))
    }

    pub(crate) fn render_json(&self, v: &Value) -> Result<Value, StepError> {
        Ok(self.templates().render_json(v, &self.ctx)?)
    }

    /// The key of an effect of this step: the same every time this step runs at this loop
    /// position, so an effect made again after a crash is recognised as the same one.
    pub(crate) fn effect_key(&self) -> String {
        format!("{}:{}{}", self.run.id, self.step().id, self.key_suffix)
    }

    /// The first node of one of the step's branches (`then`, `body`, `case:<key>`...).
    pub(crate) fn branch(&self, name: &str) -> Option<usize> {
        self.node
            .branches
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, f)| *f)
    }

    /// The run's context, to change. The template values are let go of first, so the context
    /// is not copied; nothing may be rendered after this.
    pub(crate) fn context_mut(&mut self) -> &mut Value {
        self.ctx = JValue::UNDEFINED;
        Arc::make_mut(&mut self.run.ctx)
    }
}

/// Executes a step whose wait (if any) is over: one line per step kind.
pub(crate) async fn execute(cx: StepCx<'_>) -> Result<Outcome, StepError> {
    match &cx.step().action {
        Action::Set(vars) => set::execute(cx, vars),
        Action::If { condition, .. } => branch::execute_if(cx, condition),
        Action::Switch { on, .. } => branch::execute_switch(cx, on),
        Action::ForEach { items, as_, .. } => for_each::execute(cx, items, as_),
        Action::Send(s) => send::execute(cx, s).await,
        Action::Wait(w) => wait::execute(cx, w),
        Action::WaitFor(w) => wait_for::execute(cx, w).await,
        Action::Http(h) => http::execute(cx, h).await,
        Action::Emit(e) => emit::execute(cx, e),
        Action::Call(c) => call::execute(cx, c),
        Action::UpsertContact(u) => upsert_contact::execute(cx, u).await,
        Action::Respond(r) => respond::execute(cx, r),
        Action::Fail(message) => fail::execute(cx, message),
        Action::Try { .. } => r#try::execute(cx),
        Action::Say(t) => say::execute(cx, t).await,
        Action::Ask(a) => ask::execute(cx, a).await,
        Action::Classify(c) => classify::execute(cx, c).await,
        Action::AiReply(a) => ai_reply::execute(cx, a).await,
        Action::Goto(target) => flow::goto(cx, target),
        Action::End(e) => flow::end(cx, e).await,
        Action::Handoff(h) => handoff::execute(cx, h).await,
    }
}
