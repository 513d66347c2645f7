//! `kind: conversation`, read: its steps resolved as a workflow's are, and the rules of its
//! sessions (channels, starts, slots) beside them. The semantic pass checks its steps as a
//! workflow's (see [`super::Definition::as_workflow`]), and the registry compiles it onto the
//! same interpreter.

use indexmap::IndexMap;

use super::diagnostics::Diagnostic;
use super::model::common::{DefinitionId, Ident};
use super::model::conversation::{ConversationDef, Inactivity, SlotDef, StartCondition, WhileOpen};
use super::model::step::resolve_steps;
use super::schema::{SchemaKind, Schemas};
use super::source::{Parsed, SourceFile};
use super::{Body, Definition, Workflow, content_hash, deserialize, env};

/// A conversation with its steps resolved.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Its steps, labels and `on_update`, as a workflow without triggers.
    pub workflow: Workflow,
    pub channels: Vec<String>,
    pub start: Vec<StartCondition>,
    pub while_open: WhileOpen,
    pub inactivity: Inactivity,
    pub reset: String,
    pub slots: IndexMap<Ident, SlotDef>,
}

pub(super) fn read(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let errors = Schemas::get().validate(SchemaKind::Conversation, &file, &doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    build(file, doc)
}

fn build(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let def: ConversationDef = deserialize(&file, &doc)?;
    let conversation = from_def(def).map_err(|e| {
        vec![file.locate(
            Diagnostic::error("invalid-step", e),
            doc.index.value("/steps"),
        )]
    })?;
    Ok(Definition {
        id: conversation.workflow.id.clone(),
        hash: content_hash(&doc.value),
        env_strings: env::env_strings(&doc.value),
        body: Body::Conversation(conversation),
        file,
        doc,
    })
}

/// The conversation a schema-valid document describes.
pub(crate) fn from_def(def: ConversationDef) -> Result<Conversation, String> {
    let steps = resolve_steps(def.steps, "/steps")?;
    let DefinitionId(id) = def.id;
    Ok(Conversation {
        workflow: Workflow {
            id,
            description: def.description,
            metadata: def.metadata,
            on_update: def.on_update,
            labels: def.labels,
            triggers: Vec::new(),
            steps,
        },
        channels: def.channels,
        start: def.start,
        while_open: def.while_open,
        inactivity: def.inactivity,
        reset: def.reset,
        slots: def.slots,
    })
}
