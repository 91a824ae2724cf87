//! Metrics: a score in `[0, 1]` for a prediction against a labelled example, with the
//! textual feedback GEPA's reflection reads.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::module::{Example, Prediction};
use crate::retrieve::truncate;

/// How a prediction is scored against an example's gold outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "snake_case")]
pub enum Metric {
    /// 1 when the output field equals the gold one, else 0. Text is compared ignoring
    /// case and surrounding or repeated whitespace; numbers by value; anything else as JSON.
    ExactMatch {
        /// The output field compared.
        field: String,
    },
    /// SQuAD-style token F1 of a text field against the gold text (lower case,
    /// punctuation and the articles a/an/the dropped).
    TokenF1 {
        /// The output field compared.
        field: String,
    },
    /// Citations (a list of passage ids): with gold ids in the example, the F1 of the
    /// cited ids against them; without, the share of cited ids that were retrieved (0
    /// when nothing is cited).
    Citations {
        /// The output field holding the cited ids.
        field: String,
    },
}

/// A score with the words that explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// In `[0, 1]`; 1 is perfect.
    pub score: f64,
    /// What was right or wrong, for a reader (GEPA's reflection model).
    pub text: String,
}

/// Longest value quoted in feedback, bytes.
const MAX_SHOWN: usize = 400;

fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    truncate(s, MAX_SHOWN)
}

fn norm_text(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => norm_text(x) == norm_text(y),
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        _ => a == b,
    }
}

/// Lower case, punctuation to spaces, articles dropped.
fn tokens(s: &str) -> Vec<String> {
    let cleaned: String =
        s.chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect::<String>().to_lowercase();
    cleaned.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).map(str::to_owned).collect()
}

/// F1 of two multisets of words; the words missing and extra in the prediction.
fn token_f1(pred: &[String], gold: &[String]) -> (f64, Vec<String>, Vec<String>) {
    if pred.is_empty() && gold.is_empty() {
        return (1.0, Vec::new(), Vec::new());
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for g in gold {
        *counts.entry(g).or_default() += 1;
    }
    let mut common = 0usize;
    let mut extra = Vec::new();
    for p in pred {
        match counts.get_mut(p.as_str()) {
            Some(c) if *c > 0 => {
                *c -= 1;
                common += 1;
            }
            _ => extra.push(p.clone()),
        }
    }
    let mut missing = Vec::new();
    for g in gold {
        if let Some(c) = counts.get_mut(g.as_str())
            && *c > 0
        {
            *c -= 1;
            missing.push(g.clone());
        }
    }
    if common == 0 {
        return (0.0, missing, extra);
    }
    let (c, p, g) = (common as f64, pred.len() as f64, gold.len() as f64);
    let (precision, recall) = (c / p, c / g);
    (2.0 * precision * recall / (precision + recall), missing, extra)
}

fn ids(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array().map(|a| a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect())
}

impl Metric {
    /// The output field the metric reads.
    pub fn field(&self) -> &str {
        match self {
            Metric::ExactMatch { field } | Metric::TokenF1 { field } | Metric::Citations { field } => field,
        }
    }

    /// Checks that every example has what the metric needs (gold outputs).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first example without its gold field.
    pub fn check(&self, what: &str, examples: &[Example]) -> Result<()> {
        if matches!(self, Metric::Citations { .. }) {
            return Ok(());
        }
        let f = self.field();
        match examples.iter().position(|e| !e.outputs.contains_key(f)) {
            Some(i) => Err(Error::invalid(format!("{what}[{i}]: no gold output {f:?} for the metric"))),
            None => Ok(()),
        }
    }

    /// Scores a prediction against an example.
    pub fn score(&self, example: &Example, pred: &Prediction) -> Feedback {
        let f = self.field();
        match self {
            Metric::ExactMatch { .. } => {
                let (Some(p), Some(g)) = (pred.outputs.get(f), example.outputs.get(f)) else {
                    return missing(f, pred, example);
                };
                if same(p, g) {
                    Feedback { score: 1.0, text: format!("correct: {}", shown(p)) }
                } else {
                    Feedback { score: 0.0, text: format!("predicted {}; expected {}", shown(p), shown(g)) }
                }
            }
            Metric::TokenF1 { .. } => {
                let (Some(p), Some(g)) = (pred.outputs.get(f), example.outputs.get(f)) else {
                    return missing(f, pred, example);
                };
                let (ps, gs) = (shown(p), shown(g));
                let (score, miss, extra) = token_f1(&tokens(&ps), &tokens(&gs));
                let mut text = format!("token F1 {score:.2}: predicted {ps:?}; expected {gs:?}");
                if !miss.is_empty() {
                    text.push_str(&format!("; missing words: {}", miss.join(" ")));
                }
                if !extra.is_empty() {
                    text.push_str(&format!("; extra words: {}", extra.join(" ")));
                }
                Feedback { score, text }
            }
            Metric::Citations { .. } => {
                let cited = ids(pred.outputs.get(f)).unwrap_or_default();
                let retrieved: BTreeSet<&str> = pred.retrieved.iter().map(|p| p.id.as_str()).collect();
                let unknown: Vec<&str> = cited.iter().map(String::as_str).filter(|c| !retrieved.contains(c)).collect();
                let mut text = format!("cited [{}]", cited.join(", "));
                if !unknown.is_empty() {
                    text.push_str(&format!("; not among the retrieved passages: {}", unknown.join(", ")));
                }
                let score = match ids(example.outputs.get(f)) {
                    Some(gold) => {
                        let (score, miss, extra) = token_f1(&dedup(&cited), &dedup(&gold));
                        if !miss.is_empty() {
                            text.push_str(&format!("; should also cite: {}", miss.join(", ")));
                        }
                        if !extra.is_empty() {
                            text.push_str(&format!("; should not cite: {}", extra.join(", ")));
                        }
                        score
                    }
                    None if cited.is_empty() => {
                        text.push_str("; no citation: cite the passages the answer rests on");
                        0.0
                    }
                    None => (cited.len() - unknown.len()) as f64 / cited.len() as f64,
                };
                Feedback { score, text }
            }
        }
    }
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    v.iter().filter(|x| seen.insert(x.as_str())).cloned().collect()
}

fn missing(f: &str, pred: &Prediction, example: &Example) -> Feedback {
    let text = match (pred.outputs.get(f), example.outputs.get(f)) {
        (None, Some(g)) => format!("the output has no field {f:?}; expected {}", shown(g)),
        _ => format!("the example has no gold {f:?} to compare with"),
    };
    Feedback { score: 0.0, text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ex(field: &str, gold: Value) -> Example {
        Example { inputs: Default::default(), outputs: [(field.to_owned(), gold)].into_iter().collect() }
    }

    fn pred(field: &str, v: Value) -> Prediction {
        Prediction { outputs: [(field.to_owned(), v)].into_iter().collect(), ..Prediction::default() }
    }

    #[test]
    fn exact_match_says_what_was_expected() {
        let m = Metric::ExactMatch { field: "label".into() };
        let f = m.score(&ex("label", json!("noun.animal")), &pred("label", json!("noun.artifact")));
        assert_eq!(f.score, 0.0);
        assert_eq!(f.text, "predicted noun.artifact; expected noun.animal");
        assert_eq!(m.score(&ex("label", json!("Paris ")), &pred("label", json!("paris"))).score, 1.0);
        assert_eq!(m.score(&ex("n", json!(1)), &pred("label", json!(1.0))).score, 0.0);
        let m = Metric::ExactMatch { field: "n".into() };
        assert_eq!(m.score(&ex("n", json!(1)), &pred("n", json!(1.0))).score, 1.0);
    }

    #[test]
    fn token_f1_is_squad_like() {
        let m = Metric::TokenF1 { field: "a".into() };
        let f = m.score(&ex("a", json!("The Eiffel tower")), &pred("a", json!("eiffel tower, Paris")));
        assert!((f.score - 0.8).abs() < 1e-9, "{f:?}");
        assert!(f.text.contains("extra words: paris"), "{}", f.text);
        assert_eq!(m.score(&ex("a", json!("x")), &pred("a", json!("y"))).score, 0.0);
    }

    #[test]
    fn citations_validity_and_f1() {
        let m = Metric::Citations { field: "citations".into() };
        let mut p = pred("citations", json!(["d1", "d9"]));
        p.retrieved = vec![crate::retrieve::Passage { id: "d1".into(), text: String::new(), score: 1.0 }];
        let f = m.score(&Example { inputs: Default::default(), outputs: Default::default() }, &p);
        assert_eq!(f.score, 0.5);
        assert!(f.text.contains("d9"), "{}", f.text);
        let f = m.score(&ex("citations", json!(["d1"])), &p);
        assert!((f.score - 2.0 / 3.0).abs() < 1e-9);
    }
}
