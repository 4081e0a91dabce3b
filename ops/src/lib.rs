//! The AICP operator CLI (`aicp`): stream setup, replay, verify, inspection, scripting.
//!
//! Each command lives in the module named for what it works on; [`run`] picks one. Commands
//! that read the stream talk to NATS directly; commands about tasks and agents go through
//! a coordinator's REST API, so they obey the same rules as every other client.

pub mod api;
pub mod archive;
pub mod cli;
pub mod dead_letters;
pub mod demo;
pub mod error;
pub mod feed;
pub mod output;
pub mod progress;
pub mod queue;
pub mod replay;
pub mod streams;
pub mod tokens;
pub mod verify;

use std::process::ExitCode;

use aicp_events::{EventStore, Namespace};

pub use cli::Cli;
use cli::{Command, DeadLettersCommand, EventsCommand, StreamsCommand};
pub use error::OpsError;

/// Runs one command: `Ok(SUCCESS)` when done, `Ok(FAILURE)` when a check failed.
pub async fn run(cli: Cli) -> Result<ExitCode, OpsError> {
    let global = cli.global;
    match cli.command {
        Command::Streams(StreamsCommand::Init(args)) => {
            streams::init(&connect(&global).await?, &args, global.json).await
        }
        Command::Streams(StreamsCommand::Status) => {
            streams::status(&connect(&global).await?, global.json).await
        }
        Command::Replay(args) => {
            replay::command(&connect(&global).await?, &args, global.json).await
        }
        Command::Verify(args) => {
            verify::command(
                &connect(&global).await?,
                &args,
                &client(&global)?,
                global.json,
            )
            .await
        }
        Command::Events(EventsCommand::Tail {
            count,
            follow,
            filter,
        }) => {
            archive::tail(
                &connect(&global).await?,
                &filter,
                count,
                follow,
                global.json,
            )
            .await
        }
        Command::Events(EventsCommand::Export { output, filter }) => {
            archive::export(&connect(&global).await?, &filter, output.as_deref()).await
        }
        Command::Events(EventsCommand::Import { input }) => {
            archive::import(&connect(&global).await?, input.as_deref(), global.json).await
        }
        Command::QueueDepth => queue::command(&connect(&global).await?, global.json).await,
        Command::DeadLetters(DeadLettersCommand::List) => {
            dead_letters::list(&client(&global)?, global.json).await
        }
        Command::DeadLetters(DeadLettersCommand::Retry { task_id }) => {
            dead_letters::retry(&client(&global)?, &task_id, global.json).await
        }
        Command::Tasks(command) => api::tasks(&client(&global)?, command, global.json).await,
        Command::Agents(command) => api::agents(&client(&global)?, command, global.json).await,
        Command::Tokens(command) => tokens::command(&client(&global)?, command, global.json).await,
        Command::Demo(args) => demo::command(&client(&global)?, &args).await,
    }
}

/// A client of the API named by the global flags, with their token.
pub fn client(global: &cli::Global) -> Result<api::Client, OpsError> {
    api::Client::new(&global.api, global.token.as_deref())
}

/// Connects to the event store named by the global flags.
pub async fn connect(global: &cli::Global) -> Result<EventStore, OpsError> {
    let namespace = Namespace::new(&global.prefix).map_err(|e| OpsError::Usage(e.to_string()))?;
    Ok(EventStore::connect_with(&global.nats_url, namespace, &global.nats_credentials).await?)
}
