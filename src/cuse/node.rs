//! The node: waiting for devtmpfs to create `/dev/<name>` as our character device (and nothing
//! else of that name), then giving it the configured group and mode.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::config::Config;
use super::error::{Error, sys};

/// Waits for devtmpfs to create `/dev/<name>` as our character device.
pub(super) fn wait_node(config: &Config, (major, minor): (u32, u32)) -> Result<PathBuf, Error> {
    let node = config.node();
    let want = libc::makedev(major, minor);
    let deadline = Instant::now() + config.timeout;
    let mut last = None;
    loop {
        match fs::metadata(&node) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == want => return Ok(node),
            Ok(m) => last = Some(m),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Node(match last {
                Some(m) => format!(
                    "{} exists but is not this device ({}:{} wanted, found {}{}:{}): remove it",
                    node.display(),
                    major,
                    minor,
                    if m.file_type().is_char_device() {
                        "c "
                    } else {
                        "not a char device, "
                    },
                    libc::major(m.rdev()),
                    libc::minor(m.rdev())
                ),
                None => format!(
                    "{} did not appear within {:?} (is devtmpfs mounted on /dev?)",
                    node.display(),
                    config.timeout
                ),
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Gives the node the configured group and mode (devtmpfs makes it `root:root 0600`).
pub(super) fn apply_owner_mode(node: &Path, config: &Config) -> Result<(), Error> {
    if let Some(gid) = config.gid {
        nix::unistd::chown(node, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(sys("chown the node"))?;
    }
    if let Some(mode) = config.mode {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(node, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(sys("chmod the node"))?;
    }
    Ok(())
}
