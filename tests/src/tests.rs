//! Every integration test, as modules of one binary.

mod proxy;

mod privileged {
    mod redirect;
}
