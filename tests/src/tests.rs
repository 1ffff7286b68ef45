//! Every integration test, as modules of one binary.

mod measure;
pub(crate) mod proxy;

mod privileged {
    mod redirect;
}
