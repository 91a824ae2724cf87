//! Metadata filters: the [`Filter`] tree, its text syntax ([`Filter::parse`]) and JSON form
//! ([`Filter::from_json`]), direct evaluation on one record ([`Filter::matches`]), and the
//! per-segment columnar [`PayloadIndex`] that turns a filter into a [`Bitset`] of nodes.
//!
//! # Semantics
//! A record's metadata is an optional JSON object. A path `a.b.c` descends through nested
//! objects; an array anywhere along the way stands for each of its elements (nested arrays
//! are flattened), so a field holds a *set* of values. Keys that contain a `.` cannot be
//! named by a path and are ignored. Strings, booleans and `null` compare by equality;
//! numbers compare as `f64` (`1 == 1.0`), and non-finite ones are ignored.
//! - `=` / `in` match when any value of the field equals (one of) the given value(s);
//! - a range matches when any numeric value of the field lies within every given bound;
//! - `!=` is exactly `not (=)`: a record without the field matches `x != 1`;
//! - a missing field never matches `=`, `in` or a range; `x = null` needs an explicit `null`.
//!
//! # Text syntax
//! ```text
//! filter     := and_expr ("or" and_expr)*
//! and_expr   := unary ("and" unary)*
//! unary      := "not" unary | "(" filter ")" | field op value | field "in" "[" [value ("," value)*] "]"
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">="        (the last four take a number)
//! value      := JSON string | JSON number | true | false | null
//! field      := [A-Za-z_][A-Za-z0-9_.-]*                     (not and, or, not, in)
//! ```
//! Keywords are case-insensitive. Example:
//! `pos = "n" and (year >= 1990 or tag in ["a", "b"]) and not lexname = "noun.animal"`.
//!
//! # Byte layout of a serialized [`PayloadIndex`]
//! All integers little-endian; the caller frames the bytes and adds the checksum.
//! ```text
//! u32  version                    = 1
//! u32  n                          node count; every node below is < n
//! u32  field_count
//! field_count × field, in strictly increasing byte order of path:
//!   u32  path_len, then path_len bytes of UTF-8 path (dotted, e.g. "a.b")
//!   u32  key_count
//!   key_count × key, strictly increasing by (tag, string bytes):
//!     u8   tag                    0 = null, 1 = false, 2 = true, 3 = string
//!     if tag == 3: u32 len, then len bytes of UTF-8
//!     u32  posting_count          >= 1
//!     posting_count × u32 node    strictly increasing
//!   u32  number_count
//!   number_count × f64 value      finite, non-decreasing (IEEE 754 binary64)
//!   number_count × u32 node       strictly increasing among equal values
//! ```
//! Nothing follows the last field. A node appears once per distinct value it holds, so an
//! array field `[1, 1]` contributes one entry.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::Split;

use serde_json::{Map, Number, Value};

use crate::bitset::Bitset;
use crate::bytes::{Corrupt, Reader};

/// How deeply `and`, `or`, `not` and parentheses may nest.
pub const MAX_DEPTH: usize = 64;

const FORMAT_VERSION: u32 = 1;

/// Why a filter could not be parsed, validated or loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The text syntax is malformed.
    #[error("filter: expected {expected} at column {column}, found {found}")]
    Parse {
        /// What the parser was looking for, e.g. `a value after '='`.
        expected: String,
        /// 1-based character offset of the offending token.
        column: usize,
        /// The offending token, e.g. `'and'` or `end of input`.
        found: String,
    },
    /// The JSON form is malformed.
    #[error("{path}: {message}")]
    Json {
        /// Where in the JSON document, e.g. `filter.and[1]`.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// A filter built in code breaks a rule the parsers enforce (empty `and`, range without
    /// bounds, NaN bound, non-scalar value, too deep).
    #[error("filter: {0}")]
    Invalid(String),
    /// Serialized payload index bytes are malformed.
    #[error("payload index: {message} at byte {offset}")]
    Corrupt {
        /// Byte offset of the problem in the buffer given to [`PayloadIndex::from_bytes`].
        offset: usize,
        /// What is wrong there.
        message: String,
    },
}

/// A metadata filter. Paths are dotted (`a.b.c`); values are JSON scalars.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Some value of the field equals the given one.
    Eq(String, Value),
    /// No value of the field equals the given one (`not Eq`).
    Ne(String, Value),
    /// Some value of the field equals one of the given ones.
    In(String, Vec<Value>),
    /// Some numeric value of the field satisfies every given bound.
    Range {
        /// The field.
        path: String,
        /// Exclusive lower bound.
        gt: Option<f64>,
        /// Inclusive lower bound.
        gte: Option<f64>,
        /// Exclusive upper bound.
        lt: Option<f64>,
        /// Inclusive upper bound.
        lte: Option<f64>,
    },
    /// Every sub-filter matches (an empty list matches everything).
    And(Vec<Filter>),
    /// Some sub-filter matches (an empty list matches nothing).
    Or(Vec<Filter>),
    /// The sub-filter does not match.
    Not(Box<Filter>),
}

// ---------------------------------------------------------------------------------------
// Values and paths
// ---------------------------------------------------------------------------------------

/// A JSON number as a finite `f64`, with `-0.0` folded into `0.0`.
fn finite(n: &Number) -> Option<f64> {
    n.as_f64().filter(|x| x.is_finite()).map(|x| x + 0.0)
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// Whether a stored value equals a filter value under the module's rules.
fn scalar_eq(stored: &Value, want: &Value) -> bool {
    match (stored, want) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => matches!((finite(a), finite(b)), (Some(x), Some(y)) if x == y),
        _ => false,
    }
}

#[derive(Clone, Copy)]
struct Bounds {
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
}

impl Bounds {
    fn lower_ok(&self, x: f64) -> bool {
        self.gt.is_none_or(|g| x > g) && self.gte.is_none_or(|g| x >= g)
    }

    fn upper_ok(&self, x: f64) -> bool {
        self.lt.is_none_or(|l| x < l) && self.lte.is_none_or(|l| x <= l)
    }

    fn contains(&self, x: f64) -> bool {
        self.lower_ok(x) && self.upper_ok(x)
    }
}

/// Whether any value at `path` satisfies `pred` (see the module doc for how paths resolve).
fn any_value(meta: Option<&Map<String, Value>>, path: &str, pred: &dyn Fn(&Value) -> bool) -> bool {
    let Some(meta) = meta else { return false };
    let mut rest = path.split('.');
    let first = rest.next().unwrap_or_default();
    meta.get(first).is_some_and(|v| any_at(v, rest, pred))
}

fn any_at(v: &Value, mut rest: Split<'_, char>, pred: &dyn Fn(&Value) -> bool) -> bool {
    if let Value::Array(items) = v {
        return items.iter().any(|x| any_at(x, rest.clone(), pred));
    }
    match rest.next() {
        None => pred(v),
        Some(key) => match v {
            Value::Object(m) => m.get(key).is_some_and(|c| any_at(c, rest, pred)),
            _ => false,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Filter: evaluation, validation, fields
// ---------------------------------------------------------------------------------------

impl Filter {
    /// Parses the text syntax (see the module doc).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut p = Parser { src: text, pos: 0 };
        let f = p.or_expr(0, "")?;
        let t = p.peek();
        if t.kind != Tok::End {
            return Err(p.error(&t, "'and', 'or' or end of input"));
        }
        Ok(f)
    }

    /// Whether a record with this metadata matches. Filters that [`Filter::validate`]
    /// rejects still evaluate: non-scalar values match nothing, a range without bounds
    /// matches any number, a NaN bound matches nothing.
    pub fn matches(&self, metadata: Option<&Map<String, Value>>) -> bool {
        match self {
            Filter::Eq(path, want) => any_value(metadata, path, &|v| scalar_eq(v, want)),
            Filter::Ne(path, want) => !any_value(metadata, path, &|v| scalar_eq(v, want)),
            Filter::In(path, wants) => any_value(metadata, path, &|v| wants.iter().any(|w| scalar_eq(v, w))),
            Filter::Range { path, gt, gte, lt, lte } => {
                let b = Bounds { gt: *gt, gte: *gte, lt: *lt, lte: *lte };
                any_value(
                    metadata,
                    path,
                    &|v| matches!(v, Value::Number(n) if finite(n).is_some_and(|x| b.contains(x))),
                )
            }
            Filter::And(fs) => fs.iter().all(|f| f.matches(metadata)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(metadata)),
            Filter::Not(f) => !f.matches(metadata),
        }
    }

    /// Checks the rules the parsers enforce: non-empty `and`/`or`, non-empty paths, scalar
    /// values, ranges with at least one bound and no NaN, nesting at most [`MAX_DEPTH`].
    pub fn validate(&self) -> Result<(), FilterError> {
        self.validate_at(0)
    }

    fn validate_at(&self, depth: usize) -> Result<(), FilterError> {
        let invalid = |m: String| Err(FilterError::Invalid(m));
        if depth > MAX_DEPTH {
            return invalid(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        let check_path = |p: &str| if p.is_empty() { invalid("empty field name".into()) } else { Ok(()) };
        let check_value = |p: &str, v: &Value| {
            if is_scalar(v) {
                Ok(())
            } else {
                invalid(format!("{p}: expected a string, number, boolean or null, found {v}"))
            }
        };
        match self {
            Filter::Eq(p, v) | Filter::Ne(p, v) => {
                check_path(p)?;
                check_value(p, v)
            }
            Filter::In(p, vs) => {
                check_path(p)?;
                vs.iter().try_for_each(|v| check_value(p, v))
            }
            Filter::Range { path, gt, gte, lt, lte } => {
                check_path(path)?;
                let bounds = [gt, gte, lt, lte];
                if bounds.iter().all(|b| b.is_none()) {
                    return invalid(format!("{path}: a range needs at least one bound"));
                }
                if bounds.iter().any(|b| b.is_some_and(f64::is_nan)) {
                    return invalid(format!("{path}: a range bound is NaN"));
                }
                Ok(())
            }
            Filter::And(fs) | Filter::Or(fs) => {
                if fs.is_empty() {
                    let op = if matches!(self, Filter::And(_)) { "and" } else { "or" };
                    return invalid(format!("empty '{op}'"));
                }
                fs.iter().try_for_each(|f| f.validate_at(depth + 1))
            }
            Filter::Not(f) => f.validate_at(depth + 1),
        }
    }

    /// The distinct paths the filter mentions, sorted.
    pub fn fields(&self) -> Vec<&str> {
        fn walk<'a>(f: &'a Filter, out: &mut BTreeSet<&'a str>) {
            match f {
                Filter::Eq(p, _) | Filter::Ne(p, _) | Filter::In(p, _) | Filter::Range { path: p, .. } => {
                    out.insert(p);
                }
                Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| walk(f, out)),
                Filter::Not(f) => walk(f, out),
            }
        }
        let mut out = BTreeSet::new();
        walk(self, &mut out);
        out.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------
// Text syntax
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    End,
    Ident,
    Str(String),
    Num(Number),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(Op),
    /// Text that is no token; the string describes it for the error message.
    Bad(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    kind: Tok,
    start: usize,
    end: usize,
    text: &'a str,
}

impl Token<'_> {
    fn is_keyword(&self, kw: &str) -> bool {
        self.kind == Tok::Ident && self.text.eq_ignore_ascii_case(kw)
    }

    fn describe(&self) -> String {
        const MAX: usize = 40;
        let short = |s: &str| {
            if s.chars().count() > MAX {
                format!("{}…", s.chars().take(MAX).collect::<String>())
            } else {
                s.to_owned()
            }
        };
        match &self.kind {
            Tok::End => "end of input".into(),
            Tok::Bad(what) => short(what),
            Tok::Str(_) => short(self.text),
            Tok::Num(_) => format!("number {}", short(self.text)),
            _ => format!("'{}'", short(self.text)),
        }
    }
}

fn is_reserved(word: &str) -> bool {
    ["and", "or", "not", "in"].iter().any(|k| word.eq_ignore_ascii_case(k))
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    /// The token at the current position (whitespace skipped), without consuming it.
    fn peek(&self) -> Token<'a> {
        let bytes = self.src.as_bytes();
        let mut i = self.pos;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        let Some(c) = self.src[start..].chars().next() else {
            return Token { kind: Tok::End, start, end: start, text: "" };
        };
        let tok = |kind, len: usize| Token { kind, start, end: start + len, text: &self.src[start..start + len] };
        let next = bytes.get(start + 1).copied();
        match c {
            '(' => tok(Tok::LParen, 1),
            ')' => tok(Tok::RParen, 1),
            '[' => tok(Tok::LBracket, 1),
            ']' => tok(Tok::RBracket, 1),
            ',' => tok(Tok::Comma, 1),
            '=' => tok(Tok::Op(Op::Eq), 1),
            '!' if next == Some(b'=') => tok(Tok::Op(Op::Ne), 2),
            '<' if next == Some(b'=') => tok(Tok::Op(Op::Le), 2),
            '<' => tok(Tok::Op(Op::Lt), 1),
            '>' if next == Some(b'=') => tok(Tok::Op(Op::Ge), 2),
            '>' => tok(Tok::Op(Op::Gt), 1),
            '"' => {
                let mut j = start + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                if j >= bytes.len() {
                    return Token {
                        kind: Tok::Bad("an unterminated string".into()),
                        start,
                        end: bytes.len(),
                        text: "",
                    };
                }
                let text = &self.src[start..=j];
                let kind = match serde_json::from_str::<String>(text) {
                    Ok(s) => Tok::Str(s),
                    Err(_) => Tok::Bad(format!("an invalid string {text}")),
                };
                Token { kind, start, end: j + 1, text }
            }
            '-' | '0'..='9' => {
                let mut j = start + 1;
                while j < bytes.len() {
                    let b = bytes[j];
                    let sign_after_exp = matches!(b, b'+' | b'-') && matches!(bytes[j - 1], b'e' | b'E');
                    if !(b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || sign_after_exp) {
                        break;
                    }
                    j += 1;
                }
                let text = &self.src[start..j];
                let kind = match serde_json::from_str::<Number>(text) {
                    Ok(n) if n.as_f64().is_some_and(f64::is_finite) => Tok::Num(n),
                    _ => Tok::Bad(format!("an invalid number '{text}'")),
                };
                Token { kind, start, end: j, text }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = start + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'.' | b'-')) {
                    j += 1;
                }
                tok(Tok::Ident, j - start)
            }
            c => Token { kind: Tok::Bad(format!("'{c}'")), start, end: start + c.len_utf8(), text: "" },
        }
    }

    fn bump(&mut self, t: &Token<'_>) {
        self.pos = t.end;
    }

    fn error(&self, t: &Token<'_>, expected: impl Into<String>) -> FilterError {
        FilterError::Parse {
            expected: expected.into(),
            column: self.src[..t.start].chars().count() + 1,
            found: t.describe(),
        }
    }

    /// `context` says what came before, e.g. ` after 'and'`, for error messages.
    fn or_expr(&mut self, depth: usize, context: &str) -> Result<Filter, FilterError> {
        let mut items = vec![self.and_expr(depth, context)?];
        loop {
            let t = self.peek();
            if !t.is_keyword("or") {
                break;
            }
            self.bump(&t);
            items.push(self.and_expr(depth, " after 'or'")?);
        }
        Ok(if items.len() == 1 { items.swap_remove(0) } else { Filter::Or(items) })
    }

    fn and_expr(&mut self, depth: usize, context: &str) -> Result<Filter, FilterError> {
        let mut items = vec![self.unary(depth, context)?];
        loop {
            let t = self.peek();
            if !t.is_keyword("and") {
                break;
            }
            self.bump(&t);
            items.push(self.unary(depth, " after 'and'")?);
        }
        Ok(if items.len() == 1 { items.swap_remove(0) } else { Filter::And(items) })
    }

    fn unary(&mut self, depth: usize, context: &str) -> Result<Filter, FilterError> {
        let t = self.peek();
        if depth >= MAX_DEPTH && (t.is_keyword("not") || t.kind == Tok::LParen) {
            return Err(self.error(&t, format!("at most {MAX_DEPTH} levels of nesting")));
        }
        if t.is_keyword("not") {
            self.bump(&t);
            return Ok(Filter::Not(Box::new(self.unary(depth + 1, " after 'not'")?)));
        }
        match t.kind {
            Tok::LParen => {
                self.bump(&t);
                let inner = self.or_expr(depth + 1, " after '('")?;
                let close = self.peek();
                if close.kind != Tok::RParen {
                    return Err(self.error(&close, "'and', 'or' or ')'"));
                }
                self.bump(&close);
                Ok(inner)
            }
            Tok::Ident if !is_reserved(t.text) => {
                self.bump(&t);
                self.comparison(t.text)
            }
            _ => Err(self.error(&t, format!("a condition (a field name, 'not' or '('){context}"))),
        }
    }

    fn comparison(&mut self, field: &str) -> Result<Filter, FilterError> {
        let path = field.to_owned();
        let t = self.peek();
        if t.is_keyword("in") {
            self.bump(&t);
            let open = self.peek();
            if open.kind != Tok::LBracket {
                return Err(self.error(&open, "'[' after 'in'"));
            }
            self.bump(&open);
            let mut values = Vec::new();
            let first = self.peek();
            if first.kind == Tok::RBracket {
                self.bump(&first);
                return Ok(Filter::In(path, values));
            }
            let mut context = "a value after '['";
            loop {
                values.push(self.value(context)?);
                let sep = self.peek();
                self.bump(&sep);
                match sep.kind {
                    Tok::Comma => context = "a value after ','",
                    Tok::RBracket => return Ok(Filter::In(path, values)),
                    _ => return Err(self.error(&sep, "',' or ']'")),
                }
            }
        }
        let Tok::Op(op) = t.kind else {
            return Err(self.error(&t, format!("an operator (=, !=, <, <=, >, >=, in) after '{field}'")));
        };
        self.bump(&t);
        if matches!(op, Op::Eq | Op::Ne) {
            let v = self.value(&format!("a value after '{}'", t.text))?;
            return Ok(if op == Op::Eq { Filter::Eq(path, v) } else { Filter::Ne(path, v) });
        }
        let n = self.peek();
        let x = match &n.kind {
            Tok::Num(x) => x.as_f64().unwrap_or(f64::NAN),
            _ => return Err(self.error(&n, format!("a number after '{}'", t.text))),
        };
        self.bump(&n);
        let (mut gt, mut gte, mut lt, mut lte) = (None, None, None, None);
        match op {
            Op::Gt => gt = Some(x),
            Op::Ge => gte = Some(x),
            Op::Lt => lt = Some(x),
            _ => lte = Some(x),
        }
        Ok(Filter::Range { path, gt, gte, lt, lte })
    }

    fn value(&mut self, expected: &str) -> Result<Value, FilterError> {
        let t = self.peek();
        let v = match &t.kind {
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Num(n) => Value::Number(n.clone()),
            Tok::Ident if t.text.eq_ignore_ascii_case("true") => Value::Bool(true),
            Tok::Ident if t.text.eq_ignore_ascii_case("false") => Value::Bool(false),
            Tok::Ident if t.text.eq_ignore_ascii_case("null") => Value::Null,
            _ => return Err(self.error(&t, expected)),
        };
        self.bump(&t);
        Ok(v)
    }
}

/// A bound as JSON: an integer when it is one (so `1990` stays `1990`), else a float.
fn bound_json(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Prints the text syntax; [`Filter::parse`] reads it back (a range with several bounds
/// comes back as an `and` of one-bound ranges; a path that is no identifier, possible
/// through the JSON form, prints as it is and does not parse).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whether `child` needs parentheses inside `parent` to keep its shape.
        fn wrap(child: &Filter, parent: &Filter) -> bool {
            match child {
                Filter::Or(_) => true,
                Filter::And(_) => !matches!(parent, Filter::Or(_)),
                Filter::Range { gt, gte, lt, lte, .. } => [gt, gte, lt, lte].iter().filter(|b| b.is_some()).count() > 1,
                _ => false,
            }
        }
        let child = |f: &mut fmt::Formatter<'_>, c: &Filter| {
            if wrap(c, self) { write!(f, "({c})") } else { write!(f, "{c}") }
        };
        match self {
            Filter::Eq(p, v) => write!(f, "{p} = {v}"),
            Filter::Ne(p, v) => write!(f, "{p} != {v}"),
            Filter::In(p, vs) => {
                write!(f, "{p} in [")?;
                for (i, v) in vs.iter().enumerate() {
                    write!(f, "{}{v}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "]")
            }
            Filter::Range { path, gt, gte, lt, lte } => {
                let mut first = true;
                for (op, b) in [(">", gt), (">=", gte), ("<", lt), ("<=", lte)] {
                    if let Some(x) = b {
                        write!(f, "{}{path} {op} {}", if first { "" } else { " and " }, bound_json(*x))?;
                        first = false;
                    }
                }
                Ok(())
            }
            Filter::And(fs) | Filter::Or(fs) => {
                let sep = if matches!(self, Filter::And(_)) { " and " } else { " or " };
                for (i, c) in fs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    child(f, c)?;
                }
                Ok(())
            }
            Filter::Not(c) => {
                f.write_str("not ")?;
                child(f, c)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON form
// ---------------------------------------------------------------------------------------

const CONDITION_KEYS: [&str; 7] = ["eq", "ne", "in", "gt", "gte", "lt", "lte"];

impl Filter {
    /// Reads the JSON form: `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}`,
    /// `{"field": "pos", "eq": "n"}` (or `"ne"`, or `"in": [...]`), and
    /// `{"field": "year", "gte": 1990, "lt": 2000}` (any of `gt`, `gte`, `lt`, `lte`).
    pub fn from_json(value: &Value) -> Result<Filter, FilterError> {
        from_json_at(value, "filter", 0)
    }

    /// The JSON form, which [`Filter::from_json`] reads back unchanged.
    pub fn to_json(&self) -> Value {
        let obj =
            |pairs: Vec<(&str, Value)>| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
        match self {
            Filter::Eq(p, v) => obj(vec![("field", p.as_str().into()), ("eq", v.clone())]),
            Filter::Ne(p, v) => obj(vec![("field", p.as_str().into()), ("ne", v.clone())]),
            Filter::In(p, vs) => obj(vec![("field", p.as_str().into()), ("in", Value::Array(vs.clone()))]),
            Filter::Range { path, gt, gte, lt, lte } => {
                let mut pairs = vec![("field", path.as_str().into())];
                for (k, b) in [("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte)] {
                    if let Some(x) = b {
                        pairs.push((k, bound_json(*x)));
                    }
                }
                obj(pairs)
            }
            Filter::And(fs) => obj(vec![("and", fs.iter().map(Filter::to_json).collect())]),
            Filter::Or(fs) => obj(vec![("or", fs.iter().map(Filter::to_json).collect())]),
            Filter::Not(f) => obj(vec![("not", f.to_json())]),
        }
    }
}

fn json_err<T>(path: &str, message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError::Json { path: path.to_owned(), message: message.into() })
}

fn from_json_at(value: &Value, path: &str, depth: usize) -> Result<Filter, FilterError> {
    if depth > MAX_DEPTH {
        return json_err(path, format!("nested more than {MAX_DEPTH} levels deep"));
    }
    let Value::Object(obj) = value else {
        return json_err(path, "expected an object");
    };
    for op in ["and", "or", "not"] {
        let Some(inner) = obj.get(op) else { continue };
        if let Some(other) = obj.keys().find(|k| k.as_str() != op) {
            return json_err(path, format!("\"{op}\" cannot be combined with \"{other}\""));
        }
        let here = format!("{path}.{op}");
        if op == "not" {
            return Ok(Filter::Not(Box::new(from_json_at(inner, &here, depth + 1)?)));
        }
        let Value::Array(items) = inner else {
            return json_err(&here, "expected an array of conditions");
        };
        if items.is_empty() {
            return json_err(&here, "expected at least one condition");
        }
        let fs = items
            .iter()
            .enumerate()
            .map(|(i, item)| from_json_at(item, &format!("{here}[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if op == "and" { Filter::And(fs) } else { Filter::Or(fs) });
    }
    if let Some(unknown) = obj.keys().find(|k| k.as_str() != "field" && !CONDITION_KEYS.contains(&k.as_str())) {
        return json_err(path, format!("unknown key \"{unknown}\""));
    }
    let Some(field) = obj.get("field") else {
        if obj.is_empty() {
            return json_err(path, "expected \"and\", \"or\", \"not\" or \"field\"");
        }
        return json_err(path, "missing \"field\"");
    };
    let field = match field {
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return json_err(&format!("{path}.field"), "expected a non-empty string"),
    };
    let present: Vec<&str> = CONDITION_KEYS.iter().copied().filter(|k| obj.contains_key(*k)).collect();
    let scalar = |key: &str, v: &Value, at: String| {
        if is_scalar(v) {
            Ok(v.clone())
        } else {
            json_err(&at, format!("expected a string, number, boolean or null for \"{key}\""))
        }
    };
    match present.as_slice() {
        [] => {
            json_err(path, "expected one of \"eq\", \"ne\", \"in\", \"gt\", \"gte\", \"lt\", \"lte\" next to \"field\"")
        }
        // CONDITION_KEYS order puts "eq", "ne" and "in" before any range key.
        [k @ ("eq" | "ne" | "in"), other, ..] => json_err(path, format!("\"{k}\" cannot be combined with \"{other}\"")),
        ["eq"] => Ok(Filter::Eq(field, scalar("eq", &obj["eq"], format!("{path}.eq"))?)),
        ["ne"] => Ok(Filter::Ne(field, scalar("ne", &obj["ne"], format!("{path}.ne"))?)),
        ["in"] => {
            let Value::Array(items) = &obj["in"] else {
                return json_err(&format!("{path}.in"), "expected an array");
            };
            let values = items
                .iter()
                .enumerate()
                .map(|(i, v)| scalar("in", v, format!("{path}.in[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Filter::In(field, values))
        }
        _ => {
            let bound = |key: &str| -> Result<Option<f64>, FilterError> {
                match obj.get(key) {
                    None => Ok(None),
                    Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.as_f64()),
                    Some(_) => json_err(&format!("{path}.{key}"), "expected a finite number"),
                }
            };
            Ok(Filter::Range {
                path: field,
                gt: bound("gt")?,
                gte: bound("gte")?,
                lt: bound("lt")?,
                lte: bound("lte")?,
            })
        }
    }
}

impl serde::Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::from_json(&value).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// PayloadIndex
// ---------------------------------------------------------------------------------------

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_STRING: u8 = 3;

/// One path's columns. Keys (scalar values other than numbers) are in compressed-row form:
/// key `i` is `key_tags[i]` with string bytes `key_bytes[key_ends[i-1]..key_ends[i]]` and
/// nodes `postings[post_ends[i-1]..post_ends[i]]`.
#[derive(Debug, Clone, PartialEq, Default)]
struct FieldIndex {
    path: String,
    key_tags: Vec<u8>,
    key_ends: Vec<usize>,
    key_bytes: Vec<u8>,
    post_ends: Vec<usize>,
    postings: Vec<u32>,
    num_values: Vec<f64>,
    num_nodes: Vec<u32>,
}

impl FieldIndex {
    fn key_count(&self) -> usize {
        self.key_tags.len()
    }

    fn span(ends: &[usize], i: usize) -> std::ops::Range<usize> {
        (if i == 0 { 0 } else { ends[i - 1] })..ends[i]
    }

    fn key(&self, i: usize) -> (u8, &[u8]) {
        (self.key_tags[i], &self.key_bytes[Self::span(&self.key_ends, i)])
    }

    fn posting(&self, i: usize) -> &[u32] {
        &self.postings[Self::span(&self.post_ends, i)]
    }

    fn lookup(&self, tag: u8, bytes: &[u8]) -> &[u32] {
        let (mut lo, mut hi) = (0, self.key_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(&(tag, bytes)) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.posting(mid),
            }
        }
        &[]
    }

    fn add_eq(&self, want: &Value, out: &mut Bitset) {
        let nodes: &[u32] = match want {
            Value::Null => self.lookup(TAG_NULL, b""),
            Value::Bool(false) => self.lookup(TAG_FALSE, b""),
            Value::Bool(true) => self.lookup(TAG_TRUE, b""),
            Value::String(s) => self.lookup(TAG_STRING, s.as_bytes()),
            Value::Number(n) => {
                if let Some(x) = finite(n) {
                    self.add_range(Bounds { gt: None, gte: Some(x), lt: None, lte: Some(x) }, out);
                }
                &[]
            }
            Value::Array(_) | Value::Object(_) => &[],
        };
        nodes.iter().for_each(|&node| out.set(node));
    }

    fn add_range(&self, b: Bounds, out: &mut Bitset) {
        let lo = self.num_values.partition_point(|&x| !b.lower_ok(x));
        let hi = self.num_values.partition_point(|&x| b.upper_ok(x));
        if lo < hi {
            self.num_nodes[lo..hi].iter().for_each(|&node| out.set(node));
        }
    }
}

/// Collects one path's values while building.
#[derive(Default)]
struct FieldBuilder {
    nulls: Vec<u32>,
    falses: Vec<u32>,
    trues: Vec<u32>,
    strings: HashMap<String, Vec<u32>>,
    numbers: Vec<(f64, u32)>,
}

impl FieldBuilder {
    fn finish(self, path: String) -> FieldIndex {
        let mut f = FieldIndex { path, ..FieldIndex::default() };
        let mut push = |tag: u8, bytes: &[u8], mut nodes: Vec<u32>| {
            if nodes.is_empty() {
                return;
            }
            nodes.sort_unstable();
            nodes.dedup();
            f.key_tags.push(tag);
            f.key_bytes.extend_from_slice(bytes);
            f.key_ends.push(f.key_bytes.len());
            f.postings.extend_from_slice(&nodes);
            f.post_ends.push(f.postings.len());
        };
        push(TAG_NULL, b"", self.nulls);
        push(TAG_FALSE, b"", self.falses);
        push(TAG_TRUE, b"", self.trues);
        let mut strings: Vec<(String, Vec<u32>)> = self.strings.into_iter().collect();
        strings.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (s, nodes) in strings {
            push(TAG_STRING, s.as_bytes(), nodes);
        }
        let mut numbers = self.numbers;
        numbers.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        numbers.dedup();
        (f.num_values, f.num_nodes) = numbers.into_iter().unzip();
        f
    }
}

fn index_value(fields: &mut HashMap<String, FieldBuilder>, path: &mut String, v: &Value, node: u32) {
    if !fields.contains_key(path.as_str()) {
        fields.insert(path.clone(), FieldBuilder::default());
    }
    if let Value::Object(m) = v {
        for (k, child) in m {
            if k.contains('.') {
                continue;
            }
            let len = path.len();
            path.push('.');
            path.push_str(k);
            index_value(fields, path, child, node);
            path.truncate(len);
        }
        return;
    }
    if let Value::Array(items) = v {
        for item in items {
            index_value(fields, path, item, node);
        }
        return;
    }
    let Some(f) = fields.get_mut(path.as_str()) else { return };
    match v {
        Value::Null => f.nulls.push(node),
        Value::Bool(false) => f.falses.push(node),
        Value::Bool(true) => f.trues.push(node),
        Value::String(s) => match f.strings.get_mut(s.as_str()) {
            Some(nodes) => nodes.push(node),
            None => {
                f.strings.insert(s.clone(), vec![node]);
            }
        },
        Value::Number(n) => {
            if let Some(x) = finite(n) {
                f.numbers.push((x, node));
            }
        }
        Value::Array(_) | Value::Object(_) => {}
    }
}

/// A columnar index over one immutable segment's metadata: per path, a sorted dictionary of
/// keyword values (strings, booleans, null) with posting lists, and a sorted numeric column
/// for ranges and numeric equality. Evaluating a filter costs binary searches plus one bit
/// per matching posting, with no JSON parsing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PayloadIndex {
    n: u32,
    fields: Vec<FieldIndex>,
}

impl PayloadIndex {
    /// Indexes the metadata of nodes `0..n`; nodes not listed have no metadata.
    ///
    /// # Panics
    /// If a node is `>= n`.
    pub fn build<'a>(n: u32, records: impl IntoIterator<Item = (u32, Option<&'a Map<String, Value>>)>) -> Self {
        let mut fields: HashMap<String, FieldBuilder> = HashMap::new();
        let mut path = String::new();
        for (node, meta) in records {
            assert!(node < n, "payload index: node {node} out of range 0..{n}");
            for (k, v) in meta.into_iter().flatten() {
                if k.contains('.') {
                    continue;
                }
                path.clear();
                path.push_str(k);
                index_value(&mut fields, &mut path, v, node);
            }
        }
        let mut fields: Vec<FieldIndex> = fields.into_iter().map(|(p, b)| b.finish(p)).collect();
        fields.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        PayloadIndex { n, fields }
    }

    /// The number of nodes (`n`).
    pub fn len(&self) -> u32 {
        self.n
    }

    /// Whether the index covers no nodes.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Every path that occurs in this index (including paths that only ever hold objects or
    /// empty arrays), sorted.
    pub fn known_fields(&self) -> impl Iterator<Item = &str> + '_ {
        self.fields.iter().map(|f| f.path.as_str())
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.fields
            .iter()
            .map(|f| {
                f.path.len()
                    + f.key_tags.len()
                    + f.key_bytes.len()
                    + (f.key_ends.len() + f.post_ends.len()) * size_of::<usize>()
                    + (f.postings.len() + f.num_nodes.len()) * 4
                    + f.num_values.len() * 8
                    + size_of::<FieldIndex>()
            })
            .sum()
    }

    fn field(&self, path: &str) -> Option<&FieldIndex> {
        self.fields.binary_search_by(|f| f.path.as_str().cmp(path)).ok().map(|i| &self.fields[i])
    }

    /// The nodes matching `filter`, over `0..len()`. The filter must pass
    /// [`Filter::validate`]. A path that never occurs here matches like a missing field
    /// (checking paths against [`PayloadIndex::known_fields`] is the caller's business).
    /// Agrees with [`Filter::matches`] on every node.
    pub fn evaluate(&self, filter: &Filter) -> Result<Bitset, FilterError> {
        filter.validate()?;
        Ok(self.eval(filter))
    }

    fn eval(&self, filter: &Filter) -> Bitset {
        let n = self.n as usize;
        let mut out = Bitset::new(n);
        match filter {
            Filter::Eq(path, v) | Filter::Ne(path, v) => {
                if let Some(f) = self.field(path) {
                    f.add_eq(v, &mut out);
                }
                if matches!(filter, Filter::Ne(..)) {
                    out.not();
                }
            }
            Filter::In(path, vs) => {
                if let Some(f) = self.field(path) {
                    vs.iter().for_each(|v| f.add_eq(v, &mut out));
                }
            }
            Filter::Range { path, gt, gte, lt, lte } => {
                if let Some(f) = self.field(path) {
                    f.add_range(Bounds { gt: *gt, gte: *gte, lt: *lt, lte: *lte }, &mut out);
                }
            }
            Filter::And(fs) => {
                out = Bitset::full(n);
                for f in fs {
                    if !out.any() {
                        break;
                    }
                    out.and(&self.eval(f));
                }
            }
            Filter::Or(fs) => fs.iter().for_each(|f| out.or(&self.eval(f))),
            Filter::Not(f) => {
                out = self.eval(f);
                out.not();
            }
        }
        out
    }

    /// The serialized form (layout in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.memory_bytes());
        let put_u32 = |out: &mut Vec<u8>, x: usize| {
            let x = u32::try_from(x).expect("payload index: a count exceeds u32");
            out.extend_from_slice(&x.to_le_bytes());
        };
        put_u32(&mut out, FORMAT_VERSION as usize);
        put_u32(&mut out, self.n as usize);
        put_u32(&mut out, self.fields.len());
        for f in &self.fields {
            put_u32(&mut out, f.path.len());
            out.extend_from_slice(f.path.as_bytes());
            put_u32(&mut out, f.key_count());
            for i in 0..f.key_count() {
                let (tag, bytes) = f.key(i);
                out.push(tag);
                if tag == TAG_STRING {
                    put_u32(&mut out, bytes.len());
                    out.extend_from_slice(bytes);
                }
                let nodes = f.posting(i);
                put_u32(&mut out, nodes.len());
                nodes.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
            put_u32(&mut out, f.num_values.len());
            f.num_values.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            f.num_nodes.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        out
    }

    /// Reads [`PayloadIndex::to_bytes`] output, checking every invariant the index relies
    /// on. Never panics; errors name the byte offset.
    pub fn from_bytes(bytes: &[u8]) -> Result<PayloadIndex, FilterError> {
        let mut r = Reader::new(bytes);
        let version = r.u32("version")?;
        if version != FORMAT_VERSION {
            return Err(corrupt(0, format!("unsupported version {version}")));
        }
        let n = r.u32("node count")?;
        let field_count = r.count("field count", 12)?;
        let mut fields: Vec<FieldIndex> = Vec::with_capacity(field_count);
        for _ in 0..field_count {
            let at = r.pos;
            let path = r.string("field path")?;
            if fields.last().is_some_and(|prev| prev.path.as_str() >= path.as_str()) {
                return Err(corrupt(at, format!("field path {path:?} out of order")));
            }
            let mut f = FieldIndex { path, ..FieldIndex::default() };
            let key_count = r.count("key count", 9)?;
            for _ in 0..key_count {
                let at = r.pos;
                let tag = r.u8("key tag")?;
                match tag {
                    TAG_NULL | TAG_FALSE | TAG_TRUE => {}
                    TAG_STRING => {
                        let s = r.string("key string")?;
                        f.key_bytes.extend_from_slice(s.as_bytes());
                    }
                    _ => return Err(corrupt(at, format!("unknown key tag {tag}"))),
                }
                f.key_tags.push(tag);
                f.key_ends.push(f.key_bytes.len());
                let i = f.key_count() - 1;
                if i > 0 && f.key(i - 1) >= f.key(i) {
                    return Err(corrupt(at, "key out of order"));
                }
                let count_at = r.pos;
                let count = r.count("posting count", 4)?;
                if count == 0 {
                    return Err(corrupt(count_at, "empty posting list"));
                }
                f.postings.reserve(count);
                let mut prev: Option<u32> = None;
                for _ in 0..count {
                    let at = r.pos;
                    let node = r.u32("posting")?;
                    if node >= n || prev.is_some_and(|p| p >= node) {
                        return Err(corrupt(at, format!("posting {node} out of order or range")));
                    }
                    prev = Some(node);
                    f.postings.push(node);
                }
                f.post_ends.push(f.postings.len());
            }
            let count = r.count("number count", 12)?;
            f.num_values.reserve(count);
            for _ in 0..count {
                let at = r.pos;
                let x = r.f64("number")?;
                if !x.is_finite() || f.num_values.last().is_some_and(|&p| p > x) {
                    return Err(corrupt(at, format!("number {x} not finite or out of order")));
                }
                f.num_values.push(x);
            }
            f.num_nodes.reserve(count);
            for i in 0..count {
                let at = r.pos;
                let node = r.u32("number node")?;
                let dup = i > 0 && f.num_values[i - 1] == f.num_values[i] && f.num_nodes[i - 1] >= node;
                if node >= n || dup {
                    return Err(corrupt(at, format!("number node {node} out of order or range")));
                }
                f.num_nodes.push(node);
            }
            fields.push(f);
        }
        if r.pos != bytes.len() {
            return Err(corrupt(r.pos, format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        Ok(PayloadIndex { n, fields })
    }
}

fn corrupt(offset: usize, message: impl Into<String>) -> FilterError {
    FilterError::Corrupt { offset, message: message.into() }
}

impl From<Corrupt> for FilterError {
    fn from(c: Corrupt) -> FilterError {
        FilterError::Corrupt { offset: c.offset, message: c.message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn meta(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn p(s: &str) -> Filter {
        Filter::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn perr(s: &str) -> String {
        Filter::parse(s).expect_err(s).to_string()
    }

    fn eq(path: &str, v: Value) -> Filter {
        Filter::Eq(path.into(), v)
    }

    fn range(path: &str, gt: Option<f64>, gte: Option<f64>, lt: Option<f64>, lte: Option<f64>) -> Filter {
        Filter::Range { path: path.into(), gt, gte, lt, lte }
    }

    #[test]
    fn parses_the_examples() {
        assert_eq!(
            p(r#"pos = "n" and (year >= 1990 or tag in ["a", "b"]) and not lexname = "noun.animal""#),
            Filter::And(vec![
                eq("pos", json!("n")),
                Filter::Or(vec![
                    range("year", None, Some(1990.0), None, None),
                    Filter::In("tag".into(), vec![json!("a"), json!("b")]),
                ]),
                Filter::Not(Box::new(eq("lexname", json!("noun.animal")))),
            ])
        );
        assert_eq!(p("price < 10.5"), range("price", None, None, Some(10.5), None));
        assert_eq!(p("price<=-1e2"), range("price", None, None, None, Some(-100.0)));
        assert_eq!(
            p("x > 0 AND y>=2"),
            Filter::And(vec![range("x", Some(0.0), None, None, None), range("y", None, Some(2.0), None, None)])
        );
        assert_eq!(p("flag = true"), eq("flag", json!(true)));
        assert_eq!(p("flag = FALSE"), eq("flag", json!(false)));
        assert_eq!(p("x != null"), Filter::Ne("x".into(), Value::Null));
        assert_eq!(p("a.b.c = 3"), eq("a.b.c", json!(3)));
        assert_eq!(p("a-b_c.d = -3"), eq("a-b_c.d", json!(-3)));
        assert_eq!(p(r#"s = "tab\t\u00e9\"""#), eq("s", json!("tab\t\u{e9}\"")));
        assert_eq!(p("t in []"), Filter::In("t".into(), vec![]));
        assert_eq!(
            p("t in [1, \"x\", null,true]"),
            Filter::In("t".into(), vec![json!(1), json!("x"), json!(null), json!(true)])
        );
        // `and` binds tighter than `or`.
        assert_eq!(
            p("a = 1 or b = 2 and c = 3"),
            Filter::Or(vec![eq("a", json!(1)), Filter::And(vec![eq("b", json!(2)), eq("c", json!(3))])])
        );
        assert_eq!(p("not not a = 1"), Filter::Not(Box::new(Filter::Not(Box::new(eq("a", json!(1)))))));
        assert_eq!(p("((a = 1))"), eq("a", json!(1)));
        assert_eq!(
            p("Not a = 1 Or b = 2"),
            Filter::Or(vec![Filter::Not(Box::new(eq("a", json!(1)))), eq("b", json!(2))])
        );
    }

    #[test]
    fn parse_errors_say_what_where_and_what_was_found() {
        assert_eq!(perr("pos = "), "filter: expected a value after '=' at column 7, found end of input");
        assert_eq!(
            perr("pos"),
            "filter: expected an operator (=, !=, <, <=, >, >=, in) after 'pos' at column 4, found end of input"
        );
        assert_eq!(
            perr("pos = \"n\" and"),
            "filter: expected a condition (a field name, 'not' or '(') after 'and' at column 14, found end of input"
        );
        assert_eq!(
            perr(""),
            "filter: expected a condition (a field name, 'not' or '(') at column 1, found end of input"
        );
        assert_eq!(perr("a = 1 b = 2"), "filter: expected 'and', 'or' or end of input at column 7, found 'b'");
        assert_eq!(perr("(a = 1"), "filter: expected 'and', 'or' or ')' at column 7, found end of input");
        assert_eq!(perr("year >= \"x\""), "filter: expected a number after '>=' at column 9, found \"x\"");
        assert_eq!(perr("tag in [\"a\" \"b\"]"), "filter: expected ',' or ']' at column 13, found \"b\"");
        assert_eq!(perr("tag in \"a\""), "filter: expected '[' after 'in' at column 8, found \"a\"");
        assert_eq!(perr("tag in [1,]"), "filter: expected a value after ',' at column 11, found ']'");
        assert_eq!(perr("a = @"), "filter: expected a value after '=' at column 5, found '@'");
        assert_eq!(perr("é = 1"), "filter: expected a condition (a field name, 'not' or '(') at column 1, found 'é'");
        assert_eq!(
            perr("ü = 1 and é"),
            "filter: expected a condition (a field name, 'not' or '(') at column 1, found 'ü'"
        );
        assert_eq!(perr("a = \"x"), "filter: expected a value after '=' at column 5, found an unterminated string");
        assert_eq!(
            perr("a = \"\\q\""),
            "filter: expected a value after '=' at column 5, found an invalid string \"\\q\""
        );
        assert_eq!(perr("a = 01"), "filter: expected a value after '=' at column 5, found an invalid number '01'");
        assert_eq!(
            perr("a = 1e999"),
            "filter: expected a value after '=' at column 5, found an invalid number '1e999'"
        );
        assert_eq!(perr("a = x"), "filter: expected a value after '=' at column 5, found 'x'");
        assert_eq!(
            perr("and = 1"),
            "filter: expected a condition (a field name, 'not' or '(') at column 1, found 'and'"
        );
        assert_eq!(
            perr("a ! 1"),
            "filter: expected an operator (=, !=, <, <=, >, >=, in) after 'a' at column 3, found '!'"
        );
        let deep = format!("{}a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(perr(&deep).contains("at most 64 levels of nesting at column 65"), "{}", perr(&deep));
        assert!(perr(&"not ".repeat(100)).contains("at most 64 levels"));
        let ok = format!("{}a = 1{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(p(&ok), eq("a", json!(1)));
    }

    #[test]
    fn equality_follows_the_rules() {
        let m = meta(json!({
            "n": 1, "f": 1.0, "s": "x", "b": true, "z": null, "tags": ["a", "b", 3, [4]],
            "o": {"p": {"q": "deep"}, "list": [{"k": 1}, {"k": 2}]}, "d.k": 5, "empty": []
        }));
        let m = Some(&m);
        let yes = |s: &str| assert!(p(s).matches(m), "{s} should match");
        let no = |s: &str| assert!(!p(s).matches(m), "{s} should not match");
        yes("n = 1.0");
        yes("f = 1");
        yes("n in [7, 1]");
        no("n = \"1\"");
        no("n = true");
        yes("s = \"x\"");
        no("s = \"X\"");
        yes("b = true");
        no("b = 1");
        yes("z = null");
        no("n = null");
        no("missing = null");
        yes("missing != null");
        yes("missing != 1");
        no("missing = 1");
        no("missing < 1");
        no("missing in [1]");
        yes("tags = \"a\"");
        yes("tags = 3");
        yes("tags = 4");
        yes("tags >= 3.5");
        no("tags != \"b\"");
        yes("tags != \"c\"");
        no("tags > 4");
        yes("o.p.q = \"deep\"");
        no("o.p = \"deep\"");
        no("o = \"deep\"");
        yes("o.list.k = 2");
        yes("o.list.k > 1.5");
        no("o.list.k > 2");
        no("d.k = 5");
        no("empty = null");
        yes("empty != null");
        no("s > 0");
        yes("n > 0.5 and n < 1.5");
        no("n > 1");
        yes("n >= 1");
        yes("n <= 1");
        no("n < 1");
        assert!(!eq("n", json!(1)).matches(None));
        assert!(Filter::Ne("n".into(), json!(1)).matches(None));
        assert!(Filter::And(vec![]).matches(None));
        assert!(!Filter::Or(vec![]).matches(None));
        assert!(range("n", None, None, None, None).matches(m));
        assert!(!range("n", Some(f64::NAN), None, None, None).matches(m));
        assert!(!eq("tags", json!(["a"])).matches(m));
    }

    #[test]
    fn validate_rejects_what_the_parsers_reject() {
        let bad = [
            Filter::And(vec![]),
            Filter::Or(vec![]),
            range("x", None, None, None, None),
            range("x", Some(f64::NAN), None, None, None),
            eq("x", json!([1])),
            Filter::In("x".into(), vec![json!({})]),
            eq("", json!(1)),
        ];
        for f in bad {
            assert!(matches!(f.validate(), Err(FilterError::Invalid(_))), "{f:?}");
            assert!(PayloadIndex::default().evaluate(&f).is_err());
        }
        let mut deep = eq("x", json!(1));
        for _ in 0..=MAX_DEPTH {
            deep = Filter::Not(Box::new(deep));
        }
        assert!(deep.validate().is_err());
    }

    #[test]
    fn fields_are_distinct_and_sorted() {
        assert_eq!(p("b = 1 and (a < 2 or not b in [1]) and a.c != 3").fields(), ["a", "a.c", "b"]);
    }

    #[test]
    fn json_form_round_trips_and_reads_the_documented_shapes() {
        let v = json!({"and": [
            {"field": "pos", "eq": "n"},
            {"field": "pos", "ne": "v"},
            {"field": "tag", "in": ["a", "b"]},
            {"field": "year", "gte": 1990, "lt": 2000},
            {"or": [{"field": "x", "gt": 0.5}, {"not": {"field": "y", "lte": -1}}]}
        ]});
        let f = Filter::from_json(&v).expect("valid");
        assert_eq!(
            f,
            Filter::And(vec![
                eq("pos", json!("n")),
                Filter::Ne("pos".into(), json!("v")),
                Filter::In("tag".into(), vec![json!("a"), json!("b")]),
                range("year", None, Some(1990.0), Some(2000.0), None),
                Filter::Or(vec![
                    range("x", Some(0.5), None, None, None),
                    Filter::Not(Box::new(range("y", None, None, None, Some(-1.0)))),
                ]),
            ])
        );
        assert_eq!(f.to_json(), v);
        let via_serde: Filter = serde_json::from_value(v.clone()).expect("serde");
        assert_eq!(via_serde, f);
        assert_eq!(serde_json::to_value(&f).expect("serde"), v);
    }

    #[test]
    fn json_errors_name_the_path() {
        let err = |v: Value| Filter::from_json(&v).expect_err("should fail").to_string();
        assert_eq!(
            err(json!({"and": [{"field": "a", "eq": 1}, {"field": "b", "eqq": 1}]})),
            "filter.and[1]: unknown key \"eqq\""
        );
        assert_eq!(err(json!({"and": []})), "filter.and: expected at least one condition");
        assert_eq!(err(json!({"or": {}})), "filter.or: expected an array of conditions");
        assert_eq!(err(json!({"not": [1]})), "filter.not: expected an object");
        assert_eq!(
            err(json!({"and": [{"field": "a", "eq": 1}], "field": "x"})),
            "filter: \"and\" cannot be combined with \"field\""
        );
        assert_eq!(
            err(json!({"field": "a"})),
            "filter: expected one of \"eq\", \"ne\", \"in\", \"gt\", \"gte\", \"lt\", \"lte\" next to \"field\""
        );
        assert_eq!(err(json!({"eq": 1})), "filter: missing \"field\"");
        assert_eq!(err(json!({})), "filter: expected \"and\", \"or\", \"not\" or \"field\"");
        assert_eq!(err(json!({"field": 3, "eq": 1})), "filter.field: expected a non-empty string");
        assert_eq!(err(json!({"field": "a", "eq": 1, "gt": 2})), "filter: \"eq\" cannot be combined with \"gt\"");
        assert_eq!(err(json!({"field": "a", "gte": 1, "in": [2]})), "filter: \"in\" cannot be combined with \"gte\"");
        assert_eq!(
            err(json!({"field": "a", "eq": [1]})),
            "filter.eq: expected a string, number, boolean or null for \"eq\""
        );
        assert_eq!(
            err(json!({"field": "a", "in": [1, {}]})),
            "filter.in[1]: expected a string, number, boolean or null for \"in\""
        );
        assert_eq!(err(json!({"field": "a", "in": 1})), "filter.in: expected an array");
        assert_eq!(err(json!({"not": {"field": "a", "gte": "1990"}})), "filter.not.gte: expected a finite number");
        assert_eq!(err(json!("a = 1")), "filter: expected an object");
        let mut deep = json!({"field": "a", "eq": 1});
        for _ in 0..100 {
            deep = json!({ "not": deep });
        }
        assert!(err(deep).contains("nested more than 64 levels"));
        let e: Result<Filter, _> = serde_json::from_value(json!({"field": "a"}));
        assert!(e.expect_err("invalid").to_string().contains("next to \"field\""));
    }

    // ---- property tests ----

    /// Paths that exist often, sometimes, and never; "a" and "b" weigh double.
    const PATHS: [&str; 12] = ["a", "a", "b", "b", "c", "a.x", "b.y", "a.x.y", "zz", "a.z.w", "a.z", "c.x"];

    fn scalar() -> impl Strategy<Value = Value> {
        // A small domain, so that equal values (and `1` vs `1.0`) are common.
        prop_oneof![
            1 => Just(Value::Null),
            2 => any::<bool>().prop_map(Value::Bool),
            3 => prop::sample::select(vec!["p", "q"]).prop_map(|s| json!(s)),
            3 => (0i64..2).prop_map(|i| json!(i)),
            2 => prop::sample::select(vec![-0.0, 1.0, 1.5]).prop_map(|f| json!(f)),
        ]
    }

    fn object(inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
        prop::collection::btree_map(prop::sample::select(vec!["x", "y", "z", "z.w"]), inner, 1..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
            .boxed()
    }

    /// Mostly scalars and arrays of scalars, some objects (also inside arrays), rarely deeper.
    fn value() -> impl Strategy<Value = Value> {
        let flat =
            prop_oneof![4 => scalar(), 2 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array)].boxed();
        let nested = prop_oneof![
            3 => flat.clone(),
            1 => object(flat.clone()),
            1 => prop::collection::vec(prop_oneof![flat.clone(), object(scalar().boxed())], 0..3)
                .prop_map(Value::Array),
        ]
        .boxed();
        prop_oneof![3 => flat, 2 => object(nested)]
    }

    fn metadata() -> impl Strategy<Value = Option<Map<String, Value>>> {
        prop::option::weighted(
            0.85,
            prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c", "a.z"]), value(), 1..4)
                .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        )
    }

    fn bound() -> impl Strategy<Value = Option<f64>> {
        prop::option::weighted(0.3, prop::sample::select(vec![-0.5, 0.0, 0.5, 1.0, 1.5, 2.0]))
    }

    /// Valid filters; with `text_only`, ranges carry one bound (what the text syntax makes).
    fn filter(text_only: bool) -> impl Strategy<Value = Filter> {
        let path = prop::sample::select(PATHS.to_vec()).prop_map(str::to_owned);
        let range = (path.clone(), bound(), bound(), bound(), bound(), 0usize..4).prop_map(
            move |(path, gt, gte, lt, lte, pick)| {
                let mut b = [gt, gte, lt, lte];
                if text_only || b.iter().all(Option::is_none) {
                    let keep = b[pick].unwrap_or(1.0);
                    b = [None; 4];
                    b[pick] = Some(keep);
                }
                Filter::Range { path, gt: b[0], gte: b[1], lt: b[2], lte: b[3] }
            },
        );
        let leaf = prop_oneof![
            (path.clone(), scalar()).prop_map(|(p, v)| Filter::Eq(p, v)),
            (path.clone(), scalar()).prop_map(|(p, v)| Filter::Ne(p, v)),
            (path, prop::collection::vec(scalar(), 0..3)).prop_map(|(p, v)| Filter::In(p, v)),
            range,
        ]
        .boxed();
        // The text syntax never makes a one-element `and`/`or`.
        let min = if text_only { 2 } else { 1 };
        let tree = leaf.clone().prop_recursive(3, 8, 3, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), min..4).prop_map(Filter::And),
                prop::collection::vec(inner.clone(), min..4).prop_map(Filter::Or),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        });
        prop_oneof![2 => leaf, 3 => tree]
    }

    fn check_index(records: &[Option<Map<String, Value>>], filters: &[Filter]) -> Result<(), TestCaseError> {
        let n = records.len() as u32 + 2; // two trailing nodes with no record at all
        // Feed the records in reverse to check that build sorts the postings.
        let index = PayloadIndex::build(n, records.iter().enumerate().rev().map(|(i, m)| (i as u32, m.as_ref())));
        let loaded = PayloadIndex::from_bytes(&index.to_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&loaded, &index);
        for f in filters {
            let got = index.evaluate(f).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.len(), n as usize);
            for node in 0..n {
                let m = records.get(node as usize).and_then(Option::as_ref);
                prop_assert_eq!(got.get(node), f.matches(m), "node {} filter {} meta {:?}", node, f, m);
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn index_agrees_with_matches(
            records in prop::collection::vec(metadata(), 0..40),
            filters in prop::collection::vec(filter(false), 1..8),
        ) {
            check_index(&records, &filters)?;
        }

        #[test]
        fn text_round_trips(f in filter(true)) {
            let text = f.to_string();
            prop_assert_eq!(Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?, f);
        }

        #[test]
        fn json_round_trips(f in filter(false)) {
            prop_assert_eq!(Filter::from_json(&f.to_json()).map_err(|e| TestCaseError::fail(e.to_string()))?, f);
        }

        #[test]
        fn parse_never_panics(s in "[a-z0-9 ()\\[\\],.=!<>\"\\\\-]{0,40}") {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_any_text(s in "\\PC{0,30}") {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn from_bytes_never_panics(
            records in prop::collection::vec(metadata(), 0..6),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let nodes = records.iter().enumerate().map(|(i, m)| (i as u32, m.as_ref()));
            let index = PayloadIndex::build(records.len() as u32, nodes);
            let bytes = index.to_bytes();
            let cut = cut.index(bytes.len());
            let truncated = PayloadIndex::from_bytes(&bytes[..cut]);
            prop_assert!(matches!(truncated, Err(FilterError::Corrupt { .. })), "{:?}", truncated);
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            if let Ok(loaded) = PayloadIndex::from_bytes(&flipped)
                && loaded.len() < 1 << 20
            {
                // Whatever loads must evaluate without panicking.
                let _ = loaded.evaluate(&p("a = 1 or b != \"p\" or c.x >= 0"));
            }
        }

        #[test]
        fn from_bytes_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = PayloadIndex::from_bytes(&bytes);
            let mut with_header = vec![1, 0, 0, 0, 10, 0, 0, 0];
            with_header.extend_from_slice(&bytes);
            let _ = PayloadIndex::from_bytes(&with_header);
        }
    }

    #[test]
    fn index_regression_cases() {
        let recs = vec![
            Some(meta(json!({"a": [1, 1.0, "p", null, [true]], "b": {"y": -0.0}, "a.z": 7}))),
            None,
            Some(meta(json!({"a": {"x": [{"y": 2}, 3], "z": {"w": 1}}, "c": []}))),
        ];
        let filters: Vec<Filter> = [
            "a = 1",
            "a != 1",
            "a = true",
            "a = null",
            "b.y = 0",
            "b.y >= 0 and b.y <= 0",
            "a.z = 7",
            "a.z.w = 1",
            "a.x.y = 2",
            "a.x = 3",
            "a.x > 2.5",
            "c != null",
            "zz != 1",
            "not (a = \"p\" or a.x.y < 0)",
        ]
        .iter()
        .map(|s| p(s))
        .collect();
        check_index(&recs, &filters).expect("agrees");
        let index = PayloadIndex::build(3, recs.iter().enumerate().map(|(i, m)| (i as u32, m.as_ref())));
        assert_eq!(index.known_fields().collect::<Vec<_>>(), ["a", "a.x", "a.x.y", "a.z", "a.z.w", "b", "b.y", "c"]);
        assert_eq!(index.evaluate(&p("zz = 1")).expect("ok").count(), 0);
        assert_eq!(index.evaluate(&p("zz != 1")).expect("ok").count(), 3);
    }

    #[test]
    fn from_bytes_errors_name_the_offset() {
        let m = meta(json!({"a": "x", "n": 2}));
        let index = PayloadIndex::build(1, [(0, Some(&m))]);
        let bytes = index.to_bytes();
        for cut in 0..bytes.len() {
            let e = PayloadIndex::from_bytes(&bytes[..cut]).expect_err("truncated");
            assert!(e.to_string().starts_with("payload index: "), "{e}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            PayloadIndex::from_bytes(&trailing).expect_err("trailing").to_string(),
            format!("payload index: 1 trailing bytes at byte {}", bytes.len())
        );
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(
            PayloadIndex::from_bytes(&version).expect_err("version").to_string(),
            "payload index: unsupported version 9 at byte 0"
        );
        // n = 0 makes the posting for node 0 out of range.
        let mut small = bytes;
        small[4] = 0;
        let e = PayloadIndex::from_bytes(&small).expect_err("range").to_string();
        assert!(e.contains("out of order or range"), "{e}");
    }

    #[test]
    fn memory_stays_reasonable() {
        // 117k records with three fields, one of them high-cardinality.
        const POS: [&str; 4] = ["n", "v", "a", "r"];
        let records: Vec<Map<String, Value>> = (0..117_000)
            .map(|i| meta(json!({"pos": POS[i % 4], "lemma": format!("word{i}"), "year": 1900 + i % 120})))
            .collect();
        let index =
            PayloadIndex::build(records.len() as u32, records.iter().enumerate().map(|(i, m)| (i as u32, Some(m))));
        let mb = index.memory_bytes() as f64 / 1e6;
        assert!(mb < 8.0, "{mb} MB");
        let bytes = index.to_bytes();
        assert!(bytes.len() < 6_000_000, "{}", bytes.len());
        let hits = index.evaluate(&p("pos = \"n\" and year >= 2000 and lemma != \"word0\"")).expect("ok");
        assert_eq!(hits.count(), records.iter().filter(|m| p("pos = \"n\" and year >= 2000").matches(Some(m))).count());
    }
}
