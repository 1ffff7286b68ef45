//! `ExternalProvider`: an inference API outside the cluster that sluice routes models to.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{Invalid, SecretKeyRef, Validator},
    status::NodeStatus,
};

/// An external inference endpoint, its API shape and the credentials sluice injects.
/// Cluster-scoped.
#[expect(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats `type_`, which the lint mistakes for a duplicate"
)]
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ExternalProvider",
    plural = "externalproviders",
    shortname = "xp",
    category = "sluice",
    status = "ExternalProviderStatus",
    doc = "ExternalProvider is an inference API outside the cluster (OpenAI, Anthropic, Azure OpenAI): where it is, how to authenticate, and which models it serves. Providers serving the same model are tried in priority order.",
    printcolumn(name = "Schema", type_ = "string", json_path = ".spec.schema"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ExternalProviderSpec {
    /// Base URL, `https://host[:port][/path]`. `http://` is accepted for in-cluster or
    /// loopback test servers only; credentials are never sent over it to other hosts.
    #[schemars(
        length(min = 1, max = 2048),
        extend("x-kubernetes-validations" = [{
            "rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
            "message": "must be an absolute http(s) URL with a host"
        }])
    )]
    pub endpoint: String,
    /// The API the endpoint speaks: OpenAI, Anthropic or AzureOpenAI.
    pub schema: ApiSchema,
    /// The credential sluice adds to each request. Absent: requests are sent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// Region label (e.g. `us-east-1`), used to prefer nearby providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    /// Failover order among providers serving the same model: lower first (default 0).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Models (the request's `model` field) this provider serves.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 253)))]
    pub models: Vec<String>,
}

/// See `ExternalProvider.spec.schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ApiSchema {
    OpenAI,
    Anthropic,
    AzureOpenAI,
}

/// Where the credential comes from and how it is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// The Secret key holding the credential.
    pub secret_ref: SecretKeyRef,
    /// The request header that carries it (default `Authorization`; Anthropic uses
    /// `x-api-key`, Azure `api-key`).
    #[serde(default = "default_header")]
    #[schemars(length(min = 1, max = 256), regex(pattern = "^[A-Za-z0-9-]+$"))]
    pub header: String,
    /// Prefix before the credential in the header value (default `Bearer`); empty sends the
    /// bare credential.
    #[serde(default = "default_scheme")]
    #[schemars(length(max = 64))]
    pub scheme: String,
}

/// Per-node acceptance (including whether the credential Secret resolved).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalProviderStatus {
    /// One entry per node (server-side apply, field manager `sluice-agent/<node>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

// === impl ExternalProviderSpec ===

impl ExternalProviderSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Validator::default();
        if let Err(e) = check_endpoint(&self.endpoint) {
            v.error("spec.endpoint", format!("{:?}: {e}", self.endpoint));
        }
        v.check(
            !self.models.is_empty(),
            "spec.models",
            "list at least one model",
        );
        for (i, m) in self.models.iter().enumerate() {
            v.check(
                !m.is_empty(),
                format!("spec.models[{i}]"),
                "must not be empty",
            );
        }
        v.check(
            (0..=1000).contains(&self.priority),
            "spec.priority",
            "must be between 0 and 1000",
        );
        if let Some(c) = &self.credentials {
            v.check(
                !c.header.is_empty()
                    && c.header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "spec.credentials.header",
                "must be a header name (letters, digits, -)",
            );
        }
        v.finish()
    }
}

/// Accepts `http(s)://host[:port][/path]` without userinfo, query or fragment.
fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let uri: http::Uri = endpoint.parse().map_err(|_| "not a URL")?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err("must start with https:// (or http://)"),
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials in the URL; use credentials.secretRef");
    }
    if authority.host().is_empty() {
        return Err("has no host");
    }
    if uri.query().is_some() {
        return Err("must not have a query string");
    }
    Ok(())
}

fn default_header() -> String {
    "Authorization".to_owned()
}

fn default_scheme() -> String {
    "Bearer".to_owned()
}
