//! portmap's userspace: from port specs to a loaded, attached, filled dataplane.
//!
//! - [`spec`]: what the user wrote, parsed without I/O;
//! - [`compose`]: the `ports` of a compose file, with file, line and entry for messages;
//! - [`plan`]: the bindings to publish, resolved and checked as a whole;
//! - [`netdev`]: interfaces and local addresses;
//! - [`dataplane`]: load, fill, attach, pin, read counters;
//! - [`cli`]: the `portmap` command.

pub mod cli;
pub mod compose;
pub mod dataplane;
pub mod netdev;
pub mod plan;
pub mod spec;
