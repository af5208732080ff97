//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, decided once per request when it
//! starts (so the upstream's `traceparent` carries the same sampled flag the spans get).

use crate::ids::TraceParent;

#[derive(Debug, Clone, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps this fraction of traces, decided from the trace id (every service that
    /// sees the trace decides the same way).
    Ratio(f64),
    /// Follows a client's `traceparent` flag; roots use the inner sampler.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// The OTel spec's names; the default is `parentbased_always_on`.
    pub fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, crate::OtelError> {
        let ratio = || -> Result<f64, String> {
            match arg {
                None => Ok(1.0),
                Some(a) => match a.trim().parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!("OTEL_TRACES_SAMPLER_ARG: {a:?} is not a ratio between 0 and 1")),
                },
            }
        };
        Ok(match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("parentbased_always_on") => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("traceidratio") => Sampler::Ratio(ratio()?),
            Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Some("parentbased_traceidratio") => Sampler::ParentBased(Box::new(Sampler::Ratio(ratio()?))),
            Some(other) => {
                return Err(crate::OtelError(format!(
                    "OTEL_TRACES_SAMPLER: {other:?} is not supported (always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio)"
                )));
            }
        })
    }

    pub fn sampled(&self, parent: Option<&TraceParent>, trace_id: u128) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => {
                // As the OTel SDKs: the trace id's low 63 bits against ratio × 2^63.
                let bound = (r.max(0.0) * (1u64 << 63) as f64) as u64;
                ((trace_id as u64) >> 1) < bound
            }
            Sampler::ParentBased(root) => match parent {
                Some(p) => p.sampled,
                None => root.sampled(None, trace_id),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_decisions() {
        let parent = |sampled| TraceParent { trace_id: 7, parent_id: 1, sampled };
        let s = Sampler::from_env(None, None).unwrap();
        assert!(s.sampled(None, 1) && s.sampled(Some(&parent(true)), 1) && !s.sampled(Some(&parent(false)), 1));
        assert!(!Sampler::from_env(Some("always_off"), None).unwrap().sampled(Some(&parent(true)), 1));
        assert!(Sampler::from_env(Some("always_on"), None).unwrap().sampled(Some(&parent(false)), 1));
        let half = Sampler::from_env(Some("traceidratio"), Some("0.5")).unwrap();
        let kept = (0..10_000u128).filter(|_| half.sampled(None, crate::ids::trace_id())).count();
        assert!((4000..6000).contains(&kept), "{kept}");
        assert!(!Sampler::from_env(Some("traceidratio"), Some("0")).unwrap().sampled(None, u128::MAX));
        assert!(Sampler::from_env(Some("traceidratio"), Some("2")).is_err());
        assert!(Sampler::from_env(Some("jaeger_remote"), None).is_err());
        let pr = Sampler::from_env(Some("parentbased_traceidratio"), Some("0")).unwrap();
        assert!(pr.sampled(Some(&parent(true)), 1) && !pr.sampled(None, 1));
    }
}
