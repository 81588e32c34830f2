//! Writing and deleting many map entries in one system call (`BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6), and reading a whole hash map the same way
//! (`BPF_MAP_LOOKUP_BATCH`), which aya 0.14 does not offer. Publishing 10,000 wildcard bindings
//! writes tens of thousands of keys, and the flow table holds 262,144 flows: one call per entry
//! (two to read one) would cost more than everything else together.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch call that stopped: how many entries it had done, and why it stopped.
#[derive(Debug)]
pub struct Stopped {
    pub done: usize,
    pub error: io::Error,
}

/// Writes `keys[i]` → `values[i]` into the map behind `fd`, in order.
///
/// # Errors
///
/// Where the kernel stopped; the entries before it are written.
pub fn update<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), Stopped> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    call(BPF_MAP_UPDATE_BATCH, fd, keys, Some(values))
}

/// Deletes `keys` from the map behind `fd`, in order.
///
/// # Errors
///
/// Where the kernel stopped (a missing key stops it); the entries before it are deleted.
pub fn delete<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<(), Stopped> {
    call::<K, u8>(BPF_MAP_DELETE_BATCH, fd, keys, None)
}

/// How many entries one lookup call asks for at first. A call must fit a whole hash bucket, so
/// the kernel asks for more (`ENOSPC`) when one holds more than this.
const READ_CHUNK: usize = 8192;

/// Every entry of the hash map behind `fd`, a chunk of entries per call, handed to `visit`
/// chunk by chunk: a caller that keeps only some holds no more than one chunk. Entries that
/// change meanwhile are seen as before or after, as with one lookup each.
///
/// # Errors
///
/// When a call fails; `done` is how many entries were visited before it.
pub fn read_each<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    mut visit: impl FnMut(&[K], &[V]),
) -> Result<(), Stopped> {
    let mut chunk = READ_CHUNK;
    // SAFETY: `Pod` types are valid for any bytes, all zeroes included.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    // SAFETY: as above.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The position in the map, opaque to userspace (a bucket index for hash maps), as large as
    // a key at most.
    let mut position = [0u64; 8];
    let mut next = [0u64; 8];
    let mut first = true;
    let mut done = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the arrays hold `count` keys and values of the map's types, and the
        // positions are larger than the kernel's; all outlive the call.
        let error = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        if let Some(error) = &error
            && error.raw_os_error() == Some(libc::ENOSPC)
            && attr.count == 0
        {
            chunk *= 2;
            // SAFETY: as above.
            keys.resize(chunk, unsafe { std::mem::zeroed() });
            // SAFETY: as above.
            values.resize(chunk, unsafe { std::mem::zeroed() });
            continue;
        }
        let got = (attr.count as usize).min(chunk);
        visit(&keys[..got], &values[..got]);
        done += got;
        match error {
            None => {}
            // The end of the map, with the last entries in this call.
            Some(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(error) => return Err(Stopped { done, error }),
        }
        position = next;
        first = false;
    }
}

fn call<K, V>(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> Result<(), Stopped> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: u32::try_from(keys.len()).unwrap_or(u32::MAX),
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the key and value arrays `attr` points at are `count` elements of the map's key
    // and value types, alive for the call.
    let Err(error) = (unsafe { bpf(cmd, &mut attr) }) else {
        return Ok(());
    };
    Err(Stopped {
        // The kernel reports in `count` how many it processed.
        done: attr.count as usize,
        error,
    })
}

/// One batch command of bpf(2).
///
/// # Safety
///
/// Every pointer in `attr` must point at memory of the sizes the command reads or writes
/// (`count` keys and values of the map's types, positions as large as a key).
unsafe fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the caller vouches for what
    // it points at.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
