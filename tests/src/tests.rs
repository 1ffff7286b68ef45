//! Every integration test, as modules of one binary.

mod apiserver;
mod bench;
mod cluster;
mod crd_cel;
mod manifests;
mod measure;
pub(crate) mod proxy;
mod quota_cluster;

mod privileged {
    mod accel;
    mod apply;
    mod config_source;
    mod e2e;
    mod e2e_faults;
    mod e2e_proxy;
    mod failopen;
    mod inspect;
    mod quota;
    mod redirect;
    mod restart;
    mod rules;
    mod startup;
}
