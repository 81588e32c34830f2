//! Holding published host ports against other processes, as Docker does: for each binding a
//! socket bound to its host address and port, so that no other program can take the port, and
//! given nothing: a UDP socket drops every datagram through a filter, a TCP socket does not
//! listen (unless TIME_WAIT forces it to; see [`reserve`]).
//!
//! When the port is taken, the error names the process that holds it.

use std::{
    fmt, fs, io,
    mem::size_of,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::OnceLock,
};

use crate::{plan::Binding, spec::Proto};

/// The sockets that hold one binding's host port; dropping it frees the port.
#[derive(Debug)]
pub struct Reservation {
    _socket: OwnedFd,
}

/// Why a port could not be held.
#[derive(Debug)]
pub enum ReserveError {
    /// Another socket has it.
    InUse {
        port: u16,
        proto: Proto,
        /// Who holds it, as far as /proc tells (`nginx (pid 1234)`).
        holder: Option<String>,
        wanted_by: String,
    },
    Io {
        binding: String,
        error: io::Error,
    },
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse {
                port,
                proto,
                holder,
                wanted_by,
            } => {
                let holder = holder.as_deref().unwrap_or("another socket");
                write!(
                    f,
                    "host port {port}/{proto} is already in use by {holder}; wanted by {wanted_by:?}"
                )
            }
            Self::Io { binding, error } => write!(f, "holding the host port of {binding}: {error}"),
        }
    }
}

impl std::error::Error for ReserveError {}

impl ReserveError {
    /// Whether the operator's input is at fault (another program has the port) rather than
    /// the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Self::InUse { .. })
    }
}

/// How far [`make_room`] grows the descriptor table ahead: 10,000 held ports and then some.
const ROOM: libc::c_int = 16_384;

/// Makes room for holding many ports; call it while the process has a single thread. Each held
/// port is a descriptor: the soft limit on open files goes up to the hard one (Debian's default
/// soft 1024 would stop at a thousand ports), and the descriptor table is grown once now.
/// Grown later, with threads about, the kernel waits out an RCU grace period at each doubling,
/// which for 10,000 ports cost more than holding them.
pub fn make_room() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer; dup2/close of a descriptor we create.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        let highest = libc::c_int::try_from(limit.rlim_cur)
            .unwrap_or(ROOM)
            .min(ROOM)
            - 1;
        if highest > 2 && libc::dup2(2, highest) == highest {
            libc::close(highest);
        }
    }
}

/// Holds `binding`'s host port.
///
/// # Errors
///
/// [`ReserveError::InUse`], naming the holder, when another socket has the port.
pub fn reserve(binding: &Binding) -> Result<Reservation, ReserveError> {
    let addr = binding.host();
    let io_error = |error| ReserveError::Io {
        binding: binding.origin.clone(),
        error,
    };
    let (kind, protocol) = match binding.proto {
        Proto::Tcp => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
        Proto::Udp => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        Proto::Sctp => {
            return Err(io_error(io::Error::new(
                io::ErrorKind::Unsupported,
                "sctp is not served",
            )));
        }
    };
    // SAFETY: a plain socket(2) call; the fd is owned at once.
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EMFILE) {
            return Err(io_error(io::Error::new(
                error.kind(),
                format!(
                    "{error}: each held port is an open file; raise the limit (`ulimit -n`, \
                     systemd's LimitNOFILE)"
                ),
            )));
        }
        return Err(io_error(error));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = socket.as_raw_fd();
    if addr.is_ipv6() {
        // `[::]:80` holds the IPv6 port only; the IPv4 one is its own binding's to hold.
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).map_err(io_error)?;
    }
    let in_use = || ReserveError::InUse {
        port: binding.host_port,
        proto: binding.proto,
        holder: holder_of(binding.proto, binding.host_port),
        wanted_by: binding.origin.clone(),
    };
    let bind_or_refuse = || match bind(fd, addr) {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            error if error.raw_os_error() == Some(libc::EADDRINUSE) => Err(in_use()),
            error => Err(io_error(error)),
        },
    };
    if binding.proto == Proto::Udp {
        // Datagrams the stack hands this socket are dropped, not queued.
        attach_drop_all(fd).map_err(io_error)?;
        bind_or_refuse()?;
        return Ok(Reservation { _socket: socket });
    }
    // Bound without SO_REUSEADDR, a TCP port is ours alone: every other bind to it fails,
    // whatever that socket's options, and a socket that never listens is given nothing. Two
    // calls, where listening takes five.
    if bind(fd, addr) == 0 {
        return Ok(Reservation { _socket: socket });
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EADDRINUSE) {
        return Err(io_error(error));
    }
    // Taken, or only by the TIME_WAIT of finished connections, which SO_REUSEADDR binds past.
    // Held that way, the port must be listened on to keep other SO_REUSEADDR sockets off it,
    // with the drop-all filter on first so that no connection is ever queued here.
    attach_drop_all(fd).map_err(io_error)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(io_error)?;
    bind_or_refuse()?;
    // SAFETY: listen(2) on our own socket.
    if unsafe { libc::listen(fd, 1) } != 0 {
        return Err(io_error(io::Error::last_os_error()));
    }
    Ok(Reservation { _socket: socket })
}

fn set_int(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// bind(2) to an address of either family; the return code as bind gives it.
fn bind(fd: i32, addr: SocketAddr) -> i32 {
    match addr {
        SocketAddr::V4(v4) => {
            let sockaddr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr` is a valid sockaddr_in of the size passed.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const sockaddr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(v6) => {
            let sockaddr = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: `sockaddr` is a valid sockaddr_in6 of the size passed.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const sockaddr).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }
}

/// Makes the socket drop everything it is given. One eBPF socket filter (`return 0`), loaded
/// once and shared by every held port: a classic filter is compiled afresh for each socket,
/// which costs more than the rest of holding a port (55 ms of 95 for 10,000 ports).
fn attach_drop_all(fd: i32) -> io::Result<()> {
    static SHARED: OnceLock<Option<OwnedFd>> = OnceLock::new();
    match SHARED.get_or_init(|| load_drop_all().ok()) {
        Some(program) => set_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_BPF,
            program.as_raw_fd(),
        ),
        // A kernel that refuses the eBPF filter still takes the classic one.
        None => attach_classic_drop_all(fd),
    }
}

/// Loads `r0 = 0; exit` as a socket filter.
fn load_drop_all() -> io::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    // `struct bpf_insn`s: code, registers, offset, immediate.
    let program: [[u8; 8]; 2] = [
        [0xb7, 0, 0, 0, 0, 0, 0, 0], // mov64 r0, 0
        [0x95, 0, 0, 0, 0, 0, 0, 0], // exit
    ];
    let license = c"GPL";
    // The head of `union bpf_attr`'s program-load member; the kernel wants the rest zero.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        rest: [u8; 104],
    }
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        rest: [0; 104],
    };
    // SAFETY: `attr` and what it points at outlive the call; the size is `attr`'s.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            size_of::<ProgLoad>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The same as a classic filter of one instruction, `ret #0`.
fn attach_classic_drop_all(fd: i32) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Who holds `port`: finds the socket in /proc/net and the process with its inode open.
/// Best effort: `None` when /proc does not say (another namespace's process, a race).
pub fn holder_of(proto: Proto, port: u16) -> Option<String> {
    let tables: &[&str] = match proto {
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
        Proto::Sctp => return None,
    };
    let inode = tables.iter().find_map(|path| {
        let table = fs::read_to_string(path).ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let inode = fields.get(9)?;
            (u16::from_str_radix(local_port, 16).ok()? == port && *inode != "0")
                .then(|| (*inode).to_owned())
        })
    })?;
    let target = format!("socket:[{inode}]");
    for process in fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .filter_map(Result::ok)
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.to_string_lossy() == target));
        if holds {
            let name = fs::read_to_string(process.path().join("comm")).unwrap_or_default();
            return Some(format!("{} (pid {pid})", name.trim()));
        }
    }
    Some(format!(
        "a socket (inode {inode}) of no process visible here"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_drop_all_filter_loads() {
        let program = load_drop_all().expect("loading the drop-all socket filter (needs root)");
        assert!(program.as_raw_fd() >= 0);
    }
}
