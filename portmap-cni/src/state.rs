//! What each network published for each container, one JSON file per network in the state
//! directory (`<stateDir>/<network>.json`, by default under /run/portmap/cni).
//!
//! The running instance holds the truth; this file is what it needs to be rebuilt from when it
//! has died: the next ADD or CHECK starts a fresh instance and publishes every container
//! recorded for it again. It lives in /run because neither containers nor instances survive a
//! reboot, and stale entries must not either. Every read and write happens under the node lock
//! ([`crate::node::Lock`]); writes replace the file in one rename.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One network's containers, by container id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub containers: BTreeMap<String, ContainerState>,
}

/// What one container published, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub ifname: String,
    /// The instance that serves it (its pin directory names it).
    pub pin_dir: PathBuf,
    pub uplink: String,
    /// Where its replies come back.
    pub bridge: String,
    /// `Request::Add` specs, `[HOST_IP:]HOST_PORT:CONTAINER_PORT/PROTO=CONTAINER_IP`.
    pub specs: Vec<String>,
    pub hold_ports: bool,
}

/// The state file of `network`.
pub fn path(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(format!("{network}.json"))
}

/// Reads a state file; a missing one is an empty network. A file that does not parse (a crash
/// mid-write cannot produce one, but a hand edit can) is set aside, not fatal: the node must
/// keep taking containers.
///
/// # Errors
///
/// When the file exists but cannot be read.
pub fn load(path: &Path) -> io::Result<NetworkState> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(NetworkState::default()),
        Err(e) => return Err(e),
    };
    match serde_json::from_str(&text) {
        Ok(state) => Ok(state),
        Err(error) => {
            let aside = path.with_extension("json.corrupt");
            eprintln!(
                "portmap-ebpf: {} is not a state file ({error}); moved to {} and starting empty",
                path.display(),
                aside.display()
            );
            fs::rename(path, &aside)?;
            Ok(NetworkState::default())
        }
    }
}

/// Writes a state file in one step (a temporary file renamed over it); an empty network
/// removes the file.
///
/// # Errors
///
/// When the directory cannot be written.
pub fn save(path: &Path, state: &NetworkState) -> io::Result<()> {
    if state.containers.is_empty() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let json = serde_json::to_string_pretty(state).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json + "\n")?;
    fs::rename(&tmp, path)
}

/// Every container any network recorded for the instance at `pin_dir`: `(state file, id,
/// container)`.
///
/// # Errors
///
/// When the state directory cannot be read.
pub fn served_by(
    state_dir: &Path,
    pin_dir: &Path,
) -> io::Result<Vec<(PathBuf, String, ContainerState)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    // A stable order, so a refill publishes the same way every time.
    files.sort();
    for file in files {
        let state = load(&file)?;
        for (id, container) in state.containers {
            if container.pin_dir == pin_dir {
                found.push((file.clone(), id, container));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portmap-cni-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn container(pin_dir: &str) -> ContainerState {
        ContainerState {
            ifname: "eth0".into(),
            pin_dir: pin_dir.into(),
            uplink: "eth0".into(),
            bridge: "cni0".into(),
            specs: vec!["8080:80/tcp=10.88.0.2".into()],
            hold_ports: false,
        }
    }

    #[test]
    fn a_state_file_round_trips_and_an_empty_network_leaves_none() {
        let dir = scratch("round-trip");
        let file = path(&dir, "net");
        assert_eq!(load(&file).unwrap(), NetworkState::default());
        let mut state = NetworkState::default();
        state.containers.insert("c1".into(), container("/p"));
        save(&file, &state).unwrap();
        assert_eq!(load(&file).unwrap(), state);
        save(&file, &NetworkState::default()).unwrap();
        assert!(!file.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn containers_are_found_by_instance_across_networks_and_corrupt_files_set_aside() {
        let dir = scratch("served-by");
        for (network, id, pin) in [("a", "c1", "/p1"), ("b", "c2", "/p1"), ("c", "c3", "/p2")] {
            let mut state = NetworkState::default();
            state.containers.insert(id.into(), container(pin));
            save(&path(&dir, network), &state).unwrap();
        }
        fs::write(path(&dir, "broken"), "{").unwrap();
        let ids: Vec<String> = served_by(&dir, Path::new("/p1"))
            .unwrap()
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert!(dir.join("broken.json.corrupt").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
