//! Servers that say who they are and whom they saw, and clients that ask them.
//!
//! Every reply is `"<server name> saw <peer ip>:<peer port>"`: a test learns which container
//! answered (S4) and the source address that container saw (S1: the client's own).
//! Servers and clients run on threads inside a namespace; every wait is bounded.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
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
                Ok((conn, _)) => {
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
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
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
