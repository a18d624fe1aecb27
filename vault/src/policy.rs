//! ACL policies: Vault's HCL policy text, parsed into path rules, and the capability check.
//!
//! Accepted text: `path "<pattern>" { capabilities = ["read", ...] }` blocks, with `#` and `//`
//! comments. A pattern may end with `*` (any suffix) and may hold `+` as a whole segment (any
//! one segment). Capabilities: create, read, update, patch, delete, list, sudo, deny.
//!
//! Matching, as in Vault: among a token's policies, every rule whose pattern matches the path
//! counts; the most specific pattern wins (an exact path over a glob; then the longer literal
//! prefix; then fewer `+`), its capabilities from all policies are merged, and `deny` anywhere in
//! the winning rules denies everything.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub const CAPABILITIES: [&str; 8] = [
    "create", "read", "update", "patch", "delete", "list", "sudo", "deny",
];
/// Largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// One `path` block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub pattern: String,
    pub capabilities: BTreeSet<String>,
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    /// The text as written.
    pub text: String,
    pub rules: Vec<Rule>,
}

/// Why a policy does not parse; the message names the line.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

/// The implicit `default` policy: a token may look up, renew and revoke itself.
pub fn default_policy() -> Policy {
    parse(
        "default",
        r#"
        path "auth/token/lookup-self" { capabilities = ["read"] }
        path "auth/token/renew-self" { capabilities = ["update"] }
        path "auth/token/revoke-self" { capabilities = ["update"] }
        "#,
    )
    .expect("the default policy parses")
}

/// Parses `text`.
pub fn parse(name: &str, text: &str) -> Result<Policy, ParseError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(ParseError(format!(
            "policy is {} bytes, over the limit of {MAX_POLICY_BYTES}",
            text.len()
        )));
    }
    let tokens = tokenize(text)?;
    let mut rules = Vec::new();
    let mut i = 0;
    let expect = |i: usize, want: &str| -> Result<(), ParseError> {
        match tokens.get(i) {
            Some((t, _)) if t == want => Ok(()),
            Some((t, line)) => Err(ParseError(format!(
                "line {line}: expected {want:?}, found {t:?}"
            ))),
            None => Err(ParseError(format!(
                "unexpected end of policy, expected {want:?}"
            ))),
        }
    };
    while i < tokens.len() {
        expect(i, "path")?;
        let (pattern, line) = tokens
            .get(i + 1)
            .filter(|(t, _)| t.starts_with('"'))
            .ok_or_else(|| ParseError("a path needs a quoted pattern".into()))?;
        let pattern = pattern.trim_matches('"').to_owned();
        validate_pattern(&pattern).map_err(|m| ParseError(format!("line {line}: {m}")))?;
        expect(i + 2, "{")?;
        expect(i + 3, "capabilities")?;
        expect(i + 4, "=")?;
        expect(i + 5, "[")?;
        let mut j = i + 6;
        let mut capabilities = BTreeSet::new();
        while let Some((t, line)) = tokens.get(j) {
            if t == "]" {
                break;
            }
            if t == "," {
                j += 1;
                continue;
            }
            let cap = t.trim_matches('"');
            if !t.starts_with('"') || !CAPABILITIES.contains(&cap) {
                return Err(ParseError(format!(
                    "line {line}: unknown capability {t}; use {}",
                    CAPABILITIES.join(", ")
                )));
            }
            capabilities.insert(cap.to_owned());
            j += 1;
        }
        expect(j, "]")?;
        expect(j + 1, "}")?;
        rules.push(Rule {
            pattern,
            capabilities,
        });
        i = j + 2;
    }
    Ok(Policy {
        name: name.to_owned(),
        text: text.to_owned(),
        rules,
    })
}

fn validate_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("empty path pattern".into());
    }
    if let Some(pos) = pattern.find('*')
        && pos != pattern.len() - 1
    {
        return Err(format!("{pattern:?}: '*' may only end a pattern"));
    }
    Ok(())
}

/// Splits into words, quoted strings and `{ } [ ] = ,`, with line numbers; drops comments.
fn tokenize(text: &str) -> Result<Vec<(String, usize)>, ParseError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let mut chars = raw.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '#' => break,
                '/' if raw[at..].starts_with("//") => break,
                c if c.is_whitespace() => {}
                '{' | '}' | '[' | ']' | '=' | ',' => out.push((c.to_string(), line)),
                '"' => {
                    let mut s = String::from('"');
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        s.push(c);
                        if c == '"' {
                            closed = true;
                            break;
                        }
                    }
                    if !closed {
                        return Err(ParseError(format!("line {line}: unterminated string")));
                    }
                    out.push((s, line));
                }
                c if c.is_ascii_alphanumeric() || c == '_' => {
                    let mut s = c.to_string();
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            s.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push((s, line));
                }
                c => return Err(ParseError(format!("line {line}: unexpected {c:?}"))),
            }
        }
    }
    Ok(out)
}

/// How specific a matching pattern is: higher wins.
fn specificity(pattern: &str) -> (bool, usize, usize) {
    let exact = !pattern.ends_with('*');
    let plus = pattern.split('/').filter(|s| *s == "+").count();
    let literal = pattern.trim_end_matches('*').len();
    (exact, literal, usize::MAX - plus)
}

fn matches(pattern: &str, path: &str) -> bool {
    let (prefix, glob) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let pat: Vec<&str> = prefix.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    if !glob && pat.len() != segs.len() {
        return false;
    }
    if pat.len() > segs.len() {
        return false;
    }
    for (k, p) in pat.iter().enumerate() {
        let last = k == pat.len() - 1;
        let s = segs[k];
        let ok = if *p == "+" {
            true
        } else if glob && last {
            s.starts_with(p)
        } else {
            s == *p
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The capabilities `policies` grant on `path` (empty: nothing; `deny` is resolved away).
pub fn capabilities<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    path: &str,
) -> BTreeSet<String> {
    let mut best: Option<(bool, usize, usize)> = None;
    let mut caps = BTreeSet::new();
    for policy in policies {
        for rule in policy.rules.iter().filter(|r| matches(&r.pattern, path)) {
            let s = specificity(&rule.pattern);
            match best {
                Some(b) if s < b => {}
                Some(b) if s == b => caps.extend(rule.capabilities.iter().cloned()),
                _ => {
                    best = Some(s);
                    caps = rule.capabilities.clone();
                }
            }
        }
    }
    if caps.contains("deny") {
        return BTreeSet::new();
    }
    caps
}

/// The capabilities `policies` grant for a list of `path` (a directory, ending with `/`): as
/// [`capabilities`], except that, as in Vault, an exact rule on the directory's name
/// (`secret/metadata/app`) also grants the list of `secret/metadata/app/`, unless an exact
/// rule names `secret/metadata/app/` itself.
pub fn list_capabilities(policies: &[Policy], path: &str) -> BTreeSet<String> {
    fn literal_rules<'p>(policies: &'p [Policy], on: &'p str) -> impl Iterator<Item = &'p Rule> {
        policies
            .iter()
            .flat_map(|p| &p.rules)
            .filter(move |r| is_literal(&r.pattern) && r.pattern == on)
    }
    if let Some(dir) = path.strip_suffix('/')
        && literal_rules(policies, path).next().is_none()
        && literal_rules(policies, dir).next().is_some()
    {
        let caps: BTreeSet<String> = literal_rules(policies, dir)
            .flat_map(|r| r.capabilities.iter().cloned())
            .collect();
        return if caps.contains("deny") {
            BTreeSet::new()
        } else {
            caps
        };
    }
    capabilities(policies, path)
}

/// A pattern without `*` or `+`: it names one path.
fn is_literal(pattern: &str) -> bool {
    !pattern.ends_with('*') && !pattern.split('/').any(|s| s == "+")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Policy text made of the grammar's own words in any order, so that the parser gets past
    /// its first token; with comments, unterminated strings and stray characters.
    fn token_soup() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            Just("path"),
            Just("capabilities"),
            Just("="),
            Just("{"),
            Just("}"),
            Just("["),
            Just("]"),
            Just(","),
            Just("\"read\""),
            Just("\"deny\""),
            Just("\"fly\""),
            Just("\"secret/*\""),
            Just("\"a/+/b\""),
            Just("\"*\""),
            Just("\"\""),
            Just("\""),
            Just("# note"),
            Just("// note"),
            Just("/"),
            Just("\n"),
            Just("é"),
        ];
        proptest::collection::vec(word, 0..30).prop_map(|words| words.join(" "))
    }

    /// A valid rule: a pattern and some capabilities.
    fn rule() -> impl Strategy<Value = Rule> {
        (
            "[a-z+]{1,4}(/[a-z+]{1,4}){0,3}/?\\*?",
            proptest::collection::btree_set(proptest::sample::select(&CAPABILITIES[..]), 0..4),
        )
            .prop_map(|(pattern, caps)| Rule {
                pattern,
                capabilities: caps.into_iter().map(str::to_owned).collect(),
            })
    }

    fn text_of(rules: &[Rule]) -> String {
        rules
            .iter()
            .map(|r| {
                let caps: Vec<String> = r.capabilities.iter().map(|c| format!("{c:?}")).collect();
                format!(
                    "path {:?} {{ capabilities = [{}] }}\n",
                    r.pattern,
                    caps.join(", ")
                )
            })
            .collect()
    }

    proptest! {
        /// Whatever text a caller uploads as a policy, it parses or is refused with a message,
        /// and what parses holds only valid patterns and known capabilities, and answers any
        /// path without panicking.
        #[test]
        fn any_text_parses_into_valid_rules_or_is_refused(
            text in prop_oneof![".{0,200}", token_soup()],
            path in "[a-z+*/]{0,12}",
        ) {
            match parse("p", &text) {
                Ok(policy) => {
                    for rule in &policy.rules {
                        prop_assert_eq!(validate_pattern(&rule.pattern), Ok(()));
                        prop_assert!(rule.capabilities.iter().all(|c| CAPABILITIES.contains(&c.as_str())));
                    }
                    let policies = [policy];
                    let caps = capabilities(&policies, &path);
                    prop_assert!(caps.iter().all(|c| CAPABILITIES.contains(&c.as_str()) && c != "deny"));
                    list_capabilities(&policies, &path);
                }
                Err(ParseError(message)) => prop_assert!(!message.is_empty()),
            }
        }

        /// Valid rules written out parse back to exactly those rules.
        #[test]
        fn written_rules_parse_back(rules in proptest::collection::vec(rule(), 0..5)) {
            let policy = parse("p", &text_of(&rules)).unwrap();
            prop_assert_eq!(policy.rules, rules);
        }

        /// A valid policy with characters cut, replaced or inserted anywhere parses or is
        /// refused, never a panic, even when the change splits a multi-byte character's line.
        #[test]
        fn edited_policies_parse_or_are_refused(
            rules in proptest::collection::vec(rule(), 1..4),
            at in any::<proptest::sample::Index>(),
            cut in 0usize..8,
            insert in "[\"{}\\[\\]=,#/ \n*+é]{0,3}",
        ) {
            let text: Vec<char> = text_of(&rules).chars().collect();
            let at = at.index(text.len());
            let end = (at + cut).min(text.len());
            let edited: String = text[..at].iter().copied()
                .chain(insert.chars())
                .chain(text[end..].iter().copied())
                .collect();
            if let Ok(policy) = parse("p", &edited) {
                for rule in &policy.rules {
                    prop_assert_eq!(validate_pattern(&rule.pattern), Ok(()));
                }
            }
        }
    }

    const TEXT: &str = r#"
        # readers
        path "secret/data/app/*" {
          capabilities = ["read", "list"]
        }
        path "secret/data/app/admin" { capabilities = ["deny"] }  // never
        path "secret/data/+/shared" { capabilities = ["create", "update"] }
    "#;

    #[test]
    fn the_most_specific_rule_wins() {
        let p = parse("app", TEXT).unwrap();
        let caps = |path| capabilities([&p], path);
        assert!(caps("secret/data/app/db").contains("read"));
        assert!(caps("secret/data/app/admin").is_empty(), "exact deny");
        assert!(caps("secret/data/team/shared").contains("create"));
        assert!(caps("secret/data/other").is_empty());
        assert!(
            caps("secret/data/app").is_empty(),
            "the glob needs the slash"
        );
    }

    #[test]
    fn a_list_of_a_directory_is_granted_by_an_exact_rule_on_its_name() {
        let p = parse(
            "lister",
            r#"
            path "secret/metadata/app" { capabilities = ["list"] }
            path "secret/metadata/team/" { capabilities = ["read"] }
            path "secret/metadata/team" { capabilities = ["list"] }
            path "secret/metadata/ops" { capabilities = ["list", "deny"] }
            path "secret/metadata/glob*" { capabilities = ["list"] }
            "#,
        )
        .unwrap();
        let policies = [p];
        let list = |path| list_capabilities(&policies, path);
        assert!(list("secret/metadata/app/").contains("list"));
        assert!(
            !list("secret/metadata/team/").contains("list"),
            "an exact rule on the directory itself wins"
        );
        assert!(list("secret/metadata/ops/").is_empty(), "deny");
        assert!(list("secret/metadata/globby/").contains("list"));
        assert!(list("secret/metadata/other/").is_empty());
        // Only lists: a read of `app/` is not granted by the rule on `app`.
        assert!(capabilities(&policies, "secret/metadata/app/").is_empty());
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let err = |t| parse("x", t).unwrap_err().0;
        assert!(err(r#"path "a" { capabilities = ["fly"] }"#).contains("unknown capability"));
        assert!(err(r#"path "a" { caps = ["read"] }"#).contains("expected \"capabilities\""));
        assert!(err(r#"path "a*b" { capabilities = ["read"] }"#).contains("'*' may only end"));
        assert!(err(r#"path "a" { capabilities = ["read"]"#).contains("unexpected end"));
        assert!(err("path \"a").contains("unterminated"));
    }

    #[test]
    fn the_default_policy_covers_the_self_calls() {
        let d = default_policy();
        assert!(capabilities([&d], "auth/token/lookup-self").contains("read"));
        assert!(capabilities([&d], "auth/token/create").is_empty());
    }
}
