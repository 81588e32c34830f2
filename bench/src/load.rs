//! Load generators and the servers they talk to: small, bounded, and all inside the
//! benchmark's own namespaces. Every loop stops at a deadline.

use std::{
    io::{Read as _, Write as _},
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use portmap_tests::netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};

/// How long a single blocking call may wait before a worker looks at its deadline again.
const POLL: Duration = Duration::from_millis(100);

/// Server threads that stop and join on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Bytes the TCP sink received, datagrams the UDP sink received.
    pub received: Arc<AtomicU64>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn listener(port: u16) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    socket.listen(4096)?;
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// A TCP request/response server for fresh connections: `workers` threads accept on one
/// listener and answer each connection's request inline (no thread per connection, which
/// would cost more than the path being measured).
pub fn tcp_rr_server(ns: &Netns, port: u16, workers: usize) -> anyhow::Result<Servers> {
    let listener = ns
        .run(|| listener(port))
        .context("TCP request/response listener")?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..workers)
        .map(|_| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((conn, _)) = listener.accept() else {
                        continue;
                    };
                    let mut conn: TcpStream = conn.into();
                    let _ = conn.set_read_timeout(Some(POLL));
                    if conn.read(&mut buf).is_ok_and(|n| n > 0) && conn.write_all(b"ok\n").is_ok() {
                        // Wait for the client's close, so the server never holds TIME_WAIT.
                        let _ = conn.read(&mut buf);
                    }
                }
            })
        })
        .collect();
    Ok(Servers {
        stop,
        threads,
        received: Arc::new(AtomicU64::new(0)),
    })
}

/// A TCP server that reads and counts everything its connections send.
pub fn tcp_sink(ns: &Netns, port: u16) -> anyhow::Result<Servers> {
    let listener = ns.run(|| listener(port)).context("TCP sink listener")?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (flag, count) = (stop.clone(), received.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 18];
        while !flag.load(Ordering::Relaxed) {
            let Ok((conn, _)) = listener.accept() else {
                continue;
            };
            let mut conn: TcpStream = conn.into();
            let _ = conn.set_read_timeout(Some(POLL));
            while !flag.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        }
    });
    Ok(Servers {
        stop,
        threads: vec![thread],
        received,
    })
}

/// A UDP socket that drains and counts datagrams.
pub fn udp_sink(ns: &Netns, port: u16) -> anyhow::Result<Servers> {
    let socket = ns.run(|| -> anyhow::Result<Socket> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_recv_buffer_size(4 << 20)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
        socket.set_read_timeout(Some(POLL))?;
        Ok(socket)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (flag, count) = (stop.clone(), received.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        while !flag.load(Ordering::Relaxed) {
            if socket.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(Servers {
        stop,
        threads: vec![thread],
        received,
    })
}

/// What the fresh-connection load measured.
pub struct Connections {
    pub completed: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Connect-to-response time of every completed connection.
    pub latencies: Vec<Duration>,
}

/// `workers` clients in `ns`, each looping connect → request → response → close against
/// `target` until `duration` is up, spreading their source addresses over `sources`.
pub fn tcp_connections(
    ns: &Netns,
    target: SocketAddrV4,
    sources: &[Ipv4Addr],
    workers: usize,
    duration: Duration,
) -> Connections {
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<(u64, u64, Vec<Duration>)> = (0..workers)
        .map(|worker| {
            let sources: Vec<Ipv4Addr> = sources
                .iter()
                .skip(worker)
                .step_by(workers)
                .copied()
                .collect();
            ns.spawn(move || {
                let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
                let mut buf = [0u8; 16];
                let mut i = 0usize;
                while Instant::now() < deadline {
                    let source = sources[i % sources.len()];
                    i += 1;
                    let began = Instant::now();
                    let done = (|| -> std::io::Result<()> {
                        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                        socket.bind(&SocketAddrV4::new(source, 0).into())?;
                        socket.connect_timeout(&target.into(), Duration::from_secs(1))?;
                        let mut conn: TcpStream = socket.into();
                        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                        conn.write_all(b"x\n")?;
                        if conn.read(&mut buf)? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                        Ok(())
                    })();
                    match done {
                        Ok(()) => {
                            ok += 1;
                            latencies.push(began.elapsed());
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed, latencies)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().expect("a client worker panicked"))
        .collect();
    let elapsed = start.elapsed();
    let mut all = Connections {
        completed: 0,
        failed: 0,
        elapsed,
        latencies: Vec::new(),
    };
    for (ok, failed, latencies) in results {
        all.completed += ok;
        all.failed += failed;
        all.latencies.extend(latencies);
    }
    all
}

/// Sends UDP datagrams to `target` for `duration`, each from a new (source address, port)
/// pair, through a raw socket so that the source can change per packet. Returns how many were
/// sent.
pub fn udp_new_flows(
    ns: &Netns,
    target: SocketAddrV4,
    sources: &[Ipv4Addr],
    duration: Duration,
) -> anyhow::Result<u64> {
    let sources = sources.to_vec();
    ns.run(move || -> anyhow::Result<u64> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )?;
        socket.set_header_included_v4(true)?;
        socket.set_send_buffer_size(4 << 20)?;
        let dest: socket2::SockAddr = target.into();
        const BATCH: usize = 32;
        const PAYLOAD: &[u8; 16] = b"portmap-bench-x\n";
        let mut packets = vec![[0u8; 20 + 8 + 16]; BATCH];
        let deadline = Instant::now() + duration;
        let (mut sent, mut flow) = (0u64, 0u64);
        while Instant::now() < deadline {
            for packet in &mut packets {
                let source = sources[(flow % sources.len() as u64) as usize];
                let port = 1024 + ((flow / sources.len() as u64) % 64_000) as u16;
                flow += 1;
                build_udp(packet, SocketAddrV4::new(source, port), target, PAYLOAD);
            }
            sent += send_batch(&socket, &dest, &packets)?;
        }
        Ok(sent)
    })
}

fn build_udp(packet: &mut [u8; 44], from: SocketAddrV4, to: SocketAddrV4, payload: &[u8; 16]) {
    packet[..20].copy_from_slice(&[
        0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    packet[12..16].copy_from_slice(&from.ip().octets());
    packet[16..20].copy_from_slice(&to.ip().octets());
    packet[20..22].copy_from_slice(&from.port().to_be_bytes());
    packet[22..24].copy_from_slice(&to.port().to_be_bytes());
    packet[24..26].copy_from_slice(&24u16.to_be_bytes());
    packet[26..28].copy_from_slice(&[0, 0]);
    packet[28..].copy_from_slice(payload);
    // The UDP checksum over the pseudo-header and datagram; the kernel fills in the IPv4 one.
    let mut sum: u32 = 17 + 24;
    for chunk in packet[12..20].chunks(2).chain(packet[20..].chunks(2)) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    packet[26..28].copy_from_slice(&check.to_be_bytes());
}

/// One `sendmmsg(2)` of every packet in `packets` to `dest`; returns how many went out.
fn send_batch(
    socket: &Socket,
    dest: &socket2::SockAddr,
    packets: &[[u8; 44]],
) -> anyhow::Result<u64> {
    let mut iovecs: Vec<libc::iovec> = packets
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is a valid empty one; the fields set below point at
            // buffers that outlive the call.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = dest.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: `headers` describes `packets` and `dest`, all alive for the call.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as u32,
            0,
        )
    };
    if sent < 0 {
        let error = std::io::Error::last_os_error();
        // A full queue is the load generator outrunning the path: not an error.
        if error.raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(0);
        }
        return Err(error).context("sendmmsg");
    }
    Ok(sent as u64)
}

/// One TCP connection from `ns` to `target`, written to as fast as it takes for `duration`.
pub fn tcp_stream(ns: &Netns, target: SocketAddrV4, duration: Duration) -> anyhow::Result<()> {
    ns.run(move || -> anyhow::Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.connect_timeout(&target.into(), Duration::from_secs(2))?;
        socket.set_write_timeout(Some(POLL))?;
        let mut conn: TcpStream = socket.into();
        let chunk = vec![0x5au8; 1 << 16];
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            match conn.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("writing the stream"),
            }
        }
        Ok(())
    })
}

/// The UDP datagrams `ns`'s stack handed to a socket, or dropped for want of buffer: what
/// reached the container, whatever the draining thread kept up with.
pub fn udp_delivered(ns: &Netns) -> anyhow::Result<u64> {
    ns.run(|| -> anyhow::Result<u64> {
        // The calling thread's namespace, not the process's.
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (
            lines.next().context("Udp header")?,
            lines.next().context("Udp values")?,
        );
        let field = |name: &str| -> anyhow::Result<u64> {
            let at = names
                .split_whitespace()
                .position(|n| n == name)
                .with_context(|| format!("no {name} in /proc/net/snmp"))?;
            Ok(values
                .split_whitespace()
                .nth(at)
                .context("short Udp line")?
                .parse()?)
        };
        Ok(field("InDatagrams")? + field("RcvbufErrors")?)
    })
}
