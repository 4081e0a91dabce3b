//! `aicp verify`: a read model against one rebuilt from the stream, tree by tree and then
//! key by key, and the money invariants.

use std::path::Path;
use std::process::ExitCode;

use aicp_events::EventStore;
use aicp_projections::{ReadModel, Table};
use serde_json::json;

use aicp_projections::invariants::{self, Report};

use crate::api::Client;
use crate::cli::VerifyArgs;
use crate::error::OpsError;
use crate::output;
use crate::replay;

/// One key whose record differs between two read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDifference {
    /// The tree.
    pub table: &'static str,
    /// The key, readable.
    pub key: String,
    /// The checked model's record (as JSON when it decodes), `None` if missing.
    pub checked: Option<String>,
    /// The rebuilt model's record, `None` if missing.
    pub rebuilt: Option<String>,
}

/// Two read models compared.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// Trees whose digests match.
    pub matching: Vec<&'static str>,
    /// Trees whose digests differ, with record counts (checked, rebuilt).
    pub differing: Vec<(&'static str, u64, u64)>,
    /// The first differing keys of each differing tree.
    pub keys: Vec<KeyDifference>,
}

/// `aicp verify`: a stopped coordinator's directory (`--data-dir`), or a running
/// coordinator's read model through its API (`--live`).
pub async fn command(
    store: &EventStore,
    args: &VerifyArgs,
    api: &Client,
    as_json: bool,
) -> Result<ExitCode, OpsError> {
    let verdict = match (&args.data_dir, args.live) {
        (Some(dir), false) => verify_dir(store, dir, args, as_json).await?,
        (None, true) => verify_live(store, api, as_json).await?,
        _ => {
            return Err(OpsError::Usage(
                "pass either --data-dir (a stopped coordinator's read model) or --live (a running one, through --api)".into(),
            ))
        }
    };
    verdict.print(as_json);
    Ok(if verdict.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What verify found.
#[derive(Debug)]
struct Verdict {
    /// What was checked: a directory or a URL.
    source: String,
    sequence: u64,
    comparison: Comparison,
    report: Report,
    /// Why differing keys are not shown, when they cannot be.
    keys_note: Option<&'static str>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.comparison.differing.is_empty() && self.report.failed.is_empty()
    }

    fn print(&self, as_json: bool) {
        let (comparison, report, sequence) = (&self.comparison, &self.report, self.sequence);
        if as_json {
            output::json(&json!({
                "ok": self.ok(),
                "checked": self.source,
                "sequence": sequence,
                "trees": {
                    "matching": comparison.matching,
                    "differing": comparison.differing.iter().map(|(t, c, r)| json!({"table": t, "checked_records": c, "rebuilt_records": r})).collect::<Vec<_>>(),
                },
                "differing_keys": comparison.keys.iter().map(|k| json!({"table": k.table, "key": k.key, "checked": k.checked, "rebuilt": k.rebuilt})).collect::<Vec<_>>(),
                "invariants": {"passed": report.passed, "failed": report.failed, "pending": report.pending},
            }));
            return;
        }
        println!(
            "read model {} at sequence {sequence}, compared with a rebuild from the stream",
            self.source
        );
        if comparison.differing.is_empty() {
            println!("  ok    all {} trees match", comparison.matching.len());
        }
        for (table, checked, rebuilt) in &comparison.differing {
            println!("  FAIL  tree {table} differs ({checked} records here, {rebuilt} rebuilt)");
        }
        for k in &comparison.keys {
            println!(
                "        {}/{}: here {}, rebuilt {}",
                k.table,
                k.key,
                k.checked.as_deref().unwrap_or("(missing)"),
                k.rebuilt.as_deref().unwrap_or("(missing)")
            );
        }
        if let (false, Some(note)) = (comparison.differing.is_empty(), self.keys_note) {
            println!("        ({note})");
        }
        println!("invariants");
        for line in &report.passed {
            println!("  ok    {line}");
        }
        for line in &report.failed {
            println!("  FAIL  {line}");
        }
        for line in &report.pending {
            println!("  note  {line}");
        }
        println!("{}", if self.ok() { "OK" } else { "FAILED" });
    }
}

async fn verify_dir(
    store: &EventStore,
    dir: &Path,
    args: &VerifyArgs,
    as_json: bool,
) -> Result<Verdict, OpsError> {
    let checked = replay::open_existing(dir).await?;
    let sequence = checked
        .last_sequence()
        .map_err(|e| OpsError::read_model(dir, e))?;
    let temp;
    let (rebuilt, rebuilt_dir) = match &args.rebuilt {
        Some(rebuilt) => (replay::open_existing(rebuilt).await?, rebuilt.clone()),
        None => {
            temp = tempdir_beside(dir)?;
            let rebuilt = temp.path().join("rebuilt");
            replay::rebuild(store, &rebuilt, None, Some(sequence), !as_json).await?;
            (replay::open(&rebuilt).await?, rebuilt)
        }
    };
    let rebuilt_sequence = rebuilt
        .last_sequence()
        .map_err(|e| OpsError::read_model(&rebuilt_dir, e))?;
    if rebuilt_sequence != sequence {
        return Err(OpsError::Usage(format!(
            "{} is at sequence {sequence} but {} at {rebuilt_sequence}: rebuild with `aicp replay --to-seq {sequence}`",
            dir.display(),
            rebuilt_dir.display()
        )));
    }
    let max_keys = args.max_keys;
    let (comparison, report) = tokio::task::spawn_blocking(move || {
        let comparison = compare(&checked, &rebuilt, max_keys)?;
        let report = invariants::check(&checked)?;
        Ok::<_, aicp_projections::ProjectionError>((comparison, report))
    })
    .await
    .map_err(|e| OpsError::Usage(format!("verify thread failed: {e}")))?
    .map_err(|e| OpsError::read_model(dir, e))?;
    Ok(Verdict {
        source: dir.display().to_string(),
        sequence,
        comparison,
        report,
        keys_note: None,
    })
}

/// Asks a running coordinator for its digests and invariants at one checkpoint, and
/// compares the digests with a rebuild to that checkpoint.
async fn verify_live(
    store: &EventStore,
    client: &Client,
    as_json: bool,
) -> Result<Verdict, OpsError> {
    let live = client.get("/v1/read-model/check").await?;
    let sequence = live["sequence"].as_u64().ok_or_else(|| {
        OpsError::Usage(format!("unexpected answer from the coordinator: {live}"))
    })?;
    let report: Report = serde_json::from_value(live["invariants"].clone())
        .map_err(|e| OpsError::Usage(format!("unexpected invariants from the coordinator: {e}")))?;
    let temp =
        tempfile::tempdir().map_err(|e| OpsError::io(Path::new("temporary directory"), e))?;
    let dir = temp.path().join("rebuilt");
    replay::rebuild(store, &dir, None, Some(sequence), !as_json).await?;
    let rebuilt = replay::open(&dir).await?;
    let digests = rebuilt
        .digest()
        .map_err(|e| OpsError::read_model(&dir, e))?;
    let mut comparison = Comparison::default();
    for digest in digests {
        let theirs = live["trees"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["table"] == digest.table);
        let records = theirs.and_then(|t| t["records"].as_u64()).unwrap_or(0);
        let hash = theirs.and_then(|t| t["hash"].as_str()).unwrap_or_default();
        if records == digest.records && hash == format!("{:016x}", digest.hash) {
            comparison.matching.push(digest.table);
        } else {
            comparison
                .differing
                .push((digest.table, records, digest.records));
        }
    }
    Ok(Verdict {
        source: client.base().to_owned(),
        sequence,
        comparison,
        report,
        keys_note: Some("a running coordinator's keys cannot be read from outside: stop one replica and run `aicp verify --data-dir` on its directory to see them"),
    })
}

/// Compares every tree's digest, then walks the trees that differ for their first
/// `max_keys` differing keys.
pub fn compare(
    checked: &ReadModel,
    rebuilt: &ReadModel,
    max_keys: usize,
) -> Result<Comparison, aicp_projections::ProjectionError> {
    let mut out = Comparison::default();
    for ((table, a), b) in Table::ALL
        .iter()
        .zip(checked.digest()?)
        .zip(rebuilt.digest()?)
    {
        if a == b {
            out.matching.push(a.table);
            continue;
        }
        out.differing.push((a.table, a.records, b.records));
        let mut left = checked.rows(*table, ..)?;
        let mut right = rebuilt.rows(*table, ..)?;
        let (mut l, mut r) = (left.next().transpose()?, right.next().transpose()?);
        let mut found = 0;
        while found < max_keys && (l.is_some() || r.is_some()) {
            let order = match (&l, &r) {
                (Some((lk, _)), Some((rk, _))) => lk.cmp(rk),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let (key, here, there) = match order {
                std::cmp::Ordering::Less => {
                    let (k, v) = l.take().expect("compared as present");
                    l = left.next().transpose()?;
                    (k, Some(v), None)
                }
                std::cmp::Ordering::Greater => {
                    let (k, v) = r.take().expect("compared as present");
                    r = right.next().transpose()?;
                    (k, None, Some(v))
                }
                std::cmp::Ordering::Equal => {
                    let (k, lv) = l.take().expect("compared as present");
                    let (_, rv) = r.take().expect("compared as present");
                    l = left.next().transpose()?;
                    r = right.next().transpose()?;
                    if lv == rv {
                        continue;
                    }
                    (k, Some(lv), Some(rv))
                }
            };
            found += 1;
            out.keys.push(KeyDifference {
                table: a.table,
                key: readable_key(&key),
                checked: here.map(|v| readable_value(*table, &v)),
                rebuilt: there.map(|v| readable_value(*table, &v)),
            });
        }
    }
    Ok(out)
}

/// A key as text: ids as they are, and an index key's `id\0<u64>` as `id/<number>`.
pub fn readable_key(key: &[u8]) -> String {
    if let Some(zero) = key.iter().position(|b| *b == 0) {
        let (prefix, rest) = (&key[..zero], &key[zero + 1..]);
        if prefix.iter().all(|b| b.is_ascii_graphic()) && rest.len() >= 8 {
            let number = aicp_projections::decode_u64(&rest[..8]);
            let tail = if rest.len() > 8 {
                format!("/{}", aicp_events::hex::encode(&rest[8..]))
            } else {
                String::new()
            };
            return format!("{}/{number}{tail}", String::from_utf8_lossy(prefix));
        }
    }
    if key.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(key).into_owned()
    } else if key.len() == 8 {
        aicp_projections::decode_u64(key).to_string()
    } else {
        format!("0x{}", aicp_events::hex::encode(key))
    }
}

/// A record as compact JSON when it decodes as its table's record, else as hex.
fn readable_value(table: Table, value: &[u8]) -> String {
    match table.record_json(value) {
        Some(v) => {
            let text = v.to_string();
            if text.chars().count() > 400 {
                format!("{}...", text.chars().take(400).collect::<String>())
            } else {
                text
            }
        }
        None => format!("0x{}", aicp_events::hex::encode(value)),
    }
}

/// A temporary directory on the same disk as `dir` (its parent), else the system's.
fn tempdir_beside(dir: &Path) -> Result<tempfile::TempDir, OpsError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let made = match parent {
        Some(parent) => tempfile::Builder::new()
            .prefix(".aicp-verify-")
            .tempdir_in(parent)
            .or_else(|_| tempfile::tempdir()),
        None => tempfile::tempdir(),
    };
    made.map_err(|e| OpsError::io(dir, e))
}
