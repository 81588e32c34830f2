//! Where the host's connections are caught: the cgroup (v2) the socket programs attach to.

use std::{fs, path::PathBuf};

/// The cgroup v2 hierarchy's root, as this process's mount table shows it
/// (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn v2_root() -> Option<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    v2_root_in(&table)
}

/// [`v2_root`] of a mount table's text.
fn v2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS"
        let (mount, fs) = line.split_once(" - ")?;
        let fstype = fs.split_whitespace().next()?;
        let root = mount.split_whitespace().nth(3)?;
        let point = mount.split_whitespace().nth(4)?;
        // The hierarchy's own root, not a subtree bind-mounted elsewhere.
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(unescape(point)))
    })
}

/// Mount points escape space, tab, newline and backslash as octal (`\040`).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_of_a_hybrid_host() {
        let table = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                     40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                     41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_in(table), Some("/sys/fs/cgroup/unified".into()));
    }

    #[test]
    fn skips_bind_mounted_subtrees_and_unescapes() {
        let table = "50 1 0:38 /kubepods /mnt/sub rw - cgroup2 cgroup2 rw\n\
                     51 1 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(v2_root_in(table), Some("/mnt/with space".into()));
        assert_eq!(v2_root_in("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}
