//! The Grafana dashboard and the Prometheus rules in `deploy/` query what the proxy really
//! exports. A proxy runs in-process (Redis store, echo upstream) and serves the traffic whose
//! label values the queries name: a refresh answered, token and other requests forwarded, and,
//! with Redis killed, a refresh and an introspection answered 503. Then every
//! `refresh_proxy_*` name in `deploy/grafana/refresh-proxy.json`,
//! `deploy/prometheus/refresh-proxy.rules.yaml` and its unit tests must be a metric of
//! `GET /metrics` (a histogram's `_bucket`, `_sum` and `_count` count as its name), every
//! `level:metric:operations` name one the rules record, and every value a matcher gives
//! `endpoint`, `outcome`, `reason`, `class` or `grant_type` a value that metric has in
//! `/metrics`. A query naming a metric the proxy does not export fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::support::echo::EchoServer;
use crate::support::proxy::{TestProxy, issue};
use crate::support::redis::RedisServer;

const ISSUE_TOKEN: &str = "issue-token-for-tests-0123456789";
const SECRET: &str = "Secr3t!";
/// The labels whose values the check follows (the others are `job`, `instance`, `le`).
const CHECKED_LABELS: [&str; 5] = ["endpoint", "outcome", "reason", "class", "grant_type"];
/// The files checked, from the repository root.
const DASHBOARD: &str = "deploy/grafana/refresh-proxy.json";
const RULES: &str = "deploy/prometheus/refresh-proxy.rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/refresh-proxy.rules.test.yaml";

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// What `/metrics` exports: metric names, and per metric the values of each label.
#[derive(Debug, Default)]
struct Exported {
    names: BTreeSet<String>,
    values: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut e = Exported::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    panic!("a TYPE line without a name and a type: {line}");
                };
                e.names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        e.names.insert(format!("{name}{suffix}"));
                    }
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let series = line.rsplit_once(' ').expect("a sample: series value").0;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            e.names.insert(name.to_owned());
            for (label, _, value) in matchers(labels) {
                e.values
                    .entry((name.to_owned(), label))
                    .or_default()
                    .insert(value);
            }
        }
        e
    }
}

/// `label op "value"` triples of a selector's inside (`a="x",b=~"y|z"`).
fn matchers(inside: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = inside.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or_else(|| panic!("a matcher without an operator: {rest}"));
        let (label, after) = rest.split_at(name_end);
        let after = after.trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| after.starts_with(op))
            .unwrap_or_else(|| panic!("no operator in {rest:?}"));
        let after = after[op.len()..].trim_start();
        let quoted = after
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("an unquoted value in {rest:?}"));
        let end = quoted.find('"').expect("a closing quote");
        out.push((label.to_owned(), op.to_owned(), quoted[..end].to_owned()));
        rest = quoted[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim();
    }
    out
}

/// What a file names: metric names (`refresh_proxy_…`), recorded names (with `:`), and each
/// selector's (metric, label, op, value).
#[derive(Debug, Default)]
struct Named {
    metrics: BTreeSet<String>,
    recorded: BTreeSet<String>,
    matchers: Vec<(String, String, String, String)>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

impl Named {
    fn scan(&mut self, text: &str) {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut i = 0;
        while i < chars.len() {
            let (start, c) = chars[i];
            if !is_name_char(c) || (i > 0 && is_name_char(chars[i - 1].1)) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < chars.len() && is_name_char(chars[j].1) {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |(at, _)| *at);
            let token = &text[start..end];
            i = j;
            if !token.contains("refresh_proxy_") {
                continue;
            }
            if token.contains(':') {
                self.recorded.insert(token.to_owned());
                continue;
            }
            assert!(
                token.starts_with("refresh_proxy_"),
                "{token}: a metric name with a prefix"
            );
            self.metrics.insert(token.to_owned());
            if text[end..].starts_with('{') {
                let inside = &text[end + 1..];
                let close = inside.find('}').expect("a selector's closing brace");
                for (label, op, value) in matchers(&inside[..close]) {
                    self.matchers.push((token.to_owned(), label, op, value));
                }
            }
        }
    }
}

/// Every string in a JSON document (the dashboard's queries, legends, descriptions).
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

/// The names the rules record (`record: level:metric:operations`).
fn recorded_by_rules(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Everything wrong with `named` (from `file`) against `exported`.
fn problems(
    file: &str,
    named: &Named,
    exported: &Exported,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in &named.metrics {
        if !exported.names.contains(name) {
            out.push(format!(
                "{file} names {name}, which the proxy does not export"
            ));
        }
    }
    for name in &named.recorded {
        if !recorded.contains(name) {
            out.push(format!(
                "{file} names {name}, which no rule of {RULES} records"
            ));
        }
    }
    for (metric, label, op, value) in &named.matchers {
        if !CHECKED_LABELS.contains(&label.as_str()) {
            continue;
        }
        let have = exported
            .values
            .get(&(metric.clone(), label.clone()))
            .cloned()
            .unwrap_or_default();
        let wanted: Vec<&str> = if op.ends_with('~') {
            value.split('|').collect()
        } else {
            vec![value.as_str()]
        };
        for v in wanted {
            if !v
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.push(format!(
                    "{file}: {metric}{{{label}{op}\"{value}\"}}: write the values out (a|b|c), \
                     so they can be checked"
                ));
            } else if !have.contains(v) {
                out.push(format!(
                    "{file}: {metric}{{{label}{op}\"{value}\"}}: /metrics has no {label}=\"{v}\" \
                     for {metric} (it has {have:?})"
                ));
            }
        }
    }
    out
}

/// `server.server_timing`: a refresh the proxy answers says where its time went, phase by
/// phase, in a W3C `Server-Timing` header whose parts add up to its total; an error answer says
/// as much as was reached; off (the default), nothing is said.
#[tokio::test]
async fn server_timing_says_where_a_refresh_spent_its_time() {
    let echo = EchoServer::start().await;
    for on in [true, false] {
        let config = format!(
            "[server]\nserver_timing = {on}\n\
             [store]\nurl = \"memory://\"\n\
             [admin]\ntoken = \"admin-token-for-tests-0123456789\"\nissue_token = \"{ISSUE_TOKEN}\"\n\
             [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
             [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
             revocation = \"absent\"\n",
            up = echo.url(),
        );
        let proxy = TestProxy::start(&config).await;
        proxy.wait_ready().await;
        let token = issue(
            &proxy.admin_url,
            ISSUE_TOKEN,
            serde_json::json!({"client_id": "www", "subject": "alice", "count": 1}),
        )
        .await
        .remove(0);
        let http = reqwest::Client::new();
        let refresh = |secret: &'static str| {
            http.post(format!("{}/token", proxy.url))
                .basic_auth("www", Some(secret))
                .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                .send()
        };
        let ok = refresh(SECRET).await.expect("refresh");
        assert_eq!(ok.status(), 200);
        let refused = refresh("wrong").await.expect("refresh");
        assert_eq!(refused.status(), 401);
        let header = |res: &reqwest::Response| {
            res.headers()
                .get("server-timing")
                .map(|v| v.to_str().expect("ASCII").to_owned())
        };
        if !on {
            assert_eq!((header(&ok), header(&refused)), (None, None));
            continue;
        }
        let parts = |text: String| -> Vec<(String, f64)> {
            text.split(", ")
                .map(|part| {
                    let (name, dur) = part.split_once(";dur=").expect("name;dur=");
                    (name.to_owned(), dur.parse().expect("milliseconds"))
                })
                .collect()
        };
        let ok = parts(header(&ok).expect("Server-Timing on a refresh"));
        let names: Vec<&str> = ok.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["form", "auth", "prep", "store", "mint", "total"]);
        let sum: f64 = ok[..5].iter().map(|(_, d)| d).sum();
        assert!((sum - ok[5].1).abs() < 0.0015, "{ok:?}");
        assert!(ok[5].1 > 0.0, "{ok:?}");
        // Refused at client authentication: the body was read, no further.
        let refused = parts(header(&refused).expect("Server-Timing on an error"));
        let names: Vec<&str> = refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["form", "total"]);
    }
}

#[tokio::test]
async fn dashboard_and_rules_name_only_what_the_proxy_exports() {
    let mut redis = RedisServer::start();
    let echo = EchoServer::start().await;
    let config = format!(
        "[store]\nurl = \"{store}\"\n\
         [tokens]\nrefresh_token_key = \"{key}\"\n\
         [admin]\ntoken = \"admin-token-for-tests-0123456789\"\nissue_token = \"{ISSUE_TOKEN}\"\n\
         [clients.www]\nsecret = \"{SECRET}\"\nallow_admin_issue = true\n\
         [clients.rs]\nsecret = \"{SECRET}\"\nmay_introspect = true\n\
         [upstream]\nurl = \"{up}\"\ndiscovery = false\ntoken_path = \"/token\"\n\
         revocation_path = \"/revoke\"\nintrospection_path = \"/introspect\"\n",
        store = redis.url(),
        key = crate::support::TEST_REFRESH_KEY,
        up = echo.url(),
    );
    let proxy = TestProxy::start(&config).await;
    proxy.wait_ready().await;
    let http = reqwest::Client::new();
    let token_url = format!("{}/token", proxy.url);
    let refresh = |token: String| {
        http.post(&token_url)
            .basic_auth("www", Some(SECRET))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
            .send()
    };

    // A refresh answered by the proxy: endpoint="token", grant_type="refresh_token", outcome="ok".
    let first = issue(
        &proxy.admin_url,
        ISSUE_TOKEN,
        serde_json::json!({"client_id": "www", "subject": "alice", "count": 1}),
    )
    .await
    .remove(0);
    let res = refresh(first).await.expect("refresh");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    let next = body["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    // Forwarded: a code exchange at the token endpoint, and any other path.
    let res = http
        .post(&token_url)
        .basic_auth("www", Some(SECRET))
        .form(&[("grant_type", "authorization_code"), ("code", "c")])
        .send()
        .await
        .expect("code exchange");
    assert_eq!(res.status(), 200, "the echo upstream answers");
    let res = http
        .get(format!("{}/anything", proxy.url))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    // The store gone: 503 temporarily_unavailable at the token and introspection endpoints.
    redis.kill();
    let res = refresh(next.clone()).await.expect("refresh");
    assert_eq!(res.status(), 503);
    let res = http
        .post(format!("{}/introspect", proxy.url))
        .basic_auth("rs", Some(SECRET))
        .form(&[("token", next.as_str())])
        .send()
        .await
        .expect("introspection");
    assert_eq!(res.status(), 503);

    let exported = Exported::parse(&proxy.metrics().await);
    for (metric, label, value) in [
        (
            "refresh_proxy_requests_total",
            "outcome",
            "temporarily_unavailable",
        ),
        ("refresh_proxy_requests_total", "outcome", "forwarded"),
        (
            "refresh_proxy_token_requests_total",
            "grant_type",
            "refresh_token",
        ),
    ] {
        assert!(
            exported.values[&(metric.to_owned(), label.to_owned())].contains(value),
            "the traffic above makes {metric}{{{label}=\"{value}\"}}"
        );
    }

    let rules = read(RULES);
    let recorded = recorded_by_rules(&rules);
    let mut dashboard = Named::default();
    let mut texts = Vec::new();
    strings(
        &serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON"),
        &mut texts,
    );
    texts.iter().for_each(|t| dashboard.scan(t));
    let mut in_rules = Named::default();
    in_rules.scan(&rules);
    let mut in_tests = Named::default();
    in_tests.scan(&read(RULE_TESTS));

    // The scan finds what the files hold (a scan that finds nothing would pass anything).
    assert!(
        dashboard.metrics.len() >= 25 && dashboard.matchers.len() >= 80,
        "the dashboard's names: {dashboard:?}"
    );
    assert!(
        in_rules.metrics.len() >= 10 && recorded.len() >= 5 && !in_rules.recorded.is_empty(),
        "the rules' names: {in_rules:?}"
    );
    assert!(
        in_tests.metrics.len() >= 10,
        "the rule tests' names: {in_tests:?}"
    );
    let mut all = problems(DASHBOARD, &dashboard, &exported, &recorded);
    all.extend(problems(RULES, &in_rules, &exported, &recorded));
    all.extend(problems(RULE_TESTS, &in_tests, &exported, &recorded));
    assert!(
        all.is_empty(),
        "names or label values the proxy does not export:\n  {}",
        all.join("\n  ")
    );
}

#[test]
fn matchers_and_names_are_read_as_prometheus_writes_them() {
    assert_eq!(
        matchers(r#"job=~"$job", outcome!~"ok|forwarded",endpoint="token""#),
        [
            ("job", "=~", "$job"),
            ("outcome", "!~", "ok|forwarded"),
            ("endpoint", "=", "token"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    let mut n = Named::default();
    n.scan(
        "sum(rate(refresh_proxy_x_total{outcome=\"a\"}[5m])) / job:refresh_proxy_y:rate5m \
         and refresh_proxy_z_bucket",
    );
    assert_eq!(
        n.metrics.iter().collect::<Vec<_>>(),
        ["refresh_proxy_x_total", "refresh_proxy_z_bucket"]
    );
    assert_eq!(
        n.recorded.iter().collect::<Vec<_>>(),
        ["job:refresh_proxy_y:rate5m"]
    );
    assert_eq!(n.matchers.len(), 1);
    let e = Exported::parse(
        "# TYPE refresh_proxy_h histogram\nrefresh_proxy_h_bucket{le=\"+Inf\"} 1\n\
         # TYPE refresh_proxy_c counter\nrefresh_proxy_c{outcome=\"a\"} 0\n",
    );
    assert!(e.names.contains("refresh_proxy_h_count") && e.names.contains("refresh_proxy_c"));
    assert!(e.values[&("refresh_proxy_c".to_owned(), "outcome".to_owned())].contains("a"));
}
