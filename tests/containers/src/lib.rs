//! Container tests of the agent's image: each test starts the image as the SandboxTemplate runs
//! it (see [`template`]) with testcontainers and drives it over AXP from the host through the
//! mapped port, with the project's own client ([`axp_transport::client::AxpClient`]).
//!
//! The images come from `PYTHON_SANDBOX_AGENT_IMAGES` (comma-separated tags, e.g.
//! `python-sandbox-agent:dev,python-sandbox-agent:dockerfile`); every test runs against each.
//! Unset, the tests print one line saying they are skipped and pass, except under `CI`, where
//! they fail. Set, a missing image or an unreachable engine fails them.
//!
//! ```text
//! cargo xtask image && docker load -i target/image/python-sandbox-agent.tar
//! PYTHON_SANDBOX_AGENT_IMAGES=python-sandbox-agent:dev cargo test -p container-tests
//! ```
//!
//! Containers carry the label [`LABEL`] (value: the test's name); leftovers of a killed run:
//! `docker ps -a --filter label=python-sandbox-agent.container-test`.
//!
//! All tests share one tokio runtime ([`run_for_each_image`]): testcontainers keeps one Docker
//! client per process, whose connections must not die with a single test's runtime, and the
//! Docker API proxy ([`engine`]) serves every test.

pub mod agent;
pub mod engine;
pub mod template;

use std::{
    future::Future,
    io::Write as _,
    panic::AssertUnwindSafe,
    sync::{LazyLock, OnceLock},
    time::{Duration, Instant},
};

use engine::Engine;

/// The variable naming the images under test.
pub const IMAGES_ENV: &str = "PYTHON_SANDBOX_AGENT_IMAGES";

/// The label every test container carries; its value is the test's name.
pub const LABEL: &str = "python-sandbox-agent.container-test";

/// The longest one test may take against one image, containers included.
pub const TEST_LIMIT: Duration = Duration::from_secs(240);

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the container tests' tokio runtime")
});

/// What the tests run against, found once per process.
#[derive(Debug)]
struct Setup {
    images: Vec<String>,
}

static SETUP: OnceLock<Result<Option<Setup>, String>> = OnceLock::new();

/// The images to test, `None` to skip (after one line saying why), or the reason the tests fail.
fn setup() -> Result<Option<&'static Setup>, &'static str> {
    match SETUP.get_or_init(|| RUNTIME.block_on(find_setup())) {
        Ok(setup) => Ok(setup.as_ref()),
        Err(message) => Err(message),
    }
}

async fn find_setup() -> Result<Option<Setup>, String> {
    let in_ci = std::env::var_os("CI").is_some();
    let images: Vec<String> = std::env::var(IMAGES_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let engine = match engine::socket_from_env() {
        Ok(socket) => Engine::probe(&socket).await.map_err(|e| {
            format!(
                "the Docker engine at {} is unreachable: {e}",
                socket.display()
            )
        }),
        Err(e) => Err(e),
    };
    if images.is_empty() {
        let engine_note = match &engine {
            Ok(engine) => format!("engine {} reachable", engine.version),
            Err(e) => e.clone(),
        };
        if in_ci {
            return Err(format!(
                "{IMAGES_ENV} is unset: CI must build and load the images and list them ({engine_note})"
            ));
        }
        say(&format!(
            "container tests skipped: {IMAGES_ENV} is unset ({engine_note}); e.g. {IMAGES_ENV}=python-sandbox-agent:dev"
        ));
        return Ok(None);
    }
    let engine = engine?;
    let mut missing = Vec::new();
    for image in &images {
        if !engine.has_image(image).await? {
            missing.push(image.as_str());
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "images missing from the Docker engine: {} (build and load: `cargo xtask image && docker load -i target/image/python-sandbox-agent.tar`)",
            missing.join(", ")
        ));
    }
    let proxy = engine.serve_proxy().await?;
    // SAFETY: set once, before the first testcontainers call (every test comes through here
    // first), while the other test threads at most wait on this OnceLock or read the
    // environment through std, which serializes its own environment access.
    unsafe { std::env::set_var("DOCKER_HOST", format!("tcp://{proxy}")) };
    say(&format!(
        "container tests: images {}; engine {} (API {}) at {} via the API proxy on {proxy}",
        images.join(", "),
        engine.version,
        engine.api,
        engine.socket.display(),
    ));
    Ok(Some(Setup { images }))
}

/// One line on stderr, past libtest's capture, so that it shows for passing tests too.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `test` against every image under test, each bounded by [`TEST_LIMIT`], on the shared
/// runtime; every image runs even when one fails, and each failure names its image. Returns
/// without running anything when the tests are skipped.
///
/// # Panics
///
/// When the tests cannot run (see the crate docs) or `test` fails.
pub fn run_for_each_image<F, Fut>(name: &'static str, test: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let setup = match setup() {
        Ok(Some(setup)) => setup,
        Ok(None) => return,
        Err(message) => panic!("{message}"),
    };
    let mut failures = Vec::new();
    for image in &setup.images {
        let started = Instant::now();
        let body = test(image.clone());
        // On this thread (so that libtest captures what a failure prints), on the shared runtime.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            RUNTIME.block_on(async { tokio::time::timeout(TEST_LIMIT, body).await })
        }));
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(Ok(())) => say(&format!("{name} [{image}]: ok in {took:.1}s")),
            Ok(Err(_)) => failures.push(format!("[{image}] did not finish within {TEST_LIMIT:?}")),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(non-string panic)");
                failures.push(format!("[{image}] failed after {took:.1}s: {message}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One test per function: `container_test!(fn a_sentence_naming_the_behaviour(image) { … })`
/// runs the body against every image under test.
#[macro_export]
macro_rules! container_test {
    ($(#[$meta:meta])* fn $name:ident($image:ident) $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::run_for_each_image(stringify!($name), |$image: String| async move $body);
        }
    };
}
