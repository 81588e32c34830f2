//! Servers that say who they are and whom they saw, and clients that ask them.
//!
//! Every reply is `"<server name> saw <peer ip>:<peer port>"`: a test learns which container
//! answered (S4) and the source address that container saw (S1: the client's own).
//! Servers and clients run on threads inside a namespace; every wait is bounded.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

/// How long any single client or server wait may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a server looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A running server; stops and joins on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Log,
}

/// What a server received: a connection it accepted (`len` 0) or a datagram.
#[derive(Clone, Debug)]
pub struct Seen {
    pub peer: SocketAddr,
    pub len: usize,
    /// When the server read it (this process's clock).
    pub at: Instant,
    /// The first bytes of a datagram (up to 64).
    pub head: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn log(seen: &Log, peer: SocketAddr, data: &[u8]) {
    seen.lock().unwrap().push(Seen {
        peer,
        len: data.len(),
        at: Instant::now(),
        head: data[..data.len().min(64)].to_vec(),
    });
}

impl Server {
    /// Everything the server received so far: every connection it accepted (TCP), every
    /// datagram (UDP).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub saw: SocketAddrV4,
}

impl Answer {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let (server, saw) = line
            .trim()
            .split_once(" saw ")
            .with_context(|| format!("malformed answer {line:?}"))?;
        Ok(Self {
            server: server.to_owned(),
            saw: saw
                .parse()
                .with_context(|| format!("malformed peer in {line:?}"))?,
        })
    }
}

fn reply_for(name: &str, peer: SocketAddr) -> String {
    format!("{name} saw {peer}\n")
}

/// A TCP server on `port` in `ns` that answers every line with who it saw, many connections at
/// once.
pub fn tcp(ns: &Netns, name: &str, port: u16) -> anyhow::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    let flag = stop.clone();
    let seen = Log::default();
    let log_to = seen.clone();
    let thread = ns.spawn(move || {
        let listener = match listen_tcp(port) {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut workers = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    if let Some(peer) = peer.as_socket() {
                        log(&log_to, peer, &[]);
                    }
                    let name = name.clone();
                    workers.push(std::thread::spawn(move || serve_tcp(conn.into(), &name)));
                }
                Err(_) => continue, // the accept timeout: look at the flag again
            }
        }
        for worker in workers {
            let _ = worker.join();
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .context("TCP server did not start")??;
    Ok(Server {
        stop,
        thread: Some(thread),
        seen,
    })
}

fn listen_tcp(port: u16) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    // Room for every connection a test opens at once.
    socket.listen(4096)?;
    // accept(2) honours SO_RCVTIMEO, which bounds each wait for the stop flag.
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

fn serve_tcp(conn: TcpStream, name: &str) {
    let Ok(peer) = conn.peer_addr() else { return };
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if (&conn).write_all(reply_for(name, peer).as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// A UDP server on `port` in `ns` that answers every datagram with who it saw.
pub fn udp(ns: &Netns, name: &str, port: u16) -> anyhow::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    let flag = stop.clone();
    let seen = Log::default();
    let log_to = seen.clone();
    let thread = ns.spawn(move || {
        let socket = match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .and_then(|s| s.set_read_timeout(Some(POLL)).map(|()| s))
        {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                log(&log_to, peer, &buf[..n]);
                let _ = socket.send_to(reply_for(&name, peer).as_bytes(), peer);
            }
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .context("UDP server did not start")??;
    Ok(Server {
        stop,
        thread: Some(thread),
        seen,
    })
}

/// Opens a TCP connection to `to` (optionally from `from`), asks once, returns the answer.
/// Call it inside the client's namespace.
pub fn tcp_ask(from: Option<Ipv4Addr>, to: SocketAddrV4) -> anyhow::Result<Answer> {
    let mut conn = tcp_connect(from, to)?;
    tcp_ask_on(&mut conn)
}

/// Connects with a bounded wait.
pub fn tcp_connect(from: Option<Ipv4Addr>, to: SocketAddrV4) -> anyhow::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(from) = from {
        socket.bind(&SocketAddrV4::new(from, 0).into())?;
    }
    socket
        .connect_timeout(&to.into(), IO_TIMEOUT)
        .with_context(|| format!("connecting to {to}"))?;
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Asks on an open connection.
pub fn tcp_ask_on(conn: &mut TcpStream) -> anyhow::Result<Answer> {
    conn.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(&*conn)
        .read_line(&mut line)
        .context("reading the answer")?;
    if line.is_empty() {
        bail!("connection closed without an answer");
    }
    Answer::parse(&line)
}

/// Sends one datagram from `from` (any port) to `to` and returns the answer and the address it
/// came from, which must be `to` itself for the client's socket to accept it as a reply.
pub fn udp_ask(from: SocketAddrV4, to: SocketAddrV4) -> anyhow::Result<(Answer, SocketAddr)> {
    let socket = UdpSocket::bind(from)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.send_to(b"who", to)?;
    let mut buf = [0u8; 2048];
    let (n, source) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    Ok((Answer::parse(&String::from_utf8_lossy(&buf[..n]))?, source))
}

// --- Either family ---

/// What a server of either family answered ([`tcp_at`], [`udp_at`], [`udp_echo_at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerAt {
    pub server: String,
    pub saw: SocketAddr,
}

impl AnswerAt {
    /// Parses the first line of an answer, `"<server> saw <peer>"`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let line = text.lines().next().unwrap_or_default();
        let (server, saw) = line
            .trim()
            .split_once(" saw ")
            .with_context(|| format!("malformed answer {line:?}"))?;
        Ok(Self {
            server: server.to_owned(),
            saw: saw
                .parse()
                .with_context(|| format!("malformed peer in {line:?}"))?,
        })
    }
}

fn domain_of(addr: &SocketAddr) -> Domain {
    if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    }
}

/// A TCP server bound to `bind` (either family; an IPv6 one takes IPv6 only) in `ns`, that
/// answers every line with `"<name> saw <peer>"`, and logs every connection it accepts.
pub fn tcp_at(ns: &Netns, name: &str, bind: SocketAddr) -> anyhow::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    let flag = stop.clone();
    let seen = Log::default();
    let log_to = seen.clone();
    let thread = ns.spawn(move || {
        let listen = || -> anyhow::Result<Socket> {
            let socket = Socket::new(domain_of(&bind), Type::STREAM, Some(Protocol::TCP))?;
            if bind.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            socket.bind(&bind.into())?;
            socket.listen(1024)?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(socket)
        };
        let listener = match listen() {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        // Each connection's worker ends by itself, within IO_TIMEOUT of its last line: the
        // server does not wait for them, so a connection whose client vanished (its FIN or
        // RST never reached the container) does not hold the test up.
        while !flag.load(Ordering::Relaxed) {
            if let Ok((conn, peer)) = listener.accept() {
                if let Some(peer) = peer.as_socket() {
                    log(&log_to, peer, &[]);
                }
                let name = name.clone();
                std::thread::spawn(move || serve_tcp(conn.into(), &name));
            }
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .context("TCP server did not start")??;
    Ok(Server {
        stop,
        thread: Some(thread),
        seen,
    })
}

/// A UDP server bound to `bind` (either family; an IPv6 one takes IPv6 only) in `ns`, that
/// answers every datagram with `"<name> saw <peer>\n"`, and logs each.
pub fn udp_at(ns: &Netns, name: &str, bind: SocketAddr) -> anyhow::Result<Server> {
    udp_server(ns, name, bind, false)
}

/// Like [`udp_at`], with the datagram received appended to the answer line: a client learns
/// that its datagram arrived whole, and a large one gets a large answer (up to 64 KiB).
pub fn udp_echo_at(ns: &Netns, name: &str, bind: SocketAddr) -> anyhow::Result<Server> {
    udp_server(ns, name, bind, true)
}

fn udp_server(ns: &Netns, name: &str, bind: SocketAddr, echo: bool) -> anyhow::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = name.to_owned();
    let flag = stop.clone();
    let seen = Log::default();
    let log_to = seen.clone();
    let thread = ns.spawn(move || {
        let open = || -> anyhow::Result<UdpSocket> {
            let socket = Socket::new(domain_of(&bind), Type::DGRAM, Some(Protocol::UDP))?;
            if bind.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&bind.into())?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(socket.into())
        };
        let socket = match open() {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 65536];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                log(&log_to, peer, &buf[..n]);
                let mut reply = reply_for(&name, peer).into_bytes();
                if echo {
                    reply.extend_from_slice(&buf[..n]);
                }
                let _ = socket.send_to(&reply, peer);
            }
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .context("UDP server did not start")??;
    Ok(Server {
        stop,
        thread: Some(thread),
        seen,
    })
}

/// Connects to `to` (optionally from `from`) within `timeout`. Call it inside the client's
/// namespace.
pub fn tcp_connect_at(
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let socket = Socket::new(domain_of(&to), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(from) = from {
        socket.bind(&SocketAddr::new(from, 0).into())?;
    }
    socket
        .connect_timeout(&to.into(), timeout)
        .with_context(|| format!("connecting to {to}"))?;
    let conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(timeout))?;
    Ok(conn)
}

/// Asks once on an open connection to a [`tcp_at`] (or [`tcp`]) server.
pub fn tcp_ask_on_at(conn: &mut TcpStream) -> anyhow::Result<AnswerAt> {
    conn.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(&*conn)
        .read_line(&mut line)
        .context("reading the answer")?;
    if line.is_empty() {
        bail!("connection closed without an answer");
    }
    AnswerAt::parse(&line)
}

/// Connects to `to` within `timeout`, asks once, returns the answer.
pub fn tcp_ask_at(
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<AnswerAt> {
    let mut conn = tcp_connect_at(from, to, timeout)?;
    tcp_ask_on_at(&mut conn)
}

/// Sends one datagram from `from` to `to` and waits up to `timeout` for the answer; returns it
/// and the address it came from.
pub fn udp_ask_at(
    from: SocketAddr,
    to: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<(AnswerAt, SocketAddr)> {
    let socket = UdpSocket::bind(from)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"who", to)?;
    let mut buf = [0u8; 2048];
    let (n, source) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {to}"))?;
    Ok((
        AnswerAt::parse(&String::from_utf8_lossy(&buf[..n]))?,
        source,
    ))
}

/// The byte at offset `i` of what [`tcp_download_at`] sends: a pattern whose bytes differ from
/// their neighbours, so that a lost or repeated segment shows.
pub fn download_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A TCP server bound to `bind` in `ns` that, on each connection, reads one line and then sends
/// `size` bytes of [`download_byte`] and closes: a download, for paths whose MTU matters.
pub fn tcp_download_at(ns: &Netns, bind: SocketAddr, size: usize) -> anyhow::Result<Server> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = stop.clone();
    let seen = Log::default();
    let log_to = seen.clone();
    let thread = ns.spawn(move || {
        let listen = || -> anyhow::Result<Socket> {
            let socket = Socket::new(domain_of(&bind), Type::STREAM, Some(Protocol::TCP))?;
            if bind.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            socket.bind(&bind.into())?;
            socket.listen(64)?;
            socket.set_read_timeout(Some(POLL))?;
            Ok(socket)
        };
        let listener = match listen() {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let body: Vec<u8> = (0..size).map(download_byte).collect();
        let mut workers = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            if let Ok((conn, peer)) = listener.accept() {
                if let Some(peer) = peer.as_socket() {
                    log(&log_to, peer, &[]);
                }
                let body = body.clone();
                workers.push(std::thread::spawn(move || {
                    let conn: TcpStream = conn.into();
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = conn.set_write_timeout(Some(IO_TIMEOUT * 2));
                    let mut line = String::new();
                    if BufReader::new(&conn)
                        .read_line(&mut line)
                        .is_ok_and(|n| n > 0)
                    {
                        let _ = (&conn).write_all(&body);
                    }
                }));
            }
        }
        for worker in workers {
            let _ = worker.join();
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .context("TCP download server did not start")??;
    Ok(Server {
        stop,
        thread: Some(thread),
        seen,
    })
}
