//! `kind: workflow`: triggers and a tree of steps.

use schemars::JsonSchema;
use serde::Deserialize;

use indexmap::IndexMap;

use super::common::{DefinitionId, Metadata, Template};
use super::step::RawStep;
use super::trigger::Trigger;

/// A workflow definition, as written in a file under workflows/.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Herald workflow")]
pub struct WorkflowDef {
    /// Always `workflow` for this kind.
    pub kind: WorkflowKind,
    /// A unique id across all definitions.
    pub id: DefinitionId,
    /// What this workflow is for, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    /// What happens to waiting runs when this file changes: `pinned` runs finish on the version
    /// that started them; `latest` runs move to the new version at their next step, when that
    /// step's id still exists in it.
    #[serde(default)]
    pub on_update: OnUpdate,
    /// Labels every run of this workflow carries, such as `client: "{{ params.client }}"`:
    /// templates rendered when the run starts. Runs can be listed and cancelled by label
    /// (`/api/runs?label=client:acme`), and a run sees its own as `run.labels`.
    #[serde(default)]
    pub labels: IndexMap<String, Template>,
    /// What starts a run. A workflow without triggers runs only through `call` or `herald run`.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// The steps, run in order.
    #[schemars(length(min = 1))]
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    Workflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUpdate {
    /// Runs finish on the version that started them.
    #[default]
    Pinned,
    /// Waiting runs continue on the newest version, matched by step id.
    Latest,
}
