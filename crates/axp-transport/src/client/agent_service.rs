//! [`AxpClient`]: calls `ax.AgentService` (`Connect`, `HealthCheck`), the
//! protocol of the AX fork with `subagent_prompt`.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tonic::{Streaming, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use super::{
    ClientError, ClientOptions, WaitOptions,
    connection::{CallDeadline, Connection, StreamDeadline},
};
use crate::pb::{
    AgentRequest, AgentResponse, AgentStart, HealthCheckRequest, HealthCheckResponse, Message,
    agent_response, agent_service_client::AgentServiceClient,
};

/// A client of one AXP agent.
///
/// # Example
///
/// ```no_run
/// use axp_transport::{client::{AxpClient, ClientOptions}, content, pb::AgentStart};
/// use futures::StreamExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = AxpClient::new("http://10.0.0.7:8494", ClientOptions::default())?;
/// let start = AgentStart { subagent_prompt: "print(6 * 7)".into(), ..Default::default() };
/// let mut outputs = client.connect("conversation-1", "exec-1", start).await?;
/// while let Some(batch) = outputs.next().await {
///     for message in batch? {
///         println!("{}", content::text_of(&message).unwrap_or("<non-text>"));
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AxpClient {
    connection: Connection,
}

impl std::fmt::Debug for AxpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AxpClient")
            .field("endpoint", &self.connection.endpoint)
            .field("options", &self.connection.options)
            .finish_non_exhaustive()
    }
}

impl AxpClient {
    /// A client for `endpoint` (`http://host:port`, or `https://…` with
    /// [`ClientOptions::tls`]; a bare `host:port` means `http://`). Connects
    /// lazily, on the first call, and reconnects after failures.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidEndpoint`], [`ClientError::Tls`] or
    /// [`ClientError::InvalidMetadata`] (a token that is not ASCII).
    pub fn new(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            connection: Connection::new(endpoint, options)?,
        })
    }

    /// Like [`AxpClient::new`], but connects now.
    ///
    /// # Errors
    ///
    /// As [`AxpClient::new`], plus [`ClientError::Connect`] when the agent
    /// cannot be reached within [`ClientOptions::connect_timeout`].
    pub async fn dial(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        Ok(Self {
            connection: Connection::dial(endpoint, options).await?,
        })
    }

    /// The agent's address, as normalized.
    pub fn endpoint_uri(&self) -> &str {
        &self.connection.endpoint
    }

    fn agent(&self) -> AgentServiceClient<Channel> {
        self.connection
            .configure(AgentServiceClient::new(self.connection.channel.clone()))
    }

    /// Runs one execution: sends `start` for `conversation_id`/`exec_id` and
    /// returns the agent's outputs as they arrive.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the agent refuses the call (the code says
    /// why: `INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) or cannot be reached
    /// (`UNAVAILABLE`); [`ClientError::InvalidMetadata`] for an exec id that
    /// cannot travel as metadata; [`ClientError::DeadlineExceeded`].
    pub async fn connect(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
    ) -> Result<Outputs, ClientError> {
        let deadline = self.connection.call_deadline();
        let mut request = self.connection.request(AgentRequest {
            conversation_id: conversation_id.to_owned(),
            exec_id: exec_id.to_owned(),
            start: Some(start),
        });
        let exec_header = exec_id.parse().map_err(|_| ClientError::InvalidMetadata {
            what: format!("exec id {exec_id:?}"),
        })?;
        request.metadata_mut().insert("execution-id", exec_header);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline.timeout);
        }
        let mut agent = self.agent();
        let response = CallDeadline::bound(deadline, agent.connect(request)).await?;
        Ok(Outputs {
            inner: Some(response.into_inner()),
            conversation_id: conversation_id.to_owned(),
            exec_id: exec_id.to_owned(),
            deadline: StreamDeadline::new(deadline),
            ended: false,
        })
    }

    /// Runs one execution to its end and returns every output message.
    ///
    /// # Errors
    ///
    /// As [`AxpClient::connect`], plus any error of the stream.
    pub async fn run(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
    ) -> Result<Vec<Message>, ClientError> {
        let mut outputs = self.connect(conversation_id, exec_id, start).await?;
        let mut messages = Vec::new();
        while let Some(batch) = outputs.next().await {
            messages.extend(batch?);
        }
        Ok(messages)
    }

    /// AXP `HealthCheck`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call fails.
    pub async fn health_check(&self) -> Result<HealthCheckResponse, ClientError> {
        let mut request = self.connection.request(HealthCheckRequest {});
        request.set_timeout(self.connection.options.connect_timeout);
        Ok(self.agent().health_check(request).await?.into_inner())
    }

    /// `grpc.health.v1` `Check` for service `""`: what Kubernetes probes and
    /// AX's harness client wait on.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call fails (`UNIMPLEMENTED` for an
    /// agent without the standard health service).
    pub async fn serving_status(&self) -> Result<ServingStatus, ClientError> {
        Ok(self.connection.serving_status().await?)
    }

    /// Waits until the agent reports SERVING on `grpc.health.v1` (service
    /// `""`), or healthy on AXP `HealthCheck` for agents without the standard
    /// health service. Retries with bounded backoff.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotServing`] with the last answer seen when `timeout`
    /// passes first.
    pub async fn wait_until_serving(&self, options: WaitOptions) -> Result<(), ClientError> {
        self.connection
            .wait_until_serving(options, || async {
                match self.health_check().await {
                    Ok(answer) if answer.healthy => Ok(()),
                    Ok(answer) => Err(format!("AXP HealthCheck unhealthy: {}", answer.message)),
                    Err(error) => Err(error.to_string()),
                }
            })
            .await
    }
}

/// The outputs of one `Connect` call: one item per `outputs` frame.
///
/// Ends (`None`) after `end` or a clean close; [`Outputs::ended`] tells which.
#[must_use = "dropping Outputs cancels the call"]
pub struct Outputs {
    inner: Option<Streaming<AgentResponse>>,
    conversation_id: String,
    exec_id: String,
    deadline: Option<StreamDeadline>,
    ended: bool,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("conversation_id", &self.conversation_id)
            .field("exec_id", &self.exec_id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Outputs {
    /// Whether the agent sent `end` (rather than closing without it).
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Vec<Message>, ClientError>>> {
        // Dropping the stream resets the HTTP/2 stream: the server sees a cancel.
        self.inner = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for Outputs {
    type Item = Result<Vec<Message>, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(error) = StreamDeadline::poll_expired(&mut this.deadline, cx) {
            return this.fail(error);
        }
        let frame = match inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(status))) => {
                let error = StreamDeadline::status_error(&this.deadline, status);
                return this.fail(error);
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if frame.conversation_id != this.conversation_id || frame.exec_id != this.exec_id {
            let error = ClientError::MismatchedIds {
                expected_conversation: this.conversation_id.clone(),
                expected_exec: this.exec_id.clone(),
                got_conversation: frame.conversation_id,
                got_exec: frame.exec_id,
            };
            return this.fail(error);
        }
        match frame.r#type {
            Some(agent_response::Type::Outputs(outputs)) => Poll::Ready(Some(Ok(outputs.messages))),
            Some(agent_response::Type::End(_)) => {
                this.ended = true;
                this.inner = None;
                Poll::Ready(None)
            }
            None => this.fail(ClientError::EmptyFrame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_endpoint_is_a_typed_error() {
        let error = AxpClient::new("http://bad host:1", ClientOptions::default()).unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidEndpoint { .. }),
            "{error:?}"
        );
    }
}
