//! The demo as an in-cluster Job: a pod in the AX controller's namespace, with its service account and its label,
//! so that it reaches the sandboxes exactly as a controller in direct mode does (`podIP:8494`, admitted by the
//! template's NetworkPolicy) and claims them with the controller's RBAC (`deploy/base/controller-rbac.yaml`).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Capabilities, Container, EmptyDirVolumeSource, PodSecurityContext, PodSpec,
            PodTemplateSpec, SeccompProfile, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    NAMESPACE, WARM_POOL,
    cluster::{Cluster, run_with_timeout, step},
    probe::ask,
};

/// The Job's name.
pub(super) const JOB: &str = "ax-e2e-demo";
/// Where the AX controller runs (`deploy/base/namespaces.yaml`), and so the demo.
pub(super) const AX_NAMESPACE: &str = "ax-system";
/// The AX controller's service account, bound to the claims Role in [`NAMESPACE`].
pub(super) const SERVICE_ACCOUNT: &str = "ax-controller";
/// The label the template's NetworkPolicy selects the AX controller's pods by.
pub(super) const NAME_LABEL: &str = "app.kubernetes.io/name";
/// How long the Job may run before Kubernetes fails it (the demo itself takes seconds once the pool is warm).
const ACTIVE_DEADLINE: Duration = Duration::from_secs(600);

/// The Job that runs `image` (the demo image, loaded into the nodes) against the deployed warm pool.
pub(super) fn demo_job(image: &str) -> Job {
    let labels = BTreeMap::from([
        (NAME_LABEL.to_owned(), SERVICE_ACCOUNT.to_owned()),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "xtask-e2e".to_owned(),
        ),
    ]);
    let nonroot = i64::from(crate::image::NONROOT);
    let container = Container {
        name: "demo".to_owned(),
        image: Some(image.to_owned()),
        // Loaded by `kind load image-archive`; there is no registry to pull from.
        image_pull_policy: Some("Never".to_owned()),
        args: Some(
            [
                "--in-cluster",
                "--namespace",
                NAMESPACE,
                "--warm-pool",
                WARM_POOL,
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        // The image's HOME and working directory: the one writable place under a read-only root.
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: crate::image::WORKDIR.to_owned(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(JOB.to_owned()),
            namespace: Some(AX_NAMESPACE.to_owned()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // One attempt: a failed demo is a failed e2e, and a retry would hide a flaky first claim.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(ACTIVE_DEADLINE.as_secs() as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(SERVICE_ACCOUNT.to_owned()),
                    // The demo talks to the API server with this token, as the controller does.
                    automount_service_account_token: Some(true),
                    restart_policy: Some("Never".to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(nonroot),
                        run_as_group: Some(nonroot),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "tmp".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// Where a Job stands, from its conditions.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Running,
    Complete,
    /// The `Failed` condition's reason and message.
    Failed(String),
}

/// Reads the terminal conditions only: `FailureTarget` and `SuccessCriteriaMet` (Kubernetes 1.31+) come before
/// the pod has stopped, and its logs are complete only once `Failed` or `Complete` is set.
pub(super) fn outcome(job: &Job) -> Outcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_deref())
        .unwrap_or_default();
    for condition in conditions.iter().filter(|c| c.status == "True") {
        match condition.type_.as_str() {
            "Complete" => return Outcome::Complete,
            "Failed" => {
                return Outcome::Failed(format!(
                    "{}: {}",
                    condition.reason.as_deref().unwrap_or("no reason"),
                    condition.message.as_deref().unwrap_or("no message")
                ));
            }
            _ => {}
        }
    }
    Outcome::Running
}

impl Cluster {
    fn in_namespace(&self, args: &[&str]) -> duct::Expression {
        let mut argv = vec!["-n", AX_NAMESPACE];
        argv.extend_from_slice(args);
        self.kubectl(&argv)
    }

    /// Runs the demo Job to its end, prints its logs, and fails naming the Job when the demo failed. When the cluster
    /// is kept, the Job is deleted afterwards (its logs are printed above).
    pub(super) fn run_demo_job(&self, image: &str) -> anyhow::Result<()> {
        let job = format!("job/{JOB}");
        // A finished Job stays, and its pod template cannot change: start from none (what `--reuse` may find).
        step(
            &format!("kubectl delete {job} -n {AX_NAMESPACE} (left by an earlier run)"),
            Duration::from_secs(120),
            self.in_namespace(&["delete", &job, "--ignore-not-found", "--wait=true"]),
        )?;
        let manifest = serde_json::to_string(&demo_job(image)).context("serialising the Job")?;
        step(
            &format!("kubectl apply {job} -n {AX_NAMESPACE} (the demo, {image})"),
            Duration::from_secs(60),
            self.kubectl(&["apply", "-f", "-"]).stdin_bytes(manifest),
        )?;

        let what = format!("{AX_NAMESPACE}/{JOB}");
        println!("==> waiting for Job {what} to complete or fail");
        let started = Instant::now();
        let outcome = self.wait_for_job(ACTIVE_DEADLINE + Duration::from_secs(60));
        println!(
            "<== Job {what}: {} in {:.1?}",
            match &outcome {
                Ok(Outcome::Complete) => "complete",
                _ => "FAILED",
            },
            started.elapsed()
        );
        println!("---- kubectl logs {job} -n {AX_NAMESPACE}");
        let _ = run_with_timeout(
            &self
                .in_namespace(&["logs", &job, "--all-containers", "--tail=-1"])
                .unchecked(),
            Duration::from_secs(60),
        );
        if !matches!(outcome, Ok(Outcome::Complete)) {
            // Why a pod did not start (image, admission, scheduling) is in its events, not its logs.
            println!("---- kubectl describe pods -l job-name={JOB} -n {AX_NAMESPACE}");
            let _ = run_with_timeout(
                &self
                    .in_namespace(&["describe", "pods", "-l", &format!("job-name={JOB}")])
                    .unchecked(),
                Duration::from_secs(60),
            );
        }
        if !self.delete_on_drop {
            step(
                &format!("kubectl delete {job} -n {AX_NAMESPACE} (the cluster is kept)"),
                Duration::from_secs(120),
                self.in_namespace(&["delete", &job, "--ignore-not-found", "--wait=false"]),
            )?;
        }
        match outcome? {
            Outcome::Complete => Ok(()),
            Outcome::Failed(why) => bail!("the demo Job {what} failed ({why}); its logs are above"),
            Outcome::Running => unreachable!("wait_for_job returns a terminal outcome"),
        }
    }

    /// Polls the Job until it is `Complete` or `Failed`; an error after `timeout`.
    fn wait_for_job(&self, timeout: Duration) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        loop {
            let json = ask(
                &format!("kubectl get job {JOB}"),
                self.in_namespace(&["get", "job", JOB, "-o", "json"]),
            )?;
            let job: Job = serde_json::from_str(&json).context("parsing the Job")?;
            match outcome(&job) {
                Outcome::Running if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_secs(2));
                }
                Outcome::Running => bail!(
                    "the demo Job {AX_NAMESPACE}/{JOB} neither completed nor failed in {timeout:?}"
                ),
                done => return Ok(done),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn deployed(file: &str) -> Vec<Value> {
        let path = crate::workspace_root().join("deploy/base").join(file);
        let yaml = std::fs::read_to_string(&path).unwrap();
        serde_saphyr::from_multiple(&yaml).unwrap()
    }

    fn job() -> Value {
        serde_json::to_value(demo_job(crate::image::DEMO_TAG)).unwrap()
    }

    /// Whether `selector` (a LabelSelector) selects `labels`; expressions are not read, so they never match.
    fn selects(selector: &Value, labels: &Value) -> bool {
        selector.get("matchExpressions").is_none()
            && selector["matchLabels"]
                .as_object()
                .is_some_and(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    #[test]
    fn the_templates_network_policy_admits_the_jobs_pod_on_the_axp_port() {
        let job = job();
        let namespace = job["metadata"]["namespace"].as_str().unwrap();
        // The label the API server puts on every namespace.
        let namespace_labels = json!({ "kubernetes.io/metadata.name": namespace });
        let pod_labels = &job["spec"]["template"]["metadata"]["labels"];
        let template = deployed("sandbox-template.yaml").remove(0);
        let ingress = template["spec"]["networkPolicy"]["ingress"]
            .as_array()
            .unwrap();
        let admitting = ingress.iter().find(|rule| {
            let port = rule["ports"].as_array().unwrap().iter().any(|p| {
                p["port"] == i64::from(axp_transport::DEFAULT_PORT) && p["protocol"] == "TCP"
            });
            port && rule["from"].as_array().unwrap().iter().any(|peer| {
                selects(&peer["namespaceSelector"], &namespace_labels)
                    && selects(&peer["podSelector"], pod_labels)
            })
        });
        assert!(
            admitting.is_some(),
            "no ingress rule admits {pod_labels} in {namespace}: {ingress:#?}"
        );
    }

    #[test]
    fn the_jobs_service_account_is_bound_to_the_claims_role_in_the_agents_namespace() {
        let job = job();
        let namespace = &job["metadata"]["namespace"];
        let account = &job["spec"]["template"]["spec"]["serviceAccountName"];
        let rbac = deployed("controller-rbac.yaml");
        assert!(rbac.iter().any(|doc| doc["kind"] == "ServiceAccount"
            && doc["metadata"]["name"] == *account
            && doc["metadata"]["namespace"] == *namespace));
        let binding = rbac
            .iter()
            .find(|doc| doc["kind"] == "RoleBinding")
            .unwrap();
        assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
        assert!(
            binding["subjects"].as_array().unwrap().contains(&json!({
                "kind": "ServiceAccount",
                "name": account,
                "namespace": namespace,
            })),
            "{binding:#}"
        );
    }

    #[test]
    fn the_job_runs_the_loaded_demo_image_once_in_cluster_and_locked_down() {
        let job = job();
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["kind"], "Job");
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 600);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], true);
        assert_eq!(
            pod["securityContext"],
            json!({
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            })
        );
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "agent-sandbox-demo:dev");
        assert_eq!(container["image"], crate::image::DEMO_TAG);
        assert_eq!(container["imagePullPolicy"], "Never");
        assert_eq!(
            container["args"],
            json!([
                "--in-cluster",
                "--namespace",
                "agent-platform",
                "--warm-pool",
                "python-sandbox-pool"
            ])
        );
        assert_eq!(
            container["securityContext"],
            json!({
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"] },
            })
        );
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/tmp");
    }

    #[test]
    fn only_complete_or_failed_ends_the_wait() {
        let with = |conditions: Value| -> Job {
            serde_json::from_value(json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": { "name": JOB },
                "status": { "conditions": conditions },
            }))
            .unwrap()
        };
        assert_eq!(outcome(&Job::default()), Outcome::Running);
        assert_eq!(
            outcome(&with(json!([
                { "type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded" },
            ]))),
            Outcome::Running
        );
        assert_eq!(
            outcome(&with(json!([
                { "type": "SuccessCriteriaMet", "status": "True" },
                { "type": "Complete", "status": "True" },
            ]))),
            Outcome::Complete
        );
        assert_eq!(
            outcome(&with(json!([
                { "type": "Complete", "status": "False" },
                { "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                  "message": "Job was active longer than specified deadline" },
            ]))),
            Outcome::Failed(
                "DeadlineExceeded: Job was active longer than specified deadline".to_owned()
            )
        );
    }
}
