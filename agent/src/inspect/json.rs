//! Strict JSON for request bodies: one pass that rejects what backends would read differently.
//!
//! `serde_json::Value` keeps the *last* of two equal keys (as Python backends do) while a
//! first-wins reader would meter or filter another request, so a duplicate key at any depth is
//! an error here; so is nesting past a bound (the stack is ours to protect) and anything that is
//! not one JSON object. The top level keeps its order, and a top-level value's byte span is found
//! on demand ([`Document::span`]), so a caller can splice the body without re-serialising it.

use std::{borrow::Cow, cell::Cell, collections::HashSet, fmt, ops::Range};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, value::RawValue};

/// The top-level object of a body: keys in order, each with its parsed value.
#[derive(Debug)]
pub struct Document<'a> {
    pub fields: Vec<Field>,
    /// Byte offset of the closing `}` of the top-level object.
    pub end: usize,
    text: &'a str,
}

#[derive(Debug)]
pub struct Field {
    pub key: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("request body is not valid UTF-8")]
    Utf8,
    #[error("request body is not valid JSON: {message}")]
    Syntax { message: String },
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("duplicate key {key:?} in request body")]
    DuplicateKey { key: String },
    #[error("request body nests deeper than {max} levels")]
    TooDeep { max: usize },
}

/// A rule the parser broke, kept aside because serde's errors are strings.
#[derive(Clone, Debug)]
enum Violation {
    Duplicate(String),
    Depth,
}

/// Parses `body` as exactly one JSON object, strictly, in one pass. `max_depth` counts the
/// top-level object as 1.
pub fn parse(body: &[u8], max_depth: usize) -> Result<Document<'_>, Error> {
    let text = std::str::from_utf8(body).map_err(|_| Error::Utf8)?;
    let violation = Cell::new(None);
    let top = Top {
        max_depth,
        violation: &violation,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de
        .deserialize_map(top)
        .and_then(|fields| de.end().map(|()| fields))
        .map_err(|e| classify(e, violation.take(), max_depth))?;
    let end = text.trim_end().len().saturating_sub(1);
    Ok(Document { fields, end, text })
}

// === impl Document ===

impl Document<'_> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|f| f.key == key).map(|f| &f.value)
    }

    /// Where the value of the top-level `key` is in the body. A second pass over the body
    /// (serde_json gives no offsets while it builds values), so it is made only when a caller
    /// splices one: a stream whose `stream_options` must be rewritten.
    pub fn span(&self, key: &str) -> Option<Range<usize>> {
        let mut de = serde_json::Deserializer::from_str(self.text);
        let raw = de.deserialize_map(Spans).ok()?;
        let base = self.text.as_ptr() as usize;
        raw.into_iter().find(|(k, _)| k.0 == key).map(|(_, value)| {
            let start = value.get().as_ptr() as usize - base;
            start..start + value.get().len()
        })
    }
}

fn classify(e: serde_json::Error, violation: Option<Violation>, max_depth: usize) -> Error {
    match violation {
        Some(Violation::Duplicate(key)) => Error::DuplicateKey { key },
        Some(Violation::Depth) => Error::TooDeep { max: max_depth },
        None if e.to_string().starts_with("recursion limit exceeded") => {
            Error::TooDeep { max: max_depth }
        }
        None if e.to_string().starts_with("invalid type") => Error::NotAnObject,
        None => Error::Syntax {
            message: e.to_string(),
        },
    }
}

/// A key as it appears in an error: bounded, so a 1 MB key does not come back in a response.
fn shown(key: &str) -> String {
    const MAX: usize = 64;
    match key.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &key[..i]),
        None => key.to_owned(),
    }
}

/// Past this many top-level keys, duplicates are found with a set rather than a scan.
const LINEAR_SCAN_MAX: usize = 32;

/// A key borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

/// The top-level object, each value built strictly; keys in order.
struct Top<'v> {
    max_depth: usize,
    violation: &'v Cell<Option<Violation>>,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Vec<Field>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: Vec<Field> = Vec::with_capacity(16);
        let mut seen: HashSet<String> = HashSet::new();
        let value = Strict {
            depth: 2,
            max_depth: self.max_depth,
            violation: self.violation,
        };
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let duplicate = if fields.len() < LINEAR_SCAN_MAX {
                fields.iter().any(|f| f.key == key)
            } else {
                if seen.is_empty() {
                    seen.extend(fields.iter().map(|f| f.key.clone()));
                }
                !seen.insert(key.clone().into_owned())
            };
            if duplicate {
                self.violation.set(Some(Violation::Duplicate(shown(&key))));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(value)?;
            fields.push(Field {
                key: key.into_owned(),
                value,
            });
        }
        Ok(fields)
    }
}

/// The top-level object's values as raw text (the body is already known to be strict JSON).
struct Spans;

impl<'de> Visitor<'de> for Spans {
    type Value = Vec<(Key<'de>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some(entry) = map.next_entry()? {
            fields.push(entry);
        }
        Ok(fields)
    }
}

/// Builds a `Value`, refusing duplicate keys and depth past `max_depth`.
#[derive(Clone, Copy)]
struct Strict<'v> {
    depth: usize,
    max_depth: usize,
    violation: &'v Cell<Option<Violation>>,
}

impl Strict<'_> {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth > self.max_depth {
            self.violation.set(Some(Violation::Depth));
            return Err(E::custom("too deep"));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.violation.set(Some(Violation::Duplicate(shown(&key))));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(inner)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}
