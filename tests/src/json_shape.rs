//! JSON shapes, for comparing two servers' answers to the same request without comparing the
//! values that differ by nature (ids, timestamps, tokens, accessors, uuids, ciphertext).
//!
//! A shape maps each JSON pointer in a document to the type found there (`null`, `bool`,
//! `number`, `string`, `array`, `object`). Every element of an array is folded into one
//! pointer ending in `/*`, whose type lists each type the elements have (`number|string`), so
//! lists of different lengths have the same shape. Objects keep their keys: a key set that
//! differs is a difference.
//!
//! Servers that share storage (a replication primary and its secondary) see each other's
//! objects; tests give each server a namespace, a string in the names of what they create,
//! and [`Shape::of`] writes a key holding the server's own namespace as `{ns}` and leaves out
//! keys holding another's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A document's pointers and the types found at each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape(pub BTreeMap<String, String>);

/// Which namespace names keys of whose objects: see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Namespaces<'a> {
    /// This server's namespace, written `{ns}` in keys.
    pub own: &'a str,
    /// Other servers' namespaces: keys holding one are left out.
    pub foreign: &'a [&'a str],
}

impl Shape {
    /// The shape of `value`, with object keys normalised by `namespaces`.
    pub fn of(value: &Value, namespaces: Namespaces<'_>) -> Self {
        let mut types: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
        collect(value, String::new(), namespaces, &mut types);
        Self(
            types
                .into_iter()
                .map(|(pointer, set)| (pointer, set.into_iter().collect::<Vec<_>>().join("|")))
                .collect(),
        )
    }

    /// The type at `pointer`, if the document has it.
    pub fn get(&self, pointer: &str) -> Option<&str> {
        self.0.get(pointer).map(String::as_str)
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn collect(
    value: &Value,
    pointer: String,
    namespaces: Namespaces<'_>,
    types: &mut BTreeMap<String, BTreeSet<&'static str>>,
) {
    types
        .entry(pointer.clone())
        .or_default()
        .insert(type_name(value));
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if namespaces
                    .foreign
                    .iter()
                    .any(|ns| !ns.is_empty() && key.contains(ns))
                {
                    continue;
                }
                let key = if namespaces.own.is_empty() {
                    key.clone()
                } else {
                    key.replace(namespaces.own, "{ns}")
                };
                // JSON pointer escapes (RFC 6901).
                let key = key.replace('~', "~0").replace('/', "~1");
                collect(child, format!("{pointer}/{key}"), namespaces, types);
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, format!("{pointer}/*"), namespaces, types);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape(value: Value) -> Vec<(String, String)> {
        Shape::of(&value, Namespaces::default())
            .0
            .into_iter()
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn values_are_reduced_to_their_types_at_each_pointer() {
        let a = json!({ "data": { "id": "x-1", "ttl": 60, "ok": true, "meta": null } });
        let b = json!({ "data": { "id": "y-2", "ttl": 7, "ok": false, "meta": null } });
        assert_eq!(shape(a.clone()), shape(b));
        assert_eq!(
            shape(a),
            pairs(&[
                ("", "object"),
                ("/data", "object"),
                ("/data/id", "string"),
                ("/data/meta", "null"),
                ("/data/ok", "bool"),
                ("/data/ttl", "number"),
            ])
        );
    }

    #[test]
    fn arrays_of_any_length_fold_into_one_element_shape() {
        assert_eq!(
            shape(json!({ "k": ["a"] })),
            shape(json!({ "k": ["b", "c"] }))
        );
        assert_eq!(
            shape(json!([1, "a", { "x": 1 }, { "y": 2 }])),
            pairs(&[
                ("", "array"),
                ("/*", "number|object|string"),
                ("/*/x", "number"),
                ("/*/y", "number"),
            ])
        );
        // An empty list has no element shape: it differs from a list with elements.
        assert_ne!(shape(json!({ "k": [] })), shape(json!({ "k": ["a"] })));
    }

    #[test]
    fn keys_are_escaped_and_namespaced() {
        let value = json!({ "nsa-kv/": { "a~b": 1 }, "nsb-kv/": 2, "secret/": 3 });
        let foreign = ["nsb-"];
        let namespaces = Namespaces {
            own: "nsa-",
            foreign: &foreign,
        };
        let got: Vec<_> = Shape::of(&value, namespaces).0.into_iter().collect();
        assert_eq!(
            got,
            pairs(&[
                ("", "object"),
                ("/secret~1", "number"),
                ("/{ns}kv~1", "object"),
                ("/{ns}kv~1/a~0b", "number"),
            ])
        );
    }
}
