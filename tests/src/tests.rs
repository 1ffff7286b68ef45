//! Every integration test, as modules of one binary.

mod privileged {
    mod failopen;
    mod redirect;
    mod restart;
}
