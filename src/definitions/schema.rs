//! JSON Schemas: generated from the serde model, and used for the first validation pass.
//!
//! The schemas in `schemas/` are this module's output (`herald schema --write schemas`), and a
//! test fails when the committed files are stale, so the schema an editor uses and the types
//! Herald deserializes into cannot drift apart.
//!
//! Two generic rewrites make errors precise, in editors and here alike:
//! - an externally tagged enum (`- cron: {...}` / `- webhook: {...}`) becomes one object whose
//!   properties are the variants, with `minProperties`/`maxProperties` of 1, instead of a
//!   `oneOf` of single-key objects. A misspelt variant then gets "unknown field" at the key, and
//!   an error inside a variant is reported at its own path instead of "matches no alternative".
//! - `Option<T>` does not admit `null`: an empty value is reported as such.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use serde_json::{Map, Value, json};

use super::diagnostics::Diagnostic;
use super::model::conversation::ConversationDef;
use super::model::step::CONVERSATION_ACTION_KEYS;
use super::model::{ConfigDef, TestDef, WorkflowDef};
use super::source::{Parsed, SourceFile, escape_token};
use super::suggest::did_you_mean;

/// The kinds of document Herald reads, each with its own schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    Workflow,
    Config,
    Conversation,
    Test,
    Campaign,
    Alert,
}

impl SchemaKind {
    pub const ALL: [SchemaKind; 6] = [
        SchemaKind::Workflow,
        SchemaKind::Config,
        SchemaKind::Conversation,
        SchemaKind::Test,
        SchemaKind::Campaign,
        SchemaKind::Alert,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchemaKind::Workflow => "workflow",
            SchemaKind::Config => "config",
            SchemaKind::Conversation => "conversation",
            SchemaKind::Test => "test",
            SchemaKind::Campaign => "campaign",
            SchemaKind::Alert => "alert",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<SchemaKind> {
        SchemaKind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn file_name(self) -> String {
        format!("{}.json", self.name())
    }
}

#[derive(Clone)]
struct ExternallyTaggedAsProperties;

impl Transform for ExternallyTaggedAsProperties {
    fn transform(&mut self, schema: &mut schemars::Schema) {
        transform_subschemas(self, schema);
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        let Some(Value::Array(branches)) = obj.get("oneOf") else {
            return;
        };
        let mut properties = Map::new();
        for b in branches {
            let Some(b) = b.as_object() else { return };
            let (Some(Value::Object(props)), Some(Value::Array(req))) =
                (b.get("properties"), b.get("required"))
            else {
                return;
            };
            if props.len() != 1
                || req.len() != 1
                || b.get("additionalProperties") != Some(&json!(false))
            {
                return;
            }
            let (key, mut prop) = props
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            if req[0] != json!(key) {
                return;
            }
            // The variant's doc comment is on the branch; move it to the property, where
            // editors show it on hover.
            if let (Some(desc), Some(p)) = (b.get("description"), prop.as_object_mut()) {
                p.entry("description").or_insert(desc.clone());
            }
            properties.insert(key, prop);
        }
        obj.remove("oneOf");
        obj.insert("type".into(), json!("object"));
        obj.insert("properties".into(), Value::Object(properties));
        obj.insert("additionalProperties".into(), json!(false));
        obj.insert("minProperties".into(), json!(1));
        obj.insert("maxProperties".into(), json!(1));
    }
}

#[derive(Clone)]
struct NoNull;

impl Transform for NoNull {
    fn transform(&mut self, schema: &mut schemars::Schema) {
        transform_subschemas(self, schema);
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        if let Some(Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let t = types[0].clone();
                obj.insert("type".into(), t);
            }
        }
        if let Some(Value::Array(branches)) = obj.get_mut("anyOf") {
            branches.retain(|b| b != &json!({"type": "null"}));
            if branches.len() == 1 {
                let only = branches.remove(0);
                obj.remove("anyOf");
                if let Value::Object(inner) = only {
                    for (k, v) in inner {
                        obj.entry(k).or_insert(v);
                    }
                }
            }
        }
        // Defaults are documentation for editors; `null` defaults say nothing.
        if obj.get("default") == Some(&Value::Null) {
            obj.remove("default");
        }
    }
}

/// The JSON Schema of a kind, as committed in `schemas/`.
pub fn generate(kind: SchemaKind) -> Value {
    let settings = SchemaSettings::draft2020_12()
        .with_transform(NoNull)
        .with_transform(ExternallyTaggedAsProperties);
    let generator = settings.into_generator();
    let schema = match kind {
        SchemaKind::Workflow => generator.into_root_schema_for::<WorkflowDef>(),
        SchemaKind::Config => generator.into_root_schema_for::<ConfigDef>(),
        SchemaKind::Conversation => generator.into_root_schema_for::<ConversationDef>(),
        SchemaKind::Test => generator.into_root_schema_for::<TestDef>(),
        SchemaKind::Campaign => {
            generator.into_root_schema_for::<super::model::campaign::CampaignDef>()
        }
        SchemaKind::Alert => generator.into_root_schema_for::<super::model::alert::AlertDef>(),
    };
    let mut value = schema.to_value();
    // A campaign's recipients go through workflow steps, not a conversation's.
    if kind == SchemaKind::Workflow || kind == SchemaKind::Campaign {
        without_conversation_steps(&mut value);
    }
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "$comment".into(),
            json!("Generated by `herald schema --write schemas`. Do not edit by hand."),
        );
    }
    value
}

/// A workflow shares the step type with a conversation but not the conversation's steps:
/// their keys are taken out of the workflow schema's `Step`, so an editor does not offer them
/// and `say` in a workflow is an unknown field, at its key.
fn without_conversation_steps(schema: &mut Value) {
    if let Some(Value::Object(defs)) = schema.pointer_mut("/$defs") {
        for name in [
            "AskStep",
            "OnFail",
            "ClassifyStep",
            "Intent",
            "AiReplyStep",
            "EndStep",
            "HandoffStep",
        ] {
            defs.remove(name);
        }
    }
    let Some(step) = schema
        .pointer_mut("/$defs/RawStep")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if let Some(Value::Object(props)) = step.get_mut("properties") {
        for key in CONVERSATION_ACTION_KEYS {
            props.remove(*key);
        }
    }
    if let Some(Value::Array(branches)) = step.get_mut("oneOf") {
        branches.retain(|b| {
            !b.get("required")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(Value::as_str)
                .is_some_and(|k| CONVERSATION_ACTION_KEYS.contains(&k))
        });
    }
}

/// The schema as pretty JSON with a trailing newline, exactly as written to `schemas/`.
pub fn generate_text(kind: SchemaKind) -> String {
    let mut s = serde_json::to_string_pretty(&generate(kind)).expect("a schema always serializes");
    s.push('\n');
    s
}

/// Compiled validators for every kind, built once per process.
pub struct Schemas {
    kinds: HashMap<SchemaKind, (Value, Validator)>,
}

impl Schemas {
    pub fn get() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| {
            let kinds = SchemaKind::ALL
                .into_iter()
                .map(|k| {
                    let schema = generate(k);
                    let validator = jsonschema::draft202012::options()
                        .build(&schema)
                        .expect("the generated schema compiles");
                    (k, (schema, validator))
                })
                .collect();
            Schemas { kinds }
        })
    }

    /// Validates a parsed document, turning every schema error into a positioned diagnostic.
    /// The JSON pointers of the values that break the schema (none when it is valid).
    pub(crate) fn error_pointers(&self, kind: SchemaKind, value: &Value) -> Vec<String> {
        let (_, validator) = &self.kinds[&kind];
        validator
            .iter_errors(value)
            .map(|e| e.instance_path().as_str().to_owned())
            .collect()
    }

    pub fn validate(&self, kind: SchemaKind, file: &SourceFile, doc: &Parsed) -> Vec<Diagnostic> {
        let (schema, validator) = &self.kinds[&kind];
        if validator.is_valid(&doc.value) {
            return Vec::new();
        }
        let errors: Vec<ValidationError> = validator.iter_errors(&doc.value).collect();
        let mapper = ErrorMapper { schema, file, doc };
        let mut out = Vec::new();
        mapper.convert_all(&errors, &mut out);
        // One problem can surface through several keywords; say it once.
        let mut seen = std::collections::HashSet::new();
        out.retain(|d| seen.insert((d.span.map(|s| (s.line, s.column)), d.message.clone())));
        out
    }
}

struct ErrorMapper<'a> {
    schema: &'a Value,
    file: &'a SourceFile,
    doc: &'a Parsed,
}

impl ErrorMapper<'_> {
    fn convert_all(&self, errors: &[ValidationError], out: &mut Vec<Diagnostic>) {
        // A misspelt action key produces both "unknown field" and "no action"; the first says
        // everything, so "missing one of" errors at an object that has unknown keys are dropped.
        let with_unknown: Vec<&str> = errors
            .iter()
            .filter(|e| {
                matches!(e.kind(), ValidationErrorKind::AdditionalProperties { .. })
                    || e.schema_path().as_str().ends_with("/dependentRequired")
            })
            .map(|e| e.instance_path().as_str())
            .collect();
        for e in errors {
            let path = e.instance_path().as_str();
            let is_missing_alternative = match e.kind() {
                ValidationErrorKind::OneOfNotValid { context }
                | ValidationErrorKind::AnyOf { context } => {
                    self.required_alternatives(e.schema_path().as_str())
                        .is_some()
                        && context.iter().all(|b| {
                            b.iter()
                                .all(|x| matches!(x.kind(), ValidationErrorKind::Required { .. }))
                        })
                }
                ValidationErrorKind::MinProperties { .. } => true,
                _ => false,
            };
            if is_missing_alternative && with_unknown.contains(&path) {
                continue;
            }
            // `stpes:` is both an unknown field and a missing `steps`: one mistake, reported
            // once, at the misspelt key (whose hint names the required field).
            if let ValidationErrorKind::Required { property } = e.kind()
                && !e.schema_path().as_str().ends_with("/dependentRequired")
                && let Some(prop) = property.as_str()
                && self.misspelt_as(errors, path, prop)
            {
                continue;
            }
            self.convert(e, out);
        }
    }

    /// Whether the object at `path` has an unknown key that is a misspelling of `prop`.
    fn misspelt_as(&self, errors: &[ValidationError], path: &str, prop: &str) -> bool {
        errors.iter().any(|e| {
            e.instance_path().as_str() == path
                && match e.kind() {
                    ValidationErrorKind::AdditionalProperties { unexpected } => {
                        unexpected.iter().any(|k| did_you_mean(k, [prop]).is_some())
                    }
                    _ => false,
                }
        })
    }

    fn at_key(&self, pointer: &str, d: Diagnostic) -> Diagnostic {
        self.file.locate(d, self.doc.index.key(pointer))
    }

    fn at_value(&self, pointer: &str, d: Diagnostic) -> Diagnostic {
        self.file.locate(d, self.doc.index.value(pointer))
    }

    fn instance(&self, pointer: &str) -> Option<&Value> {
        self.doc.value.pointer(pointer)
    }

    /// The schema node at a keyword location, following `$ref`s into `$defs`.
    fn schema_node(&self, schema_path: &str) -> Option<&Value> {
        let mut node = self.schema;
        for token in schema_path.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            node = self.deref(node);
            node = match node {
                Value::Object(m) => m.get(&token)?,
                Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(self.deref(node))
    }

    fn deref<'v>(&'v self, mut node: &'v Value) -> &'v Value {
        for _ in 0..16 {
            match node.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.schema.pointer(p)) {
                    Some(target) => node = target,
                    None => return node,
                },
                None => return node,
            }
        }
        node
    }

    /// The schema node that holds the keyword an error came from.
    fn parent_node(&self, schema_path: &str) -> Option<&Value> {
        let parent = schema_path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        self.schema_node(parent)
    }

    fn def_name(schema_path: &str) -> Option<&str> {
        let rest = schema_path.rsplit("/$defs/").next()?;
        if rest.len() == schema_path.len() {
            return None;
        }
        rest.split('/').next()
    }

    /// When the keyword at `schema_path` is a `oneOf`/`anyOf` whose branches only require one
    /// key each ("exactly one of template or body"), those keys.
    fn required_alternatives(&self, schema_path: &str) -> Option<Vec<String>> {
        let node = self.schema_node(schema_path)?.as_array()?;
        node.iter()
            .map(|b| {
                let b = b.as_object()?;
                if b.len() != 1 {
                    return None;
                }
                let req = b.get("required")?.as_array()?;
                (req.len() == 1).then(|| req[0].as_str().map(str::to_owned))?
            })
            .collect()
    }

    fn property_names(node: &Value) -> Vec<String> {
        node.get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn convert(&self, e: &ValidationError, out: &mut Vec<Diagnostic>) {
        let path = e.instance_path().as_str();
        let schema_path = e.schema_path().as_str();
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                self.unknown_fields(path, schema_path, unexpected, out)
            }
            ValidationErrorKind::Required { property } => self.missing_field(
                path,
                schema_path,
                property.as_str().unwrap_or_default(),
                out,
            ),
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => vec![t.to_string()],
                    TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect(),
                };
                let found = self.instance(path).map(describe_value).unwrap_or_default();
                let d = Diagnostic::error(
                    "wrong-type",
                    format!(
                        "expected {}{}, found {found}",
                        join_or(&expected.iter().map(|t| type_phrase(t)).collect::<Vec<_>>()),
                        field_name(path)
                            .map(|f| format!(" for `{f}`"))
                            .unwrap_or_default()
                    ),
                );
                out.push(self.at_value(path, d));
            }
            ValidationErrorKind::Enum { options } => {
                let options: Vec<String> = options
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| v.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let found = self.instance(path).map(short_value).unwrap_or_default();
                out.push(self.at_value(path, not_one_of(path, &found, &options)));
            }
            ValidationErrorKind::Constant { expected_value } => {
                let found = self.instance(path).map(short_value).unwrap_or_default();
                let expected = expected_value
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| expected_value.to_string());
                let d = Diagnostic::error(
                    "invalid-value",
                    format!("expected `{expected}`, found `{found}`"),
                );
                out.push(self.at_value(path, d));
            }
            ValidationErrorKind::Pattern { pattern } => {
                out.push(self.pattern_mismatch(path, schema_path, pattern))
            }
            ValidationErrorKind::MinProperties { .. }
            | ValidationErrorKind::MaxProperties { .. } => {
                self.property_count(path, schema_path, out)
            }
            ValidationErrorKind::OneOfMultipleValid { .. } => {
                self.several_alternatives(e, path, schema_path, out)
            }
            ValidationErrorKind::OneOfNotValid { context }
            | ValidationErrorKind::AnyOf { context } => {
                if let Some(alternatives) = self.required_alternatives(schema_path) {
                    let is_step = Self::def_name(schema_path) == Some("RawStep");
                    let d = if is_step {
                        Diagnostic::error("missing-field", "this step has no action").with_hint(
                            format!("a step needs exactly one of: {}", alternatives.join(", ")),
                        )
                    } else {
                        Diagnostic::error(
                            "missing-field",
                            format!("missing one of: {}", alternatives.join(", ")),
                        )
                    };
                    out.push(self.at_key(path, d));
                    return;
                }
                self.convert_alternatives(path, context, out);
            }
            ValidationErrorKind::MinItems { limit } => {
                let what = field_name(path)
                    .map(|f| format!("`{f}`"))
                    .unwrap_or_else(|| "this list".to_owned());
                let d = Diagnostic::error(
                    "invalid-value",
                    if *limit == 1 {
                        format!("{what} must not be empty")
                    } else {
                        format!("{what} needs at least {limit} items")
                    },
                );
                out.push(self.at_value(path, d));
            }
            ValidationErrorKind::MinLength { .. } => {
                let what = field_name(path)
                    .map(|f| format!("`{f}`"))
                    .unwrap_or_else(|| "this".to_owned());
                out.push(self.at_value(
                    path,
                    Diagnostic::error("invalid-value", format!("{what} must not be empty")),
                ));
            }
            ValidationErrorKind::Minimum { limit }
            | ValidationErrorKind::ExclusiveMinimum { limit } => {
                let found = self.instance(path).map(short_value).unwrap_or_default();
                let d = Diagnostic::error(
                    "invalid-value",
                    format!("{found} is too small; the minimum is {limit}"),
                );
                out.push(self.at_value(path, d));
            }
            ValidationErrorKind::Maximum { limit }
            | ValidationErrorKind::ExclusiveMaximum { limit } => {
                let found = self.instance(path).map(short_value).unwrap_or_default();
                let d = Diagnostic::error(
                    "invalid-value",
                    format!("{found} is too large; the maximum is {limit}"),
                );
                out.push(self.at_value(path, d));
            }
            _ => out.push(self.at_value(path, Diagnostic::error("schema", e.to_string()))),
        }
    }

    /// Fields the schema does not know, each with the field it most likely meant.
    fn unknown_fields(
        &self,
        path: &str,
        schema_path: &str,
        unexpected: &[String],
        out: &mut Vec<Diagnostic>,
    ) {
        let allowed = self
            .parent_node(schema_path)
            .map(Self::property_names)
            .unwrap_or_default();
        for key in unexpected {
            let pointer = format!("{path}/{}", escape_token(key));
            let mut d = Diagnostic::error("unknown-field", format!("unknown field `{key}`"));
            let required = self
                .parent_node(schema_path)
                .and_then(|n| n.get("required"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            d = match did_you_mean(key, allowed.iter().map(String::as_str)) {
                Some(s)
                    if required.iter().any(|r| r == s)
                        && !self
                            .instance(path)
                            .and_then(Value::as_object)
                            .is_some_and(|o| o.contains_key(s)) =>
                {
                    d.with_hint(format!(
                        "did you mean `{s}`? (`{s}` is required and missing)"
                    ))
                }
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None if !allowed.is_empty() => {
                    d.with_hint(format!("expected one of: {}", allowed.join(", ")))
                }
                None => d,
            };
            out.push(self.at_key(&pointer, d));
        }
    }

    /// A required field is missing; for `dependentRequired`, the field that needs it is named.
    fn missing_field(&self, path: &str, schema_path: &str, prop: &str, out: &mut Vec<Diagnostic>) {
        if schema_path.ends_with("/dependentRequired") {
            // The keyword names no owner: find the present key that requires `prop`.
            let instance = self.instance(path).and_then(Value::as_object);
            let owner = self
                .schema_node(schema_path)
                .and_then(Value::as_object)
                .and_then(|deps| {
                    deps.iter().find(|(owner, reqs)| {
                        instance.is_some_and(|i| i.contains_key(owner.as_str()))
                            && reqs.as_array().is_some_and(|r| r.iter().any(|x| x == prop))
                    })
                })
                .map(|(owner, _)| owner.clone())
                .unwrap_or_default();
            let pointer = format!("{path}/{}", escape_token(&owner));
            let mut d = Diagnostic::error(
                "missing-field",
                format!("`{owner}` needs `{prop}` beside it in the same step"),
            );
            let has = |k: &str| instance.is_some_and(|i| i.contains_key(k));
            if owner == "else" && has("switch") {
                d = d.with_hint("a `switch` takes `default:` for the steps when no case matches");
            } else if owner == "default" && has("if") {
                d = d.with_hint("an `if` takes `else:` for the steps when it is false");
            }
            out.push(self.at_key(&pointer, d));
            return;
        }
        let mut d = Diagnostic::error("missing-field", format!("missing required field `{prop}`"));
        let desc = self
            .parent_node(schema_path)
            .and_then(|n| n.get("properties"))
            .and_then(|p| p.get(prop))
            .map(|p| self.deref(p))
            .and_then(|p| p.get("description"))
            .and_then(Value::as_str);
        if let Some(desc) = desc {
            d = d.with_hint(format!("`{prop}`: {}", first_sentence(desc)));
        }
        out.push(self.at_key(path, d));
    }

    /// A string that does not match its pattern, worded for what the pattern stands for.
    fn pattern_mismatch(&self, path: &str, schema_path: &str, pattern: &str) -> Diagnostic {
        let found = self.instance(path).map(short_value).unwrap_or_default();
        let (message, hint) = match Self::def_name(schema_path) {
            Some("Duration") => (
                format!("`{found}` is not a duration"),
                "use a number and a unit (ms, s, m, h, d, w), such as 30s, 15m, 2h, 1d or 1h30m".to_owned(),
            ),
            Some("StepId") => (
                format!("`{found}` is not a valid step id"),
                "step ids are snake_case (lower case letters, digits and `_`, starting with a letter), so expressions can use them as steps.<id>".to_owned(),
            ),
            Some("DefinitionId") => (
                format!("`{found}` is not a valid id"),
                "ids use lower case letters, digits, `.`, `_` and `-`, and start with a letter or digit".to_owned(),
            ),
            Some("Ident") => (
                format!("`{found}` is not a valid name"),
                "names are snake_case: lower case letters, digits and `_`".to_owned(),
            ),
            Some("ByteSize") => (
                format!("`{found}` is not a size"),
                "use bytes, or a number with a unit (B, KB, KiB, MB, MiB, GB, GiB), such as 1MiB".to_owned(),
            ),
            _ if schema_path.contains("/properties/path/") => (
                format!("`{found}` is not a valid URL path"),
                "a webhook path starts with `/`, such as /hooks/leads; parameters go in braces: /hooks/{tenant}/leads".to_owned(),
            ),
            _ => (format!("`{found}` does not match the pattern `{pattern}`"), String::new()),
        };
        let mut d = Diagnostic::error("invalid-value", message);
        if !hint.is_empty() {
            d = d.with_hint(hint);
        }
        self.at_value(path, d)
    }

    /// A mapping that takes exactly one of its fields got none, or more than one.
    fn property_count(&self, path: &str, schema_path: &str, out: &mut Vec<Diagnostic>) {
        let node = self.parent_node(schema_path);
        let names = node.map(Self::property_names).unwrap_or_default();
        let what = match Self::def_name(schema_path) {
            Some("Trigger") => "a trigger",
            Some("WebhookAuth") => "`auth`",
            _ => "this",
        };
        let present: Vec<String> = self
            .instance(path)
            .and_then(Value::as_object)
            .map(|o| o.keys().filter(|k| names.contains(k)).cloned().collect())
            .unwrap_or_default();
        if present.len() > 1 {
            let d = Diagnostic::error(
                "conflicting-fields",
                format!(
                    "`{}` and `{}` cannot be used together",
                    present[0], present[1]
                ),
            )
            .with_hint(format!(
                "{what} takes exactly one of: {}; split it in two",
                names.join(", ")
            ));
            out.push(self.at_key(&format!("{path}/{}", escape_token(&present[1])), d));
        } else {
            let d = Diagnostic::error(
                "missing-field",
                format!("{what} needs one of: {}", names.join(", ")),
            );
            out.push(self.at_key(path, d));
        }
    }

    /// More than one alternative of a `oneOf` matched: usually two actions in one step.
    fn several_alternatives(
        &self,
        e: &ValidationError,
        path: &str,
        schema_path: &str,
        out: &mut Vec<Diagnostic>,
    ) {
        let alternatives = self.required_alternatives(schema_path).unwrap_or_default();
        let present: Vec<&String> = self
            .instance(path)
            .and_then(Value::as_object)
            .map(|o| {
                alternatives
                    .iter()
                    .filter(|k| o.contains_key(k.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if present.len() > 1 {
            let is_step = Self::def_name(schema_path) == Some("RawStep");
            let mut d = Diagnostic::error(
                "conflicting-fields",
                format!(
                    "`{}` and `{}` cannot be used together",
                    present[0], present[1]
                ),
            );
            d = d.with_hint(if is_step {
                "a step has exactly one action; make them two steps".to_owned()
            } else {
                format!("use one of: {}", alternatives.join(", "))
            });
            out.push(self.at_key(&format!("{path}/{}", escape_token(present[1])), d));
        } else {
            out.push(self.at_value(path, Diagnostic::error("schema", e.to_string())));
        }
    }

    /// An instance matched none of several alternatives (an untagged enum, an internally tagged
    /// channel). Reporting all of them buries the point, so pick the alternative the author most
    /// likely meant, and report that one's errors. If the value's shape fits none of them, say
    /// which shapes would do.
    fn convert_alternatives(
        &self,
        path: &str,
        context: &[Vec<ValidationError<'static>>],
        out: &mut Vec<Diagnostic>,
    ) {
        let shape_mismatch = |branch: &[ValidationError]| {
            branch.iter().any(|e| {
                e.instance_path().as_str() == path
                    && matches!(e.kind(), ValidationErrorKind::Type { .. })
            })
        };
        if context.iter().all(|b| shape_mismatch(b)) {
            let mut expected: Vec<String> = Vec::new();
            for b in context {
                for e in b {
                    if let ValidationErrorKind::Type { kind } = e.kind() {
                        let ts: Vec<String> = match kind {
                            TypeKind::Single(t) => vec![t.to_string()],
                            TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect(),
                        };
                        for t in ts {
                            let p = type_phrase(&t);
                            if !expected.contains(&p) {
                                expected.push(p);
                            }
                        }
                    }
                }
            }
            let found = self.instance(path).map(describe_value).unwrap_or_default();
            let d = Diagnostic::error(
                "wrong-type",
                format!("expected {}, found {found}", join_or(&expected)),
            );
            out.push(self.at_value(path, d));
            return;
        }
        // Every alternative rejects the same discriminator (`provider: sendgrid` against log,
        // smtp and webhook): the value is the mistake, not the fields of whichever alternative
        // happens to score best.
        let discriminator = |branch: &[ValidationError<'static>]| {
            branch.iter().find_map(|e| match e.kind() {
                ValidationErrorKind::Constant { expected_value } => Some((
                    e.instance_path().as_str().to_owned(),
                    Value::clone(expected_value),
                )),
                _ => None,
            })
        };
        let constants: Vec<Option<(String, Value)>> =
            context.iter().map(|b| discriminator(b)).collect();
        if context.len() > 1
            && let Some(Some((at, _))) = constants.first()
            && constants
                .iter()
                .all(|c| c.as_ref().is_some_and(|(p, _)| p == at))
        {
            let options: Vec<String> = constants
                .iter()
                .flatten()
                .map(|(_, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            let found = self.instance(at).map(short_value).unwrap_or_default();
            out.push(self.at_value(at, not_one_of(at, &found, &options)));
            return;
        }
        let score = |branch: &[ValidationError]| -> usize {
            if shape_mismatch(branch) {
                return usize::MAX;
            }
            branch
                .iter()
                .map(|e| match e.kind() {
                    // A wrong discriminator (`provider: smtp` against the webhook branch) means
                    // the author did not mean this branch at all.
                    ValidationErrorKind::Constant { .. } => 100_000,
                    ValidationErrorKind::Required { .. } if e.instance_path().as_str() == path => {
                        100
                    }
                    _ => 1,
                })
                .sum()
        };
        if let Some(best) = context.iter().min_by_key(|b| score(b)) {
            self.convert_all(best, out);
        }
    }
}

/// The first sentence of a doc comment, on one line (doc comments wrap, hints do not).
fn first_sentence(text: &str) -> String {
    let end = [". ", ".\n"].iter().filter_map(|p| text.find(p)).min();
    let sentence = match end {
        Some(i) => &text[..=i],
        None => text,
    };
    sentence.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The field a JSON pointer ends in, when it ends in a field rather than a list index.
fn field_name(pointer: &str) -> Option<String> {
    let token = pointer.rsplit('/').next().filter(|t| !t.is_empty())?;
    if token.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(token.replace("~1", "/").replace("~0", "~"))
}

/// "`post` is not a valid value for `method`", with the closest option and the full list.
fn not_one_of(pointer: &str, found: &str, options: &[String]) -> Diagnostic {
    let message = match field_name(pointer) {
        Some(f) => format!("`{found}` is not a valid value for `{f}`"),
        None => format!("`{found}` is not a valid value here"),
    };
    let d = Diagnostic::error("invalid-value", message);
    match did_you_mean(found, options.iter().map(String::as_str)) {
        Some(s) => d.with_hint(format!(
            "did you mean `{s}`? expected one of: {}",
            options.join(", ")
        )),
        None => d.with_hint(format!("expected one of: {}", options.join(", "))),
    }
}

fn type_phrase(t: &str) -> String {
    match t {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "text",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "null" => "nothing",
        other => other,
    }
    .to_owned()
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => "something else".to_owned(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// How a value is named in "found ..." messages.
pub(crate) fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "nothing (an empty value)".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text `{}`", truncate(s, 40)),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

fn short_value(v: &Value) -> String {
    match v {
        Value::String(s) => truncate(s, 60),
        other => truncate(&other.to_string(), 60),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}
