//! Where an inference request goes: the seam routing fills in (model -> InferencePool or
//! external provider). Until then, and for every request routing does not claim, the answer is
//! the destination the client dialled.

use std::net::SocketAddr;

use crate::{admission::Api, identity::Identity};

/// What routing knows when it picks an upstream.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub api: Api,
    pub model: &'a str,
    pub original_dst: SocketAddr,
    pub identity: &'a Identity,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the model `{model}` does not exist or you do not have access to it")]
    ModelNotFound { model: String },
}

/// Picks the upstream of an inference request. Runs after the request is parsed (and after
/// the processor pipeline), before admission: an unroutable request costs no tokens.
pub trait Route: Send + Sync + 'static {
    fn route(&self, request: &RouteRequest<'_>) -> Result<SocketAddr, RouteError>;
}

/// Transparent proxying: the upstream is where the client was connecting.
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginalDestination;

impl Route for OriginalDestination {
    fn route(&self, request: &RouteRequest<'_>) -> Result<SocketAddr, RouteError> {
        Ok(request.original_dst)
    }
}
