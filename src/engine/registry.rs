//! The registry: an immutable, compiled snapshot of a project's definitions, templates and
//! channels. The engine holds the current one behind an atomic pointer; a reload builds a new
//! one and swaps it in whole, so nothing ever sees half a reload.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::channels::{self, Channels};
use crate::definitions::diagnostics::Diagnostic;
use crate::definitions::env::EnvSource;
use crate::definitions::model::ConfigDef;
use crate::definitions::model::conversation::StartCondition;
use crate::definitions::model::step::resolve_steps;
use crate::definitions::model::trigger::{CronTrigger, Trigger};
use crate::definitions::model::workflow::WorkflowDef;
use crate::definitions::project::Project;
use crate::definitions::{Body, Definition, Workflow};
use crate::engine::program::Program;
use crate::store::{DefinitionVersion, Millis};
use crate::templates::Templates;
use crate::triggers::cron::{parse_schedule, parse_timezone};
use crate::triggers::webhook_auth::Verifier;

/// One workflow version, ready to run.
#[derive(Debug)]
pub struct CompiledWorkflow {
    pub id: String,
    /// The id as a shared string, for metric labels without an allocation per use.
    pub metric_id: Arc<str>,
    /// The content hash runs record as their version.
    pub hash: String,
    pub workflow: Workflow,
    pub program: Program,
    /// Webhook verifiers, by trigger index (`None` for triggers without auth).
    pub verifiers: Vec<Option<Verifier>>,
    /// Compiled `match` patterns of message triggers, by trigger index.
    pub patterns: Vec<Option<Regex>>,
    /// Where each step is written, `file:line:col` by step id, so an error at run time can
    /// point at the definition.
    pub locations: HashMap<String, String>,
    /// The source as loaded, stored with the version.
    pub source: String,
    pub document: Value,
    /// Set for a conversation: its sessions' rules, beside the steps in `workflow`.
    pub conversation: Option<Arc<CompiledConversation>>,
    /// Set for a campaign: its audience and schedule, beside the steps in `workflow`.
    pub campaign: Option<Arc<crate::definitions::campaign::Campaign>>,
    /// Set for an alert: its rule. It has no triggers and no steps; `crate::alerts` evaluates it.
    pub alert: Option<Arc<crate::definitions::alert::Alert>>,
}

/// A conversation's rules, ready to route messages by.
#[derive(Debug)]
pub struct CompiledConversation {
    pub spec: crate::definitions::conversation::Conversation,
    /// Compiled `match` patterns of its `start`, by index.
    pub start_patterns: Vec<Option<Regex>>,
}

impl CompiledWorkflow {
    /// Compiles a validated definition into what the engine runs. Every kind of definition
    /// compiles to this: the triggers that start it and the program of steps it runs. A new
    /// kind (a conversation, a campaign, an alert) adds its arm here, mapping its own model
    /// onto triggers and steps, so that the interpreter, the store, the scheduler and the
    /// routes serve it unchanged: its runs are runs like any other.
    pub fn compile(def: &Definition, env: &EnvSource) -> Result<CompiledWorkflow, Vec<Diagnostic>> {
        match &def.body {
            Body::Workflow(_) => CompiledWorkflow::compile_workflow(def, env),
            Body::Conversation(_) => CompiledWorkflow::compile_conversation(def, env),
            Body::Campaign(_) => CompiledWorkflow::compile_campaign(def, env),
            Body::Alert(a) => Ok(CompiledWorkflow::compile_alert(def, a)),
        }
    }

    /// An alert: no triggers and no steps, only its rule, which `crate::alerts` evaluates.
    fn compile_alert(
        def: &Definition,
        alert: &crate::definitions::alert::Alert,
    ) -> CompiledWorkflow {
        let workflow = Workflow {
            id: def.id.clone(),
            description: alert.def.description.clone(),
            metadata: alert.def.metadata.clone(),
            on_update: crate::definitions::model::workflow::OnUpdate::Latest,
            labels: Default::default(),
            triggers: Vec::new(),
            steps: Vec::new(),
        };
        CompiledWorkflow {
            alert: Some(Arc::new(alert.clone())),
            ..CompiledWorkflow::base(def, workflow)
        }
    }

    /// What every kind compiles to before its own parts: its steps' program and locations,
    /// no verifiers or patterns for its triggers, and no kind-specific rules.
    fn base(def: &Definition, workflow: Workflow) -> CompiledWorkflow {
        let triggers = workflow.triggers.len();
        CompiledWorkflow {
            id: def.id.clone(),
            metric_id: def.id.as_str().into(),
            hash: def.hash.clone(),
            locations: locations(def, &workflow),
            program: Program::compile(&workflow.steps),
            workflow,
            verifiers: vec![None; triggers],
            patterns: vec![None; triggers],
            source: def.file.text.to_string(),
            document: def.doc.value.clone(),
            conversation: None,
            campaign: None,
            alert: None,
        }
    }

    /// The definition's document with `${env:...}` references resolved, read as `T`. Secrets
    /// exist only in memory this way, never in the stored document.
    fn resolved<T: serde::de::DeserializeOwned>(
        def: &Definition,
        env: &EnvSource,
    ) -> Result<T, Vec<Diagnostic>> {
        let mut resolved = def.doc.value.clone();
        env.resolve_json(&mut resolved)
            .map_err(|e| vec![def.file.whole(Diagnostic::error("unset-env", e))])?;
        serde_json::from_value(resolved).map_err(|e| {
            vec![
                def.file
                    .whole(Diagnostic::error("invalid-value", e.to_string())),
            ]
        })
    }

    /// A campaign: each recipient is a run of its steps. A drip's `enrol` event is the
    /// workflow's event trigger; a broadcast's recipients are enrolled by the campaign driver
    /// (`engine::campaign`).
    fn compile_campaign(
        def: &Definition,
        env: &EnvSource,
    ) -> Result<CompiledWorkflow, Vec<Diagnostic>> {
        let cdef: crate::definitions::model::campaign::CampaignDef =
            CompiledWorkflow::resolved(def, env)?;
        let spec = crate::definitions::campaign::from_def(cdef)
            .map_err(|(pointer, d)| vec![def.at_value(pointer, *d)])?;
        let workflow = spec.workflow.clone();
        Ok(CompiledWorkflow {
            campaign: Some(Arc::new(spec)),
            ..CompiledWorkflow::base(def, workflow)
        })
    }

    /// A conversation: its steps are a workflow without triggers, and its `start` conditions
    /// are routed by the engine (`engine::conversation`), so the interpreter runs it as it runs
    /// any workflow.
    fn compile_conversation(
        def: &Definition,
        env: &EnvSource,
    ) -> Result<CompiledWorkflow, Vec<Diagnostic>> {
        let cdef: crate::definitions::model::conversation::ConversationDef =
            CompiledWorkflow::resolved(def, env)?;
        let spec = crate::definitions::conversation::from_def(cdef)
            .map_err(|e| vec![def.file.whole(Diagnostic::error("invalid-step", e))])?;
        let start_patterns = spec
            .start
            .iter()
            .map(|s| match s {
                StartCondition::Match(p) => Regex::new(p).ok(),
                _ => None,
            })
            .collect();
        let workflow = spec.workflow.clone();
        Ok(CompiledWorkflow {
            conversation: Some(Arc::new(CompiledConversation {
                spec,
                start_patterns,
            })),
            ..CompiledWorkflow::base(def, workflow)
        })
    }

    /// A workflow. `${env:...}` references are resolved here, so secrets exist only in memory,
    /// never in the stored document.
    fn compile_workflow(
        def: &Definition,
        env: &EnvSource,
    ) -> Result<CompiledWorkflow, Vec<Diagnostic>> {
        let wdef: WorkflowDef = CompiledWorkflow::resolved(def, env)?;
        let steps = resolve_steps(wdef.steps, "/steps")
            .map_err(|e| vec![def.file.whole(Diagnostic::error("invalid-step", e))])?;
        let workflow = Workflow {
            id: def.id.clone(),
            description: wdef.description,
            metadata: wdef.metadata,
            on_update: wdef.on_update,
            labels: wdef.labels,
            triggers: wdef.triggers,
            steps,
        };
        let mut errors = Vec::new();
        let mut verifiers = Vec::new();
        let mut patterns = Vec::new();
        for (i, t) in workflow.triggers.iter().enumerate() {
            verifiers.push(match t {
                Trigger::Webhook(w) => match &w.auth {
                    Some(auth) => match Verifier::new(auth, env) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            errors.push(def.at_value(
                                &format!("/triggers/{i}/webhook/auth"),
                                Diagnostic::error("invalid-secret", e),
                            ));
                            None
                        }
                    },
                    None => None,
                },
                _ => None,
            });
            patterns.push(match t {
                Trigger::Message(m) => m.pattern.as_deref().and_then(|p| Regex::new(p).ok()),
                _ => None,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledWorkflow {
            verifiers,
            patterns,
            ..CompiledWorkflow::base(def, workflow)
        })
    }

    pub(crate) fn version_record(&self, now: Millis) -> DefinitionVersion {
        DefinitionVersion {
            hash: self.hash.clone(),
            id: self.id.clone(),
            kind: if self.alert.is_some() {
                "alert"
            } else if self.conversation.is_some() {
                "conversation"
            } else if self.campaign.is_some() {
                "campaign"
            } else {
                "workflow"
            }
            .into(),
            source: self.source.clone(),
            document: self.document.clone(),
            first_seen_at: now,
        }
    }
}

/// Where each step is written, `file:line:col` by step id.
fn locations(def: &Definition, workflow: &Workflow) -> HashMap<String, String> {
    workflow
        .all_steps()
        .into_iter()
        .map(|step| {
            let at = def.doc.index.key(&step.pointer);
            (
                step.id.clone(),
                format!("{}:{}:{}", def.file.path.display(), at.line, at.column),
            )
        })
        .collect()
}

/// What a definition's `${env:...}` references resolve to, as a digest (the secrets themselves
/// are not kept). `None` when it cannot be fingerprinted: a reference that is not set, or a
/// value that itself holds a reference.
fn env_fingerprint(def: &Definition, env: &EnvSource) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    for (pointer, s) in &def.env_strings {
        let resolved = env.resolve(s).ok()?;
        if resolved.contains("${env:") {
            return None;
        }
        for part in [pointer, s, &resolved] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
    }
    Some(hash.finalize().into())
}

/// Workflows compiled by one [`Registry::build_with`], for the next build to reuse when a
/// definition's content hash, source and resolved secrets are all unchanged: compiling is a
/// function of those alone. Entries the last build did not use are dropped.
#[derive(Debug, Default)]
pub struct CompileCache {
    by_id: HashMap<String, (Option<[u8; 32]>, Arc<CompiledWorkflow>)>,
}

impl CompileCache {
    fn compile(
        &self,
        def: &Definition,
        env: &EnvSource,
        kept: &mut HashMap<String, (Option<[u8; 32]>, Arc<CompiledWorkflow>)>,
    ) -> Result<Arc<CompiledWorkflow>, Vec<Diagnostic>> {
        let fingerprint = env_fingerprint(def, env);
        let reused = fingerprint.and_then(|fp| {
            let (old_fp, wf) = self.by_id.get(&def.id)?;
            (*old_fp == Some(fp) && wf.hash == def.hash && *wf.source == *def.file.text)
                .then(|| wf.clone())
        });
        let wf = match reused {
            Some(wf) => wf,
            None => Arc::new(CompiledWorkflow::compile(def, env)?),
        };
        kept.insert(def.id.clone(), (fingerprint, wf.clone()));
        Ok(wf)
    }
}

/// An `ai:` provider, ready to call.
#[derive(Clone)]
pub struct AiProvider {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: std::time::Duration,
    pub max_tokens: u32,
}

impl std::fmt::Debug for AiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiProvider")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// A webhook's place in the router.
#[derive(Debug, Clone)]
pub struct Route {
    pub workflow: Arc<CompiledWorkflow>,
    pub trigger: usize,
}

/// A cron trigger, parsed.
#[derive(Debug, Clone)]
pub struct CronEntry {
    pub workflow: Arc<CompiledWorkflow>,
    pub trigger: usize,
    pub spec: CronTrigger,
    /// Identifies the schedule across reloads: a changed schedule or time zone is a new key.
    pub key: String,
    pub cron: croner::Cron,
    pub tz: jiff::tz::TimeZone,
}

/// A trigger subscription (event or message).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub workflow: Arc<CompiledWorkflow>,
    pub trigger: usize,
}

#[derive(Debug, Clone)]
pub struct Registry {
    pub workflows: HashMap<String, Arc<CompiledWorkflow>>,
    routes: HashMap<String, matchit::Router<Route>>,
    pub crons: Vec<CronEntry>,
    pub events: HashMap<String, Vec<Subscription>>,
    pub messages: HashMap<String, Vec<Subscription>>,
    /// Conversations by the channel they listen on, in id order.
    pub conversations: HashMap<String, Vec<Arc<CompiledWorkflow>>>,
    /// `ai:` providers from herald.yaml, with their keys resolved.
    pub ai: HashMap<String, AiProvider>,
    /// `compliance.unsubscribe`, with its secret resolved: signs the links in marketing
    /// e-mail and checks them when they are clicked.
    pub unsubscribe: Option<Arc<crate::engine::unsubscribe::Unsubscribe>>,
    pub templates: Templates,
    pub channels: Channels,
    pub config: ConfigDef,
    /// Counts reloads in this process; 1 is the first load.
    pub generation: u64,
    pub loaded_at: Millis,
}

/// A webhook match: the route and the path's parameters.
#[derive(Debug)]
pub struct RouteMatch {
    pub route: Route,
    pub params: serde_json::Map<String, Value>,
}

impl Registry {
    /// Compiles a validated project. Fails with diagnostics when a secret cannot be resolved or
    /// a channel cannot be built: a registry is complete or it is not made.
    pub fn build(
        project: &Project,
        env: &EnvSource,
        generation: u64,
        now: Millis,
    ) -> Result<Registry, Vec<Diagnostic>> {
        Registry::build_with(project, env, generation, now, &mut CompileCache::default())
    }

    /// [`Registry::build`], reusing the workflows an earlier build compiled when they are
    /// unchanged, and leaving this build's in `cache`.
    pub(crate) fn build_with(
        project: &Project,
        env: &EnvSource,
        generation: u64,
        now: Millis,
        cache: &mut CompileCache,
    ) -> Result<Registry, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let mut workflows = HashMap::new();
        let mut kept = HashMap::with_capacity(project.definitions.len());
        for def in &project.definitions {
            match cache.compile(def, env, &mut kept) {
                Ok(wf) => {
                    workflows.insert(wf.id.clone(), wf);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        cache.by_id = kept;
        let channels = match channels::build(&project.config.def, env) {
            Ok(c) => c,
            Err(e) => {
                errors.push(channel_diagnostic(project, &e));
                Channels::default()
            }
        };
        let mut routes: HashMap<String, matchit::Router<Route>> = HashMap::new();
        let mut crons = Vec::new();
        let mut events: HashMap<String, Vec<Subscription>> = HashMap::new();
        let mut messages: HashMap<String, Vec<Subscription>> = HashMap::new();
        let mut conversations: HashMap<String, Vec<Arc<CompiledWorkflow>>> = HashMap::new();
        let mut ids: Vec<&String> = workflows.keys().collect();
        ids.sort();
        for id in ids {
            let wf = &workflows[id];
            if let Some(c) = &wf.conversation {
                for channel in &c.spec.channels {
                    conversations
                        .entry(channel.clone())
                        .or_default()
                        .push(wf.clone());
                }
            }
            for (i, t) in wf.workflow.triggers.iter().enumerate() {
                match t {
                    Trigger::Webhook(w) => {
                        let router = routes.entry(w.method.as_str().to_owned()).or_default();
                        if let Err(e) = router.insert(
                            w.path.clone(),
                            Route {
                                workflow: wf.clone(),
                                trigger: i,
                            },
                        ) {
                            errors.push(Diagnostic::error(
                                "duplicate-webhook",
                                format!("webhook {} {}: {e}", w.method.as_str(), w.path),
                            ));
                        }
                    }
                    Trigger::Cron(c) => {
                        match (parse_schedule(&c.schedule), parse_timezone(&c.timezone)) {
                            (Ok(cron), Ok(tz)) => crons.push(CronEntry {
                                workflow: wf.clone(),
                                trigger: i,
                                key: format!(
                                    "{} @ {}",
                                    c.schedule.split_whitespace().collect::<Vec<_>>().join(" "),
                                    c.timezone
                                ),
                                spec: c.clone(),
                                cron,
                                tz,
                            }),
                            (Err(e), _) | (_, Err(e)) => {
                                errors.push(Diagnostic::error("invalid-cron", e))
                            }
                        }
                    }
                    Trigger::Event(e) => {
                        events
                            .entry(e.name.clone())
                            .or_default()
                            .push(Subscription {
                                workflow: wf.clone(),
                                trigger: i,
                            })
                    }
                    Trigger::Message(m) => {
                        messages
                            .entry(m.channel.clone())
                            .or_default()
                            .push(Subscription {
                                workflow: wf.clone(),
                                trigger: i,
                            })
                    }
                }
            }
        }
        let mut ai = HashMap::new();
        for (name, p) in &project.config.def.ai {
            let key = match p.api_key.as_deref().map(|k| env.resolve(k)).transpose() {
                Ok(k) => k,
                Err(e) => {
                    errors.push(Diagnostic::error(
                        "unset-env",
                        format!("ai provider `{name}`: {e}"),
                    ));
                    continue;
                }
            };
            ai.insert(
                name.clone(),
                AiProvider {
                    base_url: p.base_url.trim_end_matches('/').to_owned(),
                    model: p.model.clone(),
                    api_key: key,
                    timeout: p.timeout.as_std(),
                    max_tokens: p.max_tokens,
                },
            );
        }
        let unsubscribe = match &project.config.def.compliance.unsubscribe {
            None => None,
            Some(u) => match env.resolve(&u.secret).and_then(|secret| {
                crate::engine::unsubscribe::Unsubscribe::new(
                    u,
                    secret,
                    &project.config.def.routes.unsubscribe,
                )
            }) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    errors.push(Diagnostic::error("invalid-unsubscribe", e));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Registry {
            workflows,
            routes,
            crons,
            events,
            messages,
            conversations,
            ai,
            unsubscribe,
            templates: project.templates.clone(),
            channels,
            config: project.config.def.clone(),
            generation,
            loaded_at: now,
        })
    }

    /// Finds the webhook for a method and path.
    pub fn route(&self, method: &str, path: &str) -> Option<RouteMatch> {
        let m = self.routes.get(method)?.at(path).ok()?;
        let params = m
            .params
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        Some(RouteMatch {
            route: m.value.clone(),
            params,
        })
    }

    /// Whether any method has a webhook at this path (to tell 405 from 404).
    pub(crate) fn path_exists(&self, path: &str) -> bool {
        self.routes.values().any(|r| r.at(path).is_ok())
    }

    /// An empty registry, before the first load.
    pub fn empty() -> Registry {
        Registry {
            workflows: HashMap::new(),
            routes: HashMap::new(),
            crons: Vec::new(),
            events: HashMap::new(),
            messages: HashMap::new(),
            conversations: HashMap::new(),
            ai: HashMap::new(),
            unsubscribe: None,
            templates: Templates::empty(100_000),
            channels: Channels::default(),
            config: ConfigDef::default(),
            generation: 0,
            loaded_at: 0,
        }
    }
}

/// A channel that cannot be built, at its setting in herald.yaml when there is a file.
fn channel_diagnostic(project: &Project, e: &channels::ChannelError) -> Diagnostic {
    let d = Diagnostic::error("invalid-channel", e.to_string());
    let Some((file, parsed)) = &project.config.file else {
        return d;
    };
    let mut pointer = format!(
        "/channels/{}",
        crate::definitions::source::escape_token(&e.channel)
    );
    if let Some(setting) = &e.setting {
        pointer.push('/');
        pointer.push_str(setting);
    }
    file.locate(d, parsed.index.value(&pointer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::project::{EnvMode, Layout, LoadOptions, load};

    fn env(token: &str) -> EnvSource {
        EnvSource::Map(Arc::new([("TOKEN".to_owned(), token.to_owned())].into()))
    }

    /// An unchanged workflow is reused; a changed one, or one whose secret changed, is not.
    #[test]
    fn a_build_reuses_only_what_did_not_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("workflows")).unwrap();
        let write = |id: &str, greeting: &str| {
            std::fs::write(
                dir.join(format!("workflows/{id}.yaml")),
                format!(
                    "kind: workflow\nid: {id}\ntriggers:\n  - webhook:\n      path: /hooks/{id}\n      auth: {{ bearer: {{ token: \"${{env:TOKEN}}\" }} }}\nsteps:\n  - set: {{ greeting: \"{greeting}\" }}\n"
                ),
            )
            .unwrap();
        };
        write("a", "hi");
        write("b", "hi");
        let layout = Layout::discover(dir).unwrap();
        let build = |env: &EnvSource, cache: &mut CompileCache| {
            let mut opts = LoadOptions::new(EnvMode::Serve);
            opts.env = env.clone();
            let (project, report) = load(&layout, &opts);
            assert_eq!(report.errors(), 0, "{:#?}", report.diagnostics);
            Registry::build_with(&project, env, 1, 0, cache).unwrap()
        };
        let same =
            |x: &Registry, y: &Registry, id: &str| Arc::ptr_eq(&x.workflows[id], &y.workflows[id]);
        let mut cache = CompileCache::default();
        let first = build(&env("one"), &mut cache);
        let second = build(&env("one"), &mut cache);
        assert!(same(&first, &second, "a") && same(&first, &second, "b"));

        write("b", "hello");
        let third = build(&env("one"), &mut cache);
        assert!(same(&second, &third, "a"));
        assert!(!same(&second, &third, "b"));

        let fourth = build(&env("two"), &mut cache);
        assert!(!same(&third, &fourth, "a") && !same(&third, &fourth, "b"));

        // A fresh build compiles the same thing.
        let fresh = build(&env("two"), &mut CompileCache::default());
        for id in ["a", "b"] {
            assert_eq!(fourth.workflows[id].hash, fresh.workflows[id].hash);
            assert_eq!(fourth.workflows[id].source, fresh.workflows[id].source);
        }
    }
}
