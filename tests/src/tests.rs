//! Every integration test, as modules of one binary.

mod apiserver;

mod privileged {
    mod redirect;
}
