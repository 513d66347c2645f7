//! Definitions: from a YAML file on disk to a validated, typed value.
//!
//! The path is: [`source::parse`] (YAML with positions → JSON) → [`schema`] (JSON Schema,
//! errors mapped to `file:line:col`) → serde into the [`model`] → [`semantic`] checks across
//! the whole set (ids, references, templates, expressions, channels, secrets). [`project`]
//! runs it over a project folder; `herald validate`, `herald serve` and hot reload all use
//! that one path.

pub mod alert;
pub mod campaign;
pub mod conversation;
pub mod diagnostics;
pub mod env;
pub mod model;
pub mod project;
mod salvage;
pub mod schema;
pub mod semantic;
pub mod source;
pub mod suggest;
pub mod test_files;
mod yaml;

use serde_json::Value;
use sha2::{Digest, Sha256};

use diagnostics::{Diagnostic, Span};
use model::common::{DefinitionId, Metadata};
use model::step::{Step, resolve_steps};
use model::trigger::Trigger;
use model::workflow::{OnUpdate, WorkflowDef};
use schema::{SchemaKind, Schemas};
use source::{Parsed, SourceFile};

/// One definition file, validated on its own (the semantic pass checks the set).
#[derive(Debug, Clone)]
pub struct Definition {
    pub id: String,
    pub file: SourceFile,
    pub doc: Parsed,
    /// SHA-256 of the definition's JSON form: comments and formatting do not change it.
    pub hash: String,
    /// The document's strings that hold `${env:` references, with their JSON pointers, in
    /// document order: what secrets it needs, found once.
    pub env_strings: Vec<(String, String)>,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    Workflow(Workflow),
    Conversation(conversation::Conversation),
    Campaign(campaign::Campaign),
    Alert(Box<alert::Alert>),
}

impl Definition {
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Workflow(_) => "workflow",
            Body::Conversation(_) => "conversation",
            Body::Campaign(_) => "campaign",
            Body::Alert(_) => "alert",
        }
    }

    /// The steps and labels of a definition that has them. A conversation's are a workflow
    /// without triggers, so every check of steps applies to them as they are.
    pub fn as_workflow(&self) -> Option<&Workflow> {
        match &self.body {
            Body::Workflow(w) => Some(w),
            Body::Conversation(c) => Some(&c.workflow),
            Body::Campaign(c) => Some(&c.workflow),
            Body::Alert(_) => None,
        }
    }

    pub fn as_conversation(&self) -> Option<&conversation::Conversation> {
        match &self.body {
            Body::Conversation(c) => Some(c),
            _ => None,
        }
    }

    pub fn as_campaign(&self) -> Option<&campaign::Campaign> {
        match &self.body {
            Body::Campaign(c) => Some(c),
            _ => None,
        }
    }

    pub fn as_alert(&self) -> Option<&alert::Alert> {
        match &self.body {
            Body::Alert(a) => Some(a.as_ref()),
            _ => None,
        }
    }

    /// A diagnostic at the value of a JSON pointer in this file.
    pub(crate) fn at_value(&self, pointer: &str, d: Diagnostic) -> Diagnostic {
        self.file.locate(d, self.doc.index.value(pointer))
    }

    /// A diagnostic at the key of a JSON pointer in this file.
    pub(crate) fn at_key(&self, pointer: &str, d: Diagnostic) -> Diagnostic {
        self.file.locate(d, self.doc.index.key(pointer))
    }

    /// The span of `needle` inside the string value at `pointer`, when it can be found on the
    /// value's first line; else the whole value.
    pub(crate) fn span_in_value(&self, pointer: &str, needle: &str) -> Span {
        let span = self.doc.index.value(pointer);
        if let Some(line) = self.file.line(span.line) {
            let start_byte = line
                .char_indices()
                .nth(span.column - 1)
                .map(|(b, _)| b)
                .unwrap_or(line.len());
            if let Some(found) = line[start_byte..].find(needle) {
                let col = line[..start_byte + found].chars().count() + 1;
                return Span::new(span.line, col, needle.chars().count());
            }
        }
        span
    }
}

/// A workflow with its steps resolved.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub id: String,
    pub description: Option<String>,
    pub metadata: Metadata,
    pub on_update: OnUpdate,
    pub labels: indexmap::IndexMap<String, model::Template>,
    pub triggers: Vec<Trigger>,
    pub steps: Vec<Step>,
}

impl Workflow {
    /// Every step, depth first, in file order.
    pub fn all_steps(&self) -> Vec<&Step> {
        fn walk<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
            for s in steps {
                out.push(s);
                for (_, branch) in s.nested() {
                    walk(branch, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }
}

/// Parses, schema-checks and deserializes one definition file.
pub fn read_definition(file: SourceFile) -> Result<Definition, Vec<Diagnostic>> {
    let doc = source::parse(&file)?;
    let kind = match &doc.value {
        Value::Object(map) => {
            match map.get("kind") {
                Some(Value::String(k)) => k.clone(),
                Some(other) => {
                    let d = Diagnostic::error(
                        "wrong-type",
                        format!(
                            "expected the kind as text, found {}",
                            schema::describe_value(other)
                        ),
                    );
                    return Err(vec![file.locate(d, doc.index.value("/kind"))]);
                }
                None => {
                    let d = Diagnostic::error("missing-field", "missing required field `kind`")
                    .with_hint("a definition starts with `kind: workflow` (or another kind) and an `id:`");
                    return Err(vec![file.locate(d, doc.index.value(""))]);
                }
            }
        }
        other => {
            let d = Diagnostic::error(
                "wrong-type",
                format!(
                    "a definition is a mapping with `kind:` and `id:`, found {}",
                    schema::describe_value(other)
                ),
            );
            return Err(vec![file.locate(d, doc.index.value(""))]);
        }
    };
    match kind.as_str() {
        "workflow" => read_workflow(file, doc),
        "conversation" => conversation::read(file, doc),
        "campaign" => campaign::read(file, doc),
        "alert" => alert::read(file, doc),
        k => {
            let all = ["workflow", "conversation", "campaign", "alert"];
            let mut d = Diagnostic::error("unknown-kind", format!("unknown kind `{k}`"));
            d = match suggest::did_you_mean(k, all) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint("supported kinds: workflow, conversation, campaign, alert"),
            };
            Err(vec![file.locate(d, doc.index.value("/kind"))])
        }
    }
}

fn read_workflow(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let errors = Schemas::get().validate(SchemaKind::Workflow, &file, &doc);
    if !errors.is_empty() {
        return Err(errors);
    }
    build_workflow(file, doc)
}

/// Reads a definition as [`read_definition`] does and, when it breaks the schema, also the
/// rest of it: the steps and triggers with errors are replaced by inert stand-ins, so the
/// semantic pass can still report the file's other, independent mistakes (a bad duration in
/// one step should not hide an unknown channel in another). The salvaged definition is for
/// checking only: its file has errors, so nothing runs it.
pub(crate) fn read_definition_salvaging(file: SourceFile) -> Result<Definition, Box<Salvaged>> {
    let schema_errors = |value: &Value| Schemas::get().error_pointers(SchemaKind::Workflow, value);
    match read_definition(file.clone()) {
        Ok(def) => Ok(def),
        Err(diags) => {
            let Ok(doc) = source::parse(&file) else {
                return Err(Box::new(Salvaged {
                    diagnostics: diags,
                    partial: None,
                }));
            };
            if doc.value.get("kind").and_then(Value::as_str) != Some("workflow") {
                return Err(Box::new(Salvaged {
                    diagnostics: diags,
                    partial: None,
                }));
            }
            let mut value = doc.value.clone();
            for _ in 0..3 {
                let pointers = schema_errors(&value);
                if pointers.is_empty() {
                    break;
                }
                for p in pointers {
                    if !salvage::patch(&mut value, &p) {
                        return Err(Box::new(Salvaged {
                            diagnostics: diags,
                            partial: None,
                        }));
                    }
                }
            }
            if !schema_errors(&value).is_empty() {
                return Err(Box::new(Salvaged {
                    diagnostics: diags,
                    partial: None,
                }));
            }
            let patched = Parsed {
                value,
                index: doc.index,
            };
            let partial = build_workflow(file, patched).ok();
            Err(Box::new(Salvaged {
                diagnostics: diags,
                partial,
            }))
        }
    }
}

/// A definition with errors, and what of it could still be checked.
#[derive(Debug)]
pub struct Salvaged {
    pub diagnostics: Vec<Diagnostic>,
    pub partial: Option<Definition>,
}

fn build_workflow(file: SourceFile, doc: Parsed) -> Result<Definition, Vec<Diagnostic>> {
    let def: WorkflowDef = deserialize(&file, &doc)?;
    let steps = resolve_steps(def.steps, "/steps").map_err(|e| {
        vec![file.locate(
            Diagnostic::error("invalid-step", e),
            doc.index.value("/steps"),
        )]
    })?;
    let DefinitionId(id) = def.id;
    Ok(Definition {
        id: id.clone(),
        hash: content_hash(&doc.value),
        env_strings: env::env_strings(&doc.value),
        body: Body::Workflow(Workflow {
            id,
            description: def.description,
            metadata: def.metadata,
            on_update: def.on_update,
            labels: def.labels,
            triggers: def.triggers,
            steps,
        }),
        file,
        doc,
    })
}

/// Deserializes a schema-valid document. The schemas are generated from these types, so a
/// failure here means the two disagree: it is reported at the path serde names, as a bug.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    file: &SourceFile,
    doc: &Parsed,
) -> Result<T, Vec<Diagnostic>> {
    serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let mut pointer = String::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => {
                    pointer.push_str(&format!("/{index}"))
                }
                serde_path_to_error::Segment::Map { key }
                | serde_path_to_error::Segment::Enum { variant: key } => {
                    pointer.push('/');
                    pointer.push_str(&source::escape_token(key));
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let d = Diagnostic::error("invalid-value", e.inner().to_string());
        vec![file.locate(d, doc.index.value(&pointer))]
    })
}

/// A stable hash of a document's content.
pub(crate) fn content_hash(value: &Value) -> String {
    // Streamed into the hasher: a large definition's JSON text is never held whole.
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut h, value);
    hex::encode(h.0.finalize())
}
