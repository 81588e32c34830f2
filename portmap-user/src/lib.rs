//! portmap's userspace: from port specs to a loaded, attached, filled dataplane.
//!
//! - [`spec`]: what the user wrote, parsed without I/O;
//! - [`plan`]: the bindings to publish, resolved and checked as a whole;
//! - [`netdev`]: interfaces and local addresses;
//! - [`dataplane`]: load, fill, attach, pin, read counters;
//! - [`cli`]: the `portmap` command.

pub mod cli;
pub mod dataplane;
pub mod netdev;
pub mod plan;
pub mod spec;
