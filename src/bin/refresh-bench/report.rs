//! The run's summary: a few human lines, or one JSON document (`--json`).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::load::{Outcome, Plan, Stats};

/// Percentiles reported, with their JSON names.
const PERCENTILES: [(&str, f64); 4] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

pub struct Summary<'a> {
    plan: &'a Plan,
    stats: &'a Stats,
    elapsed_s: f64,
    chains: usize,
    spares_left: usize,
    /// [`crate::phases::breakdown`] of the answers that carried `Server-Timing`.
    phases: Option<Value>,
}

impl<'a> Summary<'a> {
    /// `chains`: tokens read from the file; `spares_left`: those never used.
    pub fn new(
        plan: &'a Plan,
        outcome: &'a Outcome,
        chains: usize,
        spares_left: usize,
    ) -> Summary<'a> {
        Summary {
            plan,
            stats: &outcome.stats,
            elapsed_s: outcome.elapsed.as_secs_f64(),
            chains,
            spares_left,
            phases: crate::phases::breakdown(&mut outcome.stats.phases.clone()),
        }
    }

    pub fn ok(&self) -> u64 {
        self.stats.ok
    }

    fn window_s(&self) -> f64 {
        self.plan.duration.as_secs_f64()
    }

    fn mode(&self) -> &'static str {
        if self.plan.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    fn kind(&self) -> &'static str {
        if self.plan.target.is_refresh() {
            "refresh"
        } else {
            "get"
        }
    }

    fn transport_errors(&self) -> u64 {
        self.stats.transport.values().sum()
    }

    fn non_200(&self) -> u64 {
        self.stats.non_200.values().sum()
    }

    pub fn to_json(&self) -> Value {
        let s = self.stats;
        let window = self.window_s();
        let mut doc = Map::new();
        doc.insert("tool".into(), json!("refresh-bench"));
        doc.insert("mode".into(), json!(self.mode()));
        doc.insert("kind".into(), json!(self.kind()));
        doc.insert("url".into(), json!(self.plan.target.url));
        doc.insert("connections".into(), json!(self.plan.connections));
        doc.insert("warmup_s".into(), json!(self.plan.warmup.as_secs_f64()));
        doc.insert("duration_s".into(), json!(window));
        doc.insert("elapsed_s".into(), json!(round3(self.elapsed_s)));
        doc.insert("rate_target".into(), json!(self.plan.rate));
        doc.insert(
            "requests".into(),
            json!(s.answered + self.transport_errors()),
        );
        doc.insert("answered".into(), json!(s.answered));
        doc.insert("ok".into(), json!(s.ok));
        doc.insert("ok_per_s".into(), json!(round3(s.ok as f64 / window)));
        doc.insert(
            "answered_per_s".into(),
            json!(round3(s.answered as f64 / window)),
        );
        doc.insert("latency_us".into(), latency_json(&s.latency));
        if self.plan.rate.is_some() {
            doc.insert("service_latency_us".into(), latency_json(&s.service));
            doc.insert("sent_behind_schedule".into(), json!(s.behind));
        }
        doc.insert("non_200".into(), json!(s.non_200));
        doc.insert("transport_errors".into(), json!(s.transport));
        if self.plan.target.is_refresh() {
            doc.insert(
                "chains".into(),
                json!({
                    "started": self.plan.connections,
                    "in_file": self.chains,
                    "lost": s.chains_lost,
                    "spares_left": self.spares_left,
                    "connections_exhausted": s.exhausted,
                    "ok_without_refresh_token": s.no_refresh_token,
                }),
            );
        }
        doc.insert("reconnects".into(), json!(s.reconnects));
        if let Some(phases) = &self.phases {
            doc.insert("phases_us".into(), phases.clone());
        }
        Value::Object(doc)
    }

    pub fn human(&self) -> String {
        let s = self.stats;
        let window = self.window_s();
        let mut out = String::new();
        let what = if self.plan.target.is_refresh() {
            "refresh grants"
        } else {
            "GET"
        };
        let schedule = match self.plan.rate {
            Some(rate) => format!("open loop at {rate:.0} req/s"),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(
            out,
            "refresh-bench: {what} to {}, {schedule}, {} connections, {:.1} s measured after {:.1} s warm-up",
            self.plan.target.url,
            self.plan.connections,
            window,
            self.plan.warmup.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "  requests   {} answered, {} ok: {:.0} ok/s",
            s.answered,
            s.ok,
            s.ok as f64 / window
        );
        let label = if self.plan.rate.is_some() {
            "latency (late sends from their intended time)"
        } else {
            "latency"
        };
        let _ = writeln!(out, "  {label:<10} {}", latency_line(&s.latency));
        if self.plan.rate.is_some() {
            let _ = writeln!(
                out,
                "  service time (from the actual send) {}",
                latency_line(&s.service)
            );
            let _ = writeln!(out, "  sent behind schedule {}", s.behind);
        }
        if self.non_200() == 0 {
            let _ = writeln!(out, "  non-200    none");
        } else {
            let list: Vec<String> = s.non_200.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(out, "  non-200    {}", list.join(", "));
        }
        if self.transport_errors() > 0 {
            let list: Vec<String> = s
                .transport
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "  no answer  {}", list.join(", "));
        }
        if self.plan.target.is_refresh() {
            let _ = writeln!(
                out,
                "  chains     {} running, {} lost, {} spares left, {} connections out of tokens, {} ok without refresh_token",
                self.plan.connections,
                s.chains_lost,
                self.spares_left,
                s.exhausted,
                s.no_refresh_token
            );
        }
        if s.reconnects > 0 {
            let _ = writeln!(out, "  reconnects {}", s.reconnects);
        }
        if let Some(phases) = &self.phases {
            out.push_str(&crate::phases::human(phases));
        }
        out
    }
}

impl Summary<'_> {
    /// The `--report` page of this run.
    pub fn html(&self, threads: usize) -> String {
        let s = self.stats;
        let window = self.window_s();
        let mut params: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, v: String| params.push((k.to_owned(), v));
        add("target", self.plan.target.url.clone());
        add(
            "requests",
            if self.plan.target.is_refresh() {
                "refresh grants, each connection rotating its own chain".to_owned()
            } else {
                "GET".to_owned()
            },
        );
        add(
            "schedule",
            match self.plan.rate {
                Some(rate) => format!("open loop at {rate:.0} req/s"),
                None => "closed loop".to_owned(),
            },
        );
        add(
            "connections / threads",
            format!("{} / {threads}", self.plan.connections),
        );
        add(
            "window",
            format!(
                "{window:.1} s measured after {:.1} s warm-up ({:.1} s in all)",
                self.plan.warmup.as_secs_f64(),
                self.elapsed_s
            ),
        );
        add(
            "answers",
            format!(
                "{} answered, {} ok: {:.0} ok/s",
                s.answered,
                s.ok,
                s.ok as f64 / window
            ),
        );
        add("latency", latency_line(&s.latency));
        if self.plan.rate.is_some() {
            add("service time", latency_line(&s.service));
            add("sent behind schedule", s.behind.to_string());
        }
        if self.plan.target.is_refresh() {
            add(
                "chains",
                format!(
                    "{} running, {} lost, {} spares left, {} connections out of tokens",
                    self.plan.connections, s.chains_lost, self.spares_left, s.exhausted
                ),
            );
        }
        add("reconnects", s.reconnects.to_string());
        let mut errors: Vec<(String, u64)> =
            s.non_200.iter().map(|(k, v)| (k.clone(), *v)).collect();
        errors.extend(
            s.transport
                .iter()
                .map(|(k, v)| (format!("no answer: {k}"), *v)),
        );
        crate::html::page(&crate::html::Page {
            title: format!("refresh-bench report: {}", self.plan.target.url),
            params,
            timeline: &s.timeline,
            errors,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let mut m = Map::new();
    for (name, q) in PERCENTILES {
        m.insert(name.into(), json!(h.value_at_percentile(q)));
    }
    m.insert("max".into(), json!(h.max()));
    m.insert("mean".into(), json!(round3(h.mean())));
    m.insert("count".into(), json!(h.len()));
    Value::Object(m)
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no answers".to_owned();
    }
    let mut parts: Vec<String> = PERCENTILES
        .iter()
        .map(|(name, q)| format!("{name} {}", ms(h.value_at_percentile(*q))))
        .collect();
    parts.push(format!("max {}", ms(h.max())));
    parts.join("  ")
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}
