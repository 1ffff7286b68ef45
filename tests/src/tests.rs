//! Every integration test, as modules of one binary.

mod privileged {
    mod redirect;
}

mod quota_cluster;
