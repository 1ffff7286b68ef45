//! Status reporting.
