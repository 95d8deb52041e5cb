//! What `ipckit mq` and `ipckit sem` share: how an object is named on the
//! command line, how modes and timeouts are parsed, how owners, modes and
//! times are shown, and how the library's errors become one-line messages.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Failure;

/// Where a named object lives, as given on the command line.
///
/// A plain name (`jobs`) is an object in shared memory (`/dev/shm/ipckit.jobs`);
/// anything with a `/` in it (`./jobs.q`, `/var/lib/app/jobs.q`) is a durable
/// object in that file. Names cannot contain `/`, so the two never clash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// In shared memory, by name.
    Shm(String),
    /// In a regular file (durable: survives a reboot).
    File(PathBuf),
}

impl Location {
    /// Whether this is a durable (file) object.
    pub fn is_durable(&self) -> bool {
        matches!(self, Location::File(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Shm(name) => f.write_str(name),
            Location::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Parses a NAME argument (clap value parser): see [`Location`].
pub fn parse_location(s: &str) -> Result<Location, String> {
    if s.is_empty() {
        Err("the name is empty".to_owned())
    } else if s.contains('/') {
        Ok(Location::File(PathBuf::from(s)))
    } else {
        Ok(Location::Shm(s.to_owned()))
    }
}

/// Parses permission bits given in octal: `600`, `0640`, `0o644` (clap value parser).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        Ok(_) => {
            Err(format!("{s:?} is more than 777: only the permission bits (rwx for owner, group, other)"))
        }
        Err(_) => Err(format!("{s:?} is not an octal mode like 600 or 0640")),
    }
}

/// Parses a number of seconds, fractions allowed: `5`, `0.25` (clap value parser).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: the timeout must be zero or more seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// `"5 s"`, `"0.25 s"`: a timeout as the user gave it.
pub fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The permission bits as `ipcs` prints them (`600`) and as `ls -l` does (`rw-------`).
pub fn fmt_perms(mode: u32) -> (String, String) {
    let mode = mode & 0o777;
    let mut rwx = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        rwx.push(if bits & 4 != 0 { 'r' } else { '-' });
        rwx.push(if bits & 2 != 0 { 'w' } else { '-' });
        rwx.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    (format!("{mode:o}"), rwx)
}

/// The name of user `uid` from `/etc/passwd`, or the number, as `ipcs` shows owners.
pub fn user_name(uid: u32) -> String {
    lookup_name("/etc/passwd", uid).unwrap_or_else(|| uid.to_string())
}

/// The name of group `gid` from `/etc/group`, or the number.
pub fn group_name(gid: u32) -> String {
    lookup_name("/etc/group", gid).unwrap_or_else(|| gid.to_string())
}

/// Finds the name whose third field is `id` in a `name:x:id:...` file.
fn lookup_name(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let num: u32 = fields.nth(1)?.parse().ok()?;
        (num == id && !name.is_empty()).then(|| name.to_owned())
    })
}

/// `"root (uid 0)"`.
pub fn fmt_user(uid: u32) -> String {
    format!("{} (uid {uid})", user_name(uid))
}

/// `"root (gid 0)"`.
pub fn fmt_group(gid: u32) -> String {
    format!("{} (gid {gid})", group_name(gid))
}

/// A time in seconds since the epoch, as a person reads it:
/// `2025-11-25 11:02:03 UTC (12 s ago)`; `0` is `never` (as the kernel
/// leaves a time that was never set).
pub fn fmt_time(secs: u64) -> String {
    if secs == 0 {
        return "never".to_owned();
    }
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    let stamp = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let ago = match now.checked_sub(secs) {
        Some(0) => "just now".to_owned(),
        Some(s) if s < 120 => format!("{s} s ago"),
        Some(s) if s < 7_200 => format!("{} min ago", s / 60),
        Some(s) if s < 172_800 => format!("{} h ago", s / 3600),
        Some(s) => format!("{} days ago", s / 86_400),
        None => "in the future".to_owned(),
    };
    format!("{stamp} ({ago})")
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01),
/// after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Turns a library error about `what` (`"queue jobs"`) into a one-line
/// message: `queue jobs: permission denied`, `queue jobs: not found`.
pub fn failure(what: &str, e: &ipckit::Error) -> Failure {
    use ipckit::Error;
    let why = match e {
        Error::NotFound(_) => "not found".to_owned(),
        Error::PermissionDenied(_) => "permission denied".to_owned(),
        Error::AlreadyExists(_) => "already exists".to_owned(),
        Error::InvalidName { why, .. } => format!("invalid: {why}"),
        Error::Timeout => "timed out".to_owned(),
        Error::Io(io) => io_reason(io),
        other => other.to_string(),
    };
    Failure::new(format!("{what}: {why}"))
}

/// A kernel error without the noise: `permission denied`, `not found`.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::NotFound => "not found".to_owned(),
        _ => e.to_string(),
    }
}

/// Writes to stdout; a closed stdout (`| head`) is an error, not a panic,
/// or nothing at all if `pipe_may_close`.
pub fn print_line(text: &str, pipe_may_close: bool) -> crate::error::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if pipe_may_close && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => crate::error::Context::context(other, "writing to standard output"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_modes() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert!(fmt_time(1_700_000_000).starts_with("2023-11-14 22:13:20 UTC ("));
        assert_eq!(fmt_time(0), "never");
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("1777").is_err() && parse_mode("9").is_err());
        assert_eq!(fmt_perms(0o640), ("640".to_owned(), "rw-r-----".to_owned()));
        assert_eq!(parse_location("jobs"), Ok(Location::Shm("jobs".into())));
        assert_eq!(parse_location("./q"), Ok(Location::File("./q".into())));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
    }
}
