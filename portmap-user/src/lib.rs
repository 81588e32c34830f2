//! portmap's userspace: from port specs to a loaded, attached, filled dataplane.
//!
//! - [`spec`]: what the user wrote, parsed without I/O;
//! - [`compose`]: the `ports` of a compose file, with file, line and entry for messages;
//! - [`plan`]: the bindings to publish, resolved and checked as a whole;
//! - [`netdev`]: interfaces and local addresses;
//! - [`dataplane`]: load, fill, attach, pin, read counters;
//! - [`reserve`]: holding published host ports against other processes;
//! - [`instance`]: a running instance's state, changed all or nothing;
//! - [`control`]: the socket through which other commands reach it;
//! - [`serve`]: `portmap run`; [`client`]: `add`, `rm`, `ls`, `stats`;
//! - [`docker`]: following a Docker engine's containers (`run --docker`);
//! - [`conntrack`]: handing connections back to conntrack when portmap stops;
//! - [`cli`]: the `portmap` command.

/// Writes to stdout and says whether the reader is still there. A reader that went away
/// (`portmap stats | head -1`) has had what it wanted: not a reason to panic, as `print!`
/// would, nor to stop serving.
pub fn write_out(text: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(text).and_then(|()| out.flush()).is_ok()
}

/// `println!` through [`write_out`]: `false` once the reader is gone.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod batch;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod compose;
pub mod conntrack;
pub mod control;
pub mod dataplane;
pub mod docker;
pub mod instance;
pub mod netdev;
pub mod plan;
pub mod reserve;
pub mod serve;
pub mod spec;
