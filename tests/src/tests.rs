//! Every integration test, as modules of one binary.

mod bench;
mod measure;
pub(crate) mod proxy;

mod privileged {
    mod apply;
    mod e2e;
    mod failopen;
    mod inspect;
    mod redirect;
    mod restart;
    mod rules;
    mod startup;
}
