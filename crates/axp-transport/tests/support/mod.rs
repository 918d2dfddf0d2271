//! Test agents and a loopback server harness shared by the transport tests.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axp_transport::{
    Agent, AgentError, AgentServer, Execution, OutputStream, Protocol, ServerOptions, content,
    pb::{AgentStart, Message},
    server::HealthControl,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// What a [`ScriptedAgent`] does for each execution.
#[derive(Clone)]
pub enum Script {
    /// Send each batch, with a pause between batches.
    Batches(Vec<Vec<Message>>, Duration),
    /// Fail before sending anything.
    Refuse(AgentError),
    /// Send one batch, then fail.
    FailAfterOne(Vec<Message>, AgentError),
    /// Never send anything, ignoring cancellation; record when the execution is cancelled.
    Hang,
    /// Send one batch, wait for the execution to be cancelled, then send a
    /// last batch (`"stopped"`) and finish, as an agent that honours its token does.
    StopOnCancel(Vec<Message>),
    /// Take this long to start (without watching the token), then hang.
    SlowStart(Duration),
}

/// Records what the server handed the agent, and what happened to it.
#[derive(Default)]
pub struct Record {
    pub starts: Mutex<Vec<(String, String, AgentStart)>>,
    pub protocols: Mutex<Vec<Protocol>>,
    pub execution_ids: Mutex<Vec<Option<String>>>,
    pub cancelled: AtomicUsize,
    pub cancelled_tx: Mutex<Option<oneshot::Sender<()>>>,
}

pub struct ScriptedAgent {
    pub script: Script,
    pub record: Arc<Record>,
}

impl Agent for ScriptedAgent {
    async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
        self.record.starts.lock().unwrap().push((
            execution.conversation_id.clone(),
            execution.exec_id.clone(),
            execution.start.clone(),
        ));
        self.record
            .protocols
            .lock()
            .unwrap()
            .push(execution.protocol);
        self.record.execution_ids.lock().unwrap().push(
            execution
                .metadata
                .get("execution-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let record = self.record.clone();
        let token = execution.cancelled.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            record.cancelled.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = record.cancelled_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        });
        match self.script.clone() {
            Script::Refuse(error) => Err(error),
            Script::Batches(batches, pause) => Ok(Box::pin(async_stream::stream! {
                for (i, batch) in batches.into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    yield Ok(batch);
                }
            })),
            Script::FailAfterOne(batch, error) => {
                Ok(Box::pin(futures::stream::iter([Ok(batch), Err(error)])))
            }
            Script::Hang => Ok(Box::pin(futures::stream::pending())),
            Script::StopOnCancel(batch) => {
                let token = execution.cancelled.clone();
                Ok(Box::pin(async_stream::stream! {
                    yield Ok(batch);
                    token.cancelled().await;
                    yield Ok(vec![content::model_text("stopped")]);
                }))
            }
            Script::SlowStart(delay) => {
                tokio::time::sleep(delay).await;
                Ok(Box::pin(futures::stream::pending()))
            }
        }
    }
}

/// A served agent on 127.0.0.1.
pub struct Served {
    pub addr: SocketAddr,
    pub record: Arc<Record>,
    pub health: HealthControl,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), axp_transport::server::ServeError>>,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the server's shutdown; the returned handle resolves when serve returns.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn serve(script: Script, options: ServerOptions) -> Served {
    serve_agent_with(script, options, true).await
}

pub async fn serve_agent_with(script: Script, options: ServerOptions, serving: bool) -> Served {
    let record = Arc::new(Record::default());
    let agent = ScriptedAgent {
        script,
        record: record.clone(),
    };
    let server = AgentServer::new(agent, options);
    let health = server.health();
    if serving {
        health.set_serving().await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Served {
        addr,
        record,
        health,
        shutdown: Some(tx),
        task,
    }
}

pub fn texts(batch: &[&str]) -> Vec<Message> {
    batch.iter().map(|t| content::model_text(*t)).collect()
}
