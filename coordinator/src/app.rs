//! Building and running a coordinator: connect, provision, open the read model, start the
//! projector and the process manager, serve HTTP, and stop it all cleanly.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aicp_events::id::TaskId;
use aicp_events::store::StreamSettings;
use aicp_events::{consumers, EventStore, Namespace};
use aicp_projections::projector::Projector;
use aicp_projections::ReadModel;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::ServiceExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceBuilder};
use tower_http::cors::{AllowOrigin, CorsLayer};

use aicp_events::domain::access::{Principal, WorkerScope};

use crate::auth::{Auth, AuthMode};
use crate::config::Config;
use crate::routes;
use crate::state::{AppState, Shared};
use crate::{dispatch, expiry, settlement, task_consumer};

/// A coordinator bound to its port, ready to [`App::run`].
pub struct App {
    listener: TcpListener,
    state: AppState,
    projector: Projector,
    config: Config,
    closing: watch::Sender<bool>,
}

impl App {
    /// Connects to NATS, provisions the streams, opens the read model and binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        if config.auth == AuthMode::None {
            if !config.listen.ip().is_loopback() {
                anyhow::bail!(
                    "--auth none is only allowed on a loopback address (127.0.0.1 or ::1), not {}: anyone who can reach the port would be admin",
                    config.listen
                );
            }
            tracing::warn!(
                listen = %config.listen,
                "authentication is OFF (--auth none): every API call acts as admin; loopback only"
            );
        }
        let namespace = Namespace::new(&config.prefix)?;
        let store = EventStore::connect_with(&config.nats_url, namespace, &config.nats_credentials)
            .await?
            .with_settings(StreamSettings::with_replicas(config.stream_replicas));
        store.provision().await?;
        std::fs::create_dir_all(&config.data_dir)?;
        let model = ReadModel::open_with_cache(&config.data_dir, config.cache_mib)?;
        let ready_at = store.last_sequence().await?;
        let (projector, progress) = Projector::new(model.clone(), store.clone())?;
        let (closing, closing_rx) = watch::channel(false);
        let state = AppState::new(Shared {
            store,
            model,
            progress,
            policy: config.policy,
            write_wait: config.write_wait(),
            acked: Default::default(),
            started_at: Instant::now(),
            ready_at,
            metrics: crate::metrics::Metrics::new()?,
            notices: projector.notices(),
            fleet: crate::fleet::Fleet::default(),
            request_timeout: config.request_timeout(),
            max_body: config.max_body_bytes,
            max_batch_body: config.max_batch_body_bytes,
            require_deposit: config.require_deposit,
            reservation_lapse: Duration::from_millis(config.reservation_lapse_ms),
            auth: Auth::new(
                config.auth,
                &configured_tokens(&config),
                config.rate_limit.0,
                config.rate_limit_ip.0,
                config.client_ip_header.clone(),
                &config.cors_origins,
            ),
            closing: closing_rx,
        });
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            state,
            projector,
            config,
            closing,
        })
    }

    /// The shared state, for tests that drive commands directly.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The address the API listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops the process manager and the
    /// projector and flushes the read model.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move || stop_signal(stop_rx.clone());

        // A read model that cannot be written is fatal: stop serving, exit non-zero.
        let (fatal_tx, mut fatal_rx) = watch::channel(false);
        let projector = {
            let run = self.projector.run(stopped());
            tokio::spawn(async move {
                let result = run.await;
                if let Err(e) = &result {
                    tracing::error!("read model failed: {e}; shutting down");
                    let _ = fatal_tx.send(true);
                }
                result
            })
        };
        if !self.config.no_seed_agents {
            self.state
                .register_seed_agents()
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        // The process managers decide from the read model: they start once it has caught up
        // with the stream as it was at start-up, not while it is still rebuilding.
        let fleet = tokio::spawn(
            self.state
                .fleet
                .clone()
                .observe(self.state.store.clone(), stopped()),
        );
        let managers = {
            let state = self.state.clone();
            let (caught_up_stop, process_stop, expiry_stop) = (stopped(), stopped(), stopped());
            tokio::spawn(async move {
                tokio::select! {
                    () = caught_up(&state) => {}
                    () = caught_up_stop => return,
                }
                // Deciding from the read model: only once it has every token issued so far.
                match state.bootstrap_admin_token().await {
                    Ok(Some(token)) => announce_admin_token(&token),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e.message, "could not issue the first admin token")
                    }
                }
                tokio::join!(
                    task_consumer::run(
                        state.clone(),
                        consumers::PROCESS,
                        |state, task_id| async move { after_task_event(&state, &task_id).await },
                        process_stop
                    ),
                    expiry::run(state, expiry_stop)
                );
            })
        };

        let closing = self.closing;
        let app = service(&self.state, &self.config);
        tracing::info!(
            addr = %self.listener.local_addr()?,
            auth = ?self.config.auth,
            "coordinator listening"
        );
        let app = ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = shutdown => {}
                    _ = fatal_rx.wait_for(|fatal| *fatal) => {}
                }
                // End the live event streams, which would otherwise hold the shutdown.
                let _ = closing.send(true);
            })
            .await?;

        let _ = stop_tx.send(true);
        managers.await?;
        fleet.await?;
        projector.await??;
        tracing::info!("coordinator stopped");
        Ok(())
    }
}

/// What the process managers do after each task message: put an assignment on its
/// agent's work queue, then take any settlement step still missing. Dispatch goes first
/// because a worker waits on it; both are idempotent, so a retry redoes both safely.
async fn after_task_event(state: &AppState, task_id: &TaskId) -> Result<(), task_consumer::Retry> {
    dispatch::dispatch(state, task_id).await?;
    settlement::reconcile(state, task_id).await
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Completes once the read model has applied the stream as it was at start-up.
async fn caught_up(state: &AppState) {
    while !state
        .progress
        .wait_for(state.ready_at, std::time::Duration::from_secs(60))
        .await
    {
        tracing::info!(
            applied = state.progress.applied(),
            target = state.ready_at,
            "read model still catching up"
        );
    }
}

/// The API's routes inside the middleware every request passes, unknown paths included
/// (the layers are listed outermost first).
///
/// Around the router, not added with `Router::layer`: that wraps each route's handler
/// separately, and every layer so added costs a boxed clone per request (about a tenth of
/// the coordinator's CPU per GET, by perf).
fn service(
    state: &AppState,
    config: &Config,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        // Logs method, path and status: never headers, so never a token.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn(crate::headers::secure))
        .layer(cors(&config.cors_origins))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // Who is calling, and within their rate limits, before any route runs.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::identify,
        ))
        .service(routes::router(state.clone()))
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderName::from_static(crate::idempotency::HEADER),
        ])
}

/// The tokens given by configuration, with whom each acts as.
fn configured_tokens(config: &Config) -> Vec<(&aicp_events::token::TokenSecret, Principal)> {
    let mut tokens = Vec::new();
    if let Some(token) = &config.admin_token {
        tokens.push((token, Principal::Admin));
    }
    if let Some(token) = &config.worker_token {
        tokens.push((token, Principal::Worker(WorkerScope::All)));
    }
    tokens
}

/// Shows the first admin token once, on standard error and outside the log (tokens are
/// never logged): whoever starts the first coordinator copies it from there.
fn announce_admin_token(token: &aicp_events::token::TokenSecret) {
    tracing::warn!("issued the first admin token (printed once on standard error, not logged)");
    eprintln!(
        "\n  AICP: the first admin token (shown once; only its hash is kept):\n\n    {}\n\n  \
         Sign in to the UI with it, or export AICP_TOKEN=<it> for the aicp CLI.\n  \
         Lost it? Start a coordinator with AICP_ADMIN_TOKEN=<a secret of yours> and issue a new one.\n",
        token.expose()
    );
}
