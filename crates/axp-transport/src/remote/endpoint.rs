//! [`EndpointAgent`]: a remote AXP agent at a fixed address.

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use super::{ExecutionSummary, RemoteAgent, RemoteAgentError};
use crate::{
    client::{AxpClient, ClientError, ClientOptions},
    pb::{AgentStart, Message},
};

/// A remote AXP agent at `host:port` (AX's `remote_agents` kind): every
/// conversation goes to the same agent, over one reused channel.
///
/// # Caveats
///
/// AXP has no call that ends a conversation, so [`RemoteAgent::release`] and
/// [`RemoteAgent::close`] have nothing to give back: the agent keeps whatever
/// it holds per conversation until it decides otherwise.
#[derive(Debug, Clone)]
pub struct EndpointAgent {
    client: AxpClient,
}

impl EndpointAgent {
    /// An agent at `endpoint` (`host:port` or `http(s)://host:port`); connects
    /// on the first execution.
    ///
    /// # Errors
    ///
    /// As [`AxpClient::new`]: an invalid endpoint, TLS settings or token.
    pub fn new(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        AxpClient::new(endpoint, options).map(Self::from_client)
    }

    /// An agent reached through an existing client.
    pub fn from_client(client: AxpClient) -> Self {
        Self { client }
    }

    /// The client it calls the agent with.
    pub fn client(&self) -> &AxpClient {
        &self.client
    }
}

fn start_error(error: ClientError) -> RemoteAgentError {
    RemoteAgentError::Start {
        code: error.code(),
        source: Box::new(error),
    }
}

#[async_trait]
impl RemoteAgent for EndpointAgent {
    async fn execute(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        on_output: &mut (dyn FnMut(Vec<Message>) + Send),
    ) -> Result<ExecutionSummary, RemoteAgentError> {
        let started = Instant::now();
        let mut outputs = self
            .client
            .connect(conversation_id, exec_id, start)
            .await
            .map_err(start_error)?;
        let mut frames = 0;
        let mut first_output = None;
        while let Some(batch) = outputs.next().await {
            match batch {
                Ok(messages) => {
                    frames += 1;
                    first_output.get_or_insert_with(|| started.elapsed());
                    on_output(messages);
                }
                Err(error) if frames == 0 => return Err(start_error(error)),
                Err(error) => {
                    return Err(RemoteAgentError::Stream {
                        outputs: frames,
                        code: error.code(),
                        source: Box::new(error),
                    });
                }
            }
        }
        Ok(ExecutionSummary {
            frames,
            ended: outputs.ended(),
            first_output,
            total: started.elapsed(),
        })
    }

    async fn release(&self, _conversation_id: &str) -> Result<(), RemoteAgentError> {
        // Nothing is held here per conversation (see the Caveats above).
        Ok(())
    }

    async fn close(&self) -> Result<(), RemoteAgentError> {
        // The channel closes when the last clone of the client is dropped.
        Ok(())
    }
}
