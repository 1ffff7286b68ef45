#![no_std]
// This file exists to give the crate a library target (see Cargo.toml).
