//! `aicp-bench`: run the benchmarks, print the table, write the JSON.

use aicp_bench::{report, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let figures = aicp_bench::run(&config).await?;
    report::print_table(&figures);
    if let Some(dir) = config.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let machine = serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "quick": config.quick,
        "at": chrono::Utc::now(),
    });
    std::fs::write(
        &config.json,
        serde_json::to_string_pretty(&serde_json::json!({"machine": machine, "figures": figures}))?,
    )?;
    eprintln!("figures written to {}", config.json.display());
    Ok(())
}
