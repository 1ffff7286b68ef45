//! Every integration test, as modules of one binary.

mod apiserver;
mod cluster;
mod crd_cel;
mod manifests;

mod privileged {
    mod config_source;
    mod redirect;
}
