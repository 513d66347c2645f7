//! A short round of chaos across three `herald serve` processes on one PostgreSQL database
//! (see `support/chaos.rs` for what is checked). `CHAOS_KILLS=100` makes it the long round
//! (as does `cargo bench --bench chaos`, on a release build). Needs `HERALD_TEST_POSTGRES_URL`;
//! without it the test says it was skipped.

#![cfg(unix)]

#[path = "support/db.rs"]
mod db;
mod support;

#[path = "support/chaos.rs"]
mod chaos;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_survive_random_kills() {
    let Some(db) = db::postgres("chaos").await else {
        return;
    };
    let report = chaos::run(
        &db.url,
        &chaos::Settings {
            processes: 3,
            kills: std::env::var("CHAOS_KILLS")
                .ok()
                .and_then(|k| k.parse().ok())
                .unwrap_or(8),
            pause_ms: 400..1200,
            webhooks_per_second: 20,
        },
    )
    .await;
    eprintln!("{report:?}");
    assert!(report.accepted > 0 && report.cron_slots > 0, "{report:?}");
}
