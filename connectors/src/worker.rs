//! A worker: the connectors running in one process, each in a task of its own, that can be
//! added, paused, resumed and deleted while the others run, and asked for their status in
//! Kafka Connect's terms. `quiver server` keeps one (its `--connectors DIR`, the REST API and
//! SQL's `CREATE … CONNECTOR` all use it).
//!
//! A sink whose topics do not exist yet waits for them (checked every 2 s), as a Kafka Connect
//! worker does; a failed connector keeps its status, with the error, until it is resumed or
//! deleted, and the other connectors go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use quiver_broker::Broker;
use quiver_engine::KafkaCluster;
use quiver_engine::checkpoint::Cluster;
use serde_json::{Value, json};

use crate::error::ConnectError;
use crate::runner::{Connector, Status};

/// The connectors running in this process (see the module docs).
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

#[derive(Debug)]
struct WorkerInner {
    broker: Broker,
    entries: parking_lot::Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    connector: Arc<Connector>,
    status: Status,
    state: Arc<parking_lot::Mutex<State>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A connector's state, in Kafka Connect's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    /// Waiting for its topics to be created.
    Unassigned(String),
    Paused,
    Failed(String),
    /// A bounded source that has read everything.
    Finished,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Running => "RUNNING",
            State::Unassigned(_) => "UNASSIGNED",
            State::Paused => "PAUSED",
            State::Failed(_) => "FAILED",
            State::Finished => "FINISHED",
        }
    }
}

/// Why the REST API refuses a change.
#[derive(Debug)]
pub enum Refusal {
    NotFound(String),
    Exists(String),
    Invalid(String),
}

impl Worker {
    /// A worker whose connectors without `bootstrap.servers` run against `broker`.
    pub fn new(broker: &Broker) -> Worker {
        Worker {
            inner: Arc::new(WorkerInner {
                broker: broker.clone(),
                entries: parking_lot::Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Starts a new connector.
    pub fn add(&self, c: Connector) -> Result<(), Refusal> {
        self.add_in(c, false)
    }

    /// Adds a connector paused: it runs once [`Self::resume`]d (a paused connector coming back
    /// after a restart does not run in between).
    pub fn add_paused(&self, c: Connector) -> Result<(), Refusal> {
        self.add_in(c, true)
    }

    fn add_in(&self, c: Connector, paused: bool) -> Result<(), Refusal> {
        let mut entries = self.inner.entries.lock();
        if entries.contains_key(c.name()) {
            return Err(Refusal::Exists(format!(
                "a connector named '{}' already exists",
                c.name()
            )));
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut entry = Entry {
            connector: Arc::new(c),
            status: Status::default(),
            state: Arc::new(parking_lot::Mutex::new(State::Paused)),
            stop,
            task: None,
        };
        if !paused {
            self.spawn(&mut entry);
        }
        entries.insert(entry.connector.name().to_owned(), entry);
        Ok(())
    }

    fn spawn(&self, entry: &mut Entry) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        entry.stop = stop;
        entry.status = Status::default();
        *entry.state.lock() = State::Running;
        let c = entry.connector.clone();
        let status = entry.status.clone();
        let state = entry.state.clone();
        let broker = self.inner.broker.clone();
        entry.task = Some(tokio::spawn(async move {
            let name = c.name().to_owned();
            let cluster = match c.bootstrap().map(str::to_owned) {
                Some(bootstrap) => match KafkaCluster::connect(&bootstrap).await {
                    Ok(k) => Cluster::Remote(k),
                    Err(e) => {
                        tracing::error!(connector = %name, "cannot reach {bootstrap}: {e}");
                        *state.lock() = State::Failed(format!("cannot reach {bootstrap}: {e}"));
                        return;
                    }
                },
                None => Cluster::Local(broker),
            };
            let waiting = {
                let (state, name) = (state.clone(), name.clone());
                move |why: Option<&str>| {
                    let mut s = state.lock();
                    match why {
                        // An attempt starts.
                        None => {
                            if matches!(*s, State::Unassigned(_)) {
                                *s = State::Running;
                            }
                        }
                        Some(why) => {
                            if !matches!(*s, State::Unassigned(_)) {
                                tracing::warn!(connector = %name, "{why}; retrying every 2 s");
                            }
                            *s = State::Unassigned(why.to_owned());
                        }
                    }
                }
            };
            let result = run_waiting(c, cluster, stopped.clone(), status.clone(), waiting).await;
            let stopping = *stopped.borrow();
            match result {
                Err(e) => {
                    tracing::error!(connector = %name, "the connector failed: {e}");
                    *state.lock() = State::Failed(e.to_string());
                }
                Ok(()) => {
                    let p = status.progress();
                    tracing::info!(connector = %name, records = p.records, "the connector stopped");
                    let mut s = state.lock();
                    if !stopping && matches!(*s, State::Running | State::Unassigned(_)) {
                        *s = State::Finished;
                    }
                }
            }
        }));
    }

    /// Each connector's name, type (`source` or `sink`), class, state and what it moves.
    pub fn list(&self) -> Vec<[String; 5]> {
        self.inner
            .entries
            .lock()
            .iter()
            .map(|(name, e)| {
                [
                    name.clone(),
                    kind_of(&e.connector).to_owned(),
                    format!("{:?}", e.connector.config().class),
                    e.state.lock().name().to_owned(),
                    e.connector.describe(),
                ]
            })
            .collect()
    }

    /// The connectors' names.
    pub fn names(&self) -> Vec<String> {
        self.inner.entries.lock().keys().cloned().collect()
    }

    /// Kafka Connect's `GET /connectors/{name}`: its name, config, tasks and type.
    pub fn info(&self, name: &str) -> Result<Value, Refusal> {
        let entries = self.inner.entries.lock();
        let e = entries.get(name).ok_or_else(|| not_found(name))?;
        let tasks: Vec<Value> = (0..tasks_of(&e.connector))
            .map(|t| json!({ "connector": name, "task": t }))
            .collect();
        Ok(json!({
            "name": name,
            "config": e.connector.config().settings(),
            "tasks": tasks,
            "type": kind_of(&e.connector),
        }))
    }

    /// Kafka Connect's `GET /connectors/{name}/status`, with the connector's progress.
    pub fn status(&self, name: &str) -> Result<Value, Refusal> {
        let entries = self.inner.entries.lock();
        let e = entries.get(name).ok_or_else(|| not_found(name))?;
        let state = e.state.lock().clone();
        let mut connector = json!({ "state": state.name(), "worker_id": "quiver" });
        if let State::Failed(why) | State::Unassigned(why) = &state {
            connector["trace"] = json!(why);
        }
        let assigned = e.status.assigned();
        let tasks: Vec<Value> = (0..tasks_of(&e.connector))
            .map(|t| {
                let mut task = connector.clone();
                task["id"] = json!(t);
                if let Some(partitions) = assigned.get(&t) {
                    task["partitions"] = json!(partitions);
                }
                task
            })
            .collect();
        let p = e.status.progress();
        let mut progress = json!({ "records": p.records, "bytes": p.bytes });
        match p.source_transactions {
            Some(t) => progress["transactions"] = json!(t),
            None => {
                progress["files"] = json!(p.files);
                progress["open_files"] = json!(p.open_files);
                if let Some(lag) = p.lag {
                    progress["lag"] = json!(lag);
                }
            }
        }
        Ok(json!({
            "name": name,
            "connector": connector,
            "tasks": tasks,
            "type": kind_of(&e.connector),
            "progress": progress,
        }))
    }

    /// Stops a connector where it is (it commits first); `resume` starts it again from there.
    pub async fn pause(&self, name: &str) -> Result<(), Refusal> {
        let task = {
            let mut entries = self.inner.entries.lock();
            let e = entries.get_mut(name).ok_or_else(|| not_found(name))?;
            *e.state.lock() = State::Paused;
            e.stop.send_replace(true);
            e.task.take()
        };
        if let Some(t) = task {
            let _ = t.await;
        }
        Ok(())
    }

    /// Starts a paused, failed or finished connector again from its committed position.
    pub fn resume(&self, name: &str) -> Result<(), Refusal> {
        let mut entries = self.inner.entries.lock();
        let e = entries.get_mut(name).ok_or_else(|| not_found(name))?;
        let state = e.state.lock().clone();
        if state == State::Running || matches!(state, State::Unassigned(_)) {
            return Ok(());
        }
        self.spawn(e);
        Ok(())
    }

    /// Stops a connector (it commits first) and forgets it.
    pub async fn delete(&self, name: &str) -> Result<(), Refusal> {
        let entry = self
            .inner
            .entries
            .lock()
            .remove(name)
            .ok_or_else(|| not_found(name))?;
        entry.stop.send_replace(true);
        if let Some(t) = entry.task {
            let _ = t.await;
        }
        Ok(())
    }

    /// Stops every connector (each closes its files and commits) and waits for them.
    pub async fn stop(&self) {
        let names = self.names();
        for name in names {
            let _ = self.delete(&name).await;
        }
    }
}

/// Runs `c` until it ends or `stopped` turns true. While the topics a sink reads do not exist
/// yet, it waits for them (checked every 2 s), as a Kafka Connect worker does: a source in the
/// same process may be about to create them. `waiting` is told of each attempt (`None`) and of
/// each wait (why).
pub async fn run_waiting(
    c: Arc<Connector>,
    cluster: Cluster,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    status: Status,
    waiting: impl Fn(Option<&str>),
) -> crate::Result<()> {
    loop {
        waiting(None);
        match c
            .clone()
            .run(cluster.clone(), stopped.clone(), status.clone())
            .await
        {
            Err(ConnectError::NoTopic(why)) if !*stopped.borrow() => {
                waiting(Some(&why));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stopped.changed() => return Ok(()),
                }
            }
            other => return other,
        }
    }
}

fn not_found(name: &str) -> Refusal {
    Refusal::NotFound(format!("connector {name} not found"))
}

fn tasks_of(c: &Connector) -> u32 {
    match c {
        Connector::Sink(s) => s.tasks,
        Connector::Source(s) => s.tasks,
    }
}

fn kind_of(c: &Connector) -> &'static str {
    match c {
        Connector::Sink(_) => "sink",
        Connector::Source(_) => "source",
    }
}
