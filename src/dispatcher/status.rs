//! The status report written to the log on SIGUSR2: what was accepted, refused and handed
//! off, and for each service and generation its workers, their state and load.

use super::runtime::Runtime;

/// The counts in one line, for the service manager's `STATUS=` (see [`super::notify`]).
pub fn summary(rt: &Runtime) -> String {
    format!(
        "{} accepted, {} refused, {} handed off, {} held, {} worker(s), generation {}",
        rt.acceptor.admitted,
        rt.acceptor.refusals.total,
        rt.handed,
        rt.held(),
        rt.workers.len(),
        rt.services.generation
    )
}

pub fn report(rt: &Runtime) {
    let now = rt.now();
    log::info!(
        "status: {} accepted, {} refused, {} handed off, {} connection(s) held (budget {}, descriptor limit {}), generation {}",
        rt.acceptor.admitted,
        rt.acceptor.refusals.total,
        rt.handed,
        rt.held(),
        rt.budget,
        rt.nofile,
        rt.services.generation
    );
    for s in rt.services.by_id.values() {
        for g in s.pools() {
            let current = s.current.as_ref().map(|c| c.generation) == Some(g.generation);
            let statuses = g.pool.status();
            log::info!(
                "status: [SERVICE={}] generation {}{}: {} worker(s), {} connection(s) waiting, {}",
                s.name,
                g.generation,
                if current { "" } else { " (draining)" },
                statuses.len(),
                g.pool.waiting(),
                if g.pool.accepting() {
                    "accepting"
                } else {
                    "not accepting"
                }
            );
            for st in statuses {
                log::info!(
                    "status: [SERVICE={}] worker {} pid {} {} age {} s, {} active, {} served",
                    s.name,
                    st.worker,
                    rt.workers.pid(st.worker).unwrap_or(0),
                    st.state,
                    now.saturating_sub(st.started) / 1000,
                    st.active,
                    st.served
                );
            }
        }
    }
}

/// One worker, as `--status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: u64,
    pub pid: u32,
    pub generation: u64,
    pub state: &'static str,
    pub age_s: u64,
    pub active: u64,
    pub served: u64,
}

/// One service, as `--status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    pub name: String,
    /// The generation in force; `None` once a reload removed the service (it drains).
    pub generation: Option<u64>,
    pub accepting: bool,
    pub waiting: u64,
    pub counts: super::generation::ServiceCounts,
    /// The next start is held back this long after failed starts (milliseconds).
    pub backoff_ms: Option<u64>,
    pub workers: Vec<WorkerRow>,
}

/// Everything `--status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    pub version: &'static str,
    pub uptime_s: u64,
    pub generation: u64,
    pub accepted: u64,
    pub refused: u64,
    pub handed_off: u64,
    pub held: u64,
    pub reloads_applied: u64,
    pub reloads_refused: u64,
    pub stopping: bool,
    pub services: Vec<ServiceRow>,
}

/// What the running dispatcher is doing now.
pub fn snapshot(rt: &Runtime) -> Snapshot {
    let now = rt.now();
    let services = rt
        .services
        .by_id
        .values()
        .map(|s| {
            let current = s.current.as_ref();
            let mut workers = Vec::new();
            for g in s.pools() {
                for st in g.pool.status() {
                    workers.push(WorkerRow {
                        id: st.worker,
                        pid: rt.workers.pid(st.worker).unwrap_or(0),
                        generation: g.generation,
                        state: st.state,
                        age_s: now.saturating_sub(st.started) / 1000,
                        active: st.active,
                        served: st.served,
                    });
                }
            }
            ServiceRow {
                name: s.name.clone(),
                generation: current.map(|g| g.generation),
                accepting: current.is_some_and(|g| g.pool.accepting())
                    && rt.stopping.is_none()
                    && !rt.accept_held,
                waiting: s.pools().map(|g| g.pool.waiting() as u64).sum(),
                counts: s.counts.clone(),
                backoff_ms: current.and_then(|g| g.pool.backoff(now)),
                workers,
            }
        })
        .collect();
    Snapshot {
        pid: std::process::id(),
        version: crate::VERSION,
        uptime_s: rt.uptime().as_secs(),
        generation: rt.services.generation,
        accepted: rt.acceptor.admitted,
        refused: rt.acceptor.refusals.total,
        handed_off: rt.handed,
        held: rt.held() as u64,
        reloads_applied: rt.reloads_applied,
        reloads_refused: rt.reloads_refused,
        stopping: rt.stopping.is_some(),
        services,
    }
}

/// What the metrics endpoint shows ([`super::metrics::render`]).
pub fn metrics(rt: &Runtime) -> super::metrics::Snapshot {
    let services = snapshot(rt)
        .services
        .into_iter()
        .map(|v| {
            let mut by_state: Vec<(&'static str, u64)> = super::metrics::WORKER_STATES
                .iter()
                .map(|&s| (s, 0))
                .collect();
            for w in &v.workers {
                if let Some(slot) = by_state.iter_mut().find(|(s, _)| *s == w.state) {
                    slot.1 += 1;
                }
            }
            super::metrics::ServiceSnapshot {
                name: v.name,
                accepted: v.counts.accepted,
                refused: v.counts.refused,
                handed_off: v.counts.handed_off,
                waiting: v.waiting,
                workers_by_state: by_state,
                starts: v.counts.starts,
                failed_starts: v.counts.failed_starts,
                kills: v.counts.kills,
                lmtp: v.counts.lmtp,
            }
        })
        .collect();
    super::metrics::Snapshot {
        services,
        reloads_applied: rt.reloads_applied,
        reloads_refused: rt.reloads_refused,
    }
}

/// Lines of cells as a table with aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The status as tables, for `dispatcher --status` (as `doveadm service status` prints).
pub fn text(s: &Snapshot) -> String {
    let mut out = format!(
        "dispatcher {} pid {}, up {} s, generation {}{}: {} accepted, {} refused, {} handed off, {} held; reloads: {} applied, {} refused\n\n",
        s.version,
        s.pid,
        s.uptime_s,
        s.generation,
        if s.stopping { " (stopping)" } else { "" },
        s.accepted,
        s.refused,
        s.handed_off,
        s.held,
        s.reloads_applied,
        s.reloads_refused
    );
    let mut rows = vec![[
        "service",
        "generation",
        "accepting",
        "waiting",
        "accepted",
        "refused",
        "handed_off",
        "starts",
        "failed_starts",
        "kills",
        "backoff",
    ]
    .map(String::from)
    .to_vec()];
    for v in &s.services {
        rows.push(vec![
            v.name.clone(),
            v.generation.map_or("removed".into(), |g| g.to_string()),
            if v.accepting { "yes" } else { "no" }.into(),
            v.waiting.to_string(),
            v.counts.accepted.to_string(),
            v.counts.refused.to_string(),
            v.counts.handed_off.to_string(),
            v.counts.starts.to_string(),
            v.counts.failed_starts.to_string(),
            v.counts.kills.to_string(),
            v.backoff_ms
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![[
        "service",
        "worker",
        "pid",
        "generation",
        "state",
        "age",
        "active",
        "total",
    ]
    .map(String::from)
    .to_vec()];
    for v in &s.services {
        for w in &v.workers {
            rows.push(vec![
                v.name.clone(),
                w.id.to_string(),
                w.pid.to_string(),
                w.generation.to_string(),
                w.state.into(),
                format!("{}s", w.age_s),
                w.active.to_string(),
                w.served.to_string(),
            ]);
        }
    }
    out.push_str(&table(&rows));
    out
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The status as one JSON document, for `dispatcher --status --json` (described in
/// `docs/control.md`).
pub fn json(s: &Snapshot) -> String {
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |n| n.to_string());
    let services: Vec<String> = s
        .services
        .iter()
        .map(|v| {
            let workers: Vec<String> = v
                .workers
                .iter()
                .map(|w| {
                    format!(
                        "{{\"worker\":{},\"pid\":{},\"generation\":{},\"state\":{},\"age_seconds\":{},\"active\":{},\"total\":{}}}",
                        w.id, w.pid, w.generation, js(w.state), w.age_s, w.active, w.served
                    )
                })
                .collect();
            format!(
                "{{\"name\":{},\"generation\":{},\"accepting\":{},\"waiting\":{},\"accepted\":{},\"refused\":{},\"handed_off\":{},\"starts\":{},\"failed_starts\":{},\"kills\":{},\"backoff_seconds\":{},\"workers\":[{}]}}",
                js(&v.name),
                opt(v.generation),
                v.accepting,
                v.waiting,
                v.counts.accepted,
                v.counts.refused,
                v.counts.handed_off,
                v.counts.starts,
                v.counts.failed_starts,
                v.counts.kills,
                v.backoff_ms.map_or("null".to_string(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
                workers.join(",")
            )
        })
        .collect();
    format!(
        "{{\"version\":{},\"pid\":{},\"uptime_seconds\":{},\"generation\":{},\"stopping\":{},\"accepted\":{},\"refused\":{},\"handed_off\":{},\"held\":{},\"reloads_applied\":{},\"reloads_refused\":{},\"services\":[{}]}}\n",
        js(s.version),
        s.pid,
        s.uptime_s,
        s.generation,
        s.stopping,
        s.accepted,
        s.refused,
        s.handed_off,
        s.held,
        s.reloads_applied,
        s.reloads_refused,
        services.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            pid: 7,
            version: "0.1.0",
            uptime_s: 3,
            generation: 2,
            accepted: 5,
            refused: 1,
            handed_off: 4,
            held: 0,
            reloads_applied: 1,
            reloads_refused: 0,
            stopping: false,
            services: vec![ServiceRow {
                name: "LM\"TP".into(),
                generation: Some(2),
                accepting: true,
                waiting: 0,
                counts: Default::default(),
                backoff_ms: Some(1500),
                workers: vec![WorkerRow {
                    id: 3,
                    pid: 99,
                    generation: 2,
                    state: "ready",
                    age_s: 2,
                    active: 1,
                    served: 4,
                }],
            }],
        }
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let t = text(&sample());
        let lines: Vec<&str> = t.lines().collect();
        let head = lines
            .iter()
            .position(|l| l.starts_with("service  worker"))
            .expect("worker table");
        let row = lines[head + 1];
        assert_eq!(row.find("99"), lines[head].find("pid"), "{t}");
        assert!(t.contains("1.5s"), "{t}");
    }

    #[test]
    fn json_escapes_names() {
        let j = json(&sample());
        assert!(j.contains("\"name\":\"LM\\\"TP\""), "{j}");
        assert!(j.contains("\"backoff_seconds\":1.500"), "{j}");
    }
}
