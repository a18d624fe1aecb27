//! `wrk`, the HTTP client of the `openbao` benchmark: the Lua script it runs, one run with its
//! own CPU time, and what the script printed.
//!
//! The script sends one kind of Vault API request (KV v2 write or read, transit encrypt, token
//! create or lookup) over every connection, counts the answers that are not 2xx in its
//! `response` hook, and prints the totals with wrk's latency percentiles in `done`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use ferry_tests::process::Process;
use ferry_tests::wait_for;

use crate::procfs::{alive, process_cpu_seconds};

pub const CONNECTIONS: u32 = 16;
/// One client thread: on two cores, wrk's own CPU is taken from the servers.
pub const THREADS: u32 = 1;
/// A case fails above this fraction of non-2xx answers and socket errors.
const MAX_FAILED_FRACTION: f64 = 0.001;
const SCRIPT_FILE: &str = "vault.lua";

/// wrk's script: `wrk ... -- <request> <token> <token to look up> <keys> <plaintext> <offset>`. Each thread
/// counts its non-2xx answers in `response`; `done` adds them up and prints one line of
/// results and one with the first failure, which [`WrkOutcome::parse`] reads.
const SCRIPT: &str = r#"
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  kind, lookup, keys, plaintext = args[1], args[3], tonumber(args[4]), args[5]
  offset = tonumber(args[6])
  -- kv_read_absent reads paths never written: each one once, and 404 is its right answer.
  expected = (kind == "kv_read_absent") and 404 or nil
  headers = { ["X-Vault-Token"] = args[2], ["Content-Type"] = "application/json" }
  pad = string.rep("v", VALUE_PAD)
  n = 0
  failures = 0
  first_failure = ""
end

function request()
  n = n + 1
  local key = (n * 7 + id * 131) % keys
  if kind == "kv_write" then
    return wrk.format("POST", "/v1/secret/data/bench/" .. key, headers,
      string.format('{"data":{"value":"%010d%s"}}', n, pad))
  elseif kind == "kv_read" then
    return wrk.format("GET", "/v1/secret/data/bench/" .. key, headers)
  elseif kind == "kv_read_absent" then
    return wrk.format("GET", "/v1/secret/data/absent/" .. id .. "-" .. (offset + n), headers)
  elseif kind == "transit_encrypt" then
    return wrk.format("POST", "/v1/transit/encrypt/bench", headers,
      '{"plaintext":"' .. plaintext .. '"}')
  elseif kind == "token_create" then
    return wrk.format("POST", "/v1/auth/token/create", headers,
      '{"policies":["bench"],"ttl":"1h"}')
  elseif kind == "token_lookup" then
    return wrk.format("POST", "/v1/auth/token/lookup", headers, '{"token":"' .. lookup .. '"}')
  end
  error("unknown request " .. tostring(kind))
end

function response(status, headers, body)
  if status ~= expected and (status < 200 or status > 299) then
    failures = failures + 1
    if first_failure == "" then
      first_failure = status .. " " .. string.sub(body or "", 1, 400)
    end
  end
end

function done(summary, latency, requests)
  local failed, first = 0, ""
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("failures")
    local f = thread:get("first_failure")
    if first == "" and f ~= nil then first = f end
  end
  local e = summary.errors
  io.write(string.format(
    "ferry-bench requests=%d duration_us=%d non_2xx=%d socket_errors=%d p50_us=%.0f p99_us=%.0f\n",
    summary.requests, summary.duration, failed, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  io.write("ferry-bench first_failure=" .. string.gsub(first, "\n", " ") .. "\n")
end
"#;

/// What wrk's `done` hook printed.
#[derive(Debug, PartialEq)]
pub struct WrkOutcome {
    pub requests: u64,
    pub duration_us: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub first_failure: String,
}

impl WrkOutcome {
    fn parse(output: &str) -> anyhow::Result<Self> {
        let line = output
            .lines()
            .filter_map(|l| l.strip_prefix("ferry-bench "))
            .find(|l| l.starts_with("requests="))
            .context("wrk printed no results line")?;
        let mut fields = BTreeMap::new();
        for (i, part) in line.split_whitespace().enumerate() {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("unreadable field {i} of wrk's results: {part:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("unreadable {key} in wrk's results: {value:?}"))?;
            fields.insert(key, value);
        }
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .with_context(|| format!("no {key} in wrk's results"))
        };
        let first_failure = output
            .lines()
            .find_map(|l| l.strip_prefix("ferry-bench first_failure="))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Self {
            requests: field("requests")? as u64,
            duration_us: field("duration_us")? as u64,
            non_2xx: field("non_2xx")? as u64,
            socket_errors: field("socket_errors")? as u64,
            p50_us: field("p50_us")?,
            p99_us: field("p99_us")?,
            first_failure,
        })
    }

    /// Fails when more than [`MAX_FAILED_FRACTION`] of the requests failed.
    pub fn check(&self, what: &str) -> anyhow::Result<()> {
        ensure!(self.requests > 0, "{what}: no request completed");
        let failed = self.non_2xx + self.socket_errors;
        ensure!(
            failed as f64 <= self.requests as f64 * MAX_FAILED_FRACTION,
            "{what}: {failed} of {} requests failed ({} non-2xx, {} socket errors), first \
             failure: {}",
            self.requests,
            self.non_2xx,
            self.socket_errors,
            if self.first_failure.is_empty() {
                "(no HTTP answer)"
            } else {
                &self.first_failure
            }
        );
        Ok(())
    }
}

/// What to send: the script's arguments.
pub struct Requests<'a> {
    /// `kv_write`, `kv_read`, `kv_read_absent`, `transit_encrypt`, `token_create` or
    /// `token_lookup`.
    pub request: &'a str,
    pub token: &'a str,
    /// The token `token_lookup` looks up.
    pub lookup_token: &'a str,
    /// KV cases cycle through `secret/data/bench/0` to `<keys - 1>`.
    pub keys: usize,
    /// Base64, for `transit_encrypt`.
    pub plaintext: &'a str,
    /// `kv_read_absent` reads `secret/data/absent/<thread>-<offset + n>` on its `n`th request.
    pub offset: u64,
}

/// Writes the script into `dir`, for [`run`]; KV writes send values of `value_bytes`.
pub fn write_script(dir: &Path, value_bytes: usize) -> anyhow::Result<()> {
    // The value is a 10-digit counter and padding.
    let script = SCRIPT.replace("VALUE_PAD", &value_bytes.saturating_sub(10).to_string());
    let path = dir.join(SCRIPT_FILE);
    std::fs::write(&path, script).with_context(|| format!("failed to write {}", path.display()))
}

/// Runs wrk with the script in `dir` against `url` for `seconds`, its output in `dir/<log>`;
/// returns what it printed and its own CPU seconds.
pub async fn run(
    dir: &Path,
    log: &str,
    url: &str,
    seconds: u64,
    requests: &Requests<'_>,
) -> anyhow::Result<(WrkOutcome, f64)> {
    let log = dir.join(log);
    // Truncate the log of an earlier run (the warm-up).
    std::fs::write(&log, "").with_context(|| format!("failed to create {}", log.display()))?;
    let mut command = Command::new("wrk");
    command
        .arg(format!("--threads={THREADS}"))
        .arg(format!("--connections={CONNECTIONS}"))
        .arg(format!("--duration={seconds}s"))
        // A slow answer is measured, not counted as an error.
        .arg("--timeout=10s")
        .arg("--latency")
        .arg(format!("--script={}", dir.join(SCRIPT_FILE).display()))
        .arg(url)
        .arg("--")
        .args([
            requests.request,
            requests.token,
            requests.lookup_token,
            &requests.keys.to_string(),
            requests.plaintext,
            &requests.offset.to_string(),
        ]);
    let mut wrk = Process::spawn("wrk", command, &log).context("is wrk installed (make setup)?")?;
    let pid = wrk.pid().context("wrk did not start")?;
    // Poll until wrk exits; its CPU time is still readable while it waits to be reaped.
    wait_for(
        "wrk to finish",
        Duration::from_secs(seconds + 60),
        || async { (!alive(pid)).then_some(()) },
    )
    .await?;
    let client_cpu = process_cpu_seconds(pid).unwrap_or(f64::NAN);
    let status = wrk.exited().context("wrk is gone but was not reaped")?;
    let output = std::fs::read_to_string(&log)
        .with_context(|| format!("failed to read wrk's output {}", log.display()))?;
    ensure!(status.success(), "wrk failed ({status}):\n{output}");
    let outcome = WrkOutcome::parse(&output).with_context(|| output.clone())?;
    Ok((outcome, client_cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_script_prints() {
        let output = "Running 5s test @ http://127.0.0.1:1\n\
            ferry-bench requests=5000 duration_us=5001000 non_2xx=3 socket_errors=1 \
            p50_us=1200 p99_us=9800\n\
            ferry-bench first_failure=403 {\"errors\":[\"permission denied\"]}\n";
        let parsed = WrkOutcome::parse(output).unwrap();
        assert_eq!(parsed.requests, 5000);
        assert_eq!(parsed.duration_us, 5_001_000);
        assert_eq!((parsed.non_2xx, parsed.socket_errors), (3, 1));
        assert_eq!((parsed.p50_us, parsed.p99_us), (1200.0, 9800.0));
        assert_eq!(
            parsed.first_failure,
            "403 {\"errors\":[\"permission denied\"]}"
        );
        assert!(parsed.check("case").is_ok(), "4 of 5000 is under 0.1%");
        let failing = WrkOutcome {
            non_2xx: 6,
            ..parsed
        };
        let err = failing.check("case").unwrap_err().to_string();
        assert!(err.contains("permission denied"), "{err}");
        assert!(WrkOutcome::parse("no results").is_err());
    }
}
