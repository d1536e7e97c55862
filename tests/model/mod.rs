//! The model MTA and the harness that drives a session against it, shared by
//! the invariant tests, the end-to-end model upstream and the fuzz target.

#![allow(dead_code)]

pub mod harness;
pub mod mta;
