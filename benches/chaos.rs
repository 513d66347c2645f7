//! The long chaos round: three `herald serve` processes on one PostgreSQL database, a hundred
//! SIGKILLs at random, under webhooks, timers, cron and deliveries to real SMTP and HTTP
//! servers, then the counts (see `tests/support/chaos.rs`).
//!
//! ```sh
//! HERALD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench --bench chaos
//! CHAOS_KILLS=20 cargo bench --bench chaos      # a shorter round
//! ```

#[path = "../tests/support/db.rs"]
mod db;
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/support/chaos.rs"]
mod chaos;

fn main() {
    let kills = std::env::var("CHAOS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(db) = db::postgres("chaos-bench").await else {
            eprintln!("set HERALD_TEST_POSTGRES_URL to run the chaos round");
            return;
        };
        let report = chaos::run(
            &db.url,
            &chaos::Settings {
                processes: 3,
                kills,
                pause_ms: 1000..4000,
                webhooks_per_second: 20,
            },
        )
        .await;
        println!("{report:#?}");
    });
}
