//! Running the real object's programs on crafted frames with `BPF_PROG_TEST_RUN`: one helper,
//! so that a packet test is only its frame and its assertions.

use std::time::Duration;

use aya::programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use portmap_common::{XdpMeta, programs};
use portmap_user::dataplane::Dataplane;

/// What a program did with a frame.
#[derive(Debug)]
pub struct Ran {
    /// The program's return value (an XDP action or a TC verdict).
    pub verdict: u32,
    /// The frame as the program left it, from the Ethernet header on.
    pub frame: Vec<u8>,
    /// The XDP metadata the program left in front of the frame, if any.
    pub meta: Option<XdpMeta>,
    /// Whether the kernel could show metadata at all: false on kernels before 5.14, where an
    /// XDP test run takes no `xdp_md` (see [`xdp`]), and for TC runs.
    pub meta_visible: bool,
    /// Mean time per run the kernel measured.
    pub per_run: Duration,
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: offsets into the data, and no device (the
/// kernel then uses the loopback device's first queue).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `xdp_uplink` on `frame` `repeat` times (the frame is not reset between runs).
pub fn xdp(dataplane: &mut Dataplane, frame: &[u8], repeat: u32) -> Ran {
    let program: &mut Xdp = dataplane
        .ebpf_mut()
        .program_mut(programs::XDP_UPLINK)
        .expect("xdp_uplink in the object")
        .try_into()
        .expect("xdp_uplink is XDP");
    let ctx_in = XdpMd {
        data_end: frame.len() as u32,
        ..XdpMd::default()
    };
    let mut ctx_out = XdpMd::default();
    let mut out = vec![0u8; frame.len() + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(as_bytes(&ctx_in));
    opts.ctx_out = Some(as_bytes_mut(&mut ctx_out));
    opts.repeat = repeat;
    let (result, meta_visible) = match program.test_run(opts) {
        Ok(result) => (result, true),
        // Before Linux 5.14 (commit 47316f4a3053, "bpf: Support input xdp_md context in
        // BPF_PROG_TEST_RUN") an XDP test run refuses any ctx with EINVAL, before running the
        // program, and hands back the data without the metadata in front of it. Retrying
        // without ctx still checks the same frame bytes; only the note cannot be seen.
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(frame);
            opts.data_out = Some(&mut out);
            opts.repeat = repeat;
            let result = program
                .test_run(opts)
                .expect("BPF_PROG_TEST_RUN of xdp_uplink without ctx");
            (result, false)
        }
        Err(e) => panic!("BPF_PROG_TEST_RUN of xdp_uplink: {e}"),
    };
    // The kernel hands back metadata and data together; `ctx_out.data` is where data starts.
    let meta_len = ctx_out.data as usize;
    let end = result.data_size_out as usize;
    let meta = (meta_len == size_of::<XdpMeta>()).then(|| {
        let mut m = XdpMeta::default();
        as_bytes_mut(&mut m).copy_from_slice(&out[..meta_len]);
        m
    });
    Ran {
        verdict: result.return_value,
        frame: out[meta_len..end].to_vec(),
        meta,
        meta_visible,
        per_run: result.duration,
    }
}

/// Runs the TC program `name` on `frame` `repeat` times.
pub fn tc(dataplane: &mut Dataplane, name: &str, frame: &[u8], repeat: u32) -> Ran {
    let program: &mut SchedClassifier = dataplane
        .ebpf_mut()
        .program_mut(name)
        .unwrap_or_else(|| panic!("{name} in the object"))
        .try_into()
        .unwrap_or_else(|_| panic!("{name} is a classifier"));
    let mut out = vec![0u8; frame.len() + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let result = program
        .test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e}"));
    out.truncate(result.data_size_out as usize);
    Ran {
        verdict: result.return_value,
        frame: out,
        meta: None,
        meta_visible: false,
        per_run: result.duration,
    }
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is a plain `repr(C)` struct of integers without padding.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }
}

fn as_bytes_mut<T: Copy>(value: &mut T) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; any bytes are a valid T.
    unsafe { std::slice::from_raw_parts_mut((value as *mut T).cast(), size_of::<T>()) }
}
