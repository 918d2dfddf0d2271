//! `--python-venv`: the code runs in a virtual environment, as that venv's `python` would run it.

mod common;

use std::path::Path;

use common::*;

/// The interpreter the agent embeds, as its worker reports it (`sys.executable`).
async fn embedded_python() -> String {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "import sys; print(sys.executable)")
        .await
        .text()
}

#[tokio::test]
async fn code_runs_in_the_venv_with_its_site_packages_and_its_python_as_sys_executable() {
    let python = embedded_python().await;
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let made = std::process::Command::new(&python)
        .args(["-I", "-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("the embedded interpreter runs");
    assert!(
        made.status.success(),
        "{python} -m venv failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .expect("lib/pythonX.Y")
        .unwrap()
        .path()
        .join("site-packages");
    std::fs::write(site.join("venv_probe.py"), "WHERE = 'in the venv'\n").unwrap();

    let venv_arg = venv.to_str().unwrap();
    let agent = agent(&["--python-venv", venv_arg]).await;
    let mut client = client(&agent).await;
    let code = "import os, sys, venv_probe\n\
                print(venv_probe.WHERE)\n\
                print(sys.prefix)\n\
                print(sys.executable)";
    let text = run(&mut client, "c", code).await.text();
    let lines: Vec<&str> = text.lines().collect();
    let canonical = |p: &str| std::fs::canonicalize(p).unwrap();
    assert_eq!(lines[0], "in the venv", "{text}");
    assert_eq!(canonical(lines[1]), canonical(venv_arg), "{text}");
    assert_eq!(
        Path::new(lines[2]),
        venv.join("bin").join("python"),
        "{text}"
    );

    // Without the flag the same module is not importable: the venv, not the base, supplied it.
    let plain = common::agent(&[]).await;
    let mut client = common::client(&plain).await;
    let text = run(&mut client, "c", "import venv_probe").await.text();
    assert!(text.contains("ModuleNotFoundError"), "{text}");
}

#[tokio::test]
async fn a_directory_that_is_not_a_venv_stops_the_agent_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--python-venv"])
        .arg(dir.path())
        .stdin(std::process::Stdio::null())
        .output();
    let output = within(std::time::Duration::from_secs(30), output)
        .await
        .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is not a virtual environment (it has no pyvenv.cfg)",
            dir.path().display()
        )),
        "{stderr}"
    );
}
