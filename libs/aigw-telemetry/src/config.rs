//! The standard OpenTelemetry environment (`OTEL_*`), read once at start. An unset
//! endpoint means no exporter at all: [`OtelConfig::from_env`] returns `None` and nothing
//! on the request path pays for telemetry.

use std::time::Duration;

use crate::sampler::Sampler;

/// How spans and metrics reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (the default), `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`.
    HttpProtobuf,
}

#[derive(Debug, Clone)]
pub struct OtelConfig {
    pub protocol: Protocol,
    /// Where spans go (gRPC: the collector's URL; HTTP: the full `/v1/traces` URL). None:
    /// spans are off (`OTEL_TRACES_EXPORTER=none`).
    pub traces_endpoint: Option<String>,
    /// Where metrics go; None: metrics export is off (`OTEL_METRICS_EXPORTER=none`).
    pub metrics_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, values percent-decoded).
    pub headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10 s): one export call.
    pub timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: the PEM bundle (read from the named file) that
    /// `https` endpoints are verified against, instead of the webpki (Mozilla) roots.
    pub ca_pem: Option<Vec<u8>>,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,…`), `service.name` excluded.
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 s).
    pub metric_interval: Duration,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms, default 5 s): the longest a finished span waits.
    pub bsp_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): spans in full batches waiting to be sent;
    /// a batch beyond this is dropped (counted).
    pub bsp_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512).
    pub bsp_batch: usize,
}

/// `OTEL_SEMCONV_STABILITY_OPT_IN` contains `gen_ai_latest_experimental`: also record the
/// semantic-conventions-genai v0.1 metric names (independent of any exporter: `/metrics`
/// shows them too).
pub fn genai_latest(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SEMCONV_STABILITY_OPT_IN").is_some_and(|v| v.split(',').any(|s| s.trim() == "gen_ai_latest_experimental"))
}

fn ms(env: &dyn Fn(&str) -> Option<String>, name: &str, default: u64) -> Result<Duration, String> {
    match env(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_millis(n)),
            _ => Err(format!("{name}: {v:?} is not a positive number of milliseconds")),
        },
    }
}

fn count(env: &dyn Fn(&str) -> Option<String>, name: &str, default: usize) -> Result<usize, String> {
    match env(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}: {v:?} is not a positive number")),
        },
    }
}

/// `a=b,c=d` with percent-encoded values (the W3C baggage-like syntax of the OTel spec).
fn pairs(name: &str, v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, val) = item.split_once('=').ok_or_else(|| format!("{name}: {item:?} is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{name}: empty key in {item:?}"));
        }
        out.push((k.to_owned(), percent_decode(val.trim())));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_url(name: &str, url: &str) -> Result<(), String> {
    let u: http::Uri = url.parse().map_err(|e| format!("{name}: {url:?} is not a URL: {e}"))?;
    match u.scheme_str() {
        Some("http") | Some("https") if u.host().is_some() => Ok(()),
        _ => Err(format!("{name}: {url:?} must be http://HOST:PORT or https://HOST:PORT")),
    }
}

impl OtelConfig {
    /// Reads the `OTEL_*` variables through `env`. `Ok(None)`: no endpoint (or
    /// `OTEL_SDK_DISABLED=true`, or both signals set to `none`), so no exporter.
    pub fn from_env(default_service: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<OtelConfig>, crate::OtelError> {
        let get = |n: &str| env(n).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                return Err(format!("OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not supported (use grpc or http/protobuf)").into());
            }
        };
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(b) = &base {
            check_url("OTEL_EXPORTER_OTLP_ENDPOINT", b)?;
        }
        let signal = |var: &str, exporter_var: &str, http_path: &str| -> Result<Option<String>, String> {
            match get(exporter_var).map(|v| v.to_ascii_lowercase()).as_deref() {
                None | Some("otlp") => {}
                Some("none") => return Ok(None),
                Some(other) => return Err(format!("{exporter_var}: {other:?} is not supported (use otlp or none)")),
            }
            if let Some(specific) = get(var) {
                check_url(var, &specific)?;
                return Ok(Some(specific));
            }
            Ok(base.as_ref().map(|b| match protocol {
                Protocol::Grpc => b.clone(),
                Protocol::HttpProtobuf => format!("{}/{http_path}", b.trim_end_matches('/')),
            }))
        };
        let traces_endpoint = signal("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER", "v1/traces")?;
        let metrics_endpoint = signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_METRICS_EXPORTER", "v1/metrics")?;
        if traces_endpoint.is_none() && metrics_endpoint.is_none() {
            return Ok(None);
        }
        let headers = match get("OTEL_EXPORTER_OTLP_HEADERS") {
            Some(h) => pairs("OTEL_EXPORTER_OTLP_HEADERS", &h)?,
            None => Vec::new(),
        };
        let ca_pem = match get("OTEL_EXPORTER_OTLP_CERTIFICATE") {
            Some(path) => Some(std::fs::read(&path).map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {e}"))?),
            None => None,
        };
        let mut resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(r) => pairs("OTEL_RESOURCE_ATTRIBUTES", &r)?,
            None => Vec::new(),
        };
        let from_resource = resource.iter().position(|(k, _)| k == "service.name").map(|i| resource.remove(i).1);
        let service_name = get("OTEL_SERVICE_NAME").or(from_resource).unwrap_or_else(|| default_service.to_owned());
        let sampler = Sampler::from_env(get("OTEL_TRACES_SAMPLER").as_deref(), get("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        Ok(Some(OtelConfig {
            protocol,
            traces_endpoint,
            metrics_endpoint,
            headers,
            timeout: ms(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?,
            ca_pem,
            service_name,
            resource,
            sampler,
            metric_interval: ms(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            bsp_delay: ms(env, "OTEL_BSP_SCHEDULE_DELAY", 5_000)?,
            bsp_queue: count(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)?,
            bsp_batch: count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?,
        }))
    }

    /// [`from_env`](Self::from_env) on the process environment.
    pub fn from_process_env(default_service: &str) -> Result<Option<OtelConfig>, crate::OtelError> {
        OtelConfig::from_env(default_service, &|n| std::env::var(n).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(vars: &[(&str, &str)]) -> Result<Option<OtelConfig>, crate::OtelError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OtelConfig::from_env("aigw-proxy", &move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn a_certificate_file_that_cannot_be_read_is_a_startup_error() {
        let e = check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")])
            .err()
            .unwrap();
        assert!(e.0.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE /nonexistent/ca.pem: "), "{e}");
    }

    #[test]
    fn unset_endpoint_means_no_exporter() {
        assert!(check(&[]).unwrap().is_none());
        assert!(check(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")]).unwrap().is_none());
        let none = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_EXPORTER", "none"), ("OTEL_METRICS_EXPORTER", "none")];
        assert!(check(&none).unwrap().is_none());
    }

    #[test]
    fn grpc_defaults_and_http_paths() {
        let c = check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")]).unwrap().unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.traces_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(c.metrics_endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(
            (c.service_name.as_str(), c.metric_interval, c.bsp_delay),
            ("aigw-proxy", Duration::from_secs(60), Duration::from_secs(5))
        );
        let c = check(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-res,deployment.environment=prod%20eu"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.traces_endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(c.metrics_endpoint.as_deref(), Some("http://m:9/custom"));
        assert_eq!(c.service_name, "from-res");
        assert_eq!(c.resource, vec![("deployment.environment".to_owned(), "prod eu".to_owned())]);
        assert_eq!(c.headers, vec![("authorization".to_owned(), "Bearer t".to_owned())]);
        assert_eq!((c.metric_interval, c.bsp_delay), (Duration::from_secs(1), Duration::from_millis(200)));
        let c = check(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SERVICE_NAME", "svc"), ("OTEL_TRACES_EXPORTER", "none")])
            .unwrap()
            .unwrap();
        assert!(c.traces_endpoint.is_none() && c.metrics_endpoint.is_some());
        assert_eq!(c.service_name, "svc");
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for (vars, want) in [
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"), ("OTEL_METRIC_EXPORT_INTERVAL", "0")], "OTEL_METRIC_EXPORT_INTERVAL"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"), ("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:1"), ("OTEL_RESOURCE_ATTRIBUTES", "novalue")], "OTEL_RESOURCE_ATTRIBUTES"),
        ] {
            let e = check(&vars).unwrap_err();
            assert!(e.0.contains(want), "{e}");
        }
    }

    #[test]
    fn semconv_opt_in() {
        assert!(genai_latest(&|n| (n == "OTEL_SEMCONV_STABILITY_OPT_IN").then(|| "http, gen_ai_latest_experimental".into())));
        assert!(!genai_latest(&|_| None));
    }
}
