//! Whether a failed attempt is retried on another instance: one pure function of the
//! attempt's outcome and the route's fallback policy (table-tested below).

/// How an attempt on an upstream instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status (headers received).
    Status(u16),
    ConnectRefused,
    /// No connection within the timeout.
    ConnectTimeout,
    /// The connection was reset or closed before a response.
    Reset,
    /// TLS handshake or certificate failure.
    Tls,
    /// Connected and sent, no response byte within the timeout.
    TimeoutBeforeFirstByte,
    /// The response started, then stalled past the timeout (or broke off).
    TimeoutAfterBytes,
    /// The upstream answered with something that is not HTTP (a protocol error): not a
    /// fast failure another instance is known to avoid; never retried.
    Malformed,
    /// A policy refused this instance for this request before it was tried (an
    /// `instances[].limit` of `ai-rate-limiting` spent): not the instance's failure.
    Refused,
}

/// What an outcome says about the instance's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthSignal {
    Success,
    Failure,
}

impl Outcome {
    /// The 5xx class of `fallback_strategy: http_5xx`: 5xx statuses and every failure to
    /// get an answer before its first byte (connect refused, reset, TLS, timeouts).
    pub fn is_5xx_class(&self) -> bool {
        match self {
            Outcome::Status(s) => (500..600).contains(s),
            Outcome::ConnectRefused | Outcome::ConnectTimeout | Outcome::Reset | Outcome::Tls | Outcome::TimeoutBeforeFirstByte => true,
            // The upstream did the work (and charged for it): not a fast failure to fall back from.
            Outcome::TimeoutAfterBytes | Outcome::Malformed | Outcome::Refused => false,
        }
    }

    /// Success for health: any answer below 500 except 429 (a 400 is the client's fault,
    /// and says the instance is up). Failures: 429, 5xx, no answer, a broken answer. None:
    /// the instance was not tried (a refusal says nothing of its health).
    pub fn health_signal(&self) -> Option<HealthSignal> {
        match self {
            Outcome::Refused => None,
            Outcome::Status(s) if *s < 500 && *s != 429 => Some(HealthSignal::Success),
            _ => Some(HealthSignal::Failure),
        }
    }

    /// The status a client gets when this is the last attempt and no upstream answered:
    /// 504 for timeouts, 502 otherwise (CONTRACT §6). None: the upstream's own status.
    pub fn gateway_status(&self) -> Option<u16> {
        match self {
            Outcome::Status(_) => None,
            Outcome::ConnectTimeout | Outcome::TimeoutBeforeFirstByte | Outcome::TimeoutAfterBytes => Some(504),
            Outcome::ConnectRefused | Outcome::Reset | Outcome::Tls | Outcome::Malformed => Some(502),
            // The refusal is the answer (its own status, in the client's protocol).
            Outcome::Refused => None,
        }
    }
}

/// A route's fallback settings (`fallback_strategy`, `fallback_http_statuses`,
/// `max_retries`, `retry_on_failure_within_ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FallbackPolicy {
    /// `http_429` in the strategy.
    pub on_429: bool,
    /// `http_5xx` in the strategy.
    pub on_5xx: bool,
    /// `rate_limiting` in the strategy (or `instance_health_and_rate_limiting`): an
    /// instance a policy refused ([`Outcome::Refused`]) is skipped for another.
    pub on_rate_limit: bool,
    /// `fallback_http_statuses`: more statuses that fall back, whatever the strategy.
    pub statuses: Vec<u16>,
    /// Retries after the first attempt (attempts = 1 + max_retries); None: every instance
    /// may be tried once.
    pub max_retries: Option<u32>,
    /// Only failures that came back within this many ms of their attempt's start are retried.
    pub retry_within_ms: Option<u64>,
}

/// One finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    /// A byte of the response already went to the client (headers or body).
    pub sent_to_client: bool,
    /// Milliseconds from this attempt's start to its failure.
    pub elapsed_ms: u64,
    /// Attempts made for this request so far, this one included (≥ 1).
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Pick another instance (the picker may still find none left: then give up).
    Retry,
    GiveUp(GiveUp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// Not a failure (1xx–3xx).
    Succeeded,
    /// The policy does not fall back on this outcome.
    NotRetryable,
    /// The client already has bytes of this response.
    AlreadySent,
    /// The failure took longer than `retry_on_failure_within_ms`.
    TooSlow,
    /// `max_retries` reached.
    RetriesExhausted,
}

/// The retry decision, the one place that says whether a request moves to another
/// instance. Order: a success is final; nothing is retried once the client has a byte;
/// then the policy must cover the outcome; then time and count limits. A refused
/// instance was never tried: it moves on under `rate_limiting` whatever the limits
/// (it is not a retry, as in APISIX, where such instances are left out of the pick).
pub fn decide(p: &FallbackPolicy, a: &Attempt) -> Decision {
    if a.outcome == Outcome::Refused {
        return if p.on_rate_limit { Decision::Retry } else { Decision::GiveUp(GiveUp::NotRetryable) };
    }
    if let Outcome::Status(s) = a.outcome
        && s < 400
    {
        return Decision::GiveUp(GiveUp::Succeeded);
    }
    if a.sent_to_client {
        return Decision::GiveUp(GiveUp::AlreadySent);
    }
    let covered = match a.outcome {
        Outcome::Status(s) if p.statuses.contains(&s) => true,
        Outcome::Status(429) => p.on_429,
        o => p.on_5xx && o.is_5xx_class(),
    };
    if !covered {
        return Decision::GiveUp(GiveUp::NotRetryable);
    }
    if p.retry_within_ms.is_some_and(|ms| a.elapsed_ms > ms) {
        return Decision::GiveUp(GiveUp::TooSlow);
    }
    if p.max_retries.is_some_and(|m| a.attempts > m) {
        return Decision::GiveUp(GiveUp::RetriesExhausted);
    }
    Decision::Retry
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{GiveUp as G, Retry};
    use GiveUp::*;
    use Outcome::*;

    /// The policy of a real, validated plugin config: `strategy` is the string form, or
    /// `[a,b]` for the array form, or empty for none.
    fn pol(strategy: &str, statuses: &[u16], max_retries: Option<u32>, within: Option<u64>) -> FallbackPolicy {
        let mut conf = serde_json::json!({"instances": [{"name": "a", "provider": "openai", "weight": 1, "auth": {}}]});
        if let Some(list) = strategy.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            conf["fallback_strategy"] = list.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>().into();
        } else if !strategy.is_empty() {
            conf["fallback_strategy"] = strategy.into();
        }
        if !statuses.is_empty() {
            conf["fallback_http_statuses"] = statuses.to_vec().into();
        }
        if let Some(m) = max_retries {
            conf["max_retries"] = m.into();
        }
        if let Some(w) = within {
            conf["retry_on_failure_within_ms"] = w.into();
        }
        let c = aigw_model::multi::validate_ai_proxy_multi("p", &conf).unwrap();
        crate::config::fallback_policy(&c)
    }

    #[test]
    fn decision_table() {
        let a = |outcome, sent, elapsed_ms, attempts| Attempt { outcome, sent_to_client: sent, elapsed_ms, attempts };
        // (strategy, fallback_http_statuses, max_retries, retry_on_failure_within_ms, attempt, decision)
        let rows = [
            // Strategy coverage.
            ("http_429", &[][..], None, None, a(Status(429), false, 5, 1), Retry),
            ("http_429", &[], None, None, a(Status(500), false, 5, 1), G(NotRetryable)),
            ("http_5xx", &[], None, None, a(Status(429), false, 5, 1), G(NotRetryable)),
            ("http_5xx", &[], None, None, a(Status(500), false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(Status(503), false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(Status(599), false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(ConnectRefused, false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(ConnectTimeout, false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(Reset, false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(Tls, false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(TimeoutBeforeFirstByte, false, 5, 1), Retry),
            ("http_5xx", &[], None, None, a(TimeoutAfterBytes, false, 5, 1), G(NotRetryable)),
            ("http_5xx", &[], None, None, a(Malformed, false, 5, 1), G(NotRetryable)),
            ("[http_5xx,http_429]", &[502], None, None, a(Malformed, false, 5, 1), G(NotRetryable)),
            // A refused instance moves on only under rate_limiting, and is not a retry.
            ("[rate_limiting]", &[], None, None, a(Refused, false, 5, 1), Retry),
            ("instance_health_and_rate_limiting", &[], Some(0), None, a(Refused, false, 5, 3), Retry),
            ("[http_5xx,http_429]", &[], None, None, a(Refused, false, 5, 1), G(NotRetryable)),
            ("", &[], None, None, a(Refused, false, 5, 1), G(NotRetryable)),
            ("http_429", &[], None, None, a(ConnectRefused, false, 5, 1), G(NotRetryable)),
            // Array form with both, and rate_limiting / instance_health_and_rate_limiting (pick-time only).
            ("[http_429,http_5xx]", &[], None, None, a(Status(429), false, 5, 1), Retry),
            ("[http_429,http_5xx]", &[], None, None, a(Reset, false, 5, 1), Retry),
            ("[rate_limiting]", &[], None, None, a(Status(429), false, 5, 1), G(NotRetryable)),
            ("[rate_limiting,http_5xx]", &[], None, None, a(Status(502), false, 5, 1), Retry),
            ("[]", &[], None, None, a(Status(502), false, 5, 1), G(NotRetryable)),
            ("instance_health_and_rate_limiting", &[], None, None, a(Status(503), false, 5, 1), G(NotRetryable)),
            ("", &[], None, None, a(Status(500), false, 5, 1), G(NotRetryable)),
            // fallback_http_statuses add statuses, whatever the strategy.
            ("", &[401, 402], None, None, a(Status(401), false, 5, 1), Retry),
            ("http_429", &[404], None, None, a(Status(404), false, 5, 1), Retry),
            ("", &[503], None, None, a(Status(500), false, 5, 1), G(NotRetryable)),
            ("", &[503], None, None, a(Status(503), false, 5, 1), Retry),
            ("http_429", &[401], None, None, a(Status(400), false, 5, 1), G(NotRetryable)),
            // Successes are final.
            ("http_5xx", &[], None, None, a(Status(200), false, 5, 1), G(Succeeded)),
            ("http_5xx", &[], None, None, a(Status(304), false, 5, 1), G(Succeeded)),
            // Never after a byte went to the client.
            ("http_5xx", &[], None, None, a(Status(500), true, 5, 1), G(AlreadySent)),
            ("http_5xx", &[], None, None, a(Reset, true, 5, 1), G(AlreadySent)),
            ("", &[429], None, None, a(Status(429), true, 5, 1), G(AlreadySent)),
            // retry_on_failure_within_ms: the failed attempt's own duration.
            ("http_5xx", &[], None, Some(100), a(Status(500), false, 100, 1), Retry),
            ("http_5xx", &[], None, Some(100), a(Status(500), false, 101, 1), G(TooSlow)),
            ("http_5xx", &[], None, Some(100), a(TimeoutBeforeFirstByte, false, 30_000, 1), G(TooSlow)),
            // max_retries counts retries: attempts = 1 + max_retries.
            ("http_5xx", &[], Some(0), None, a(Status(500), false, 5, 1), G(RetriesExhausted)),
            ("http_5xx", &[], Some(1), None, a(Status(500), false, 5, 1), Retry),
            ("http_5xx", &[], Some(1), None, a(Status(500), false, 5, 2), G(RetriesExhausted)),
            ("http_5xx", &[], Some(2), None, a(Status(500), false, 5, 2), Retry),
            ("http_5xx", &[], None, None, a(Status(500), false, 5, 50), Retry),
        ];
        for (strategy, statuses, max, within, attempt, want) in rows {
            let p = pol(strategy, statuses, max, within);
            assert_eq!(
                decide(&p, &attempt),
                want,
                "strategy {strategy:?} statuses {statuses:?} max {max:?} within {within:?}: {attempt:?}"
            );
        }
    }

    #[test]
    fn three_failing_instances_with_max_retries_one_make_two_attempts() {
        let p = pol("http_5xx", &[], Some(1), None);
        let mut attempts = 0;
        loop {
            attempts += 1;
            if decide(&p, &Attempt { outcome: Status(500), sent_to_client: false, elapsed_ms: 1, attempts }) != Retry {
                break;
            }
        }
        assert_eq!(attempts, 2);
    }

    #[test]
    fn outcome_classes() {
        for (o, five, health, gw) in [
            (Status(200), false, Some(HealthSignal::Success), None),
            (Status(400), false, Some(HealthSignal::Success), None),
            (Status(429), false, Some(HealthSignal::Failure), None),
            (Status(500), true, Some(HealthSignal::Failure), None),
            (ConnectRefused, true, Some(HealthSignal::Failure), Some(502)),
            (ConnectTimeout, true, Some(HealthSignal::Failure), Some(504)),
            (Reset, true, Some(HealthSignal::Failure), Some(502)),
            (Tls, true, Some(HealthSignal::Failure), Some(502)),
            (TimeoutBeforeFirstByte, true, Some(HealthSignal::Failure), Some(504)),
            (TimeoutAfterBytes, false, Some(HealthSignal::Failure), Some(504)),
            (Malformed, false, Some(HealthSignal::Failure), Some(502)),
            (Refused, false, None, None),
        ] {
            assert_eq!((o.is_5xx_class(), o.health_signal(), o.gateway_status()), (five, health, gw), "{o:?}");
        }
    }
}
