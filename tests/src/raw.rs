//! Frames on a namespace's link, below every socket: sent as they are (a crafted packet no
//! socket would send) and captured as they pass (to read a header field a socket hides, such
//! as a UDP checksum). Everything here runs inside the namespace given and is bounded in time.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

const ETH_P_ALL: u16 = 0x0003;
/// How long a capture may run at most, whatever its caller does.
const CAPTURE_LIMIT: Duration = Duration::from_secs(30);

fn ifindex(iface: &str) -> anyhow::Result<i32> {
    let name = CString::new(iface)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no interface {iface}"));
    }
    Ok(index as i32)
}

/// An `AF_PACKET` raw socket bound to `iface` of the calling thread's namespace.
fn packet_socket(iface: &str) -> anyhow::Result<(OwnedFd, libc::sockaddr_ll)> {
    let index = ifindex(iface)?;
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = index;
    // SAFETY: binding to a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    Ok((fd, addr))
}

/// Sends each of `frames` (whole Ethernet frames) out of `iface` in `ns`, as they are.
pub fn inject(ns: &Netns, iface: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    ns.run(|| {
        let (fd, addr) = packet_socket(iface)?;
        for frame in frames {
            // SAFETY: sending from a live buffer to a sockaddr_ll of the right size.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error()).context("sending a raw frame");
            }
        }
        Ok(())
    })
}

/// One frame a [`Capture`] saw.
#[derive(Clone, Debug)]
pub struct Frame {
    /// `PACKET_HOST`, `PACKET_OUTGOING`, ... (`sll_pkttype`).
    pub pkttype: u8,
    pub data: Vec<u8>,
}

impl Frame {
    /// Whether the interface received it (rather than sent it).
    pub fn incoming(&self) -> bool {
        self.pkttype != libc::PACKET_OUTGOING
    }
}

/// Frames passing an interface, in both directions, collected on a thread until
/// [`Capture::finish`] (or a 30 s limit).
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Vec<Frame>>>>,
}

impl Capture {
    /// Starts capturing on `iface` in `ns`; returns once the socket is bound.
    pub fn start(ns: &Netns, iface: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let iface = iface.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || -> anyhow::Result<Vec<Frame>> {
            let (fd, _) = match packet_socket(&iface) {
                Ok(socket) => {
                    let _ = ready_tx.send(Ok(()));
                    socket
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{error:#}")));
                    return Err(error);
                }
            };
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: setting a timeval option of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as u32,
                );
            }
            let deadline = Instant::now() + CAPTURE_LIMIT;
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            let mut receive = |flags: libc::c_int| -> bool {
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: receiving into a live buffer and a sockaddr_ll of the right size.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        flags,
                        (&raw mut from).cast(),
                        &raw mut from_len,
                    )
                };
                if n > 0 {
                    frames.push(Frame {
                        pkttype: from.sll_pkttype,
                        data: buf[..n as usize].to_vec(),
                    });
                }
                n > 0
            };
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                receive(0);
            }
            // What arrived before `finish` but was not read yet (this thread was not scheduled
            // in time) is part of the capture too.
            while receive(libc::MSG_DONTWAIT) {}
            Ok(frames)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("capture did not start")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns every frame seen.
    pub fn finish(mut self) -> anyhow::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(frames) => frames,
                Err(_) => bail!("the capture thread panicked"),
            },
            None => bail!("already finished"),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An Ethernet frame: `dst`, `src`, `ether_type`, then `payload`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The UDP header fields of an untagged Ethernet frame carrying an unfragmented (or first
/// fragment of a) UDP datagram of either family: (source port, destination port, checksum).
pub fn udp_ports_and_check(frame: &[u8]) -> Option<(u16, u16, u16)> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l4 = match ether_type {
        0x0800 => {
            let ip = frame.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            if *ip.get(9)? != 17 || offset != 0 {
                return None;
            }
            ip.get(ihl..)?
        }
        0x86dd => {
            let ip = frame.get(14..)?;
            if *ip.get(6)? != 17 {
                return None;
            }
            ip.get(40..)?
        }
        _ => return None,
    };
    let word = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    Some((word(0)?, word(2)?, word(6)?))
}
