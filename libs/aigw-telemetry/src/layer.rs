//! A `tracing` layer that exports the process's own `tracing` spans (aigw-config,
//! aigw-token-cache) as OTLP spans: kind INTERNAL (SERVER when the span has a field
//! `otel.kind = "server"`), fields as attributes, parents as in `tracing`. Spans are
//! sampled when their root starts; unsampled trees cost one id per span.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Subscriber, span};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::export::{Kind, SpanBatch, Tracer};

pub struct OtlpLayer {
    tracer: Arc<Tracer>,
}

impl OtlpLayer {
    pub fn new(tracer: Arc<Tracer>) -> OtlpLayer {
        OtlpLayer { tracer }
    }
}

struct Data {
    trace_id: u128,
    span_id: u64,
    parent_id: u64,
    sampled: bool,
    name: &'static str,
    target: &'static str,
    start: SystemTime,
    server: bool,
    fields: Vec<(&'static str, String)>,
}

struct Fields<'a>(&'a mut Vec<(&'static str, String)>, &'a mut bool);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "otel.kind" {
            *self.1 = value.eq_ignore_ascii_case("server");
            return;
        }
        self.0.push((field.name(), value.to_owned()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        // A field declared `Empty` and recorded later replaces its place.
        match self.0.iter_mut().find(|(k, _)| *k == field.name()) {
            Some(slot) => slot.1 = v,
            None => self.0.push((field.name(), v)),
        }
    }
}

impl Data {
    fn encode(&self, out: &mut SpanBatch) {
        let kind = if self.server { Kind::Server } else { Kind::Internal };
        let mut b = out.span(self.trace_id, self.span_id, self.parent_id, &[self.name], kind, self.start, SystemTime::now());
        b.str("code.namespace", self.target);
        for (k, v) in &self.fields {
            b.str(k, v);
        }
    }
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span.parent().and_then(|p| p.extensions().get::<Data>().map(|d| (d.trace_id, d.span_id, d.sampled)));
        let (trace_id, parent_id, sampled) = match parent {
            Some((t, s, sampled)) => (t, s, sampled),
            None => {
                let t = self.tracer.start(None);
                (t.trace_id, 0, t.sampled)
            }
        };
        let mut fields = Vec::new();
        let mut server = false;
        if sampled {
            attrs.record(&mut Fields(&mut fields, &mut server));
        }
        let meta = attrs.metadata();
        span.extensions_mut().insert(Data {
            trace_id,
            span_id: crate::ids::span_id(),
            parent_id,
            sampled,
            name: meta.name(),
            target: meta.target(),
            start: SystemTime::now(),
            server,
            fields,
        });
    }

    fn on_record(&self, id: &span::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(d) = ext.get_mut::<Data>()
            && d.sampled
        {
            let mut server = d.server;
            values.record(&mut Fields(&mut d.fields, &mut server));
            d.server = server;
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(d) = span.extensions_mut().remove::<Data>()
            && d.sampled
        {
            self.tracer.spans(|b| d.encode(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn tracing_spans_become_otlp_spans_with_parents() {
        let tracer = Arc::new(Tracer::detached(crate::sampler::Sampler::AlwaysOn));
        let sub = tracing_subscriber::registry().with(OtlpLayer::new(tracer.clone()));
        tracing::subscriber::with_default(sub, || {
            let outer = tracing::info_span!("put_route", route_id = "r1", otel.kind = "server");
            let _g = outer.enter();
            let inner = tracing::info_span!("store.write", bytes = 10u64);
            drop(inner.enter());
        });
        let batches = tracer.take();
        assert_eq!(batches.len(), 1, "one thread, one batch");
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            prost::Message::decode(batches[0].clone()).expect("valid OTLP");
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let (inner, outer) = (&spans[0], &spans[1]);
        assert_eq!((inner.name.as_str(), outer.name.as_str()), ("store.write", "put_route"));
        assert_eq!(inner.trace_id, outer.trace_id);
        assert_eq!(inner.parent_span_id, outer.span_id);
        assert!(outer.parent_span_id.is_empty());
        assert_eq!(outer.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
        assert!(outer.attributes.iter().any(|a| a.key == "route_id"));
    }
}
