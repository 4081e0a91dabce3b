//! A real JetStream cluster for tests: three `nats-server` processes on loopback, routed to
//! each other, each on its own ephemeral ports and temporary store.
//!
//! Each node is a [`NatsServer`] (supervised the same way: no node outlives its test), so
//! a test can kill -9 any node, the leader of a stream included, and restart it on its
//! store. Clients connect with [`NatsCluster::urls`], the comma-separated seed list every
//! NATS client (and every AICP process) accepts.

use std::io;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use super::nats_server::{free_port, NatsServer};

/// How long a cluster gets to elect its JetStream metadata leader.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running JetStream cluster owned by one test; its nodes are killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster of three nodes and waits until JetStream answers on it.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(3).await
    }

    /// Starts a cluster of `size` nodes (at least 2) and waits until JetStream answers.
    pub async fn start_with(size: usize) -> io::Result<Self> {
        if size < 2 {
            return Err(io::Error::other("a cluster needs at least 2 nodes"));
        }
        let cluster = format!("aicp-cluster-{}", uuid::Uuid::new_v4().simple());
        let route_ports = (0..size)
            .map(|_| free_port())
            .collect::<io::Result<Vec<u16>>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in route_ports.iter().enumerate() {
            let routes = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let listen = format!("nats://127.0.0.1:{port}");
            // A node answers before its peers exist: it is ready to route, not to serve
            // JetStream, which waits below for the cluster to elect a leader.
            nodes.push(NatsServer::start_with_args(&[
                "--cluster_name",
                &cluster,
                "--cluster",
                &listen,
                "--routes",
                &routes,
            ])?);
        }
        let cluster = Self { nodes };
        cluster.wait_for_jetstream(FORM_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Every node's client URL, separated by commas: the seed list a client is given.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// The index of the node whose server name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].kill()
    }

    /// Stops node `i` with SIGTERM, as an operator would (it flushes its store first).
    pub fn terminate(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].terminate()
    }

    /// Starts node `i` again on its ports and store; it rejoins the cluster.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].restart()
    }

    /// The node that leads `stream`'s RAFT group now, asked through any node that answers.
    pub async fn stream_leader(&self, stream: &str) -> io::Result<Option<usize>> {
        let js = jetstream::new(self.client().await?);
        let mut stream = js.get_stream(stream).await.map_err(io::Error::other)?;
        let info = stream.info().await.map_err(io::Error::other)?;
        Ok(info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.as_deref())
            .and_then(|leader| self.index_of(leader)))
    }

    /// Waits until `stream` has a leader and every replica is current; its leader then.
    pub async fn wait_for_stream(&self, stream: &str, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = async {
                let js = jetstream::new(self.client().await?);
                let mut s = js.get_stream(stream).await.map_err(io::Error::other)?;
                let info = s.info().await.map_err(io::Error::other)?;
                let cluster = info.cluster.clone().unwrap_or_default();
                let current = cluster.replicas.iter().all(|r| r.current && !r.offline);
                let leader = cluster.leader.as_deref().and_then(|l| self.index_of(l));
                Ok::<_, io::Error>(leader.filter(|_| current))
            }
            .await;
            match state {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("stream {stream} has no current leader and replicas"),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A client connected to the cluster through its seed list.
    pub async fn client(&self) -> io::Result<async_nats::Client> {
        let servers = self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>();
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(servers.as_slice())
            .await
            .map_err(io::Error::other)
    }

    /// Waits until the cluster has elected its JetStream metadata leader and every node can
    /// hold a replica.
    async fn wait_for_jetstream(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // The raw API request: it answers with an error until a leader is elected.
            let answered = async {
                let reply = self
                    .client()
                    .await?
                    .request("$JS.API.INFO", "".into())
                    .await
                    .map_err(io::Error::other)?;
                let body: serde_json::Value =
                    serde_json::from_slice(&reply.payload).map_err(io::Error::other)?;
                if let Some(error) = body.get("error") {
                    return Err(io::Error::other(error.to_string()));
                }
                // A leader may be elected before every peer has joined the metadata group:
                // ready means a stream with a replica on every node can be placed.
                let js = jetstream::new(self.client().await?);
                let probe = format!("PROBE_{}", uuid::Uuid::new_v4().simple());
                js.create_stream(jetstream::stream::Config {
                    name: probe.clone(),
                    subjects: vec![format!("{probe}.>")],
                    // JetStream keeps at most 5 replicas.
                    num_replicas: self.nodes.len().min(5),
                    storage: jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await
                .map_err(io::Error::other)?;
                js.delete_stream(&probe).await.map_err(io::Error::other)?;
                Ok(())
            }
            .await;
            match answered {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the cluster's JetStream did not answer: {e}"),
                    ))
                }
            }
        }
    }
}
