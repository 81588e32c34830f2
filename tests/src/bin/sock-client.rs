//! A host process for the S7 tests: asks a server once, as a program of the host would, and
//! prints what its socket showed. It runs as its own process so that a test can place it in a
//! cgroup (the test's own process stays outside) and in the host's namespace.
//!
//! ```text
//! pm-sock-client tcp ADDR            connect, ask one line; prints peer=, local=, answer=
//! pm-sock-client udp ADDR            sendto, recvfrom;      prints from=, local=, answer=
//! pm-sock-client udp-connected ADDR  connect, send, recv;   prints peer=, local=, answer=
//! ```
//!
//! Every wait is bounded by `--timeout-ms` (default 2000). On failure it prints `error=...`
//! and exits 1.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("error={error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<Vec<String>> {
    let (mode, addr) = match args {
        [mode, addr, ..] => (mode.as_str(), addr.as_str()),
        _ => bail!("usage: pm-sock-client tcp|udp|udp-connected ADDR [--timeout-ms N]"),
    };
    let to: SocketAddr = addr.parse().with_context(|| format!("address {addr:?}"))?;
    let timeout = match args.iter().position(|a| a == "--timeout-ms") {
        Some(i) => Duration::from_millis(
            args.get(i + 1)
                .context("--timeout-ms needs a value")?
                .parse()?,
        ),
        None => Duration::from_millis(2000),
    };
    let unspecified = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    match mode {
        "tcp" => {
            let conn = TcpStream::connect_timeout(&to, timeout)
                .with_context(|| format!("connecting to {to}"))?;
            conn.set_read_timeout(Some(timeout))?;
            let peer = conn.peer_addr()?;
            let local = conn.local_addr()?;
            (&conn).write_all(b"who\n")?;
            let mut line = String::new();
            BufReader::new(&conn)
                .read_line(&mut line)
                .context("reading the answer")?;
            if line.is_empty() {
                bail!("connection closed without an answer");
            }
            Ok(vec![
                format!("peer={peer}"),
                format!("local={local}"),
                format!("answer={}", line.trim()),
            ])
        }
        "udp" => {
            let socket = UdpSocket::bind(unspecified)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.send_to(b"who", to)?;
            let mut buf = [0u8; 2048];
            let (n, from) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no answer from {to}"))?;
            Ok(vec![
                format!("from={from}"),
                format!("local={}", socket.local_addr()?),
                format!("answer={}", String::from_utf8_lossy(&buf[..n]).trim()),
            ])
        }
        "udp-connected" => {
            let socket = UdpSocket::bind(unspecified)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.connect(to)?;
            let peer = socket.peer_addr()?;
            socket.send(b"who")?;
            let mut buf = [0u8; 2048];
            let n = socket
                .recv(&mut buf)
                .with_context(|| format!("no answer from {to}"))?;
            Ok(vec![
                format!("peer={peer}"),
                format!("local={}", socket.local_addr()?),
                format!("answer={}", String::from_utf8_lossy(&buf[..n]).trim()),
            ])
        }
        other => bail!("unknown mode {other:?}"),
    }
}
