//! One AFL++ harness for every target: `fuzz <target>`, reading the input AFL gives it.
//! The targets live in `herald::fuzzing`.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some((_, target)) = herald::fuzzing::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = herald::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: fuzz <target>, one of: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
