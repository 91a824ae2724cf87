//! Signatures: named, typed input and output fields and an instruction.
//!
//! A signature is built in code ([`Signature::builder`]) or read from JSON
//! ([`Signature::from_json`]). Its outputs become one JSON object: the schema the
//! backends constrain decoding to ([`Signature::output_schema`]) and the shape
//! [`Signature::parse_output`] checks the model's answer against.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// Input or output values by field name.
pub type Values = Map<String, Value>;

/// Most fields on either side of a signature.
pub const MAX_FIELDS: usize = 64;
/// Most labels of an enum field.
pub const MAX_LABELS: usize = 4096;
/// Deepest nesting of a JSON schema (and of a value checked against one).
pub const MAX_SCHEMA_DEPTH: usize = 16;
/// Longest field name, bytes.
pub const MAX_NAME: usize = 64;

/// The type of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldType {
    /// Free text.
    String,
    /// A number (integer or decimal).
    Number,
    /// `true` or `false`.
    Bool,
    /// One of a fixed set of labels.
    Enum {
        /// Every label the field may take.
        labels: Vec<String>,
        /// An input field (a list of strings) that narrows the labels per call: the
        /// allowed labels are those of `labels` that the input lists, in its order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_input: Option<String>,
    },
    /// A list of values of one type.
    List {
        /// The type of each item.
        items: Box<FieldType>,
        /// Most items (a bound the constrained decoder enforces: small models repeat).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_items: Option<u32>,
    },
    /// A JSON value that fits a JSON schema (the subset in [`check_schema`]).
    Json {
        /// The schema.
        schema: Value,
    },
}

/// One field of a signature. (Unknown keys are refused by the type's own variant:
/// serde cannot combine `deny_unknown_fields` with the flattened type.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Name: `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_NAME`] bytes.
    pub name: String,
    /// What the field holds, shown to the model.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desc: String,
    /// Its type.
    #[serde(flatten)]
    pub ty: FieldType,
    /// An input that constrains the answer (an enum's `from_input`) without being shown
    /// to the model.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

impl Field {
    /// A field of a type, without a description.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Field {
        Field { name: name.into(), desc: String::new(), ty, hidden: false }
    }

    /// The same field, not shown to the model.
    #[must_use]
    pub fn hidden(mut self) -> Field {
        self.hidden = true;
        self
    }

    /// The same field with a description.
    #[must_use]
    pub fn desc(mut self, desc: impl Into<String>) -> Field {
        self.desc = desc.into();
        self
    }
}

/// Named, typed inputs and outputs and the instruction that relates them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// What the model should do. Optimizers rewrite this.
    pub instruction: String,
    /// Input fields, in prompt order.
    pub inputs: Vec<Field>,
    /// Output fields, in answer order.
    pub outputs: Vec<Field>,
}

/// Builds a [`Signature`] in code.
#[derive(Debug, Clone, Default)]
pub struct SignatureBuilder {
    instruction: String,
    inputs: Vec<Field>,
    outputs: Vec<Field>,
}

impl SignatureBuilder {
    /// Adds an input field.
    #[must_use]
    pub fn input(mut self, name: &str, ty: FieldType, desc: &str) -> Self {
        self.inputs.push(Field::new(name, ty).desc(desc));
        self
    }

    /// Adds a field as it is (inputs side).
    #[must_use]
    pub fn input_field(mut self, field: Field) -> Self {
        self.inputs.push(field);
        self
    }

    /// Adds an output field.
    #[must_use]
    pub fn output(mut self, name: &str, ty: FieldType, desc: &str) -> Self {
        self.outputs.push(Field::new(name, ty).desc(desc));
        self
    }

    /// Checks and returns the signature.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field at fault (see [`Signature::validate`]).
    pub fn build(self) -> Result<Signature> {
        let sig = Signature { instruction: self.instruction, inputs: self.inputs, outputs: self.outputs };
        sig.validate()?;
        Ok(sig)
    }
}

impl Signature {
    /// A builder with this instruction.
    pub fn builder(instruction: impl Into<String>) -> SignatureBuilder {
        SignatureBuilder { instruction: instruction.into(), ..SignatureBuilder::default() }
    }

    /// Reads a signature from its JSON form and checks it.
    ///
    /// # Errors
    /// [`Error::Invalid`] with the JSON path of a field that does not parse, or the
    /// field at fault in a signature that parses but is not valid.
    pub fn from_json(text: &str) -> Result<Signature> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let sig: Signature = serde_path_to_error::deserialize(de)
            .map_err(|e| Error::invalid(format!("signature: {}: {}", e.path(), e.inner())))?;
        sig.validate()?;
        Ok(sig)
    }

    /// Checks names (unique, identifiers), counts, labels and schemas.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the side and field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.outputs.is_empty() {
            return Err(Error::invalid("signature: at least one output field is needed"));
        }
        let mut seen = std::collections::HashSet::new();
        for (side, fields) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if fields.len() > MAX_FIELDS {
                return Err(Error::invalid(format!(
                    "signature: {side}: {} fields, at most {MAX_FIELDS}",
                    fields.len()
                )));
            }
            for (i, f) in fields.iter().enumerate() {
                let at = format!("signature: {side}[{i}] ({:?})", f.name);
                if !is_identifier(&f.name) {
                    return Err(Error::invalid(format!(
                        "{at}: a field name is a letter or '_' then letters, digits or '_', at most {MAX_NAME} bytes"
                    )));
                }
                if !seen.insert(f.name.as_str()) {
                    return Err(Error::invalid(format!("{at}: the name is used twice")));
                }
                check_type(&f.ty, 0).map_err(|e| Error::invalid(format!("{at}: {e}")))?;
            }
        }
        for (i, f) in self.outputs.iter().enumerate() {
            let ty = match &f.ty {
                FieldType::List { items, .. } => items.as_ref(),
                ty => ty,
            };
            if let FieldType::Enum { from_input: Some(src), .. } = ty {
                let ok = self.inputs.iter().any(|x| {
                    &x.name == src && matches!(&x.ty, FieldType::List { items, .. } if **items == FieldType::String)
                });
                if !ok {
                    return Err(Error::invalid(format!(
                        "signature: outputs[{i}] ({:?}): from_input names {src:?}, which is not an input list of strings",
                        f.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The input field names.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.iter().map(|f| f.name.as_str())
    }

    /// Checks a call's inputs: every input present and of its type, nothing else.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field.
    pub fn check_inputs(&self, inputs: &Values) -> Result<()> {
        for f in &self.inputs {
            let v = inputs.get(&f.name).ok_or_else(|| Error::invalid(format!("input {:?} is missing", f.name)))?;
            check_value(&f.ty, v, &f.name, None, 0).map_err(|e| Error::invalid(format!("input {e}")))?;
        }
        if let Some(extra) = inputs.keys().find(|k| !self.inputs.iter().any(|f| &f.name == *k)) {
            let names: Vec<_> = self.input_names().collect();
            return Err(Error::invalid(format!(
                "input {extra:?} is not in the signature (inputs: {})",
                names.join(", ")
            )));
        }
        Ok(())
    }

    /// The JSON schema of the answer object for this call, as JSON text with the
    /// properties in output order (models answer in schema order: reasoning first):
    /// every output required, nothing else; enums narrowed to this call's labels.
    pub fn output_schema(&self, inputs: &Values) -> String {
        let props: Vec<String> = self
            .outputs
            .iter()
            .map(|f| format!("{}:{}", Value::String(f.name.clone()), narrowed_schema(&f.ty, inputs)))
            .collect();
        let required: Vec<&str> = self.outputs.iter().map(|f| f.name.as_str()).collect();
        format!(
            r#"{{"type":"object","properties":{{{}}},"required":{},"additionalProperties":false}}"#,
            props.join(","),
            Value::from(required)
        )
    }

    /// Parses and checks a model's answer: the JSON object in `raw` (code fences and
    /// text around it are tolerated), every output present and of its type.
    ///
    /// # Errors
    /// A message naming the field and what was expected and found.
    pub fn parse_output(&self, raw: &str, inputs: &Values) -> std::result::Result<Values, String> {
        let text = extract_object(raw).ok_or("the answer holds no JSON object")?;
        let value: Value = serde_json::from_str(text).map_err(|e| format!("the answer is not valid JSON: {e}"))?;
        let Value::Object(mut obj) = value else { return Err("the answer is not a JSON object".into()) };
        let mut out = Values::new();
        for f in &self.outputs {
            let v = obj.remove(&f.name).ok_or_else(|| format!("field {:?} is missing", f.name))?;
            let v = coerce(&f.ty, v);
            check_value(&f.ty, &v, &f.name, Some(inputs), 0)?;
            out.insert(f.name.clone(), v);
        }
        Ok(out)
    }

    /// A stable digest of the signature (SHA-256 of its JSON), hex.
    pub fn digest(&self) -> String {
        crate::util::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_type(ty: &FieldType, depth: usize) -> std::result::Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("types nest deeper than {MAX_SCHEMA_DEPTH}"));
    }
    match ty {
        FieldType::Enum { labels, from_input } => {
            if (labels.is_empty() && from_input.is_none()) || labels.len() > MAX_LABELS {
                return Err(format!(
                    "an enum has 1 to {MAX_LABELS} labels (or none and `from_input`), this one {}",
                    labels.len()
                ));
            }
            if let Some(l) = labels.iter().find(|l| l.is_empty() || l.len() > 256) {
                return Err(format!("enum label {l:?}: 1 to 256 bytes"));
            }
            let mut sorted: Vec<&String> = labels.iter().collect();
            sorted.sort();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(format!("enum label {:?} appears twice", w[0]));
            }
            Ok(())
        }
        FieldType::List { items, .. } => check_type(items, depth + 1),
        FieldType::Json { schema } => check_schema(schema, depth + 1),
        FieldType::String | FieldType::Number | FieldType::Bool => Ok(()),
    }
}

/// The JSON schema subset fields may use (and every backend can constrain to):
/// `type` (object, array, string, number, integer, boolean, null), `properties`,
/// `required`, `additionalProperties: false`, `items`, `enum` of strings, `description`.
///
/// # Errors
/// What is not supported, with the JSON path.
pub fn check_schema(schema: &Value, depth: usize) -> std::result::Result<(), String> {
    check_schema_at(schema, depth, "$")
}

fn check_schema_at(schema: &Value, depth: usize, path: &str) -> std::result::Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("schema {path}: nests deeper than {MAX_SCHEMA_DEPTH}"));
    }
    let Value::Object(s) = schema else { return Err(format!("schema {path}: not an object")) };
    for key in s.keys() {
        if ![
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "description",
            "title",
            "minItems",
            "maxItems",
            "maxLength",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("schema {path}: keyword {key:?} is not supported"));
        }
    }
    if let Some(e) = s.get("enum") {
        let ok = e.as_array().is_some_and(|a| !a.is_empty() && a.len() <= MAX_LABELS && a.iter().all(Value::is_string));
        if !ok {
            return Err(format!("schema {path}.enum: a non-empty list of strings"));
        }
        return Ok(());
    }
    let ty = s.get("type").and_then(Value::as_str).ok_or_else(|| format!("schema {path}: `type` is required"))?;
    match ty {
        "object" => {
            let props = match s.get("properties") {
                Some(Value::Object(p)) => p.clone(),
                None => Map::new(),
                Some(_) => return Err(format!("schema {path}.properties: not an object")),
            };
            if props.len() > MAX_FIELDS {
                return Err(format!("schema {path}.properties: at most {MAX_FIELDS}"));
            }
            for (k, v) in &props {
                check_schema_at(v, depth + 1, &format!("{path}.properties.{k}"))?;
            }
            if let Some(r) = s.get("required") {
                let names = r.as_array().ok_or_else(|| format!("schema {path}.required: not a list"))?;
                for n in names {
                    let n = n.as_str().ok_or_else(|| format!("schema {path}.required: not a list of names"))?;
                    if !props.contains_key(n) {
                        return Err(format!("schema {path}.required: {n:?} is not a property"));
                    }
                }
            }
            match s.get("additionalProperties") {
                None | Some(Value::Bool(false)) => Ok(()),
                Some(_) => Err(format!("schema {path}.additionalProperties: only false is supported")),
            }
        }
        "array" if ["minItems", "maxItems"].iter().any(|k| s.get(*k).is_some_and(|v| !v.is_u64())) => {
            Err(format!("schema {path}: minItems and maxItems are whole numbers"))
        }
        "array" => match s.get("items") {
            Some(items) => check_schema_at(items, depth + 1, &format!("{path}.items")),
            None => Err(format!("schema {path}: an array needs `items`")),
        },
        "string" | "number" | "integer" | "boolean" | "null" => Ok(()),
        other => Err(format!("schema {path}.type: {other:?} is not supported")),
    }
}

/// The labels an enum may take on a call: its labels, narrowed to those its `from_input`
/// list names (in that list's order), or that list itself when the enum has no labels of
/// its own. Without inputs (checking inputs), every label.
pub fn allowed_labels<'a>(ty: &'a FieldType, inputs: Option<&'a Values>) -> Vec<&'a str> {
    let FieldType::Enum { labels, from_input } = ty else { return Vec::new() };
    let listed = from_input.as_ref().and_then(|src| inputs?.get(src)).and_then(Value::as_array);
    let mut out: Vec<&str> = match listed {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .filter(|l| labels.is_empty() || labels.iter().any(|x| x == l))
            .take(MAX_LABELS)
            .collect(),
        None => labels.iter().map(String::as_str).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    out.retain(|l| seen.insert(*l));
    if out.is_empty() && listed.is_some() {
        return labels.iter().map(String::as_str).collect();
    }
    out
}

/// The schema of a field type on a call (enums narrowed by the call's inputs).
fn narrowed_schema(ty: &FieldType, inputs: &Values) -> Value {
    match ty {
        FieldType::Enum { .. } => json!({ "type": "string", "enum": allowed_labels(ty, Some(inputs)) }),
        FieldType::List { items, max_items } => list_schema(narrowed_schema(items, inputs), *max_items),
        _ => type_schema(ty),
    }
}

fn list_schema(items: Value, max_items: Option<u32>) -> Value {
    match max_items {
        Some(m) => json!({ "type": "array", "items": items, "maxItems": m }),
        None => json!({ "type": "array", "items": items }),
    }
}

/// The JSON schema of a field type.
pub fn type_schema(ty: &FieldType) -> Value {
    match ty {
        FieldType::String => json!({ "type": "string" }),
        FieldType::Number => json!({ "type": "number" }),
        FieldType::Bool => json!({ "type": "boolean" }),
        FieldType::Enum { labels, .. } => json!({ "type": "string", "enum": labels }),
        FieldType::List { items, max_items } => list_schema(type_schema(items), *max_items),
        FieldType::Json { schema } => schema.clone(),
    }
}

/// Small repairs that lose nothing: a number given as a numeric string, a bool as
/// "true"/"false".
fn coerce(ty: &FieldType, v: Value) -> Value {
    match (ty, &v) {
        (FieldType::Number, Value::String(s)) => {
            s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(v, Value::Number)
        }
        (FieldType::Bool, Value::String(s)) => match s.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v,
        },
        _ => v,
    }
}

fn check_value(
    ty: &FieldType,
    v: &Value,
    at: &str,
    inputs: Option<&Values>,
    depth: usize,
) -> std::result::Result<(), String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    match ty {
        FieldType::String if v.is_string() => Ok(()),
        FieldType::Number if v.is_number() => Ok(()),
        FieldType::Bool if v.is_boolean() => Ok(()),
        FieldType::Enum { .. } => {
            let s = v.as_str().ok_or_else(|| format!("field {at:?}: expected a label, found {}", kind(v)))?;
            let allowed = allowed_labels(ty, inputs);
            if allowed.contains(&s) {
                Ok(())
            } else {
                let shown = if allowed.len() > 30 { format!("{} labels", allowed.len()) } else { allowed.join(", ") };
                Err(format!("field {at:?}: {s:?} is not one of the allowed labels ({shown})"))
            }
        }
        FieldType::List { items, max_items } => {
            let a = v.as_array().ok_or_else(|| format!("field {at:?}: expected a list, found {}", kind(v)))?;
            if let Some(m) = max_items.filter(|m| a.len() > *m as usize) {
                return Err(format!("field {at:?}: {} items, at most {m}", a.len()));
            }
            a.iter().enumerate().try_for_each(|(i, x)| check_value(items, x, &format!("{at}[{i}]"), inputs, depth + 1))
        }
        FieldType::Json { schema } => check_json(schema, v, at, depth),
        FieldType::String => Err(format!("field {at:?}: expected a string, found {}", kind(v))),
        FieldType::Number => Err(format!("field {at:?}: expected a number, found {}", kind(v))),
        FieldType::Bool => Err(format!("field {at:?}: expected true or false, found {}", kind(v))),
    }
}

/// Checks a value against a schema of the [`check_schema`] subset.
///
/// # Errors
/// The path of the first value that does not fit, and why.
pub fn check_json(schema: &Value, v: &Value, at: &str, depth: usize) -> std::result::Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("{at}: nests deeper than {MAX_SCHEMA_DEPTH}"));
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return if e.contains(v) {
            Ok(())
        } else {
            Err(format!("{at}: {v} is not one of {}", Value::Array(e.clone())))
        };
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => {
            let Value::Object(o) = v else { return Err(format!("{at}: expected an object")) };
            let empty = Map::new();
            let props = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
            if let Some(req) = schema.get("required").and_then(Value::as_array)
                && let Some(missing) = req.iter().filter_map(Value::as_str).find(|k| !o.contains_key(*k))
            {
                return Err(format!("{at}.{missing}: missing"));
            }
            for (k, x) in o {
                match props.get(k) {
                    Some(s) => check_json(s, x, &format!("{at}.{k}"), depth + 1)?,
                    None => return Err(format!("{at}.{k}: not in the schema")),
                }
            }
            true
        }
        "array" => {
            let Value::Array(a) = v else { return Err(format!("{at}: expected a list")) };
            let bound = |k: &str| schema.get(k).and_then(Value::as_u64).and_then(|x| usize::try_from(x).ok());
            if bound("maxItems").is_some_and(|m| a.len() > m) || bound("minItems").is_some_and(|m| a.len() < m) {
                return Err(format!("{at}: {} items, outside minItems/maxItems", a.len()));
            }
            let items = schema.get("items").unwrap_or(&Value::Null);
            for (i, x) in a.iter().enumerate() {
                check_json(items, x, &format!("{at}[{i}]"), depth + 1)?;
            }
            true
        }
        "string" => v.as_str().is_some_and(|x| {
            schema.get("maxLength").and_then(Value::as_u64).is_none_or(|m| x.chars().count() as u64 <= m)
        }),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("{at}: expected {ty}, found {v}")) }
}

/// The JSON object in a model's answer: the text from the first `{` to its matching `}`.
pub fn extract_object(raw: &str) -> Option<&str> {
    let start = raw.find('{')?;
    let bytes = raw.as_bytes();
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(start) {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return raw.get(start..=i);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supersense() -> Signature {
        Signature::builder("Classify the word sense.")
            .input("lemma", FieldType::String, "")
            .input("candidates", FieldType::List { items: Box::new(FieldType::String), max_items: None }, "")
            .output(
                "label",
                FieldType::Enum {
                    labels: vec!["noun.animal".into(), "noun.plant".into(), "verb.motion".into()],
                    from_input: Some("candidates".into()),
                },
                "",
            )
            .output("confidence", FieldType::Number, "")
            .build()
            .unwrap()
    }

    #[test]
    fn json_round_trip() {
        let s = supersense();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(Signature::from_json(&text).unwrap(), s);
    }

    #[test]
    fn bad_signatures_say_where() {
        let e = Signature::from_json(
            r#"{"instruction":"x","inputs":[],"outputs":[{"name":"a","type":"enum","labels":[]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outputs[0]") && e.contains("1 to"), "{e}");
        let e = Signature::from_json(r#"{"instruction":"x","inputs":[],"outputs":[{"name":"a","type":"strin"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outputs[0]"), "{e}");
        let e = Signature::from_json(
            r#"{"instruction":"x","inputs":[{"name":"a","type":"string"}],"outputs":[{"name":"a","type":"string"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn outputs_are_checked_and_narrowed() {
        let s = supersense();
        let mut inputs = Values::new();
        inputs.insert("lemma".into(), json!("dog"));
        inputs.insert("candidates".into(), json!(["noun.animal", "noun.plant"]));
        s.check_inputs(&inputs).unwrap();
        let ok = s.parse_output("Sure! ```json\n{\"label\": \"noun.animal\", \"confidence\": \"0.9\"}\n```", &inputs);
        assert_eq!(ok.unwrap()["confidence"], json!(0.9));
        let e = s.parse_output(r#"{"label": "verb.motion", "confidence": 1}"#, &inputs).unwrap_err();
        assert!(e.contains("label") && e.contains("not one of"), "{e}");
        let e = s.parse_output(r#"{"label": "noun.animal"}"#, &inputs).unwrap_err();
        assert!(e.contains("confidence") && e.contains("missing"), "{e}");
        let schema: Value = serde_json::from_str(&s.output_schema(&inputs)).unwrap();
        assert_eq!(schema["properties"]["label"]["enum"], json!(["noun.animal", "noun.plant"]));
        check_schema(&schema, 0).unwrap();
        assert!(
            s.output_schema(&inputs).find("\"label\"").unwrap()
                < s.output_schema(&inputs).find("\"confidence\"").unwrap()
        );
    }

    #[test]
    fn extract_handles_braces_in_strings() {
        assert_eq!(extract_object(r#"x {"a": "}{", "b": {"c": 1}} y"#), Some(r#"{"a": "}{", "b": {"c": 1}}"#));
        assert_eq!(extract_object("no object"), None);
        assert_eq!(extract_object("{unclosed"), None);
    }
}
