//! `herald contacts import`: contacts from a CSV or JSON-lines file, checked row by row as
//! the operations API checks one contact, and written in batches.
//!
//! A row that cannot be a contact (no e-mail or phone, an address that is not one, a time zone
//! that does not exist) is reported as `file:line: reason` and the rest go in. Each batch is
//! one transaction, and every row is an upsert that finds its contact by e-mail or phone, so a
//! crash leaves whole batches, and running the same import again (to finish it, or by
//! mistake) changes nothing that is already there: it neither duplicates nor loses contacts.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use crate::store::{ContactUpsert, DynStore, Millis};

/// Rows per transaction: large enough that commits do not dominate, small enough that a
/// crash loses little work and a batch holds its write lock briefly.
pub const DEFAULT_BATCH: usize = 500;

/// What a file's columns (CSV) or keys (JSON lines) are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// By the file's extension: `.csv`, or `.jsonl` / `.ndjson`.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Where a column goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A contact field: `email`, `phone`, `first_name`, `last_name`, `status`, `timezone`.
    Field(&'static str),
    /// An attribute, by name.
    Attribute(String),
    /// Left out.
    Skip,
}

const FIELDS: &[&str] = &[
    "email",
    "phone",
    "first_name",
    "last_name",
    "status",
    "timezone",
];

impl Target {
    /// What `--map COLUMN=TARGET` names: a field, `attributes.NAME`, or `-` to leave the
    /// column out.
    pub fn parse(text: &str) -> Result<Target, String> {
        let text = text.trim();
        if text == "-" {
            return Ok(Target::Skip);
        }
        if let Some(name) = text.strip_prefix("attributes.") {
            if name.is_empty() {
                return Err("`attributes.` needs an attribute name after the dot".into());
            }
            return Ok(Target::Attribute(name.to_owned()));
        }
        FIELDS
            .iter()
            .find(|f| **f == text)
            .map(|f| Target::Field(f))
            .ok_or_else(|| {
                let hint = crate::definitions::suggest::did_you_mean(text, FIELDS.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                format!(
                    "`{text}` is not a contact field: use one of {}, `attributes.NAME`, or `-` to leave the column out{hint}",
                    FIELDS.join(", ")
                )
            })
    }

    /// A column's target when `--map` does not name it: a field its name spells, in any case
    /// and with spaces or dashes for underscores (`First Name`, `E-mail`, `Mobile`), else an
    /// attribute of the same name.
    fn guess(column: &str) -> Target {
        let key = column.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        let field = match key.as_str() {
            "email" | "e_mail" | "email_address" => "email",
            "phone" | "mobile" | "phone_number" | "mobile_phone" | "cell" => "phone",
            "first_name" | "firstname" | "given_name" => "first_name",
            "last_name" | "lastname" | "surname" | "family_name" => "last_name",
            "status" => "status",
            "timezone" | "time_zone" | "tz" => "timezone",
            _ => return Target::Attribute(column.trim().to_owned()),
        };
        Target::Field(field)
    }
}

/// How to read the file.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// `--map COLUMN=TARGET`, by column name as written in the file.
    pub mapping: Vec<(String, Target)>,
    /// `contacts` in herald.yaml: the region of phone numbers written without a country
    /// code, and the types attributes are stored as.
    pub contacts: crate::definitions::model::config::ContactsConfig,
    pub batch: usize,
    /// Lists and tags every imported contact is put on (`--list`, `--tag`).
    pub memberships: Vec<crate::store::campaigns::Membership>,
}

/// A row that did not go in, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based, as an editor shows it (a CSV row with a line break inside a quoted value is
    /// at the line it starts on).
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows read (bad ones included; the CSV header is not a row).
    pub rows: u64,
    /// Contacts that did not exist before.
    pub created: u64,
    /// Rows merged into a contact that existed (a re-run, or an earlier row of the same
    /// file with the same e-mail or phone).
    pub updated: u64,
    /// Rows whose e-mail or phone an earlier row of the file already had.
    pub duplicates: u64,
    pub bad: Vec<BadRow>,
}

/// Told of progress after each batch: rows read so far, and bytes of the file read.
pub trait Progress {
    fn advanced(&mut self, rows: u64, bytes: u64);
}

impl<F: FnMut(u64, u64)> Progress for F {
    fn advanced(&mut self, rows: u64, bytes: u64) {
        self(rows, bytes)
    }
}

/// Why the import stopped before the end of the file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    File(String),
    #[error(
        "the database refused a batch ending at line {line}: {source}; the rows before it are in, and running the import again continues safely"
    )]
    Store {
        line: u64,
        source: crate::store::StoreError,
    },
}

/// Imports the rows `reader` holds into `store`. Bad rows are reported in the summary;
/// what stops the import is an unreadable file or a database that refuses a batch.
pub async fn import(
    store: &DynStore,
    reader: impl std::io::Read,
    options: &Options,
    now: Millis,
    progress: &mut dyn Progress,
) -> Result<Summary, ImportError> {
    let mut summary = Summary::default();
    let mut seen = Seen::default();
    let mut batch: Vec<ContactUpsert> = Vec::with_capacity(options.batch);
    let mut rows = Rows::new(reader, options)?;
    while let Some(row) = rows.next_row() {
        summary.rows += 1;
        let (line, fields) = match row {
            Ok(r) => r,
            Err(bad) => {
                summary.bad.push(bad);
                continue;
            }
        };
        match upsert(&fields, options, now) {
            Ok(u) => {
                if seen.again(&u) {
                    summary.duplicates += 1;
                }
                batch.push(u);
            }
            Err(reason) => summary.bad.push(BadRow { line, reason }),
        }
        if batch.len() >= options.batch {
            write(store, &mut batch, &mut summary, line).await?;
            progress.advanced(summary.rows, rows.position());
        }
    }
    if let Some(e) = rows.failed.take() {
        return Err(e);
    }
    write(store, &mut batch, &mut summary, rows.last_line).await?;
    progress.advanced(summary.rows, rows.position());
    Ok(summary)
}

async fn write(
    store: &DynStore,
    batch: &mut Vec<ContactUpsert>,
    summary: &mut Summary,
    line: u64,
) -> Result<(), ImportError> {
    if batch.is_empty() {
        return Ok(());
    }
    let stored = store
        .insert_events(&[], &[], batch, &[])
        .await
        .map_err(|source| ImportError::Store { line, source })?;
    for (u, c) in batch.iter().zip(&stored) {
        if c.id == u.new_id {
            summary.created += 1;
        } else {
            summary.updated += 1;
        }
    }
    batch.clear();
    Ok(())
}

/// One row's fields as a contact upsert, checked as the operations API checks a contact.
/// Blank cells leave a field as it is: an import adds what it knows, it does not erase.
fn upsert(
    fields: &Map<String, Value>,
    options: &Options,
    now: Millis,
) -> Result<ContactUpsert, String> {
    let patch = crate::engine::contact::patch_from_json(fields, &options.contacts)?;
    let email = patch.email.flatten();
    let phone = patch.phone.flatten();
    if email.is_none() && phone.is_none() {
        return Err("no e-mail address or phone number: a contact needs one".into());
    }
    Ok(ContactUpsert {
        new_id: crate::engine::new_id(),
        email,
        phone,
        first_name: patch.first_name.flatten(),
        last_name: patch.last_name.flatten(),
        status: patch.status.flatten(),
        timezone: patch.timezone.flatten(),
        attributes: patch.attributes,
        addresses: Vec::new(),
        now,
        memberships: options.memberships.clone(),
    })
}

/// The e-mail addresses and phone numbers already read, as hashes (8 bytes each, so a file
/// of a million rows costs a few MiB, not its size again).
#[derive(Default)]
struct Seen(HashSet<u64>);

impl Seen {
    /// Whether an earlier row had this row's e-mail or phone.
    fn again(&mut self, u: &ContactUpsert) -> bool {
        let mut again = false;
        for (kind, value) in [("e", &u.email), ("p", &u.phone)] {
            if let Some(v) = value {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (kind, v).hash(&mut h);
                again |= !self.0.insert(h.finish());
            }
        }
        again
    }
}

/// A row's line, and its fields as the JSON a contact is read from.
type Row = (u64, Map<String, Value>);

/// The rows of a file, each as the JSON a contact is read from, with its line.
struct Rows<R: std::io::Read> {
    inner: Inner<R>,
    /// Where each column goes (CSV).
    targets: Vec<Target>,
    mapping: Vec<(String, Target)>,
    last_line: u64,
    failed: Option<ImportError>,
}

enum Inner<R: std::io::Read> {
    Csv(csv::Reader<R>, csv::StringRecord),
    Lines(std::io::BufReader<CountingReader<R>>, u64, String),
}

/// Counts the bytes read, for progress through the file.
struct CountingReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: std::io::Read> Rows<R> {
    fn new(reader: R, options: &Options) -> Result<Rows<R>, ImportError> {
        let mut rows = Rows {
            inner: match options.format {
                Format::JsonLines => Inner::Lines(
                    std::io::BufReader::new(CountingReader {
                        inner: reader,
                        bytes: 0,
                    }),
                    0,
                    String::new(),
                ),
                Format::Csv => Inner::Csv(
                    csv::ReaderBuilder::new()
                        .flexible(true)
                        .trim(csv::Trim::All)
                        .from_reader(reader),
                    csv::StringRecord::new(),
                ),
            },
            targets: Vec::new(),
            mapping: options.mapping.clone(),
            last_line: 0,
            failed: None,
        };
        if let Inner::Csv(reader, _) = &mut rows.inner {
            let header = reader
                .headers()
                .map_err(|e| ImportError::File(format!("cannot read the header row: {e}")))?
                .clone();
            let columns: Vec<String> = header.iter().map(str::to_owned).collect();
            for (column, _) in &options.mapping {
                if !columns.iter().any(|c| c == column) {
                    return Err(ImportError::File(format!(
                        "--map names column `{column}`, but the header row has {}",
                        columns
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            rows.targets = columns.iter().map(|c| rows.target(c)).collect();
            let mut fields: Vec<&str> = rows
                .targets
                .iter()
                .filter_map(|t| match t {
                    Target::Field(f) => Some(*f),
                    _ => None,
                })
                .collect();
            fields.sort_unstable();
            if let Some(twice) = fields.windows(2).find(|w| w[0] == w[1]) {
                return Err(ImportError::File(format!(
                    "two columns go to `{}`; use --map COLUMN=- to leave one out, or --map to send it elsewhere",
                    twice[0]
                )));
            }
            if !fields.contains(&"email") && !fields.contains(&"phone") {
                return Err(ImportError::File(format!(
                    "no column is an e-mail address or a phone number (the header row has {}); name one with --map COLUMN=email or --map COLUMN=phone",
                    columns
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(rows)
    }

    fn target(&self, column: &str) -> Target {
        self.mapping
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| Target::guess(column))
    }

    /// Bytes of the file read so far.
    fn position(&self) -> u64 {
        match &self.inner {
            Inner::Csv(r, _) => r.position().byte(),
            Inner::Lines(r, _, _) => r.get_ref().bytes,
        }
    }

    /// The next row, `Err` for one that cannot be read at all; `None` at the end (or when
    /// the file cannot be read further, kept in `failed`).
    fn next_row(&mut self) -> Option<Result<Row, BadRow>> {
        match &mut self.inner {
            Inner::Csv(reader, record) => match reader.read_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    self.last_line = line;
                    let mut fields = Map::new();
                    let mut attributes = Map::new();
                    for (value, target) in record.iter().zip(&self.targets) {
                        if value.is_empty() {
                            continue;
                        }
                        match target {
                            Target::Field(f) => {
                                fields.insert((*f).to_owned(), value.into());
                            }
                            Target::Attribute(a) => {
                                attributes.insert(a.clone(), value.into());
                            }
                            Target::Skip => {}
                        }
                    }
                    if record.len() > self.targets.len() {
                        return Some(Err(BadRow {
                            line,
                            reason: format!(
                                "{} values, but the header row has {} columns",
                                record.len(),
                                self.targets.len()
                            ),
                        }));
                    }
                    if !attributes.is_empty() {
                        fields.insert("attributes".into(), Value::Object(attributes));
                    }
                    Some(Ok((line, fields)))
                }
                Err(e) => {
                    let line = e.position().map_or(self.last_line + 1, |p| p.line());
                    self.last_line = line;
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        self.failed = Some(ImportError::File(format!(
                            "cannot read the file at line {line}: {e}"
                        )));
                        return None;
                    }
                    Some(Err(BadRow {
                        line,
                        reason: plain_csv_error(&e),
                    }))
                }
            },
            Inner::Lines(reader, line, buf) => loop {
                buf.clear();
                match reader.read_line(buf) {
                    Ok(0) => return None,
                    Ok(_) => {
                        *line += 1;
                        self.last_line = *line;
                        let text = buf.trim();
                        if text.is_empty() {
                            continue;
                        }
                        let row = *line;
                        let parsed = match serde_json::from_str::<Value>(text) {
                            Ok(Value::Object(m)) => m,
                            Ok(other) => {
                                return Some(Err(BadRow {
                                    line: row,
                                    reason: format!(
                                        "a line must be one JSON object, not {}",
                                        kind_of(&other)
                                    ),
                                }));
                            }
                            Err(e) => {
                                return Some(Err(BadRow {
                                    line: row,
                                    reason: format!("not JSON: {e}"),
                                }));
                            }
                        };
                        return Some(Ok((row, self.map_object(parsed))));
                    }
                    Err(e) => {
                        let at = *line + 1;
                        self.failed = Some(ImportError::File(
                            if e.kind() == std::io::ErrorKind::InvalidData {
                                format!("line {at} is not UTF-8 text")
                            } else {
                                format!("cannot read the file at line {at}: {e}")
                            },
                        ));
                        return None;
                    }
                }
            },
        }
    }

    /// A JSON line's keys sent where `--map` (or their names) say, as CSV columns are; an
    /// `attributes` object is merged with the attributes that come from other keys. Empty
    /// strings and nulls leave a field as it is, as blank cells do.
    fn map_object(&self, object: Map<String, Value>) -> Map<String, Value> {
        let mut fields = Map::new();
        let mut attributes = Map::new();
        for (key, value) in object {
            if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
                continue;
            }
            if key == "attributes"
                && let Value::Object(a) = value
            {
                attributes.extend(a);
                continue;
            }
            match self.target(&key) {
                Target::Field(f) => {
                    fields.insert(f.to_owned(), value);
                }
                Target::Attribute(a) => {
                    attributes.insert(a, value);
                }
                Target::Skip => {}
            }
        }
        if !attributes.is_empty() {
            fields.insert("attributes".into(), Value::Object(attributes));
        }
        fields
    }
}

fn plain_csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "the row is not UTF-8 text".into(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} values, but the header row has {expected_len} columns"),
        _ => e.to_string(),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_go_where_their_names_say_unless_mapped() {
        assert_eq!(Target::guess("E-mail"), Target::Field("email"));
        assert_eq!(Target::guess(" First Name "), Target::Field("first_name"));
        assert_eq!(Target::guess("Mobile"), Target::Field("phone"));
        assert_eq!(Target::guess("Plan"), Target::Attribute("Plan".into()));
        assert_eq!(Target::parse("-"), Ok(Target::Skip));
        assert_eq!(
            Target::parse("attributes.plan"),
            Ok(Target::Attribute("plan".into()))
        );
        let e = Target::parse("emial").unwrap_err();
        assert!(e.contains("did you mean `email`?"), "{e}");
    }
}
