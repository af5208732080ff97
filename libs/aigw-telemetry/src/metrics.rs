//! One set of instruments, two views: Prometheus text (`/metrics`) and OTLP (pushed by
//! the exporter). Recording is lock-free on the hot path: a label set is looked up under
//! a read lock (uncontended: a couple of atomics) and its value updated with relaxed
//! atomic adds; the write lock is taken only the first time a label set is seen.
//!
//! Cheaper still, a series can be resolved once and kept: [`Counter::handle`] /
//! [`Histogram::handle`] give a [`CounterHandle`] / [`HistogramHandle`] whose `add` /
//! `record` are atomic adds only (no hash, no lock, no label comparison) — for label sets
//! known when a route is compiled. For label sets a route only meets at run time (status,
//! model names, error type), a [`Memo`] per route and instrument keeps the handles of the
//! first [`MEMO_SLOTS`] sets it sees: a request then finds its series with a few byte
//! comparisons of its label values.
//!
//! Cardinality is bounded: a family holds at most [`MAX_SERIES`] label sets; later ones
//! are folded into one series whose every label is [`OVERFLOW`] (as the OTel SDKs do).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as pm;

/// Label sets per family beyond which new ones are folded into the overflow series.
pub const MAX_SERIES: usize = 2000;
/// The value of every label of the overflow series (and of a bounded label whose value
/// was refused).
pub const OVERFLOW: &str = "_OTHER";

const CUMULATIVE: i32 = pm::AggregationTemporality::Cumulative as i32;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

pub fn kv_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_owned()))
}

struct Series<V> {
    labels: Box<[Box<str>]>,
    value: V,
}

type SeriesMap<V> = HashMap<u64, Vec<Arc<Series<V>>>, BuildHasherDefault<U64Key>>;

struct Family<V> {
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Keyed by [`hash_labels`]: the key already is a hash, so the map does not hash again.
    series: RwLock<SeriesMap<V>>,
    len: AtomicU64,
    overflow: OnceLock<Arc<Series<V>>>,
    make: fn(&Family<V>) -> V,
    bounds: &'static [f64],
    /// A counter whose values are f64 bits (USD): added with [`FloatCounter::add`].
    float: bool,
}

/// A fast label-set hash (FxHash-style multiply-rotate, 8 bytes at a time), recomputed for
/// every recording: SipHash cost more than the atomic adds it guarded. Label values are
/// bounded (route ids, provider names, admitted model names, statuses), and a collision
/// costs one extra comparison, so a keyed hash buys nothing here.
fn hash_labels(values: &[&str]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut mix = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    for v in values {
        let mut b = v.as_bytes();
        while b.len() >= 8 {
            mix(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
            b = &b[8..];
        }
        let mut tail = [0u8; 8];
        tail[..b.len()].copy_from_slice(b);
        mix(u64::from_le_bytes(tail));
        mix(v.len() as u64 | 0xff00_0000_0000_0000);
    }
    h
}

/// The identity "hash" of a `u64` key that already is one.
#[derive(Default)]
struct U64Key(u64);

impl Hasher for U64Key {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<V> Family<V> {
    /// The series of `values`, created on first use (the overflow series once the family
    /// is full).
    fn series(&self, values: &[&str]) -> Arc<Series<V>> {
        let mut out = None;
        self.find(values, |s| out = Some(s.clone()));
        out.unwrap_or_else(|| self.overflow())
    }

    fn overflow(&self) -> Arc<Series<V>> {
        self.overflow
            .get_or_init(|| {
                Arc::new(Series { labels: self.labels.iter().map(|_| Box::from(OVERFLOW)).collect(), value: (self.make)(self) })
            })
            .clone()
    }

    /// Runs `f` on the value of the series `values` (created on first use).
    fn with(&self, values: &[&str], f: impl FnOnce(&V)) {
        self.find(values, |s| f(&s.value));
    }

    /// Runs `f` on the series `values` (created on first use).
    fn find(&self, values: &[&str], f: impl FnOnce(&Arc<Series<V>>)) {
        debug_assert_eq!(values.len(), self.labels.len(), "{}: label count", self.name);
        let h = hash_labels(values);
        let same = |s: &Series<V>| s.labels.len() == values.len() && s.labels.iter().zip(values).all(|(a, b)| &**a == *b);
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.get(&h).and_then(|v| v.iter().find(|s| same(s))) {
                f(s);
                return;
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&h).and_then(|v| v.iter().find(|s| same(s))) {
            f(s);
            return;
        }
        if self.len.load(Ordering::Relaxed) as usize >= MAX_SERIES {
            drop(map);
            f(&self.overflow());
            return;
        }
        let s = Arc::new(Series { labels: values.iter().map(|v| Box::from(*v)).collect(), value: (self.make)(self) });
        f(&s);
        map.entry(h).or_default().push(s);
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    fn all(&self) -> Vec<Arc<Series<V>>> {
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().flatten().cloned().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v.extend(self.overflow.get().cloned());
        v
    }

    fn attrs(&self, s: &Series<V>) -> Vec<KeyValue> {
        self.labels.iter().zip(s.labels.iter()).filter(|(_, v)| !v.is_empty()).map(|(k, v)| kv_str(k, v)).collect()
    }
}

/// Bucket counts (not cumulative) and the sum of one histogram series.
pub struct HistValue {
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl HistValue {
    fn record(&self, bounds: &[f64], v: f64) {
        // OTel buckets are upper-inclusive: (b[i-1], b[i]].
        let i = bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self.sum.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(x) => cur = x,
            }
        }
    }

    fn snapshot(&self) -> (Vec<u64>, f64) {
        (self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(), f64::from_bits(self.sum.load(Ordering::Relaxed)))
    }
}

/// A monotonic counter family.
#[derive(Clone)]
pub struct Counter(Arc<Family<AtomicU64>>);

/// A monotonic counter of fractional amounts (the cost of requests, USD).
#[derive(Clone)]
pub struct FloatCounter(Arc<Family<AtomicU64>>);

/// Adds `v` to the f64 whose bits `c` holds.
fn add_f64(c: &AtomicU64, v: f64) {
    let mut cur = c.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + v).to_bits();
        match c.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break,
            Err(x) => cur = x,
        }
    }
}

impl FloatCounter {
    /// Adds `v` (≥ 0, finite) to the series of `labels`.
    pub fn add(&self, labels: &[&str], v: f64) {
        if !(v.is_finite() && v > 0.0) {
            return;
        }
        self.0.with(labels, |c| add_f64(c, v));
    }

    /// The series of `labels`, resolved now (see [`Counter::handle`]).
    pub fn handle(&self, labels: &[&str]) -> FloatCounterHandle {
        FloatCounterHandle(self.0.series(labels))
    }

    /// The current value of one series.
    pub fn get(&self, labels: &[&str]) -> f64 {
        let mut v = 0.0;
        self.0.with(labels, |c| v = f64::from_bits(c.load(Ordering::Relaxed)));
        v
    }
}

impl Counter {
    /// Adds `n` to the series of `labels` (values in the order the family declared).
    pub fn add(&self, labels: &[&str], n: u64) {
        self.0.with(labels, |c| {
            c.fetch_add(n, Ordering::Relaxed);
        });
    }

    /// The current value of one series (tests, status pages).
    pub fn get(&self, labels: &[&str]) -> u64 {
        let mut v = 0;
        self.0.with(labels, |c| v = c.load(Ordering::Relaxed));
        v
    }

    /// The series of `labels`, resolved now (created if new, counted against the
    /// cardinality cap; the overflow series when the family is full).
    pub fn handle(&self, labels: &[&str]) -> CounterHandle {
        CounterHandle(self.0.series(labels))
    }
}

/// One counter series, resolved once: [`add`](Self::add) is one relaxed atomic add.
#[derive(Clone)]
pub struct CounterHandle(Arc<Series<AtomicU64>>);

impl CounterHandle {
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// One fractional counter series, resolved once.
#[derive(Clone)]
pub struct FloatCounterHandle(Arc<Series<AtomicU64>>);

impl FloatCounterHandle {
    /// Adds `v` (≥ 0, finite).
    pub fn add(&self, v: f64) {
        if v.is_finite() && v > 0.0 {
            add_f64(&self.0.value, v);
        }
    }
}

/// A histogram family with explicit bucket boundaries.
#[derive(Clone)]
pub struct Histogram(Arc<Family<HistValue>>);

impl Histogram {
    pub fn record(&self, labels: &[&str], v: f64) {
        if !v.is_finite() {
            return;
        }
        let bounds = self.0.bounds;
        self.0.with(labels, |h| h.record(bounds, v));
    }

    /// The series of `labels`, resolved now (see [`Counter::handle`]).
    pub fn handle(&self, labels: &[&str]) -> HistogramHandle {
        HistogramHandle { series: self.0.series(labels), bounds: self.0.bounds }
    }
}

/// One histogram series, resolved once: [`record`](Self::record) finds the bucket and
/// does two relaxed atomic updates (count, sum).
#[derive(Clone)]
pub struct HistogramHandle {
    series: Arc<Series<HistValue>>,
    bounds: &'static [f64],
}

impl HistogramHandle {
    pub fn record(&self, v: f64) {
        if v.is_finite() {
            self.series.value.record(self.bounds, v);
        }
    }
}

/// Label sets a [`Memo`] keeps handles for.
pub const MEMO_SLOTS: usize = 4;

/// What a [`Memo`] can resolve handles of: [`Counter`] and [`Histogram`].
pub trait Instrument {
    type Handle;
    fn resolve(&self, labels: &[&str]) -> Self::Handle;
}

impl Instrument for Counter {
    type Handle = CounterHandle;
    fn resolve(&self, labels: &[&str]) -> CounterHandle {
        self.handle(labels)
    }
}

impl Instrument for FloatCounter {
    type Handle = FloatCounterHandle;
    fn resolve(&self, labels: &[&str]) -> FloatCounterHandle {
        self.handle(labels)
    }
}

impl Instrument for Histogram {
    type Handle = HistogramHandle;
    fn resolve(&self, labels: &[&str]) -> HistogramHandle {
        self.handle(labels)
    }
}

/// The handles of one instrument for the label sets one route sees (kept with the
/// compiled route, so a config change starts afresh): the first [`MEMO_SLOTS`] distinct
/// sets are resolved on first use and kept; a request finds its handle by comparing its
/// label values with theirs — no hash, no lock, no allocation. Later sets go through the
/// family's lookup, as without a memo. The label values stay the caller's: bound the ones
/// that come from outside ([`BoundedValues`]) before they get here.
pub struct Memo<I: Instrument> {
    instrument: I,
    slots: [OnceLock<Kept<I::Handle>>; MEMO_SLOTS],
}

/// A label set a [`Memo`] resolved, and its handle.
type Kept<H> = (Box<[Box<str>]>, H);

impl<I: Instrument> Memo<I> {
    pub fn new(instrument: I) -> Memo<I> {
        Memo { instrument, slots: Default::default() }
    }

    /// The handle of `labels` when a slot already holds them (fills no slot). A caller
    /// whose label values still await bounding ([`BoundedValues::admit`]) may look them
    /// up raw first: a slot holding them proves they were admitted.
    pub fn get(&self, labels: &[&str]) -> Option<&I::Handle> {
        self.slots.iter().map_while(OnceLock::get).find(|(l, _)| same_labels(l, labels)).map(|(_, h)| h)
    }

    /// Runs `f` with the handle of `labels`.
    fn with(&self, labels: &[&str], f: impl FnOnce(&I::Handle)) -> Option<I::Handle> {
        for slot in &self.slots {
            let (l, h) = slot.get_or_init(|| (labels.iter().map(|v| Box::from(*v)).collect(), self.instrument.resolve(labels)));
            if same_labels(l, labels) {
                f(h);
                return None;
            }
        }
        Some(self.instrument.resolve(labels))
    }
}

fn same_labels(kept: &[Box<str>], labels: &[&str]) -> bool {
    kept.len() == labels.len() && kept.iter().zip(labels).all(|(a, b)| **a == **b)
}

impl Memo<Counter> {
    pub fn add(&self, labels: &[&str], n: u64) {
        if let Some(h) = self.with(labels, |h| h.add(n)) {
            h.add(n);
        }
    }
}

impl Memo<FloatCounter> {
    pub fn add(&self, labels: &[&str], v: f64) {
        if !(v.is_finite() && v > 0.0) {
            return;
        }
        if let Some(h) = self.with(labels, |h| h.add(v)) {
            h.add(v);
        }
    }
}

impl Memo<Histogram> {
    pub fn record(&self, labels: &[&str], v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(h) = self.with(labels, |h| h.record(v)) {
            h.record(v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObservedKind {
    Counter,
    Gauge,
}

struct Observed {
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    kind: ObservedKind,
    points: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// What a callback reports at collection time (values kept elsewhere, e.g. atomics a
/// library already has).
#[derive(Default)]
pub struct Observations {
    list: Vec<Observed>,
}

impl Observations {
    fn push(
        &mut self,
        kind: ObservedKind,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        v: f64,
    ) {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        match self.list.iter_mut().find(|o| o.name == name) {
            Some(o) => o.points.push((labels, v)),
            None => self.list.push(Observed { name, unit, help, kind, points: vec![(labels, v)] }),
        }
    }

    /// A monotonic total.
    pub fn counter(&mut self, name: &'static str, unit: &'static str, help: &'static str, labels: &[(&'static str, &str)], v: u64) {
        self.push(ObservedKind::Counter, name, unit, help, labels, v as f64);
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &'static str, unit: &'static str, help: &'static str, labels: &[(&'static str, &str)], v: f64) {
        self.push(ObservedKind::Gauge, name, unit, help, labels, v);
    }
}

type Callback = Box<dyn Fn(&mut Observations) + Send + Sync>;

/// Every instrument of a process.
pub struct Registry {
    start: SystemTime,
    counters: Mutex<Vec<Arc<Family<AtomicU64>>>>,
    histograms: Mutex<Vec<Arc<Family<HistValue>>>>,
    callbacks: Mutex<Vec<Callback>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { start: SystemTime::now(), counters: Mutex::default(), histograms: Mutex::default(), callbacks: Mutex::default() }
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// A counter family named as in OpenTelemetry (`aigw.gateway.requests`); Prometheus
    /// shows it as `aigw_gateway_requests_total`.
    pub fn counter(&self, name: &'static str, unit: &'static str, help: &'static str, labels: &'static [&'static str]) -> Counter {
        let f = Arc::new(Family {
            name,
            unit,
            help,
            labels,
            series: RwLock::default(),
            len: AtomicU64::new(0),
            overflow: OnceLock::new(),
            make: |_| AtomicU64::new(0),
            bounds: &[],
            float: false,
        });
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).push(f.clone());
        Counter(f)
    }

    /// A counter of fractional amounts (USD): Prometheus and OTLP show it as a double sum.
    pub fn float_counter(
        &self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> FloatCounter {
        let f = Arc::new(Family {
            name,
            unit,
            help,
            labels,
            series: RwLock::default(),
            len: AtomicU64::new(0),
            overflow: OnceLock::new(),
            make: |_| AtomicU64::new(0f64.to_bits()),
            bounds: &[],
            float: true,
        });
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).push(f.clone());
        FloatCounter(f)
    }

    pub fn histogram(
        &self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Histogram {
        let f = Arc::new(Family {
            name,
            unit,
            help,
            labels,
            series: RwLock::default(),
            len: AtomicU64::new(0),
            overflow: OnceLock::new(),
            make: |f| HistValue { counts: (0..=f.bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) },
            bounds,
            float: false,
        });
        self.histograms.lock().unwrap_or_else(|e| e.into_inner()).push(f.clone());
        Histogram(f)
    }

    /// Adds a callback run at every collection (scrape or export).
    pub fn observe(&self, f: impl Fn(&mut Observations) + Send + Sync + 'static) {
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
    }

    fn observed(&self) -> Observations {
        let mut o = Observations::default();
        for cb in self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            cb(&mut o);
        }
        o
    }

    /// Prometheus text exposition (version 0.0.4).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let counters: Vec<_> = self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in counters {
            let name = prom_name(f.name, f.unit, true);
            header(&mut out, &name, f.help, "counter");
            for s in f.all() {
                let v = s.value.load(Ordering::Relaxed);
                let v = if f.float { fmt_f64(f64::from_bits(v)) } else { v.to_string() };
                let _ = writeln!(out, "{name}{} {v}", labels(f.labels, &s.labels, None));
            }
        }
        let hists: Vec<_> = self.histograms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in hists {
            let name = prom_name(f.name, f.unit, false);
            header(&mut out, &name, f.help, "histogram");
            for s in f.all() {
                let (counts, sum) = s.value.snapshot();
                let mut cum = 0;
                for (i, c) in counts.iter().enumerate() {
                    cum += c;
                    let le = f.bounds.get(i).map(|b| fmt_f64(*b)).unwrap_or_else(|| "+Inf".into());
                    let _ = writeln!(out, "{name}_bucket{} {cum}", labels(f.labels, &s.labels, Some(&le)));
                }
                let l = labels(f.labels, &s.labels, None);
                let _ = writeln!(out, "{name}_sum{l} {}", fmt_f64(sum));
                let _ = writeln!(out, "{name}_count{l} {cum}");
            }
        }
        for o in self.observed().list {
            let counter = o.kind == ObservedKind::Counter;
            let name = prom_name(o.name, o.unit, counter);
            header(&mut out, &name, o.help, if counter { "counter" } else { "gauge" });
            for (ls, v) in &o.points {
                let keys: Vec<&str> = ls.iter().map(|(k, _)| *k).collect();
                let vals: Vec<Box<str>> = ls.iter().map(|(_, v)| Box::from(v.as_str())).collect();
                let _ = writeln!(out, "{name}{} {}", labels(&keys, &vals, None), fmt_f64(*v));
            }
        }
        out
    }

    /// Every instrument as OTLP metrics (cumulative temporality, start = registry creation).
    pub fn to_otlp(&self) -> Vec<pm::Metric> {
        let (start, now) = (nanos(self.start), nanos(SystemTime::now()));
        let mut out = Vec::new();
        let counters: Vec<_> = self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in counters {
            let points = f
                .all()
                .iter()
                .map(|s| pm::NumberDataPoint {
                    attributes: f.attrs(s),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some({
                        let v = s.value.load(Ordering::Relaxed);
                        if f.float {
                            pm::number_data_point::Value::AsDouble(f64::from_bits(v))
                        } else {
                            pm::number_data_point::Value::AsInt(v as i64)
                        }
                    }),
                    ..Default::default()
                })
                .collect();
            out.push(metric(f.name, f.unit, f.help, pm::metric::Data::Sum(sum(points))));
        }
        let hists: Vec<_> = self.histograms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for f in hists {
            let points = f
                .all()
                .iter()
                .map(|s| {
                    let (counts, total) = s.value.snapshot();
                    pm::HistogramDataPoint {
                        attributes: f.attrs(s),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: counts.iter().sum(),
                        sum: Some(total),
                        bucket_counts: counts,
                        explicit_bounds: f.bounds.to_vec(),
                        ..Default::default()
                    }
                })
                .collect();
            let h = pm::Histogram { data_points: points, aggregation_temporality: CUMULATIVE };
            out.push(metric(f.name, f.unit, f.help, pm::metric::Data::Histogram(h)));
        }
        for o in self.observed().list {
            let points = o
                .points
                .iter()
                .map(|(ls, v)| pm::NumberDataPoint {
                    attributes: ls.iter().map(|(k, v)| kv_str(k, v)).collect(),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(if o.kind == ObservedKind::Counter {
                        pm::number_data_point::Value::AsInt(*v as i64)
                    } else {
                        pm::number_data_point::Value::AsDouble(*v)
                    }),
                    ..Default::default()
                })
                .collect();
            let data = match o.kind {
                ObservedKind::Counter => pm::metric::Data::Sum(sum(points)),
                ObservedKind::Gauge => pm::metric::Data::Gauge(pm::Gauge { data_points: points }),
            };
            out.push(metric(o.name, o.unit, o.help, data));
        }
        out
    }
}

fn sum(points: Vec<pm::NumberDataPoint>) -> pm::Sum {
    pm::Sum { data_points: points, aggregation_temporality: CUMULATIVE, is_monotonic: true }
}

fn metric(name: &str, unit: &str, help: &str, data: pm::metric::Data) -> pm::Metric {
    pm::Metric { name: name.to_owned(), description: help.to_owned(), unit: unit.to_owned(), data: Some(data), ..Default::default() }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// OTel name → Prometheus name: `.`/`-` → `_`, the unit as a suffix (`s` → `_seconds`,
/// `By` → `_bytes`; annotations such as `{token}` add none), `_total` on counters.
pub fn prom_name(name: &str, unit: &str, counter: bool) -> String {
    let mut n: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    let suffix = match unit {
        "s" => "_seconds",
        "ms" => "_milliseconds",
        "By" => "_bytes",
        _ => "",
    };
    if !suffix.is_empty() && !n.ends_with(suffix) {
        n.push_str(suffix);
    }
    if counter && !n.ends_with("_total") {
        n.push_str("_total");
    }
    n
}

/// A label key as Prometheus spells it (`gen_ai.operation.name` → `gen_ai_operation_name`).
pub fn prom_label(k: &str) -> String {
    k.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// `{k="v",…}`; a label with no value is left out (Prometheus reads an empty label as an
/// absent one), so adding a label (`consumer`) leaves the series that lack it as they were.
fn labels(keys: &[&str], vals: &[Box<str>], le: Option<&str>) -> String {
    if vals.iter().all(|v| v.is_empty()) && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in keys.iter().zip(vals).filter(|(_, v)| !v.is_empty()) {
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(s, "{}=\"{}\"", prom_label(k), v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"));
    }
    if let Some(le) = le {
        if !first {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    s.push('}');
    s
}

fn fmt_f64(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The bytes a bounded label value may hold: `[A-Za-z0-9._:/@+-]`.
static LABEL_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'/' | b'@' | b'+' | b'-');
        b += 1;
    }
    t
};

/// Values a label may take when they come from outside (a client-chosen model name):
/// at most `cap` distinct values, each at most 100 bytes of `[A-Za-z0-9._:/@+-]`; anything
/// else is [`OVERFLOW`]. A lookup is one FxHash under a read lock. With a cap, chosen
/// collisions cost at most `cap` comparisons, so an unkeyed hash is safe here.
pub struct BoundedValues {
    cap: usize,
    seen: RwLock<std::collections::HashSet<Box<str>, BuildHasherDefault<FxHasher>>>,
    overflow: &'static str,
    /// Values folded into the overflow value (counted for `/metrics`).
    pub overflowed: std::sync::atomic::AtomicU64,
}

/// FxHash-style hashing for keys the process bounds itself (the multiply-rotate of
/// [`hash_labels`]): SipHash's defence against chosen collisions buys little where at most
/// `cap` values can ever be stored, and costs more than the lookup it serves.
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut b = bytes;
        while b.len() >= 8 {
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).wrapping_mul(K);
            b = &b[8..];
        }
        let mut tail = [0u8; 8];
        tail[..b.len()].copy_from_slice(b);
        self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(tail) ^ (b.len() as u64) << 59).wrapping_mul(K);
    }
}

impl BoundedValues {
    pub fn new(cap: usize) -> BoundedValues {
        Self::with_overflow(cap, OVERFLOW)
    }

    /// At most `cap` values, the rest as `overflow` (CONTRACT §12's consumers: `other`).
    pub fn with_overflow(cap: usize, overflow: &'static str) -> BoundedValues {
        BoundedValues { cap, seen: RwLock::default(), overflow, overflowed: Default::default() }
    }

    fn over(&self) -> &'static str {
        self.overflowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.overflow
    }

    /// `v` when it is (or can become) one of the admitted values, else [`OVERFLOW`].
    pub fn admit<'a>(&self, v: &'a str) -> &'a str {
        if v.is_empty() {
            return v;
        }
        if v.len() > 100 || !v.bytes().all(|b| LABEL_BYTES[b as usize]) {
            return self.over();
        }
        if self.seen.read().unwrap_or_else(|e| e.into_inner()).contains(v) {
            return v;
        }
        let mut w = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if w.contains(v) {
            return v;
        }
        if w.len() >= self.cap {
            return self.over();
        }
        w.insert(Box::from(v));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[f64] = &[0.1, 1.0, 10.0];

    #[test]
    fn prometheus_text_of_counters_histograms_and_observed_values() {
        let r = Registry::new();
        let c = r.counter("aigw.gateway.requests", "{request}", "Requests.", &["aigw.route_id", "http.response.status_code"]);
        c.add(&["r1", "200"], 2);
        c.add(&["r1", "200"], 1);
        c.add(&["r\"2", "500"], 1);
        let h = r.histogram("gen_ai.client.operation.duration", "s", "Duration.", &["gen_ai.provider.name"], B);
        for v in [0.05, 0.1, 0.5, 20.0] {
            h.record(&["openai"], v);
        }
        h.record(&["openai"], f64::NAN);
        r.observe(|o| {
            o.counter("aigw.config.updates", "{update}", "Updates.", &[("result", "applied")], 3);
            o.gauge("aigw.routes", "{route}", "Routes.", &[], 2.0);
        });
        let t = r.render_prometheus();
        for want in [
            "# TYPE aigw_gateway_requests_total counter",
            "aigw_gateway_requests_total{aigw_route_id=\"r1\",http_response_status_code=\"200\"} 3",
            "aigw_gateway_requests_total{aigw_route_id=\"r\\\"2\",http_response_status_code=\"500\"} 1",
            "# TYPE gen_ai_client_operation_duration_seconds histogram",
            "gen_ai_client_operation_duration_seconds_bucket{gen_ai_provider_name=\"openai\",le=\"0.1\"} 2",
            "gen_ai_client_operation_duration_seconds_bucket{gen_ai_provider_name=\"openai\",le=\"1\"} 3",
            "gen_ai_client_operation_duration_seconds_bucket{gen_ai_provider_name=\"openai\",le=\"10\"} 3",
            "gen_ai_client_operation_duration_seconds_bucket{gen_ai_provider_name=\"openai\",le=\"+Inf\"} 4",
            "gen_ai_client_operation_duration_seconds_sum{gen_ai_provider_name=\"openai\"} 20.6",
            "gen_ai_client_operation_duration_seconds_count{gen_ai_provider_name=\"openai\"} 4",
            "aigw_config_updates_total{result=\"applied\"} 3",
            "# TYPE aigw_routes gauge",
            "aigw_routes 2",
        ] {
            assert!(t.contains(want), "{want}\n{t}");
        }
        let m = r.to_otlp();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["aigw.gateway.requests", "gen_ai.client.operation.duration", "aigw.config.updates", "aigw.routes"]);
        let Some(pm::metric::Data::Histogram(hist)) = &m[1].data else { panic!() };
        let p = &hist.data_points[0];
        assert_eq!((p.count, p.bucket_counts.clone(), p.explicit_bounds.clone()), (4, vec![2, 1, 0, 1], B.to_vec()));
        assert_eq!(m[1].unit, "s");
    }

    /// Handles and memos record into the very series label lookups find: the same text
    /// and the same OTLP points, whichever way a value was recorded.
    #[test]
    fn handles_and_memos_record_where_lookups_do() {
        let run = |how: u8| {
            let r = Registry::new();
            let c = r.counter("aigw.gateway.requests", "{request}", "Requests.", &["route", "status"]);
            let h = r.histogram("gen_ai.client.token.usage", "{token}", "Tokens.", &["model", "type"], B);
            let (cm, hm) = (Memo::new(c.clone()), Memo::new(h.clone()));
            // Six label sets: more than a memo keeps.
            let sets: Vec<[String; 2]> = (0..6).map(|i| [format!("r{i}"), format!("{}", 200 + i)]).collect();
            for round in 0..3 {
                for (i, l) in sets.iter().enumerate() {
                    let l = [l[0].as_str(), l[1].as_str()];
                    let v = (round * 10 + i) as f64 * 0.3;
                    match how {
                        0 => {
                            c.add(&l, 2);
                            h.record(&l, v);
                        }
                        1 => {
                            c.handle(&l).add(2);
                            h.handle(&l).record(v);
                        }
                        _ => {
                            cm.add(&l, 2);
                            hm.record(&l, v);
                        }
                    }
                }
            }
            h.handle(&["r0", "200"]).record(f64::NAN);
            hm.record(&["r9", "x"], f64::INFINITY);
            let mut otlp = r.to_otlp();
            for m in &mut otlp {
                match &mut m.data {
                    Some(pm::metric::Data::Sum(s)) => {
                        s.data_points.iter_mut().for_each(|p| (p.start_time_unix_nano, p.time_unix_nano) = (0, 0))
                    }
                    Some(pm::metric::Data::Histogram(h)) => {
                        h.data_points.iter_mut().for_each(|p| (p.start_time_unix_nano, p.time_unix_nano) = (0, 0))
                    }
                    _ => {}
                }
            }
            (r.render_prometheus(), otlp)
        };
        let lookups = run(0);
        assert!(lookups.0.contains("aigw_gateway_requests_total{route=\"r5\",status=\"205\"} 6"), "{}", lookups.0);
        assert!(!lookups.0.contains("r9"), "non-finite values create no series");
        assert_eq!(run(1), lookups);
        assert_eq!(run(2), lookups);
    }

    #[test]
    fn handles_respect_the_cardinality_cap() {
        let r = Registry::new();
        let c = r.counter("c", "", "", &["k"]);
        for i in 0..MAX_SERIES {
            c.handle(&[&i.to_string()]).add(1);
        }
        let late = c.handle(&["late"]);
        late.add(5);
        assert_eq!((c.get(&[OVERFLOW]), late.get()), (5, 5), "a handle past the cap is the overflow series");
        let m = Memo::new(c.clone());
        m.add(&["later"], 1);
        m.add(&["0"], 1);
        assert_eq!((c.get(&[OVERFLOW]), c.get(&["0"])), (6, 2));
    }

    /// `get` finds only label sets a slot holds and fills none itself.
    #[test]
    fn memo_get_finds_kept_sets_only() {
        let r = Registry::new();
        let c = r.counter("c", "", "", &["k", "v"]);
        let m = Memo::new(c.clone());
        assert!(m.get(&["a", "1"]).is_none());
        assert!(m.get(&["a", "1"]).is_none(), "a miss fills no slot");
        m.add(&["a", "1"], 2);
        m.add(&["b", "2"], 1);
        m.get(&["a", "1"]).expect("kept").add(3);
        assert!(m.get(&["a", "2"]).is_none() && m.get(&["a"]).is_none());
        assert_eq!((c.get(&["a", "1"]), c.get(&["b", "2"])), (5, 1));
        let f = r.float_counter("usd", "", "", &["k"]);
        let fm = Memo::new(f.clone());
        fm.add(&["a"], 0.25);
        fm.add(&["a"], f64::NAN);
        fm.add(&["a"], -1.0);
        fm.get(&["a"]).expect("kept").add(0.5);
        assert_eq!(f.get(&["a"]), 0.75);
    }

    #[test]
    fn names() {
        assert_eq!(prom_name("gen_ai.client.token.usage", "{token}", false), "gen_ai_client_token_usage");
        assert_eq!(prom_name("gen_ai.server.request.duration", "s", false), "gen_ai_server_request_duration_seconds");
        assert_eq!(prom_name("aigw.telemetry.spans.dropped", "{span}", true), "aigw_telemetry_spans_dropped_total");
    }

    #[test]
    fn cardinality_is_bounded() {
        let r = Registry::new();
        let c = r.counter("c", "", "", &["k"]);
        for i in 0..MAX_SERIES + 10 {
            c.add(&[&i.to_string()], 1);
        }
        assert_eq!(c.get(&[OVERFLOW]), 10);
        let t = r.render_prometheus();
        assert_eq!(t.lines().filter(|l| l.starts_with("c_total{")).count(), MAX_SERIES + 1);
        let b = BoundedValues::new(2);
        assert_eq!(b.admit("gpt-4o"), "gpt-4o");
        assert_eq!(b.admit("claude-3.5"), "claude-3.5");
        assert_eq!(b.admit("third"), OVERFLOW);
        assert_eq!(b.admit("gpt-4o"), "gpt-4o");
        assert_eq!(b.admit("a\"b"), OVERFLOW);
        assert_eq!(b.admit(&"x".repeat(101)), OVERFLOW);
        assert_eq!(b.overflowed.load(std::sync::atomic::Ordering::Relaxed), 3);
        let usd = r.float_counter("x.cost", "USD", "cost", &["m"]);
        usd.add(&["a"], 0.25);
        usd.add(&["a"], 0.125);
        usd.add(&["a"], f64::NAN);
        assert_eq!(usd.get(&["a"]), 0.375);
        assert!(r.render_prometheus().contains("x_cost_total{m=\"a\"} 0.375"), "{}", r.render_prometheus());
        let c = BoundedValues::with_overflow(1, "other");
        assert_eq!((c.admit("team-a"), c.admit("team-b"), c.admit("team-a")), ("team-a", "other", "team-a"));
    }
}
