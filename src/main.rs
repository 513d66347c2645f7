use std::process::ExitCode;

// mimalloc: the server allocates many small, short-lived values per request (JSON contexts,
// template values); glibc's malloc spent a quarter of the CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    herald::cli::main()
}
