//! What Linux's `/proc` says about a process: its open descriptors, and
//! where in the kernel it is asleep.

use std::path::Path;

/// One open descriptor of this process.
#[derive(Debug)]
pub struct OpenFd {
    /// The descriptor number.
    pub fd: i32,
    /// What it refers to (`readlink /proc/self/fd/N`): a path, `pipe:[ino]`, `socket:[ino]`...
    pub target: String,
    /// The access mode from `/proc/self/fdinfo/N`: `"read"`, `"write"` or `"read-write"`.
    pub access: Option<&'static str>,
    /// This is the descriptor `read_dir` opened on `/proc/self/fd` to make the
    /// listing itself: open only while listing.
    pub transient: bool,
}

/// Lists this process's open descriptors from `/proc/self/fd`.
///
/// Listing a directory needs a descriptor on it, so the list always includes
/// one entry that exists only while listing; it is marked [`OpenFd::transient`].
pub fn own_fds() -> std::io::Result<Vec<OpenFd>> {
    let own_dir = format!("/proc/{}/fd", std::process::id());
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else { continue };
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let transient = target == own_dir;
        fds.push(OpenFd { fd, target, access: None, transient });
    }
    // The directory is closed now; reading fdinfo opens (and closes) one more.
    for f in fds.iter_mut().filter(|f| !f.transient) {
        f.access = access_mode(f.fd);
    }
    fds.sort_by_key(|f| f.fd);
    Ok(fds)
}

/// The open mode of descriptor `fd`, from the `flags:` line of its fdinfo.
fn access_mode(fd: i32) -> Option<&'static str> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    match u32::from_str_radix(flags, 8).ok()? & 0o3 {
        0 => Some("read"),
        1 => Some("write"),
        _ => Some("read-write"),
    }
}

/// Where process `pid` is in the kernel: its state letter and wait channel
/// (the kernel function it sleeps in), e.g. `("S", Some("fifo_open"))`.
/// `None` when `/proc` does not say (the process is gone, or not Linux).
pub fn kernel_wait(pid: u32) -> Option<(String, Option<String>)> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
    let wchan = std::fs::read_to_string(dir.join("wchan"))
        .ok()
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty() && w != "0");
    Some((state, wchan))
}

/// A readable form of [`kernel_wait`]: `state S (sleeping), in the kernel's fifo_open`.
pub fn describe_wait(pid: u32) -> String {
    match kernel_wait(pid) {
        None => "(no /proc entry to show where it waits)".to_owned(),
        Some((state, wchan)) => {
            let what = match state.as_str() {
                "S" => "sleeping",
                "R" => "running",
                "D" => "in uninterruptible sleep",
                "Z" => "a zombie",
                _ => "other",
            };
            match wchan {
                Some(w) => format!("state {state} ({what}), asleep in the kernel function {w}"),
                None => format!("state {state} ({what})"),
            }
        }
    }
}
