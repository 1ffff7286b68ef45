//! Hand-written schema fragments for what schemars cannot express in a structural schema.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form object the API server keeps as is (`x-kubernetes-preserve-unknown-fields`).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
