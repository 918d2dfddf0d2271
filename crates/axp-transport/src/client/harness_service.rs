//! [`HarnessClient`]: calls `ax.HarnessService/Connect`, the protocol of
//! upstream google/ax since June 2026.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;

use super::{
    ClientError, ClientOptions, WaitOptions,
    connection::{CallDeadline, Connection, StreamDeadline},
};
use crate::pb::{
    CancelReason, HarnessCancel, HarnessEnd, HarnessRequest, HarnessResponse, HarnessStart,
    Message, State, harness_request, harness_response,
    harness_service_client::HarnessServiceClient,
};

/// A client of one HarnessService agent (a "harness" in AX's words).
///
/// It has the qualities of [`AxpClient`](super::AxpClient) (same
/// [`ClientOptions`]: one reused channel, a deadline over the whole stream,
/// TLS and mutual TLS, bearer token, typed errors) and speaks the bidirectional
/// protocol: `start` goes first, [`HarnessOutputs::cancel`] sends `cancel`.
///
/// # Example
///
/// ```no_run
/// use axp_transport::{client::{ClientOptions, HarnessClient}, content, pb::HarnessStart};
/// use futures::StreamExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = HarnessClient::new("http://10.0.0.7:8494", ClientOptions::default())?;
/// let start = HarnessStart {
///     harness_config: br#"{"timeout_secs": 10}"#.to_vec(),
///     messages: vec![content::user_text("print(6 * 7)")],
/// };
/// let mut outputs = client.connect("conversation-1", "python", start).await?;
/// while let Some(batch) = outputs.next().await {
///     for message in batch? {
///         println!("{}", content::text_of(&message).unwrap_or("<non-text>"));
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HarnessClient {
    connection: Connection,
}

impl std::fmt::Debug for HarnessClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessClient")
            .field("endpoint", &self.connection.endpoint)
            .field("options", &self.connection.options)
            .finish_non_exhaustive()
    }
}

impl HarnessClient {
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

    /// Like [`HarnessClient::new`], but connects now.
    ///
    /// # Errors
    ///
    /// As [`HarnessClient::new`], plus [`ClientError::Connect`] when the agent
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

    /// Runs one execution: opens the stream, sends `start` for
    /// `conversation_id` / `harness_id`, and returns the outputs as they arrive.
    /// The request side stays open so that [`HarnessOutputs::cancel`] can send
    /// `cancel`; it closes when the call ends.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call is refused before the stream
    /// opens (`UNAUTHENTICATED`, or `UNAVAILABLE` when the agent cannot be
    /// reached); [`ClientError::DeadlineExceeded`]. Refusals of the execution
    /// itself arrive in band, as the stream's last item.
    pub async fn connect(
        &self,
        conversation_id: &str,
        harness_id: &str,
        start: HarnessStart,
    ) -> Result<HarnessOutputs, ClientError> {
        let deadline = self.connection.call_deadline();
        let (tx, rx) = mpsc::unbounded_channel();
        let first = HarnessRequest {
            conversation_id: conversation_id.to_owned(),
            harness_id: harness_id.to_owned(),
            r#type: Some(harness_request::Type::Start(start)),
        };
        // Cannot fail: the receiver is alive.
        let _ = tx.send(first);
        let closed = CancellationToken::new();
        let requests =
            UnboundedReceiverStream::new(rx).take_until(closed.clone().cancelled_owned());
        let mut request = self.connection.request(requests);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline.timeout);
        }
        let canceller = Canceller {
            inner: Arc::new(CancellerInner {
                tx,
                closed: closed.clone(),
                conversation_id: conversation_id.to_owned(),
                harness_id: harness_id.to_owned(),
            }),
        };
        let mut harness = self
            .connection
            .configure(HarnessServiceClient::new(self.connection.channel.clone()));
        let response = CallDeadline::bound(deadline, harness.connect(request)).await?;
        Ok(HarnessOutputs {
            inner: Some(response.into_inner()),
            conversation_id: conversation_id.to_owned(),
            deadline: StreamDeadline::new(deadline),
            end_state: None,
            canceller,
        })
    }

    /// Runs one execution to `end{COMPLETED}` and returns every output message.
    ///
    /// # Errors
    ///
    /// As [`HarnessClient::connect`], plus any error of the stream:
    /// [`ClientError::HarnessFailed`], [`ClientError::Canceled`],
    /// [`ClientError::MissingEnd`], …
    pub async fn run(
        &self,
        conversation_id: &str,
        harness_id: &str,
        start: HarnessStart,
    ) -> Result<Vec<Message>, ClientError> {
        let mut outputs = self.connect(conversation_id, harness_id, start).await?;
        let mut messages = Vec::new();
        while let Some(batch) = outputs.next().await {
            messages.extend(batch?);
        }
        Ok(messages)
    }

    /// `grpc.health.v1` `Check` for service `""`: the readiness AX's harness
    /// client waits on.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call fails (`UNIMPLEMENTED` for an
    /// agent without the standard health service).
    pub async fn serving_status(&self) -> Result<ServingStatus, ClientError> {
        Ok(self.connection.serving_status().await?)
    }

    /// Waits until `grpc.health.v1` (service `""`) reports SERVING, retrying
    /// with bounded backoff. As in AX, an agent without the health service
    /// (`UNIMPLEMENTED`) counts as ready; NOT_SERVING and UNAVAILABLE are retried.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotServing`] with the last answer seen when `timeout`
    /// passes first.
    pub async fn wait_until_serving(&self, options: WaitOptions) -> Result<(), ClientError> {
        self.connection
            .wait_until_serving(options, || async { Ok(()) })
            .await
    }
}

/// Sends `cancel` on a running HarnessService call; cheap to clone and
/// usable from another task while the outputs are read.
#[derive(Clone)]
pub struct Canceller {
    inner: Arc<CancellerInner>,
}

struct CancellerInner {
    tx: mpsc::UnboundedSender<HarnessRequest>,
    /// Fired when the call is over (end, error, or the outputs dropped).
    closed: CancellationToken,
    conversation_id: String,
    harness_id: String,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("conversation_id", &self.inner.conversation_id)
            .field("open", &!self.inner.closed.is_cancelled())
            .finish()
    }
}

impl Canceller {
    /// Sends a `cancel` frame with `reason`. The server stops the execution
    /// and ends the stream with `end{CANCELED}`, which the outputs report as
    /// [`ClientError::Canceled`].
    ///
    /// Returns whether the frame was sent: `false` once the call is over
    /// (ended, failed, or its outputs dropped), when there is nothing to cancel.
    pub fn cancel(&self, reason: CancelReason) -> bool {
        if self.inner.closed.is_cancelled() {
            return false;
        }
        let frame = HarnessRequest {
            conversation_id: self.inner.conversation_id.clone(),
            harness_id: self.inner.harness_id.clone(),
            r#type: Some(harness_request::Type::Cancel(HarnessCancel {
                reason: reason as i32,
            })),
        };
        self.inner.tx.send(frame).is_ok()
    }
}

/// The outputs of one HarnessService call: one item per `outputs` frame.
///
/// # Guarantees
///
/// - Ends (`None`) only after `end{COMPLETED}` (or, as AX accepts, an `end`
///   whose state is neither FAILED nor CANCELED; [`HarnessOutputs::end_state`]
///   tells which).
/// - `end{FAILED}` is [`ClientError::HarnessFailed`] with the code and
///   description; `end{CANCELED}` is [`ClientError::Canceled`]; a stream that
///   closes without `end` is [`ClientError::MissingEnd`]; a frame for another
///   conversation is [`ClientError::MismatchedConversation`]; a frame with
///   neither outputs nor end is [`ClientError::EmptyFrame`]. Each is the last item.
/// - Nothing after `end` is read.
/// - The call's deadline covers the whole stream.
/// - Dropping it cancels the call: the request side closes and the HTTP/2
///   stream is reset, so the server sees a cancelled stream.
#[must_use = "dropping HarnessOutputs cancels the call"]
pub struct HarnessOutputs {
    inner: Option<Streaming<HarnessResponse>>,
    conversation_id: String,
    deadline: Option<StreamDeadline>,
    end_state: Option<State>,
    canceller: Canceller,
}

impl std::fmt::Debug for HarnessOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessOutputs")
            .field("conversation_id", &self.conversation_id)
            .field("end_state", &self.end_state)
            .finish_non_exhaustive()
    }
}

impl HarnessOutputs {
    /// The state of the `end` frame, once one arrived.
    pub fn end_state(&self) -> Option<State> {
        self.end_state
    }

    /// Sends `cancel` with `reason`; see [`Canceller::cancel`].
    pub fn cancel(&self, reason: CancelReason) -> bool {
        self.canceller.cancel(reason)
    }

    /// A handle that sends `cancel` from elsewhere while this is read.
    pub fn canceller(&self) -> Canceller {
        self.canceller.clone()
    }

    fn finish(&mut self) {
        self.inner = None;
        self.canceller.inner.closed.cancel();
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Vec<Message>, ClientError>>> {
        // Dropping the response stream resets the HTTP/2 stream: the server sees a cancel.
        self.finish();
        Poll::Ready(Some(Err(error)))
    }

    fn ended(&mut self, end: HarnessEnd) -> Poll<Option<Result<Vec<Message>, ClientError>>> {
        let state = end.state();
        self.end_state = Some(state);
        match state {
            State::Failed => {
                let (code, description) = end.error.map_or((Code::Unknown, String::new()), |e| {
                    (Code::from(e.code), e.description)
                });
                self.fail(ClientError::HarnessFailed { code, description })
            }
            State::Canceled => self.fail(ClientError::Canceled),
            State::Completed | State::Unspecified | State::Pending => {
                self.finish();
                Poll::Ready(None)
            }
        }
    }
}

impl Stream for HarnessOutputs {
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
            Poll::Ready(None) => return this.fail(ClientError::MissingEnd),
            Poll::Ready(Some(Err(status))) => {
                let error = StreamDeadline::status_error(&this.deadline, status);
                return this.fail(error);
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if frame.conversation_id != this.conversation_id {
            let error = ClientError::MismatchedConversation {
                expected: this.conversation_id.clone(),
                got: frame.conversation_id,
            };
            return this.fail(error);
        }
        match frame.r#type {
            Some(harness_response::Type::Outputs(outputs)) => {
                Poll::Ready(Some(Ok(outputs.messages)))
            }
            Some(harness_response::Type::End(end)) => this.ended(end),
            None => this.fail(ClientError::EmptyFrame),
        }
    }
}

impl Drop for HarnessOutputs {
    fn drop(&mut self) {
        // Closes the request side too, so the HTTP/2 stream is reset even while
        // a `Canceller` clone lives on.
        self.canceller.inner.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_endpoint_is_a_typed_error() {
        let error = HarnessClient::new("http://bad host:1", ClientOptions::default()).unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidEndpoint { .. }),
            "{error:?}"
        );
    }
}
