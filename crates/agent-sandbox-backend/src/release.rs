//! Giving sandboxes back: one conversation's, or every one a backend holds.

use crate::{AgentSandboxAgent, error::SandboxAgentError, metrics::ClaimEnd};

impl AgentSandboxAgent {
    /// Gives the conversation's sandbox back. Idempotent.
    ///
    /// # Guarantees
    ///
    /// A running execution of the conversation finishes first; its port-forward
    /// (connection `port-forward`) has stopped accepting when this returns; the claim is
    /// deleted even when this backend never resolved it (a claim adopted from a
    /// controller that ran before a restart).
    ///
    /// # Errors
    ///
    /// [`SandboxAgentError::Release`] when the claim could not be deleted.
    pub async fn release(&self, conversation_id: &str) -> Result<(), SandboxAgentError> {
        let conversations = &self.inner.conversations;
        let slot = conversations.slot(conversation_id);
        let mut endpoint = slot.lock().await;
        // A port-forward stops accepting before the claim goes.
        if let Some(known) = endpoint.take() {
            known.close().await;
        }
        drop(endpoint);
        conversations.forget(conversation_id, &slot);
        self.release_claim(conversation_id).await
    }

    /// Deletes the conversation's claim.
    pub(crate) async fn release_claim(
        &self,
        conversation_id: &str,
    ) -> Result<(), SandboxAgentError> {
        self.inner
            .claims
            .release(conversation_id)
            .await
            .map_err(|source| SandboxAgentError::Release {
                conversation: conversation_id.to_owned(),
                source: Box::new(source),
            })?;
        self.inner.options.metrics.released(ClaimEnd::Released, 1);
        Ok(())
    }

    /// Deletes the claims of this backend's namespace and source whose `shutdownTime` has
    /// passed (or that name no conversation), counting them as swept; returns their names.
    /// Claims of live conversations, this backend's or another controller's, are kept.
    ///
    /// # Errors
    ///
    /// [`SandboxAgentError::Claim`] when listing or deleting failed.
    pub async fn sweep_expired(&self) -> Result<Vec<String>, SandboxAgentError> {
        let report =
            self.inner
                .claims
                .sweep(|_| true)
                .await
                .map_err(|source| SandboxAgentError::Claim {
                    claim: "-".into(),
                    source: Box::new(source),
                })?;
        self.inner
            .options
            .metrics
            .released(ClaimEnd::Swept, report.deleted.len() as u64);
        Ok(report.deleted)
    }

    /// Releases every conversation this backend holds, waiting for running
    /// executions to finish.
    ///
    /// # Errors
    ///
    /// The first [`SandboxAgentError::Release`]; every conversation is still attempted.
    pub async fn close(&self) -> Result<(), SandboxAgentError> {
        let conversations = self.active_conversations();
        let results =
            futures::future::join_all(conversations.iter().map(|c| self.release(c))).await;
        results.into_iter().collect()
    }
}
