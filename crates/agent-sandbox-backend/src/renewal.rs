//! Keeping a conversation's claim alive: its `shutdownTime` is pushed forward
//! while the conversation is in use, so only an idle (or orphaned) claim expires.

use std::time::Duration;

use tokio::time::Instant;

use crate::{AgentSandboxAgent, conversations::Endpoint};

impl AgentSandboxAgent {
    /// Renews the claim at the start of an execution when a tenth of the TTL
    /// has passed since the last renewal: one patch, not one per call.
    pub(crate) async fn renew_if_due(&self, endpoint: &mut Endpoint, conversation_id: &str) {
        let ttl = self.inner.claims.options().ttl;
        if endpoint.renewed_at.elapsed() < ttl / 10 {
            return;
        }
        match self.inner.claims.renew(conversation_id).await {
            Ok(()) => endpoint.renewed_at = Instant::now(),
            // The execution can still run; the next one tries again.
            Err(error) => {
                tracing::warn!(conversation_id, %error, "could not renew the claim's lifetime")
            }
        }
    }

    /// A task that renews the claim every third of the TTL until dropped, so an
    /// execution longer than the TTL does not lose its sandbox.
    pub(crate) fn renew_while_running(&self, conversation_id: &str) -> AbortOnDrop {
        let claims = self.inner.claims.clone();
        let conversation_id = conversation_id.to_owned();
        let period = (claims.options().ttl / 3).max(Duration::from_secs(1));
        AbortOnDrop(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticks.tick().await;
                if let Err(error) = claims.renew(&conversation_id).await {
                    tracing::warn!(%conversation_id, %error, "could not renew the claim during a long execution");
                }
            }
        }))
    }
}

/// Aborts its task when dropped: renewal stops with the execution.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
