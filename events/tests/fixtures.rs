//! Schema fixtures: encoded events of every type and version, as they were first written.
//!
//! `tests/fixtures/<Type>.v<N>.msgpack` is a message payload (one envelope) and
//! `<Type>.v<N>.json` is what it must decode to today, upcast to the current version.
//! Fixtures are never rewritten: if a change to the catalogue or codec stops an old event
//! from decoding to the same facts, these tests fail.
//!
//! A new event type or version needs its fixture: run
//! `AICP_WRITE_FIXTURES=1 cargo test -p aicp-events --test fixtures`, which writes the
//! missing ones (and only those) from `aicp_events::testing::sample_events`, then commit them.
//! When a new version changes what an old one upcasts to, delete the old version's `.json`
//! (never its `.msgpack`) and run the same command: the diff shows what old events now mean.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use aicp_events::codec::{decode_batch, encode_batch, CONTENT_TYPE};
use aicp_events::domain::pricing::Complexity;
use aicp_events::event::Event;
use aicp_events::testing::{encode_as_version, sample_envelope, sample_events};
use aicp_events::upcast::{TaskSubmittedV1, OLD_VERSIONS};
use anyhow::{bail, Context, Result};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn stem(event_type: &str, version: u16) -> String {
    format!("{event_type}.v{version}")
}

/// Every (type, version) a reader must still understand.
fn all_versions() -> BTreeSet<(String, u16)> {
    Event::TYPES
        .iter()
        .chain(OLD_VERSIONS)
        .map(|(t, v)| (t.to_string(), *v))
        .collect()
}

/// The bytes each version was written as, for versions that lack a fixture.
fn payload_for(event_type: &str, version: u16) -> Result<Vec<u8>> {
    if let Some(sample) = sample_events()
        .into_iter()
        .find(|e| e.event.event_type() == event_type && e.event.schema_version() == version)
    {
        return Ok(encode_batch(&[sample])?);
    }
    match (event_type, version) {
        ("TaskSubmitted", 1) => {
            let template = sample_envelope(100, sample_events()[0].event.clone());
            let v1 = TaskSubmittedV1 {
                task_id: "a1b2c3d4".parse()?,
                buyer_id: "buyer-001".parse()?,
                description: "Process payment".into(),
                complexity: Complexity::new(2)?,
            };
            Ok(encode_as_version(&template, event_type, version, &v1)?)
        }
        _ => bail!("no writer for {event_type} v{version}: add one to payload_for"),
    }
}

fn write_missing_fixtures() -> Result<()> {
    for (event_type, version) in all_versions() {
        let stem = stem(&event_type, version);
        let bin = dir().join(format!("{stem}.msgpack"));
        let json_path = dir().join(format!("{stem}.json"));
        // The bytes are never rewritten; a missing .json is (re)written from them, which
        // is how an old version's expected meaning is updated after a new upcast.
        let payload = if bin.exists() {
            if json_path.exists() {
                continue;
            }
            fs::read(&bin)?
        } else {
            let payload = payload_for(&event_type, version)?;
            fs::write(&bin, &payload)?;
            payload
        };
        let decoded = decode_batch(Some(CONTENT_TYPE), &payload)?;
        let json = serde_json::to_string_pretty(&decoded[0].to_json())?;
        fs::write(&json_path, json + "\n")?;
        eprintln!("wrote fixture {}", json_path.display());
    }
    Ok(())
}

fn fixture_files(extension: &str) -> Result<BTreeSet<String>> {
    let mut stems = BTreeSet::new();
    for entry in fs::read_dir(dir())? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(&format!(".{extension}")) {
            stems.insert(stem.to_owned());
        }
    }
    Ok(stems)
}

#[test]
fn every_event_type_and_version_has_a_fixture_and_every_fixture_a_decoder() -> Result<()> {
    if std::env::var_os("AICP_WRITE_FIXTURES").is_some() {
        write_missing_fixtures()?;
    }
    let wanted: BTreeSet<String> = all_versions().iter().map(|(t, v)| stem(t, *v)).collect();
    let have = fixture_files("msgpack")?;
    let missing: Vec<_> = wanted.difference(&have).collect();
    let orphans: Vec<_> = have.difference(&wanted).collect();
    assert!(
        missing.is_empty(),
        "no fixture for {missing:?}: run AICP_WRITE_FIXTURES=1 cargo test -p aicp-events --test fixtures"
    );
    assert!(
        orphans.is_empty(),
        "fixtures {orphans:?} have no decoder any more: old events on the stream would stop decoding"
    );
    assert_eq!(
        fixture_files("json")?,
        have,
        "every fixture needs its .json"
    );
    Ok(())
}

#[test]
fn every_fixture_still_decodes_to_the_same_facts() -> Result<()> {
    let stems = fixture_files("msgpack")?;
    assert!(
        !stems.is_empty(),
        "no fixtures found in {}",
        dir().display()
    );
    for stem in stems {
        let payload = fs::read(dir().join(format!("{stem}.msgpack")))?;
        let decoded = decode_batch(Some(CONTENT_TYPE), &payload)
            .with_context(|| format!("fixture {stem} no longer decodes"))?;
        let [envelope] = decoded.as_slice() else {
            bail!("fixture {stem} holds {} envelopes", decoded.len());
        };
        let expected: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir().join(format!("{stem}.json")))?)?;
        assert_eq!(
            envelope.to_json(),
            expected,
            "fixture {stem} decodes to other facts"
        );
        // Re-encoding at the current version and decoding again changes nothing.
        let again = decode_batch(Some(CONTENT_TYPE), &encode_batch(&decoded)?)?;
        assert_eq!(again, decoded, "fixture {stem} does not round-trip");
    }
    Ok(())
}

#[test]
fn an_old_version_is_upcast_with_the_defaults_of_the_new_fields() -> Result<()> {
    let payload = fs::read(dir().join("TaskSubmitted.v1.msgpack"))?;
    let decoded = decode_batch(Some(CONTENT_TYPE), &payload)?;
    let Event::TaskSubmitted(task) = &decoded[0].event else {
        bail!(
            "TaskSubmitted v1 decoded as {}",
            decoded[0].event.event_type()
        );
    };
    assert_eq!(task.description, "Process payment");
    assert_eq!(task.complexity.get(), 2);
    assert!(task.required_skills.is_empty());
    assert_eq!(task.max_price_sats, None);
    assert_eq!(task.deadline, None);
    assert_eq!(decoded[0].event.schema_version(), 2);
    Ok(())
}
