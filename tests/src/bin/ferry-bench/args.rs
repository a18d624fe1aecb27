//! Command-line flags: `--seconds`, `--keys`, `--quick`, `--only`.

use std::collections::BTreeSet;

use anyhow::{Context, bail, ensure};

const DEFAULT_KEYS: [u64; 2] = [100_000, 1_000_000];
const QUICK_KEYS: u64 = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bench {
    Write,
    Recovery,
    Memory,
    Replication,
    /// Only the replication lag cases (part of `replication`).
    Lag,
    /// Only the replication open-loop sweep for the highest sustainable rate (part of
    /// `replication`).
    Sweep,
    /// Only the replication catch-up case (part of `replication`).
    CatchUp,
    Vault,
    /// ferry-vault against OpenBao with `wrk`.
    OpenBao,
    Operator,
    Nodes,
    /// The charts on real Kubernetes regions (needs root).
    Kube,
}

#[derive(Debug)]
pub struct Args {
    pub seconds: f64,
    pub keys: Vec<u64>,
    pub quick: bool,
    pub only: BTreeSet<Bench>,
}

const USAGE: &str = "usage: ferry-bench [--seconds N] [--keys N[,N...]] [--quick] \
                     [--only write|recovery|memory|replication|lag|sweep|catchup|vault|openbao|operator|nodes|kube[,...]]\n\
                     lag, sweep, catchup: only the replication lag cases, the open-loop sweep for \
                     the highest sustainable rate, or the catch-up case, of replication\n\
                     --seconds: measured time per write, lag, sweep and openbao case, and the \
                     catch-up outage (default 5)\n\
                     --keys: key counts for recovery; the largest for memory and merkle \
                     reconciliation (default 100k,1M; 20k with --quick)";

pub fn parse_args(raw: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 5.0,
        keys: Vec::new(),
        quick: false,
        only: BTreeSet::new(),
    };
    let mut raw = raw.into_iter();
    while let Some(arg) = raw.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> anyhow::Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => raw.next().with_context(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--seconds" => {
                let v = value("--seconds")?;
                args.seconds = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?} is not a number"))?;
                ensure!(
                    args.seconds > 0.0 && args.seconds.is_finite(),
                    "--seconds must be positive"
                );
            }
            "--keys" => {
                for part in value("--keys")?.split(',').filter(|p| !p.is_empty()) {
                    args.keys.push(parse_count(part)?);
                }
            }
            "--quick" => args.quick = true,
            "--only" => {
                for part in value("--only")?.split(',').filter(|p| !p.is_empty()) {
                    args.only.insert(match part {
                        "write" => Bench::Write,
                        "recovery" => Bench::Recovery,
                        "memory" => Bench::Memory,
                        "replication" => Bench::Replication,
                        "lag" => Bench::Lag,
                        "sweep" => Bench::Sweep,
                        "catchup" => Bench::CatchUp,
                        "vault" => Bench::Vault,
                        "openbao" => Bench::OpenBao,
                        "operator" => Bench::Operator,
                        "nodes" => Bench::Nodes,
                        "kube" => Bench::Kube,
                        other => bail!("unknown benchmark {other:?}\n{USAGE}"),
                    });
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if args.keys.is_empty() {
        args.keys = if args.quick {
            vec![QUICK_KEYS]
        } else {
            DEFAULT_KEYS.to_vec()
        };
    }
    if args.only.is_empty() {
        args.only = [
            Bench::Write,
            Bench::Recovery,
            Bench::Memory,
            Bench::Replication,
            Bench::Vault,
            Bench::OpenBao,
            Bench::Operator,
            Bench::Nodes,
            Bench::Kube,
        ]
        .into();
    }
    Ok(args)
}

/// `100000`, `100k`, `1M`.
fn parse_count(s: &str) -> anyhow::Result<u64> {
    let (digits, factor) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("key count {s:?} is not a number"))?;
    ensure!(n > 0, "key count must be positive");
    Ok(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Args> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags() {
        let a = parse("--quick --seconds 2").unwrap();
        assert_eq!(a.keys, vec![QUICK_KEYS]);
        assert_eq!(a.seconds, 2.0);
        assert_eq!(a.only.len(), 9);
        let a = parse("--keys=100k,1M --only write,memory").unwrap();
        assert_eq!(a.keys, vec![100_000, 1_000_000]);
        assert_eq!(a.only, [Bench::Write, Bench::Memory].into());
        let a = parse("--only=lag").unwrap();
        assert_eq!(a.only, [Bench::Lag].into());
        let a = parse("--only=sweep,lag").unwrap();
        assert_eq!(a.only, [Bench::Lag, Bench::Sweep].into());
        let a = parse("--only=replication").unwrap();
        assert_eq!(a.only, [Bench::Replication].into());
        let a = parse("--only=nodes").unwrap();
        assert_eq!(a.only, [Bench::Nodes].into());
        let a = parse("--only=openbao").unwrap();
        assert_eq!(a.only, [Bench::OpenBao].into());
        let a = parse("--only=kube").unwrap();
        assert_eq!(a.only, [Bench::Kube].into());
        assert!(parse("--only disk").is_err());
        assert!(parse("--seconds").is_err());
        assert!(parse("--bogus").is_err());
    }
}
