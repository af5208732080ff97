//! The complete stage: one [`Record`] per request, finished once when the response has
//! ended (or the client went away): first the route's plugins see it (their completion
//! phase, `crate::phases`: http-logger, limiter charges), then every node-wide sink. A
//! sink is small and never blocks the data path: the access log queues a line, metrics
//! add to atomics, spans and the http-logger queue plain data for background senders.

use std::sync::Arc;

use aigw_telemetry::export::Tracer;

use crate::metrics::Metrics;
use crate::phases::Chain;
use crate::record::{ErrorSource, Outcome, Record};

/// A node-wide observer of completed requests (the completion phase for the whole node).
pub trait Sink: Send + Sync {
    fn complete(&self, record: &Record);
}

/// The sinks of a node, in order, and what they need the request to note as it goes.
#[derive(Default)]
pub struct Sinks {
    list: Vec<Arc<dyn Sink>>,
    /// Set when spans are exported: requests start (or continue) a trace.
    pub tracer: Option<Arc<Tracer>>,
    /// A sink renders `$upstream_uri`.
    pub keep_upstream_uri: bool,
}

impl Sinks {
    pub fn new(list: Vec<Arc<dyn Sink>>) -> Sinks {
        Sinks { list, tracer: None, keep_upstream_uri: false }
    }

    /// Requests carry trace ids decided at their start, and sampled ones are exported.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Sinks {
        self.tracer = tracer;
        self
    }

    pub fn keeping_upstream_uri(mut self, keep: bool) -> Sinks {
        self.keep_upstream_uri = keep;
        self
    }

    pub fn complete(&self, record: &Record) {
        for s in &self.list {
            s.complete(record);
        }
    }
}

/// A request's record on its way to the sinks: finished exactly once, by the response body
/// (at its end or when dropped) or by the error path.
pub struct Completion {
    record: Record,
    sinks: Arc<Sinks>,
    /// The request's plugins and their state.
    chain: Chain,
    /// The snapshot's price catalog (the cost is computed once, before any plugin or
    /// sink reads the record).
    prices: Option<Arc<aigw_model::prices::Catalog>>,
}

impl Completion {
    pub fn new(record: Record, sinks: Arc<Sinks>, chain: Chain, prices: Option<Arc<aigw_model::prices::Catalog>>) -> Completion {
        Completion { record, sinks, chain, prices }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn record_mut(&mut self) -> &mut Record {
        &mut self.record
    }

    /// Sets the outcome and the bytes the client was sent, and hands the record on.
    pub fn finish(mut self, outcome: Outcome, body_bytes_sent: u64) {
        let r = &mut self.record;
        r.request_time = r.started.elapsed();
        r.body_bytes_sent = body_bytes_sent;
        if r.llm_model.is_empty()
            && let Some(m) = &r.response_model
        {
            r.llm_model = m.clone();
        }
        if outcome == Outcome::ClientGone {
            tracing::debug!(request_id = %r.request_id, route = %r.route_id, bytes = body_bytes_sent, "client went away; upstream read cancelled");
        }
        r.outcome = outcome;
        if let Some(p) = &self.prices {
            r.price(p);
        }
        self.chain.complete(r);
        self.sinks.complete(&self.record);
    }
}

/// Counts requests, errors, tokens and aborted responses.
pub struct MetricsSink(pub Arc<Metrics>);

impl Sink for MetricsSink {
    fn complete(&self, r: &Record) {
        let m = &self.0;
        Metrics::add(&m.prompt_tokens, r.usage.prompt);
        Metrics::add(&m.completion_tokens, r.usage.completion);
        match r.error.as_ref().map(|(s, _)| *s) {
            Some(ErrorSource::Upstream) => Metrics::add(&m.upstream_errors, 1),
            Some(ErrorSource::Client | ErrorSource::Gateway) => Metrics::add(&m.gateway_errors, 1),
            None => {}
        }
        if !r.outcome.is_complete() {
            Metrics::add(&m.responses_aborted, 1);
            if r.outcome == Outcome::ClientGone {
                Metrics::add(&m.clients_gone, 1);
            }
        }
    }
}
