//! Every one-character slip in a valid definition (a character deleted, or a likely one
//! inserted) either still validates or is reported, with a position inside the file; nothing
//! panics. Deterministic: every position of each example is tried.

use std::path::Path;

use herald::definitions::read_definition;
use herald::definitions::source::SourceFile;

/// Characters a slip of the keyboard or a bad paste puts in a YAML file.
const INSERTED: &[char] = &[
    ':', '-', ' ', '"', '\'', '{', '[', '\t', '\n', '#', '&', '*', 'x',
];

fn check(name: &str, text: &str, tried: &mut usize) {
    let lines = text.lines().count() + 1;
    let chars: Vec<char> = text.chars().collect();
    let mut variants = Vec::new();
    for i in 0..chars.len() {
        let mut deleted = chars.clone();
        deleted.remove(i);
        variants.push(deleted);
        let c = INSERTED[i % INSERTED.len()];
        let mut inserted = chars.clone();
        inserted.insert(i, c);
        variants.push(inserted);
    }
    for v in variants {
        let mutated: String = v.into_iter().collect();
        *tried += 1;
        let result = std::panic::catch_unwind(|| {
            read_definition(SourceFile::new(name, mutated.as_str())).err()
        });
        let Ok(diags) = result else {
            panic!("panicked on a mutation of {name}:\n{mutated}");
        };
        for d in diags.unwrap_or_default() {
            let span = d.span.unwrap_or_else(|| {
                panic!(
                    "no position for `{}` on a mutation of {name}:\n{mutated}",
                    d.message
                )
            });
            let mutated_lines = mutated.lines().count() + 1;
            assert!(
                span.line >= 1 && span.line <= lines.max(mutated_lines) && span.column >= 1,
                "{}:{}: outside the file for `{}`:\n{mutated}",
                span.line,
                span.column,
                d.message
            );
        }
    }
}

#[test]
fn one_character_slips_are_reported_with_positions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut tried = 0;
    for file in [
        "tests/corpus/valid/missed-call-text-back.yaml",
        "tests/corpus/valid/sms-keywords.yaml",
        "tests/corpus/valid/letter-generation.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        check(file, &text, &mut tried);
    }
    assert!(tried > 1000, "{tried} mutations");
}
