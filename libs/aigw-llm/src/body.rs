//! A client's JSON request body without a tree. [`RawBody::parse`] validates the bytes once,
//! accepting and refusing exactly what `serde_json::from_slice::<Value>` does (the proxy's
//! 400 for a body that is not JSON stays the same, message included), and notes where each
//! top-level field's key and value are. Detection, request facts and shaping read and edit
//! those fields where they are: a field is parsed into a [`Value`] only when it is changed
//! in depth (`stream_options`, a merged object), and the body is written out again only
//! when something changed — then by copying the untouched fields' bytes. The whole tree is
//! built only for what needs it (a conversion, `vars` on `post_arg.*`): [`RawBody::tree`],
//! once, on first use.
//!
//! The same code serves both forms: detection, request facts and shaping are written
//! against [`Fields`] / [`FieldsMut`], implemented by a parsed [`Value`] (and its `Map`) as
//! much as by a [`RawBody`] and its [`Edit`]. Tests and the `request_body` fuzz target
//! check that both give the same JSON. One difference, in the raw form's favour: a field
//! it leaves alone keeps the client's digits, where the tree is written back from serde's
//! parse of them, which (without serde_json's `float_roundtrip`) can move a float of many
//! digits by an ulp.
//!
//! Duplicate top-level keys, keys with escapes and bodies of more than [`MAX_FIELDS`]
//! fields are valid JSON the raw form does not edit: such a body answers from its tree
//! (serde's reading: the last duplicate wins), so its values are always serde's.

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Number, Value};

use crate::scan::{bytes_below, bytes_eq, string_end, word};

/// Top-level fields beyond which a body is read from its tree (a linear search per lookup
/// is cheaper than hashing below it; real requests have a dozen).
pub const MAX_FIELDS: usize = 64;

/// serde_json refuses a document nested this deep (its recursion limit: the 128th level).
const MAX_DEPTH: usize = 128;

/// What a JSON value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v {
            Value::Object(_) => Kind::Object,
            Value::Array(_) => Kind::Array,
            Value::String(_) => Kind::String,
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            Value::Null => Kind::Null,
        }
    }

    /// Of validated JSON text starting at its first byte.
    fn of_text(b: u8) -> Kind {
        match b {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b't' | b'f' => Kind::Bool,
            b'n' => Kind::Null,
            _ => Kind::Number,
        }
    }
}

/// One JSON value, borrowed: from a tree, or the text of a validated body.
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    Tree(&'a Value),
    /// Validated JSON text of exactly one value (no surrounding whitespace).
    Raw(&'a [u8]),
}

impl<'a> Json<'a> {
    pub fn kind(self) -> Kind {
        match self {
            Json::Tree(v) => Kind::of(v),
            Json::Raw(t) => t.first().map_or(Kind::Null, |b| Kind::of_text(*b)),
        }
    }

    pub fn is_array(self) -> bool {
        self.kind() == Kind::Array
    }

    pub fn is_object(self) -> bool {
        self.kind() == Kind::Object
    }

    /// The string, decoded (borrowed unless it holds escapes).
    pub fn as_str(self) -> Option<Cow<'a, str>> {
        match self {
            Json::Tree(v) => v.as_str().map(Cow::Borrowed),
            Json::Raw(t) => {
                let inner = t.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
                if !inner.contains(&b'\\') {
                    std::str::from_utf8(inner).ok().map(Cow::Borrowed)
                } else {
                    serde_json::from_slice::<String>(t).ok().map(Cow::Owned)
                }
            }
        }
    }

    pub fn as_bool(self) -> Option<bool> {
        match self {
            Json::Tree(v) => v.as_bool(),
            Json::Raw(b"true") => Some(true),
            Json::Raw(b"false") => Some(false),
            Json::Raw(_) => None,
        }
    }

    /// A member of an object (the last one of a duplicated key, as serde reads it).
    pub fn get(self, key: &str) -> Option<Json<'a>> {
        match self {
            Json::Tree(v) => v.as_object()?.get(key).map(Json::Tree),
            Json::Raw(t) if t.first() == Some(&b'{') => {
                let mut found = None;
                members(t, |k, v| {
                    if key_is(k, key) {
                        found = Some(v);
                    }
                });
                found.map(Json::Raw)
            }
            Json::Raw(_) => None,
        }
    }

    /// The number of elements of an array.
    pub fn array_len(self) -> Option<usize> {
        match self {
            Json::Tree(v) => v.as_array().map(Vec::len),
            Json::Raw(t) if t.first() == Some(&b'[') => Some(elements(t)),
            Json::Raw(_) => None,
        }
    }

    /// The value as a tree (parsed from text; the text was validated, so this cannot fail).
    pub fn to_value(self) -> Value {
        match self {
            Json::Tree(v) => v.clone(),
            Json::Raw(t) => serde_json::from_slice(t).unwrap_or(Value::Null),
        }
    }

    /// Whether it equals `v` as serde compares values (numbers by their parsed form).
    pub fn eq_value(self, v: &Value) -> bool {
        match (self, v) {
            (Json::Tree(t), v) => t == v,
            (j, Value::String(s)) => j.as_str().is_some_and(|x| x == s.as_str()),
            (j, Value::Bool(b)) => j.as_bool() == Some(*b),
            (j, Value::Null) => j.kind() == Kind::Null,
            (j, v) => Kind::of(v) == j.kind() && j.to_value() == *v,
        }
    }
}

/// The top level of a request body as detection, request facts and shaping read it.
pub trait Fields {
    /// Whether the body is a JSON object.
    fn is_object(&self) -> bool;
    /// Its number of distinct top-level keys (0 for anything but an object).
    fn field_count(&self) -> usize;
    /// A top-level field.
    fn field(&self, key: &str) -> Option<Json<'_>>;
    fn contains_key(&self, key: &str) -> bool {
        self.field(key).is_some()
    }
}

/// Top-level edits, as shaping makes them.
pub trait FieldsMut: Fields {
    /// Sets a field (added at the end when new).
    fn insert(&mut self, key: &str, v: Value);
    /// Removes a field, giving its value.
    fn remove(&mut self, key: &str) -> Option<Value>;
    /// A field as a tree to change in depth (parsed on first use).
    fn get_mut(&mut self, key: &str) -> Option<&mut Value>;
}

impl Fields for Map<String, Value> {
    fn is_object(&self) -> bool {
        true
    }
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, key: &str) -> Option<Json<'_>> {
        self.get(key).map(Json::Tree)
    }
}

impl FieldsMut for Map<String, Value> {
    fn insert(&mut self, key: &str, v: Value) {
        Map::insert(self, key.to_owned(), v);
    }
    fn remove(&mut self, key: &str) -> Option<Value> {
        Map::remove(self, key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        Map::get_mut(self, key)
    }
}

impl Fields for Value {
    fn is_object(&self) -> bool {
        Value::is_object(self)
    }
    fn field_count(&self) -> usize {
        self.as_object().map_or(0, Map::len)
    }
    fn field(&self, key: &str) -> Option<Json<'_>> {
        self.as_object()?.get(key).map(Json::Tree)
    }
}

/// On anything but an object, edits do nothing (as `as_object_mut` finds nothing).
impl FieldsMut for Value {
    fn insert(&mut self, key: &str, v: Value) {
        if let Some(o) = self.as_object_mut() {
            o.insert(key.to_owned(), v);
        }
    }
    fn remove(&mut self, key: &str) -> Option<Value> {
        self.as_object_mut()?.remove(key)
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.as_object_mut()?.get_mut(key)
    }
}

/// Where one top-level field sits in the body.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// The key's text between its quotes.
    key: (usize, usize),
    /// The value's text.
    value: (usize, usize),
    /// The key holds an escape.
    escaped: bool,
    /// The key's first eight bytes and length ([`tag`]): most lookups are told apart by it.
    tag: u64,
}

/// A short fingerprint of a key: its first seven bytes and its length (the whole key when
/// it is at most seven bytes long).
fn tag(key: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = key.len().min(7);
    a[..n].copy_from_slice(&key[..n]);
    a[7] = key.len().min(255) as u8;
    u64::from_le_bytes(a)
}

/// A validated JSON request body: bytes, where its top-level fields are, and its tree once
/// something asked for it.
#[derive(Debug)]
pub struct RawBody {
    bytes: Bytes,
    top: Kind,
    fields: Vec<Span>,
    /// An object whose fields can be read and edited in place: no duplicate key, no key
    /// with an escape, at most [`MAX_FIELDS`] fields. Otherwise every read goes to the tree.
    simple: bool,
    tree: OnceLock<Value>,
}

impl RawBody {
    /// Validates `bytes` as serde_json would parse them into a `Value`; the error is
    /// serde's own (the proxy's 400 quotes it).
    pub fn parse(bytes: Bytes) -> Result<RawBody, serde_json::Error> {
        let mut fields = Vec::with_capacity(8);
        let top = match validate(&bytes, &mut fields) {
            Some(k) => k,
            None => {
                // serde's verdict and message (the validator agrees with it: fuzzed).
                let v: Value = serde_json::from_slice(&bytes)?;
                return Ok(RawBody::from_tree(bytes, v));
            }
        };
        let simple = top == Kind::Object && fields.len() <= MAX_FIELDS && distinct_plain_keys(&bytes, &fields);
        Ok(RawBody { bytes, top, fields, simple, tree: OnceLock::new() })
    }

    /// A body already parsed (the tree is what reads see).
    pub fn from_tree(bytes: Bytes, v: Value) -> RawBody {
        RawBody { bytes, top: Kind::of(&v), fields: Vec::new(), simple: false, tree: OnceLock::from(v) }
    }

    /// The body as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The whole tree, parsed on first use.
    pub fn tree(&self) -> &Value {
        self.tree.get_or_init(|| serde_json::from_slice(&self.bytes).unwrap_or(Value::Null))
    }

    /// The tree, owned (a clone when it was parsed already).
    pub fn to_value(&self) -> Value {
        match self.tree.get() {
            Some(v) => v.clone(),
            None => serde_json::from_slice(&self.bytes).unwrap_or(Value::Null),
        }
    }

    /// Whether reads and edits work on the bytes (else on the tree).
    pub fn in_place(&self) -> bool {
        self.simple
    }

    fn span_of(&self, key: &str) -> Option<&Span> {
        let (k, t) = (key.as_bytes(), tag(key.as_bytes()));
        self.fields.iter().find(|s| s.tag == t && (k.len() <= 7 || self.bytes.get(s.key.0..s.key.1) == Some(k)))
    }

    fn text(&self, (a, b): (usize, usize)) -> &[u8] {
        self.bytes.get(a..b).unwrap_or_default()
    }
}

impl Fields for RawBody {
    fn is_object(&self) -> bool {
        self.top == Kind::Object
    }
    fn field_count(&self) -> usize {
        if self.simple { self.fields.len() } else { self.tree().field_count() }
    }
    fn field(&self, key: &str) -> Option<Json<'_>> {
        if !self.simple {
            return self.tree().field(key);
        }
        self.span_of(key).map(|s| Json::Raw(self.text(s.value)))
    }
}

/// A request body being shaped: a tree (a converted request, or a body the raw form does
/// not edit), or edits over a [`RawBody`]'s bytes.
#[derive(Debug)]
pub enum Doc<'a> {
    Tree(Value),
    Raw(Edit<'a>),
}

impl<'a> Doc<'a> {
    /// Edits over `body` when it can be edited in place, else its tree.
    pub fn of(body: &'a RawBody) -> Doc<'a> {
        if body.simple { Doc::Raw(Edit { body, fields: None }) } else { Doc::Tree(body.to_value()) }
    }

    /// The JSON text (only needed when something changed: unchanged bodies are forwarded
    /// as they came).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Doc::Tree(v) => serde_json::to_vec(v).unwrap_or_default(),
            Doc::Raw(e) => e.to_vec(),
        }
    }
}

impl Fields for Doc<'_> {
    fn is_object(&self) -> bool {
        match self {
            Doc::Tree(v) => v.is_object(),
            Doc::Raw(_) => true,
        }
    }
    fn field_count(&self) -> usize {
        match self {
            Doc::Tree(v) => v.field_count(),
            Doc::Raw(e) => e.field_count(),
        }
    }
    fn field(&self, key: &str) -> Option<Json<'_>> {
        match self {
            Doc::Tree(v) => v.field(key),
            Doc::Raw(e) => e.field(key),
        }
    }
}

impl FieldsMut for Doc<'_> {
    fn insert(&mut self, key: &str, v: Value) {
        match self {
            Doc::Tree(t) => t.insert(key, v),
            Doc::Raw(e) => e.insert(key, v),
        }
    }
    fn remove(&mut self, key: &str) -> Option<Value> {
        match self {
            Doc::Tree(t) => FieldsMut::remove(t, key),
            Doc::Raw(e) => e.remove(key),
        }
    }
    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Doc::Tree(t) => FieldsMut::get_mut(t, key),
            Doc::Raw(e) => e.get_mut(key),
        }
    }
}

/// Edits of a [`RawBody`]'s top level: untouched fields stay text, changed ones are trees.
#[derive(Debug)]
pub struct Edit<'a> {
    body: &'a RawBody,
    /// None until the first edit (reads go to the body's fields).
    fields: Option<Vec<Field>>,
}

#[derive(Debug)]
struct Field {
    /// The key as written (no escape) or a new key.
    key: Key,
    value: Val,
}

#[derive(Debug)]
enum Key {
    Text((usize, usize)),
    New(String),
}

#[derive(Debug)]
enum Val {
    Text((usize, usize)),
    Tree(Value),
}

impl<'a> Edit<'a> {
    fn key_of<'s>(&'s self, f: &'s Field) -> &'s [u8] {
        match &f.key {
            Key::Text(r) => self.body.text(*r),
            Key::New(s) => s.as_bytes(),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.fields.as_ref()?.iter().position(|f| self.key_of(f) == key.as_bytes())
    }

    /// The field list, made from the body's on the first edit.
    fn fields_mut(&mut self) -> &mut Vec<Field> {
        let body = self.body;
        self.fields.get_or_insert_with(|| body.fields.iter().map(|s| Field { key: Key::Text(s.key), value: Val::Text(s.value) }).collect())
    }

    /// The object's JSON text: untouched keys and values copied, changed ones serialised.
    pub fn to_vec(&self) -> Vec<u8> {
        let Some(fields) = &self.fields else { return self.body.bytes.to_vec() };
        let mut out = Vec::with_capacity(self.body.bytes.len() + 64);
        out.push(b'{');
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &f.key {
                Key::Text(r) => {
                    out.push(b'"');
                    out.extend_from_slice(self.body.text(*r));
                    out.push(b'"');
                }
                Key::New(k) => {
                    let _ = serde_json::to_writer(&mut out, k);
                }
            }
            out.push(b':');
            match &f.value {
                Val::Text(r) => out.extend_from_slice(self.body.text(*r)),
                Val::Tree(v) => {
                    let _ = serde_json::to_writer(&mut out, v);
                }
            }
        }
        out.push(b'}');
        out
    }
}

impl Fields for Edit<'_> {
    fn is_object(&self) -> bool {
        true
    }
    fn field_count(&self) -> usize {
        self.fields.as_ref().map_or(self.body.fields.len(), Vec::len)
    }
    fn field(&self, key: &str) -> Option<Json<'_>> {
        let Some(fields) = &self.fields else { return self.body.field(key) };
        let f = &fields[self.position(key)?];
        Some(match &f.value {
            Val::Text(r) => Json::Raw(self.body.text(*r)),
            Val::Tree(v) => Json::Tree(v),
        })
    }
}

impl FieldsMut for Edit<'_> {
    fn insert(&mut self, key: &str, v: Value) {
        let at = {
            self.fields_mut();
            self.position(key)
        };
        let fields = self.fields_mut();
        match at {
            Some(i) => fields[i].value = Val::Tree(v),
            None => fields.push(Field { key: Key::New(key.to_owned()), value: Val::Tree(v) }),
        }
    }

    fn remove(&mut self, key: &str) -> Option<Value> {
        self.fields_mut();
        let i = self.position(key)?;
        let body = self.body;
        let f = self.fields_mut().remove(i);
        Some(match f.value {
            Val::Text(r) => Json::Raw(body.text(r)).to_value(),
            Val::Tree(v) => v,
        })
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.fields_mut();
        let i = self.position(key)?;
        let body = self.body;
        let f = &mut self.fields_mut()[i];
        if let Val::Text(r) = f.value {
            f.value = Val::Tree(Json::Raw(body.text(r)).to_value());
        }
        match &mut f.value {
            Val::Tree(v) => Some(v),
            Val::Text(_) => None,
        }
    }
}

/// Whether the top-level keys hold no escape and no key repeats.
fn distinct_plain_keys(bytes: &[u8], fields: &[Span]) -> bool {
    let key = |s: &Span| bytes.get(s.key.0..s.key.1).unwrap_or_default();
    fields.iter().enumerate().all(|(i, s)| !s.escaped && fields[..i].iter().all(|o| key(o) != key(s)))
}

/// A raw key (between quotes, escapes as written) equals `key`.
fn key_is(raw: &[u8], key: &str) -> bool {
    if !raw.contains(&b'\\') {
        return raw == key.as_bytes();
    }
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == key)
}

// --- Reading validated text -------------------------------------------------------------

fn skip_ws(t: &[u8], mut i: usize) -> usize {
    while matches!(t.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
        i += 1;
    }
    i
}

/// Where the validated value starting at `i` ends.
fn value_end(t: &[u8], i: usize) -> usize {
    match t.get(i) {
        Some(b'"') => string_end(t, i + 1).map_or(t.len(), |j| j + 1),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&b) = t.get(j) {
                match b {
                    b'"' => {
                        j = string_end(t, j + 1).map_or(t.len(), |e| e + 1);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            t.len()
        }
        _ => {
            let mut j = i;
            while t.get(j).is_some_and(|b| !matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r')) {
                j += 1;
            }
            j
        }
    }
}

/// Calls `f(raw key, value text)` for each member of the validated object `t`.
fn members<'t>(t: &'t [u8], mut f: impl FnMut(&'t [u8], &'t [u8])) {
    let mut i = skip_ws(t, 1);
    while t.get(i) == Some(&b'"') {
        let Some(ke) = string_end(t, i + 1) else { return };
        let key = &t[i + 1..ke];
        let vs = skip_ws(t, skip_ws(t, ke + 1) + 1);
        let ve = value_end(t, vs);
        f(key, t.get(vs..ve).unwrap_or_default());
        i = skip_ws(t, ve);
        if t.get(i) != Some(&b',') {
            return;
        }
        i = skip_ws(t, i + 1);
    }
}

/// The number of elements of the validated array `t`.
fn elements(t: &[u8]) -> usize {
    let mut i = skip_ws(t, 1);
    let mut n = 0;
    while t.get(i).is_some_and(|b| *b != b']') {
        n += 1;
        i = skip_ws(t, value_end(t, i));
        if t.get(i) != Some(&b',') {
            break;
        }
        i = skip_ws(t, i + 1);
    }
    n
}

// --- Validation ---------------------------------------------------------------------------

/// Validates `b` as one JSON value with serde_json's rules (RFC 8259 grammar, strings of
/// valid UTF-8 without raw control characters, escapes with paired surrogates, numbers
/// that fit an `f64`, at most 127 levels of nesting, whitespace around); returns its kind
/// and, for an object, where its top-level fields are. One loop over the bytes with an
/// explicit stack of open containers (no call per value).
fn validate(b: &[u8], fields: &mut Vec<Span>) -> Option<Kind> {
    #[derive(Clone, Copy)]
    enum Next {
        /// A value starts at `i`.
        Value,
        /// A value ended at `i`: a comma, a closing bracket or the end follow.
        After,
        /// A key starts at `i`.
        Key,
    }
    let mut i = skip_ws(b, 0);
    let kind = Kind::of_text(*b.get(i)?);
    // true: an object.
    let mut stack = [false; MAX_DEPTH];
    let mut depth = 0usize;
    // The top-level key whose value is being read: (key start, key end, escaped, value start).
    let mut pending: Option<(usize, usize, bool, usize)> = None;
    let mut next = Next::Value;
    loop {
        match next {
            Next::Value => {
                match *b.get(i)? {
                    c @ (b'{' | b'[') => {
                        if depth + 1 >= MAX_DEPTH {
                            return None;
                        }
                        stack[depth] = c == b'{';
                        depth += 1;
                        i = skip_ws(b, i + 1);
                        let close = if c == b'{' { b'}' } else { b']' };
                        if *b.get(i)? == close {
                            depth -= 1;
                            i += 1;
                            next = Next::After;
                        } else {
                            next = if c == b'{' { Next::Key } else { Next::Value };
                        }
                        continue;
                    }
                    b'"' => i = string(b, i)?.0,
                    b't' => i = literal(b, i, b"true")?,
                    b'f' => i = literal(b, i, b"false")?,
                    b'n' => i = literal(b, i, b"null")?,
                    b'-' | b'0'..=b'9' => i = number(b, i)?,
                    _ => return None,
                }
                next = Next::After;
            }
            Next::After => {
                if depth == 1
                    && let Some((ks, ke, escaped, vs)) = pending.take()
                {
                    fields.push(Span { key: (ks, ke), value: (vs, i), escaped, tag: tag(b.get(ks..ke).unwrap_or_default()) });
                }
                if depth == 0 {
                    return (skip_ws(b, i) == b.len()).then_some(kind);
                }
                i = skip_ws(b, i);
                let object = stack[depth - 1];
                match (*b.get(i)?, object) {
                    (b',', true) => {
                        i = skip_ws(b, i + 1);
                        next = Next::Key;
                    }
                    (b',', false) => {
                        i = skip_ws(b, i + 1);
                        next = Next::Value;
                    }
                    (b'}', true) | (b']', false) => {
                        depth -= 1;
                        i += 1;
                    }
                    _ => return None,
                }
            }
            Next::Key => {
                if *b.get(i)? != b'"' {
                    return None;
                }
                let (end, escaped) = string(b, i)?;
                let key = (i + 1, end - 1);
                i = skip_ws(b, end);
                if *b.get(i)? != b':' {
                    return None;
                }
                i = skip_ws(b, i + 1);
                if depth == 1 {
                    pending = Some((key.0, key.1, escaped, i));
                }
                next = Next::Value;
            }
        }
    }
}

fn literal(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (b.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}

/// A string at `i` (its opening quote): where it ends (after the closing quote) and
/// whether it held an escape. Bytes outside strings are ASCII or refused, so UTF-8 is
/// checked only for a string with a byte above 0x7f.
#[inline]
fn string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let start = i + 1;
    let mut j = start;
    let mut high = 0u64;
    let mut escaped = false;
    loop {
        // Eight bytes at a time to the next quote, backslash or control character.
        while let Some(w) = b.get(j..j + 8) {
            let x = word(w);
            let m = bytes_eq(x, b'"') | bytes_eq(x, b'\\') | bytes_below(x, 0x20);
            if m != 0 {
                let k = m.trailing_zeros() / 8;
                high |= x & ((1u64 << (8 * k)) - 1);
                j += k as usize;
                break;
            }
            high |= x;
            j += 8;
        }
        while let Some(&c) = b.get(j).filter(|&&c| c != b'"' && c != b'\\' && c >= 0x20) {
            high |= c as u64;
            j += 1;
        }
        match *b.get(j)? {
            b'"' => {
                if high & 0x8080_8080_8080_8080 != 0 {
                    std::str::from_utf8(&b[start..j]).ok()?;
                }
                return Some((j + 1, escaped));
            }
            b'\\' => {
                escaped = true;
                j = escape(b, j)?;
            }
            _ => return None,
        }
    }
}

/// A number at `i`: where it ends.
fn number(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if b[j] == b'-' {
        j += 1;
    }
    let digits = j;
    match b.get(j)? {
        b'0' => j += 1,
        b'1'..=b'9' => {
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
        }
        _ => return None,
    }
    // Integers of up to 18 digits always fit; anything else serde may find out of an f64's
    // range: it decides.
    let mut exact = j - digits <= 18;
    if b.get(j) == Some(&b'.') {
        j += 1;
        if !b.get(j)?.is_ascii_digit() {
            return None;
        }
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        exact = false;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !b.get(j)?.is_ascii_digit() {
            return None;
        }
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        exact = false;
    }
    if !exact && serde_json::from_slice::<Number>(&b[i..j]).is_err() {
        return None;
    }
    Some(j)
}

/// An escape at `j` (its backslash): where the string goes on after it, serde's rules (a
/// surrogate only as a high + low pair).
fn escape(b: &[u8], j: usize) -> Option<usize> {
    match *b.get(j + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(j + 2),
        b'u' => {
            let n = hex4(b, j + 2)?;
            match n {
                0xDC00..=0xDFFF => None,
                0xD800..=0xDBFF => {
                    if b.get(j + 6..j + 8)? != b"\\u" || !(0xDC00..=0xDFFF).contains(&hex4(b, j + 8)?) {
                        return None;
                    }
                    Some(j + 12)
                }
                _ => Some(j + 6),
            }
        }
        _ => None,
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let h = b.get(at..at + 4)?;
    h.iter().try_fold(0u16, |n, c| Some(n << 4 | (*c as char).to_digit(16)? as u16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The validator accepts and refuses what serde does, with serde's message.
    #[test]
    fn validation_is_serdes() {
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let mut cases: Vec<Vec<u8>> = [
            "{}",
            " {\"a\" : 1 } ",
            "[]",
            "1",
            "-0",
            "01",
            "1.",
            "1.5e",
            "1e400",
            "-1e400",
            "1e-400",
            "0e999999",
            "123456789012345678901234567890",
            &"9".repeat(400),
            "1E+2",
            "-",
            "--1",
            "+1",
            ".5",
            "\"\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"a\tb\"",
            "\"a\u{7f}b\"",
            "{\"a\":1,}",
            "[1,]",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "tru",
            "truex",
            "nul",
            "{\"a\":1}x",
            "",
            "   ",
            "\"unterminated",
            "{\"a\":[1,{\"b\":null}],\"c\":\"\\\"\"}",
            "{\"a\":1,\"a\":2}",
            "{\"\\u0061\":1}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        cases.extend([deep(126).into_bytes(), deep(127).into_bytes(), deep(128).into_bytes(), deep(129).into_bytes()]);
        cases.push(b"\"\xff\"".to_vec());
        cases.push(b"{\"a\":\"\xe2\x82\"}".to_vec());
        cases.push(b"\xef\xbb\xbf{}".to_vec());
        for c in crate::corpus::documents() {
            cases.push(c);
        }
        for c in &cases {
            let serde = serde_json::from_slice::<Value>(c);
            let mine = RawBody::parse(Bytes::copy_from_slice(c));
            assert_eq!(serde.is_ok(), validate(c, &mut Vec::new()).is_some(), "{}", String::from_utf8_lossy(c));
            match (serde, mine) {
                (Ok(v), Ok(r)) => assert_eq!(&v, r.tree()),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{}: serde {a:?}, raw {b:?}", String::from_utf8_lossy(c)),
            }
        }
    }

    /// Detection, request facts, payload messages and the stream flag read the same from a
    /// body's bytes as from its tree, for every document of the corpus and every protocol.
    #[test]
    fn readers_agree_on_both_forms() {
        use crate::protocol::{Protocol, detect};
        use crate::usage::{request_facts, request_messages};
        let mut docs = crate::corpus::documents();
        docs.extend(crate::corpus::TRICKY.iter().map(|t| t.as_bytes().to_vec()));
        docs.extend(
            [
                r#"{"tools":["a",{"b":1}],"toolConfig":["tools"],"metadata":["user_id"],"user":{"x":1},"safety_identifier":7}"#,
                r#"{"tools":{"a":1},"toolConfig":{"tools":"x"},"metadata":{"user_id":["u"]},"messages":{"a":1},"stream":"true"}"#,
                r#"{"messages":null,"input":null}"#,
                r#"{"input":[],"stream":false}"#,
            ]
            .map(|s| s.as_bytes().to_vec()),
        );
        let protos = [
            Protocol::OpenAiChat,
            Protocol::OpenAiResponses,
            Protocol::OpenAiEmbeddings,
            Protocol::AnthropicMessages,
            Protocol::AnthropicCountTokens,
            Protocol::BedrockConverse,
            Protocol::Passthrough,
            Protocol::VertexPredict,
        ];
        let paths = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/model/m/converse", "/x"];
        let mut n = 0;
        for d in docs {
            let Ok(v) = serde_json::from_slice::<Value>(&d) else { continue };
            let r = RawBody::parse(Bytes::from(d.clone())).unwrap();
            for p in paths {
                assert_eq!(detect(p, &v), detect(p, &r), "{p} {v}");
            }
            for p in protos {
                assert_eq!(request_facts(p, &v), request_facts(p, &r), "{p:?} {v}");
                assert_eq!(request_messages(p, &v), request_messages(p, &r), "{p:?} {v}");
                assert_eq!(p.is_stream(&v), p.is_stream(&r), "{p:?} {v}");
            }
            n += 1;
        }
        assert!(n > 300, "{n}");
    }

    #[test]
    fn fields_read_in_place() {
        let r = RawBody::parse(Bytes::from_static(
            br#" { "model" : "gpt\u00e9", "stream":true, "n": 2, "tools":[{"a":[1,"]"]},{}], "metadata":{"user_id":"u","user_id":"v"}, "x":null } "#,
        ))
        .unwrap();
        assert!(r.in_place() && r.is_object());
        assert_eq!(r.field_count(), 6);
        assert_eq!(r.field("model").and_then(Json::as_str).as_deref(), Some("gpté"));
        assert_eq!(r.field("stream").and_then(Json::as_bool), Some(true));
        assert_eq!(r.field("tools").and_then(Json::array_len), Some(2));
        assert_eq!(r.field("metadata").and_then(|m| m.get("user_id")).and_then(Json::as_str).as_deref(), Some("v"), "the last duplicate");
        assert_eq!(r.field("x").map(Json::kind), Some(Kind::Null));
        assert!(r.field("n").unwrap().eq_value(&json!(2)) && !r.field("n").unwrap().eq_value(&json!(2.0)));
        assert!(r.field("missing").is_none());
        assert!(r.tree.get().is_none(), "nothing parsed the tree");
        // Duplicates and escaped keys: read from the tree, as serde reads them.
        let d = RawBody::parse(Bytes::from_static(br#"{"model":"a","model":"b","\u0073tream":true}"#)).unwrap();
        assert!(!d.in_place());
        assert_eq!(d.field("model").and_then(Json::as_str).as_deref(), Some("b"));
        assert_eq!(d.field("stream").and_then(Json::as_bool), Some(true));
        assert_eq!(d.field_count(), 2);
        let a = RawBody::parse(Bytes::from_static(b"[1]")).unwrap();
        assert!(!a.is_object() && a.field("x").is_none() && a.field_count() == 0);
    }

    #[test]
    fn edits_copy_untouched_fields() {
        let raw = Bytes::from_static(br#"{"model":"a", "messages":[{"role":"user","content":"hi"}], "stream":true, "max_tokens":5}"#);
        let body = RawBody::parse(raw.clone()).unwrap();
        let mut doc = Doc::of(&body);
        assert_eq!(doc.to_vec(), raw.to_vec(), "no edit, the same bytes");
        doc.insert("model", json!("b"));
        let v = doc.remove("max_tokens").unwrap();
        doc.insert("max_completion_tokens", v);
        if let Some(s) = doc.get_mut("stream") {
            *s = json!(false);
        }
        assert!(doc.get_mut("nothing").is_none() && doc.remove("nothing").is_none());
        assert_eq!(doc.field("max_completion_tokens").and_then(|f| f.to_value().as_u64()), Some(5));
        let out = String::from_utf8(doc.to_vec()).unwrap();
        assert_eq!(out, r#"{"model":"b","messages":[{"role":"user","content":"hi"}],"stream":false,"max_completion_tokens":5}"#);
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["messages"], body.tree()["messages"]);
    }
}
