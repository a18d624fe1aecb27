//! The real `hvac` client from PyPI (in the venv `make setup` creates), running the scripts
//! under `tests/py/`.

use std::path::PathBuf;
use std::process::Command;

/// The venv's Python: `FERRY_VENV`, else the cache directory `scripts/setup.sh` uses.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("FERRY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::cache_dir().join("venv"));
    venv.join("bin/python")
}

/// Runs `tests/py/<script>` with the venv's Python and `env`; returns what it printed, or fails
/// with that and its errors unless it exits successfully.
pub async fn script_output(script: &str, env: &[(&str, String)]) -> anyhow::Result<String> {
    let output = run(script, env).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "{script} failed ({})\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// Runs `tests/py/<script>` with the venv's Python and `env`; fails, with `logs()` (the
/// servers' logs), unless it succeeds and prints "all checks passed".
pub async fn run_script(
    script: &str,
    env: &[(&str, String)],
    logs: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let output = run(script, env).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "hvac checks failed\n{stdout}\n{stderr}\n--- ferry-vault logs ---\n{}",
        logs()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    Ok(())
}

/// Runs `tests/py/<script>` with the venv's Python and `env`, collecting its output.
async fn run(script: &str, env: &[(&str, String)]) -> anyhow::Result<std::process::Output> {
    let python = venv_python();
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run `make setup` (it installs hvac into a venv)",
        python.display()
    );
    let script = format!("{}/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(python);
    command.arg(script);
    for (name, value) in env {
        command.env(name, value);
    }
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}
