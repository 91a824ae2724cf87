//! Filter expressions (the text syntax and the JSON syntax, both straight from API
//! requests): parsing never panics, a parsed filter survives a JSON round trip (and a
//! text one a round trip through `Display`), and the payload index (bitsets, what search
//! uses) agrees with `Filter::matches` (the definition) on every record; payload index
//! bytes (a section of the `.idx` file) decode without panicking, re-encode to the same
//! bytes, and evaluate filters on the fields they hold.
#![no_main]
use kernelize_index::filter::{Filter, PayloadIndex};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

fn records() -> &'static [Option<Map<String, Value>>] {
    static R: OnceLock<Vec<Option<Map<String, Value>>>> = OnceLock::new();
    R.get_or_init(|| {
        let objs = [
            json!({"a": 1, "b": "x", "c": true, "n": 2.5}),
            json!({"a": -3, "b": "y", "c": false, "n": [1, 2, 3]}),
            json!({"a": 1.0, "b": ["x", "z"], "s": {"t": 4, "u": "v"}}),
            json!({"a": null, "b": "", "n": 1e300, "s": {"t": [5, "w"]}}),
            json!({"a": "1", "c": "true", "n": -0.0}),
            json!({}),
            json!({"a": 9007199254740993u64, "b": "ünï", "s": [{"t": 1}, {"t": 2}]}),
        ];
        let mut v: Vec<_> = objs.iter().map(|o| o.as_object().cloned()).collect();
        v.push(None);
        v
    })
}

/// Whether two numbers are equal or neighbours. Numbers are read with serde_json, whose
/// default (no `float_roundtrip` feature) reading of long or large literals can land one
/// unit in the last place off, so printing a number and reading it back can move it by one.
fn near(a: f64, b: f64) -> bool {
    a == b || (a.is_finite() && b.is_finite() && a.to_bits().abs_diff(b.to_bits()) <= 1)
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(x, y)| near(x, y)),
        _ => a == b,
    }
}

fn same_bound(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => near(x, y),
        _ => a.is_none() && b.is_none(),
    }
}

/// `a == b`, but numbers may differ by one unit in the last place (see [`near`]).
fn same(a: &Filter, b: &Filter) -> bool {
    let all = |x: &[Filter], y: &[Filter]| x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y));
    match (a, b) {
        (Filter::Eq(p, v), Filter::Eq(q, w)) | (Filter::Ne(p, v), Filter::Ne(q, w)) => p == q && same_value(v, w),
        (Filter::In(p, v), Filter::In(q, w)) => {
            p == q && v.len() == w.len() && v.iter().zip(w).all(|(v, w)| same_value(v, w))
        }
        (
            Filter::Range { path: p, gt: a1, gte: a2, lt: a3, lte: a4 },
            Filter::Range { path: q, gt: b1, gte: b2, lt: b3, lte: b4 },
        ) => p == q && [(a1, b1), (a2, b2), (a3, b3), (a4, b4)].iter().all(|(x, y)| same_bound(**x, **y)),
        (Filter::And(x), Filter::And(y)) | (Filter::Or(x), Filter::Or(y)) => all(x, y),
        (Filter::Not(x), Filter::Not(y)) => same(x, y),
        _ => false,
    }
}

fn check(f: &Filter) {
    let _ = f.fields();
    if f.validate().is_err() {
        return;
    }
    let back = Filter::from_json(&f.to_json()).expect("a valid filter's JSON parses");
    assert_eq!(&back, f, "JSON round trip");
    let recs = records();
    let index = PayloadIndex::build(recs.len() as u32, recs.iter().enumerate().map(|(i, m)| (i as u32, m.as_ref())));
    let bits = index.evaluate(f).expect("a valid filter evaluates");
    for (i, m) in recs.iter().enumerate() {
        assert_eq!(bits.get(i as u32), f.matches(m.as_ref()), "record {i}: index and definition disagree on {f:?}");
    }
    let decoded = PayloadIndex::from_bytes(&index.to_bytes()).expect("own bytes decode");
    assert_eq!(decoded.evaluate(f).expect("evaluates").count(), bits.count(), "after a byte round trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(f) = Filter::parse(text)
            {
                let printed = f.to_string();
                let back = Filter::parse(&printed).expect("printed filters parse");
                assert!(same(&back, &f), "text round trip through {printed:?}: {back:?} != {f:?}");
                check(&f);
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<Value>(rest)
                && let Ok(f) = Filter::from_json(&v)
            {
                check(&f);
            }
        }
        _ => {
            let Ok(index) = PayloadIndex::from_bytes(rest) else { return };
            assert_eq!(index.to_bytes(), rest, "accepted bytes re-encode unchanged");
            let _ = index.memory_bytes();
            let paths: Vec<String> = index.known_fields().map(str::to_owned).chain(["a".to_owned()]).collect();
            // A metadata key may be "" (so may a path here); no filter can name it.
            for path in paths.into_iter().filter(|p| !p.is_empty()) {
                let filters = [
                    Filter::Eq(path.clone(), json!(1)),
                    Filter::Ne(path.clone(), json!("x")),
                    Filter::In(path.clone(), vec![json!(null), json!(true), json!(false), json!(""), json!(-0.0)]),
                    Filter::Range { path: path.clone(), gt: Some(-1.0), gte: None, lt: None, lte: Some(1e300) },
                    Filter::Not(Box::new(Filter::Range { path, gt: None, gte: Some(0.0), lt: Some(0.5), lte: None })),
                ];
                for f in filters {
                    let bits = index.evaluate(&f).expect("a valid filter evaluates");
                    assert_eq!(bits.len(), index.len() as usize);
                }
            }
        }
    }
});
