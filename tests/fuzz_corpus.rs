//! The fuzzing corpus, replayed: every input under `fuzz/corpus/<target>/` (the seeds, and
//! every crash a fuzzer found, kept once fixed) goes through its target on every test run, so
//! a fixed crash stays fixed. Finding new inputs is the fuzzer's job (`fuzz/README.md`).

use std::path::Path;

#[test]
fn every_corpus_input_runs_through_its_target_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    let mut total = 0;
    for (name, target) in herald::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for `{name}` at {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the `{name}` corpus is empty");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name} panicked on {}", input.display());
            total += 1;
        }
    }
    assert!(total >= 10, "{total} inputs");
}
