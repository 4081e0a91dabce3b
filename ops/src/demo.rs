//! `aicp demo`: simulated buyers submitting (and now and then cancelling) tasks through
//! the REST API at a steady rate, so a fresh stack has something to show.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::Client;
use crate::cli::DemoArgs;
use crate::error::OpsError;

/// What the simulated buyers ask for.
const DESCRIPTIONS: [&str; 8] = [
    "Process payment",
    "Summarise a support ticket",
    "Translate a product page",
    "Classify an invoice",
    "Extract entities from a contract",
    "Draft a reply to a customer",
    "Review a pull request",
    "Tag a batch of images",
];

/// Submissions waiting for an answer at most; beyond it the demo skips a beat.
const MAX_IN_FLIGHT: u64 = 64;

#[derive(Debug, Default)]
struct Tally {
    submitted: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
}

/// Runs until `--duration` or Ctrl-C, printing a summary every five seconds.
pub async fn command(client: &Client, args: &DemoArgs) -> Result<ExitCode, OpsError> {
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        return Err(OpsError::Usage(
            "--rate must be above 0 and at most 10000".into(),
        ));
    }
    if args.buyers == 0 {
        return Err(OpsError::Usage("--buyers must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&args.cancel_share) {
        return Err(OpsError::Usage("--cancel-share must be 0 to 1".into()));
    }
    // Fail early and clearly if no coordinator answers.
    client.get("/ready").await?;
    println!(
        "demo: {} buyers, {} tasks/s{}; Ctrl-C stops",
        args.buyers,
        args.rate,
        args.duration
            .map(|d| format!(" for {d}s"))
            .unwrap_or_default()
    );
    let tally = Arc::new(Tally::default());
    let mut random = SplitMix(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(42),
    );
    let started = Instant::now();
    let end = args.duration.map(|d| started + Duration::from_secs(d));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    report.tick().await;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = report.tick() => { print_tally(&tally, started); continue; }
            _ = &mut stop => break,
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        if tally.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            continue;
        }
        let buyer = format!("demo-buyer-{}", random.below(u64::from(args.buyers)) + 1);
        let description = DESCRIPTIONS[random.below(DESCRIPTIONS.len() as u64) as usize];
        let complexity = random.below(10) + 1;
        let cancel = (random.below(1_000_000) as f64) < args.cancel_share * 1_000_000.0;
        let (client, tally) = (client.clone(), tally.clone());
        tally.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let body =
                json!({"buyer_id": buyer, "description": description, "complexity": complexity});
            match client.post("/v1/tasks", &body).await {
                Ok((_, task)) => {
                    tally.submitted.fetch_add(1, Ordering::Relaxed);
                    if let (true, Some(id)) = (cancel, task["id"].as_str()) {
                        let body =
                            json!({"buyer_id": buyer, "reason": "demo buyer changed its mind"});
                        if client
                            .post(&format!("/v1/tasks/{id}/cancel"), &body)
                            .await
                            .is_ok()
                        {
                            tally.cancelled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    if tally.refused.fetch_add(1, Ordering::Relaxed) % 50 == 0 {
                        eprintln!("demo: {e}");
                    }
                }
            }
            tally.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    print_tally(&tally, started);
    Ok(ExitCode::SUCCESS)
}

fn print_tally(tally: &Tally, started: Instant) {
    println!(
        "demo: {:>4}s  submitted {}  cancelled {}  refused {}",
        started.elapsed().as_secs(),
        tally.submitted.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed)
    );
}

/// A tiny, seedable generator: the demo needs variety, not cryptography.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n.max(1)
    }
}
