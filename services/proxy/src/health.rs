//! `ai-proxy-multi` instance health on a proxy node: the active probers (`checks.active`,
//! one task per probed instance per proxy, off the request path) and the views of every
//! instance's health and counters: `/status/instances` (JSON) and per-instance series on
//! `/metrics`. Picking and passive ejection are `aigw_balance`'s; this module only feeds
//! probe results in and reads state out.
//!
//! Probers start on a route's first request (CONTRACT §9 allows it) and stop when the
//! route is dropped (its snapshot replaced and its last request done) or when a newer
//! snapshot's route claims the instance, so an instance is never probed twice over.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aigw_balance::{ActiveState, Balancer, ProbeResult};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::compiled::{CompiledRoute, MultiRoute, Probe, Probers};
use crate::runtime::RuntimeConfig;
use crate::send::{SendError, classify};

/// Starts the route's probers unless this route did already (one atomic load then).
/// Every instance is claimed for this route: a probed one gets a task; one without
/// `checks.active` (any more) gets its probe verdict cleared, so a check removed by a
/// config change cannot leave the instance marked unhealthy forever.
pub fn ensure_probers(route_id: &str, m: &MultiRoute) {
    if m.probers.get().is_some() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    m.probers.get_or_init(|| {
        let handles = m
            .probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let token = m.balancer.claim_prober(i);
                let Some(p) = p.clone() else {
                    m.balancer.set_active(i, ActiveState::Unknown);
                    return None;
                };
                let name = m.balancer.spec(i).name.clone();
                let task = rt.spawn(probe_loop(route_id.to_owned(), name, i, Arc::downgrade(&m.balancer), p, token));
                Some(task.abort_handle())
            })
            .collect();
        Probers(handles)
    });
}

async fn probe_loop(route: String, name: String, i: usize, balancer: Weak<Balancer>, probe: Arc<Probe>, token: u64) {
    tracing::debug!(route = %route, instance = %name, url = %probe.shown, "active health checks started");
    loop {
        let result = probe_once(&probe).await;
        let Some(b) = balancer.upgrade() else { return };
        if !b.owns_prober(i, token) {
            return;
        }
        if let Some(state) = b.record_probe(i, &probe.rules, result) {
            tracing::warn!(route = %route, instance = %name, state = ?state, last = ?result, "ai instance health changed (active check)");
        }
        let wait = Duration::from_secs(b.probe_interval_s(i, &probe.rules));
        drop(b);
        tokio::time::sleep(wait).await;
    }
}

/// One probe: a GET whose status (or failure) is the result. The body is not read.
async fn probe_once(p: &Probe) -> ProbeResult {
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.method_mut() = Method::GET;
    match p.url.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return ProbeResult::TcpFailure,
    }
    *req.headers_mut() = p.headers.clone();
    match tokio::time::timeout(p.timeout, p.client.client.request(req)).await {
        Err(_) => ProbeResult::Timeout,
        Ok(Ok(resp)) => ProbeResult::Status(resp.status().as_u16()),
        Ok(Err(e)) => match classify(&e) {
            SendError::ConnectTimeout(_) | SendError::Timeout(_) => ProbeResult::Timeout,
            _ => ProbeResult::TcpFailure,
        },
    }
}

fn multi_routes(cfg: &RuntimeConfig) -> impl Iterator<Item = (&CompiledRoute, &MultiRoute)> {
    cfg.routes.iter().filter_map(|r| r.multi.as_ref().map(|m| (r.as_ref(), m)))
}

/// `/status/instances`: every `ai-proxy-multi` route's instances with their health and
/// counters (`aigw_balance::InstanceStatus`), in configuration order.
pub fn instances_json(cfg: &RuntimeConfig) -> Vec<u8> {
    let routes: Vec<serde_json::Value> = multi_routes(cfg)
        .map(|(r, m)| {
            let instances: Vec<serde_json::Value> = m
                .balancer
                .snapshot()
                .into_iter()
                .map(|s| {
                    let name = s.name.clone();
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    // What the route's plugins tell of it (ai-rate-limiting: its tokens left).
                    for (field, value) in r.plugins.iter().filter_map(|p| p.instance_status(&name)) {
                        if let Some(o) = v.as_object_mut() {
                            o.insert(field.to_owned(), value);
                        }
                    }
                    v
                })
                .collect();
            serde_json::json!({"route_id": r.id(), "instances": instances})
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({"version": cfg.version, "routes": routes})).unwrap_or_default()
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per-instance series for `/metrics` (empty when no route has `ai-proxy-multi`).
pub fn instance_metrics(cfg: &RuntimeConfig) -> String {
    let snaps: Vec<(&str, Vec<aigw_balance::InstanceStatus>)> = multi_routes(cfg).map(|(r, m)| (r.id(), m.balancer.snapshot())).collect();
    let mut out = String::new();
    if snaps.is_empty() {
        return out;
    }
    type Field = fn(&aigw_balance::InstanceStatus) -> u64;
    let series: [(&str, &str, &str, Field); 6] = [
        ("aigw_proxy_instance_attempts_total", "counter", "Upstream attempts per ai-proxy-multi instance.", |s| s.attempts),
        ("aigw_proxy_instance_failures_total", "counter", "Attempts that failed (429, 5xx, no answer).", |s| s.failures),
        ("aigw_proxy_instance_fallbacks_total", "counter", "Failed attempts retried on another instance.", |s| s.fallbacks),
        ("aigw_proxy_instance_ejections_total", "counter", "Passive ejections after consecutive failures.", |s| s.ejections),
        ("aigw_proxy_instance_healthy", "gauge", "1 when the instance would be picked now (not ejected, not actively unhealthy).", |s| {
            s.healthy as u64
        }),
        ("aigw_proxy_instance_ejected_for_ms", "gauge", "Milliseconds left of a passive ejection.", |s| s.ejected_for_ms),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (route, list) in &snaps {
            for s in list {
                let _ = writeln!(out, "{name}{{route=\"{}\",instance=\"{}\"}} {}", label(route), label(&s.name), get(s));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::CompileCtx;
    use crate::upstream::Upstreams;
    use serde_json::json;

    fn cfg(ups: &Upstreams) -> RuntimeConfig {
        let multi = json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [
            {"name": "a \"quoted\"", "provider": "openai", "weight": 1, "auth": {}},
            {"name": "b", "provider": "openai", "weight": 1, "auth": {}}]}}});
        let single = json!({"id": "s", "uri": "/s", "plugins": {"ai-proxy": {"provider": "openai", "auth": {}}}});
        crate::runtime::compile("v1", vec![multi, single], &CompileCtx::bare(ups)).unwrap()
    }

    #[test]
    fn status_views() {
        let ups = Upstreams::default();
        let c = cfg(&ups);
        let m = c.routes.iter().find_map(|r| r.multi.as_ref()).unwrap();
        m.balancer.report(1, &aigw_balance::Outcome::Status(503));
        m.balancer.note_fallback(1);
        let v: serde_json::Value = serde_json::from_slice(&instances_json(&c)).unwrap();
        assert_eq!(v["version"], "v1");
        assert_eq!(v["routes"].as_array().unwrap().len(), 1, "ai-proxy routes are not listed");
        let b = &v["routes"][0]["instances"][1];
        assert_eq!(
            (b["name"].as_str(), b["attempts"].as_u64(), b["failures"].as_u64(), b["fallbacks"].as_u64()),
            (Some("b"), Some(1), Some(1), Some(1))
        );
        let text = instance_metrics(&c);
        assert!(text.contains("aigw_proxy_instance_attempts_total{route=\"m\",instance=\"b\"} 1"), "{text}");
        assert!(text.contains("aigw_proxy_instance_fallbacks_total{route=\"m\",instance=\"b\"} 1"), "{text}");
        assert!(text.contains("aigw_proxy_instance_healthy{route=\"m\",instance=\"a \\\"quoted\\\"\"} 1"), "{text}");
        // Health outlives the snapshot: recompiling keeps b's counters.
        let again = cfg(&ups);
        assert!(instance_metrics(&again).contains("aigw_proxy_instance_failures_total{route=\"m\",instance=\"b\"} 1"));
        assert!(instance_metrics(&RuntimeConfig::empty()).is_empty());
    }

    /// A check removed by a config change cannot leave its instance marked unhealthy; a
    /// new route's probers take the instances over from the old route's.
    #[tokio::test]
    async fn the_newest_route_owns_the_probes() {
        let ups = Upstreams::default();
        let route = |checks: bool| {
            let mut a = json!({"name": "a", "provider": "openai-compatible", "weight": 1, "auth": {},
                "override": {"endpoint": "http://127.0.0.1:9/v1/chat/completions"}});
            if checks {
                a["checks"] = json!({"active": {"healthy": {"interval": 3600}, "unhealthy": {"interval": 3600}}});
            }
            let r = json!({"id": "m", "uri": "/m", "plugins": {"ai-proxy-multi": {"instances": [a,
                {"name": "b", "provider": "openai", "weight": 1, "auth": {}}]}}});
            crate::runtime::compile("v", vec![r], &CompileCtx::bare(&ups)).unwrap()
        };
        let old = route(true);
        let om = old.routes[0].multi.as_ref().unwrap();
        ensure_probers("m", om);
        assert_eq!(om.probers.get().unwrap().0.len(), 1, "one task: only a has checks");
        om.balancer.set_active(0, ActiveState::Unhealthy);
        let new = route(false);
        let nm = new.routes[0].multi.as_ref().unwrap();
        assert_eq!(nm.balancer.snapshot()[0].active, ActiveState::Unhealthy, "health carried over by name");
        ensure_probers("m", nm);
        assert_eq!(nm.balancer.snapshot()[0].active, ActiveState::Unknown);
        assert!(nm.probers.get().unwrap().0.is_empty());
        // Dropping a route stops its probers.
        let handle = om.probers.get().unwrap().0[0].clone();
        drop(old);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !handle.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
    }
}
