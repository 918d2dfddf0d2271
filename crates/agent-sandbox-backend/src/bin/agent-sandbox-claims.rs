//! `agent-sandbox-claims`: list, show, release, renew and sweep the SandboxClaims this
//! backend made (through `sandbox-claim`), on any cluster a kubeconfig reaches. Built with
//! the `cli` feature:
//! `cargo run -p agent-sandbox-backend --features cli --bin agent-sandbox-claims -- list`.
//!
//! ```text
//! agent-sandbox-claims -n agent-platform list                 # table; --output json
//! agent-sandbox-claims -n agent-platform show conversation-1   # by conversation id or claim name
//! agent-sandbox-claims -n agent-platform renew conversation-1 --ttl 30m
//! agent-sandbox-claims -n agent-platform release conversation-1
//! agent-sandbox-claims -n agent-platform sweep                 # dry run; --yes deletes
//! ```

use std::{
    collections::BTreeSet,
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Config, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use sandbox_claim::{
    ApiVersion, ClaimOptions, Claims, VersionSelection,
    handle::preferred_ip,
    labels, naming,
    types::{ClaimResource, v1alpha1, v1beta1},
};
use serde::Serialize;

const EXIT_CODES: &str = "\
Exit codes:
  0  success; `sweep` without --yes (a dry run) also exits 0; `release` of a claim that is
     already gone is a success (idempotent)
  1  error (kubeconfig, API, a claim that is not ours)
  2  usage error
  3  not found: `show` or `renew` of a claim that does not exist (`release --strict` too)";

#[derive(Parser)]
#[command(
    name = "agent-sandbox-claims",
    version,
    about = "List, show, release, renew and sweep the SandboxClaims the agent-sandbox backend made",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace of the claims (default: the context's namespace).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Only claims from this warm pool (v1beta1) or template (v1alpha1).
    #[arg(long, global = true)]
    source: Option<String>,
    /// agent-sandbox API version (auto asks the cluster's discovery).
    #[arg(long, global = true, value_enum, default_value_t = Version::Auto)]
    api_version: Version,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Version {
    Auto,
    V1beta1,
    V1alpha1,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The claims of this backend: conversation, age, TTL left, pod IP, Ready reason.
    List,
    /// One claim, by conversation id or claim name.
    Show {
        /// Conversation id or claim name.
        claim: String,
    },
    /// Delete a claim (and its sandbox), with its uid as a precondition.
    Release {
        /// Conversation id or claim name.
        claim: String,
        /// Exit 3 when there is no such claim (by default that is a success).
        #[arg(long)]
        strict: bool,
    },
    /// Push a claim's shutdown time to now + TTL.
    Renew {
        /// Conversation id or claim name.
        claim: String,
        /// The new time to live, from now (e.g. 30m, 2h).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Delete orphaned (no conversation id) and expired (shutdown time passed) claims.
    /// A dry run unless --yes.
    Sweep {
        /// Delete the candidates (without it, only list them).
        #[arg(long)]
        yes: bool,
        /// Every claim of this backend is a candidate, live or not.
        #[arg(long)]
        all: bool,
    },
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(ttl) if ttl.is_zero() => Err("must be longer than zero".into()),
        Ok(ttl) => Ok(ttl),
        Err(e) => Err(format!("{e}; write e.g. 30m or 2h")),
    }
}

/// Which step of a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading the kubeconfig context")]
    LoadKubeconfig(#[source] kube::config::KubeconfigError),
    #[error("finding a kubeconfig (KUBECONFIG, ~/.kube/config or in-cluster)")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("detecting the agent-sandbox API version")]
    Detect(#[source] sandbox_claim::api_version::Error),
    #[error("listing claims in namespace {namespace}")]
    List {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("no claim {claim:?} (by conversation id or claim name) in namespace {namespace}")]
    NotFound { claim: String, namespace: String },
    #[error(
        "claim {claim} has no conversation id annotation ({}); `sweep` deletes such orphans",
        labels::CONVERSATION_ID
    )]
    NoConversation { claim: String },
    #[error("claim {claim} has no source label ({})", labels::SOURCE)]
    NoSource { claim: String },
    #[error("claim {claim} is not named after its conversation {conversation:?}")]
    ForeignName { claim: String, conversation: String },
    #[error("releasing claim {claim}")]
    Release {
        claim: String,
        #[source]
        source: sandbox_claim::Error,
    },
    #[error("renewing claim {claim}")]
    Renew {
        claim: String,
        #[source]
        source: sandbox_claim::Error,
    },
    #[error("sweeping the claims of source {source_name}")]
    Sweep {
        source_name: String,
        #[source]
        source: sandbox_claim::Error,
    },
    #[error("encoding JSON output")]
    Json(#[source] serde_json::Error),
    #[error("writing output")]
    Write(#[source] io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NotFound { .. } => ExitCode::from(3),
            Self::Renew {
                source: sandbox_claim::Error::NotFound { .. },
                ..
            } => ExitCode::from(3),
            _ => ExitCode::FAILURE,
        }
    }
}

/// One claim, as listed and shown.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    namespace: String,
    uid: Option<String>,
    conversation_id: Option<String>,
    source: Option<String>,
    created: Option<String>,
    age_seconds: Option<i64>,
    shutdown_time: Option<String>,
    /// Negative once the shutdown time has passed.
    ttl_left_seconds: Option<i64>,
    sandbox: Option<String>,
    pod_ip: Option<String>,
    ready: Option<String>,
    ready_reason: Option<String>,
    ready_message: Option<String>,
    deleting: bool,
}

impl Row {
    fn new<K: ClaimResource>(claim: &K, now: Timestamp) -> Self {
        let created = claim.meta().creation_timestamp.as_ref().map(|t| t.0);
        let shutdown = claim
            .lifecycle()
            .and_then(|l| l.shutdown_time.as_ref())
            .map(|t| t.0);
        let status = claim.claim_status();
        let sandbox = status.and_then(|s| s.sandbox.as_ref());
        let ready = status.and_then(|s| s.ready());
        Self {
            name: claim.name_any(),
            namespace: claim.namespace().unwrap_or_default(),
            uid: claim.uid(),
            conversation_id: claim.annotations().get(labels::CONVERSATION_ID).cloned(),
            source: claim.labels().get(labels::SOURCE).cloned(),
            created: created.map(|t| t.to_string()),
            age_seconds: created.map(|t| now.duration_since(t).as_secs()),
            shutdown_time: shutdown.map(|t| t.to_string()),
            ttl_left_seconds: shutdown.map(|t| t.duration_since(now).as_secs()),
            sandbox: sandbox.and_then(|s| s.name.clone()),
            pod_ip: sandbox
                .and_then(|s| preferred_ip(&s.pod_ips))
                .map(|ip| ip.to_string()),
            ready: ready.map(|c| c.status.clone()),
            ready_reason: ready.map(|c| c.reason.clone()),
            ready_message: ready.map(|c| c.message.clone()),
            deleting: claim.meta().deletion_timestamp.is_some(),
        }
    }

    fn expired(&self) -> bool {
        self.ttl_left_seconds.is_some_and(|left| left <= 0)
    }

    fn ready_column(&self) -> String {
        match (&self.ready, &self.ready_reason) {
            (Some(status), Some(reason)) if !reason.is_empty() => format!("{status} ({reason})"),
            (Some(status), _) => status.clone(),
            (None, _) => "-".into(),
        }
    }

    fn ttl_column(&self) -> String {
        match self.ttl_left_seconds {
            None => "-".into(),
            Some(left) if left <= 0 => "expired".into(),
            Some(left) => compact(left),
        }
    }
}

/// `90061` → `1d1h1m1s`, to the two largest units.
fn compact(secs: i64) -> String {
    let secs = secs.max(0);
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3_600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: String = parts
        .iter()
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() { "0s".into() } else { text }
}

/// What every command works with.
struct Context {
    client: Client,
    namespace: String,
    version: ApiVersion,
    source: Option<String>,
    output: Output,
}

impl Context {
    async fn connect(cli: &Cli) -> Result<Self, CliError> {
        let options = KubeConfigOptions {
            context: cli.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match (&cli.kubeconfig, &cli.context) {
            (Some(path), _) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|source| CliError::ReadKubeconfig {
                        path: path.clone(),
                        source,
                    })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(CliError::LoadKubeconfig)?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(CliError::LoadKubeconfig)?,
            (None, None) => Config::infer().await.map_err(CliError::InferConfig)?,
        };
        let namespace = cli
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(CliError::Client)?;
        let version = match cli.api_version {
            Version::Auto => sandbox_claim::api_version::detect(&client)
                .await
                .map_err(CliError::Detect)?,
            Version::V1beta1 => ApiVersion::V1beta1,
            Version::V1alpha1 => ApiVersion::V1alpha1,
        };
        Ok(Self {
            client,
            namespace,
            version,
            source: cli.source.clone(),
            output: cli.output,
        })
    }

    /// The claims of this backend (managed-by label, and the source label if asked), by name.
    async fn list(&self) -> Result<Vec<Row>, CliError> {
        let mut selector = labels::managed_selector();
        if let Some(source) = &self.source {
            selector.push_str(&format!(",{}={source}", labels::SOURCE));
        }
        let params = ListParams::default().labels(&selector);
        let rows = match self.version {
            ApiVersion::V1beta1 => self.list_as::<v1beta1::SandboxClaim>(&params).await,
            ApiVersion::V1alpha1 => self.list_as::<v1alpha1::SandboxClaim>(&params).await,
        };
        let mut rows = rows.map_err(|source| CliError::List {
            namespace: self.namespace.clone(),
            source,
        })?;
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    async fn list_as<K: ClaimResource>(
        &self,
        params: &ListParams,
    ) -> Result<Vec<Row>, kube::Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let now = Timestamp::now();
        Ok(api
            .list(params)
            .await?
            .items
            .iter()
            .map(|claim| Row::new(claim, now))
            .collect())
    }

    /// The claim named `claim`, or else the one of conversation `claim`.
    async fn find(&self, claim: &str) -> Result<Option<Row>, CliError> {
        let rows = self.list().await?;
        let by_name = rows.iter().position(|r| r.name == claim);
        let index = by_name.or_else(|| {
            rows.iter()
                .position(|r| r.conversation_id.as_deref() == Some(claim))
        });
        Ok(index.map(|i| rows[i].clone()))
    }

    async fn get(&self, claim: &str) -> Result<Row, CliError> {
        self.find(claim).await?.ok_or_else(|| CliError::NotFound {
            claim: claim.to_owned(),
            namespace: self.namespace.clone(),
        })
    }

    fn options(&self, source: &str) -> ClaimOptions {
        ClaimOptions::default()
            .namespace(&self.namespace)
            .source(source)
            .api_version(match self.version {
                ApiVersion::V1beta1 => VersionSelection::V1beta1,
                ApiVersion::V1alpha1 => VersionSelection::V1alpha1,
            })
    }

    /// `sandbox_claim::Claims` for the row's source and name prefix, and its conversation.
    fn claims_for(&self, row: &Row, ttl: Option<Duration>) -> Result<(Claims, String), CliError> {
        let conversation = row
            .conversation_id
            .clone()
            .ok_or_else(|| CliError::NoConversation {
                claim: row.name.clone(),
            })?;
        let source = row.source.as_deref().ok_or_else(|| CliError::NoSource {
            claim: row.name.clone(),
        })?;
        let prefix =
            name_prefix(&row.name, &conversation).ok_or_else(|| CliError::ForeignName {
                claim: row.name.clone(),
                conversation: conversation.clone(),
            })?;
        let mut options = self.options(source).name_prefix(prefix);
        if let Some(ttl) = ttl {
            options = options.ttl(ttl);
        }
        Ok((Claims::new(self.client.clone(), options), conversation))
    }

    fn print_json(&self, value: &impl Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value).map_err(CliError::Json)?;
        writeln!(io::stdout().lock(), "{text}").map_err(CliError::Write)
    }

    fn print_rows(
        &self,
        rows: &[Row],
        why: Option<&dyn Fn(&Row) -> &'static str>,
    ) -> Result<(), CliError> {
        let mut header = vec!["NAME", "CONVERSATION", "AGE", "TTL-LEFT", "POD-IP", "READY"];
        if why.is_some() {
            header.push("WHY");
        }
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut line = vec![
                    r.name.clone(),
                    r.conversation_id.clone().unwrap_or_else(|| "-".into()),
                    r.age_seconds.map_or_else(|| "-".into(), compact),
                    r.ttl_column(),
                    r.pod_ip.clone().unwrap_or_else(|| "-".into()),
                    r.ready_column(),
                ];
                if let Some(why) = why {
                    line.push(why(r).into());
                }
                line
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                table
                    .iter()
                    .map(|line| line[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = io::stdout().lock();
        let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
        for line in std::iter::once(&header).chain(&table) {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            writeln!(out, "{}", cells.join("  ").trim_end()).map_err(CliError::Write)?;
        }
        Ok(())
    }

    fn print_one(&self, row: &Row) -> Result<(), CliError> {
        if self.output == Output::Json {
            return self.print_json(row);
        }
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let shutdown = match (&row.shutdown_time, row.ttl_left_seconds) {
            (Some(t), Some(left)) if left > 0 => format!("{t} (in {})", compact(left)),
            (Some(t), _) => format!("{t} (expired)"),
            (None, _) => "-".into(),
        };
        let ready = match &row.ready_message {
            Some(message) if !message.is_empty() => format!("{}: {message}", row.ready_column()),
            _ => row.ready_column(),
        };
        let lines = [
            ("name", row.name.clone()),
            ("namespace", row.namespace.clone()),
            ("uid", dash(&row.uid)),
            ("conversation", dash(&row.conversation_id)),
            ("source", dash(&row.source)),
            ("sandbox", dash(&row.sandbox)),
            ("pod ip", dash(&row.pod_ip)),
            ("created", dash(&row.created)),
            ("age", row.age_seconds.map_or_else(|| "-".into(), compact)),
            ("shutdown time", shutdown),
            ("ready", ready),
            ("deleting", if row.deleting { "yes" } else { "no" }.into()),
        ];
        let mut out = io::stdout().lock();
        for (key, value) in lines {
            writeln!(out, "{:<14}{value}", format!("{key}:")).map_err(CliError::Write)?;
        }
        Ok(())
    }
}

/// The name prefix `name` was derived from `conversation` with, if it was.
fn name_prefix(name: &str, conversation: &str) -> Option<String> {
    name.match_indices('-')
        .map(|(i, _)| &name[..i])
        .find(|prefix| naming::claim_name(prefix, conversation).is_ok_and(|n| n == name))
        .map(str::to_owned)
}

/// What a sweep (or its dry run) reports in JSON.
#[derive(Serialize)]
struct SweepOutput<'a> {
    dry_run: bool,
    candidates: &'a [Row],
    deleted: Vec<String>,
}

fn progress(message: impl std::fmt::Display) {
    // Progress goes to stderr; a closed stderr is not worth failing a deletion over.
    let _ = writeln!(io::stderr().lock(), "{message}");
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let ctx = Context::connect(&cli).await?;
    match cli.command {
        Command::List => {
            let rows = ctx.list().await?;
            match ctx.output {
                Output::Json => ctx.print_json(&rows)?,
                Output::Table => ctx.print_rows(&rows, None)?,
            }
        }
        Command::Show { claim } => {
            let row = ctx.get(&claim).await?;
            ctx.print_one(&row)?;
        }
        Command::Release { claim, strict } => {
            let Some(row) = ctx.find(&claim).await? else {
                if strict {
                    return Err(CliError::NotFound {
                        claim,
                        namespace: ctx.namespace,
                    });
                }
                progress(format_args!(
                    "no claim {claim:?} in namespace {}: nothing to release",
                    ctx.namespace
                ));
                return Ok(ExitCode::SUCCESS);
            };
            let (claims, conversation) = ctx.claims_for(&row, None)?;
            claims
                .release(conversation.as_str())
                .await
                .map_err(|source| CliError::Release {
                    claim: row.name.clone(),
                    source,
                })?;
            progress(format_args!(
                "released claim {} (conversation {conversation:?})",
                row.name
            ));
        }
        Command::Renew { claim, ttl } => {
            let row = ctx.get(&claim).await?;
            let (claims, conversation) = ctx.claims_for(&row, Some(ttl))?;
            claims
                .renew(conversation.as_str())
                .await
                .map_err(|source| CliError::Renew {
                    claim: row.name.clone(),
                    source,
                })?;
            let renewed = ctx.get(&row.name).await?;
            ctx.print_one(&renewed)?;
        }
        Command::Sweep { yes, all } => {
            let why = |row: &Row| {
                if row.conversation_id.is_none() {
                    "orphan (no conversation id)"
                } else if row.expired() {
                    "expired"
                } else {
                    "--all"
                }
            };
            let candidates: Vec<Row> = ctx
                .list()
                .await?
                .into_iter()
                .filter(|r| !r.deleting && (all || r.expired() || r.conversation_id.is_none()))
                .collect();
            if !yes {
                match ctx.output {
                    Output::Json => ctx.print_json(&SweepOutput {
                        dry_run: true,
                        candidates: &candidates,
                        deleted: Vec::new(),
                    })?,
                    Output::Table => ctx.print_rows(&candidates, Some(&why))?,
                }
                progress(format_args!(
                    "dry run: {} claim(s) would be deleted; run again with --yes to delete them",
                    candidates.len()
                ));
                return Ok(ExitCode::SUCCESS);
            }
            let mut sources = BTreeSet::new();
            for row in &candidates {
                match &row.source {
                    Some(source) => {
                        sources.insert(source.clone());
                    }
                    None => progress(format_args!(
                        "skipping claim {}: no source label ({})",
                        row.name,
                        labels::SOURCE
                    )),
                }
            }
            let mut deleted = Vec::new();
            for source in sources {
                progress(format_args!("sweeping the claims of source {source}…"));
                let claims = Claims::new(ctx.client.clone(), ctx.options(&source));
                let report = if all {
                    claims.release_all().await
                } else {
                    claims.sweep(|_| true).await
                }
                .map_err(|error| CliError::Sweep {
                    source_name: source.clone(),
                    source: error,
                })?;
                for name in &report.deleted {
                    progress(format_args!("deleted claim {name}"));
                }
                progress(format_args!(
                    "source {source}: {} deleted, {} kept",
                    report.deleted.len(),
                    report.kept
                ));
                deleted.extend(report.deleted);
            }
            match ctx.output {
                Output::Json => ctx.print_json(&SweepOutput {
                    dry_run: false,
                    candidates: &candidates,
                    deleted,
                })?,
                Output::Table => {
                    let mut out = io::stdout().lock();
                    for name in &deleted {
                        writeln!(out, "deleted {name}").map_err(CliError::Write)?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            let mut message = format!("agent-sandbox-claims: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            progress(message);
            error.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_the_two_largest_units() {
        assert_eq!(compact(0), "0s");
        assert_eq!(compact(59), "59s");
        assert_eq!(compact(3_600), "1h");
        assert_eq!(compact(3_661), "1h1m");
        assert_eq!(compact(90_061), "1d1h");
        assert_eq!(compact(-5), "0s");
    }

    #[test]
    fn the_name_prefix_is_recovered_from_the_claim_name() {
        let name = naming::claim_name("ax-conv", "Conversation 1").unwrap();
        assert_eq!(
            name_prefix(&name, "Conversation 1").as_deref(),
            Some("ax-conv")
        );
        assert_eq!(name_prefix(&name, "another"), None);
        assert_eq!(name_prefix("nodash", "x"), None);
    }

    #[test]
    fn the_ttl_must_be_a_positive_duration() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
