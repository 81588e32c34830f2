//! The parts of the dataplane that are pure functions, kept apart from the programs so that they
//! build and are unit-tested on the host as well as for the BPF target.
#![cfg_attr(not(test), no_std)]

pub mod csum;
