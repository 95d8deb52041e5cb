//! `ipckit sem`: System V-style semaphore sets from the shell (`create`,
//! `op`, `stat`, `rm`), over [`ipckit::sysv::SemaphoreSet`].

use std::fmt;
use std::time::Duration;

use clap::{Args, Subcommand};
use ipckit::perm::Access;
use ipckit::sysv::{SemError, SemOp, SemStat, SemaphoreSet, WaitCounts, SEM_VALUE_MAX};

use crate::error::{Failure, Result};
use crate::object::{self, fmt_perms, fmt_secs, fmt_time, parse_mode, parse_secs};

/// What `--help` says about naming and exit codes, for every `sem` command.
const NAMES_AND_EXIT_CODES: &str = "\
NAME is a semaphore set in shared memory (/dev/shm/ipckit.NAME): letters, digits, '_', '-', '.'.

Exit status: 0 done; 1 error (one line on stderr, e.g. \"ipckit: error: semaphore set locks: \
permission denied\"); 2 nothing done because it would have had to wait: with --nowait the \
operations could not all proceed at once, with --timeout not in time.";

/// Options of `ipckit sem`.
#[derive(Debug, Args)]
pub struct SemArgs {
    #[command(subcommand)]
    command: SemCommand,
}

/// The `sem` subcommands.
#[derive(Debug, Subcommand)]
enum SemCommand {
    /// Create a set of COUNT semaphores (semget with IPC_CREAT | IPC_EXCL)
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Create(CreateArgs),
    /// Apply operations to a set, all at once or none (semop); blocks until all can proceed
    #[command(
        long_about = "Apply operations to a set, all at once or none (semop); blocks until all can \
            proceed.\n\n\
            Each operation is INDEX:DELTA or INDEX:DELTA:undo, as a struct sembuf:\n  \
            DELTA > 0 (e.g. +1, V)  adds to semaphore INDEX;\n  \
            DELTA < 0 (e.g. -1, P)  waits until the value is at least -DELTA, then subtracts;\n  \
            DELTA 0                 waits until the value is zero.\n\
            :undo (SEM_UNDO) reverses the change when this process exits; as `ipckit sem op` \
            exits at once, that is right after the operations succeed.\n\n\
            Example: `ipckit sem op locks 0:-1 1:+1` takes one from semaphore 0 and adds one to \
            semaphore 1 in one step, waiting while semaphore 0 is zero.",
        after_long_help = NAMES_AND_EXIT_CODES
    )]
    Op(OpArgs),
    /// Show a set's values, waiters, last pids, times, owner and mode (semctl IPC_STAT, GETALL)
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Stat(StatArgs),
    /// Remove a set (semctl IPC_RMID); blocked callers fail
    #[command(after_long_help = NAMES_AND_EXIT_CODES)]
    Rm(RmArgs),
}

/// Options of `ipckit sem create`.
#[derive(Debug, Args)]
struct CreateArgs {
    /// The set's name
    name: String,
    /// How many semaphores in the set
    #[arg(value_parser = clap::value_parser!(u32).range(1..=32000))]
    count: u32,
    /// The value every semaphore starts with
    #[arg(long, value_name = "V", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(SEM_VALUE_MAX)))]
    value: u16,
    /// Permission bits in octal: read to look and wait for zero, write to change values
    #[arg(long, value_name = "OCTAL", default_value = "600", value_parser = parse_mode)]
    mode: u32,
}

/// Options of `ipckit sem op`.
#[derive(Debug, Args)]
struct OpArgs {
    /// The set's name
    name: String,
    /// Operations, applied atomically: INDEX:DELTA[:undo], e.g. 0:-1:undo 1:+1
    #[arg(value_name = "OPS", required = true, value_parser = parse_op)]
    ops: Vec<SemOp>,
    /// Do not wait if the operations cannot all proceed now: exit with status 2 (IPC_NOWAIT)
    #[arg(long, conflicts_with = "timeout")]
    nowait: bool,
    /// Wait at most this long for the operations to proceed, then exit with status 2 (semtimedop)
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
}

/// Options of `ipckit sem stat`.
#[derive(Debug, Args)]
struct StatArgs {
    /// The set's name
    name: String,
    /// Print one JSON object (times in seconds since the epoch, 0 = never; pids 0 = none)
    #[arg(long)]
    json: bool,
}

/// Options of `ipckit sem rm`.
#[derive(Debug, Args)]
struct RmArgs {
    /// The set's name
    name: String,
}

/// Parses `INDEX:DELTA[:undo]` (clap value parser).
fn parse_op(s: &str) -> Result<SemOp, String> {
    let bad = || format!("{s:?} is not INDEX:DELTA or INDEX:DELTA:undo (e.g. 0:-1, 1:+1:undo, 0:0)");
    let mut parts = s.split(':');
    let (Some(index), Some(delta)) = (parts.next(), parts.next()) else { return Err(bad()) };
    let undo = match parts.next() {
        None => false,
        Some("undo") => true,
        Some(_) => return Err(bad()),
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    let index: usize = index.parse().map_err(|_| bad())?;
    let delta: i16 =
        delta.parse().map_err(|_| format!("{s:?}: DELTA must be a whole number from -32768 to +32767"))?;
    Ok(SemOp { index, op: delta, undo })
}

/// `0:-1:undo`: an operation as the user writes it.
struct ShowOp<'a>(&'a SemOp);

impl fmt::Display for ShowOp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SemOp { index, op, undo } = *self.0;
        write!(f, "{index}:{op:+}{}", if undo { ":undo" } else { "" })
    }
}

/// Runs an `ipckit sem` command.
///
/// # Errors
///
/// A [`Failure`] with a one-line message; [`Failure::would_block`] when
/// `--nowait` or `--timeout` stopped the operations.
pub fn run(args: SemArgs) -> Result<()> {
    match args.command {
        SemCommand::Create(a) => create(&a),
        SemCommand::Op(a) => op(&a),
        SemCommand::Stat(a) => stat(&a),
        SemCommand::Rm(a) => rm(&a),
    }
}

/// `"semaphore set locks"`: how messages name the set.
fn what(name: &str) -> String {
    format!("semaphore set {name}")
}

fn open(name: &str, access: Access) -> Result<SemaphoreSet> {
    SemaphoreSet::open(name, access).map_err(|e| object::failure(&what(name), &e))
}

/// A [`SemError`] as a one-line failure about the set `name`.
fn sem_failure(name: &str, e: &SemError) -> Failure {
    let w = what(name);
    match e {
        SemError::PermissionDenied => Failure::new(format!("{w}: permission denied")),
        SemError::Removed => Failure::new(format!("{w}: removed")),
        other => Failure::new(format!("{w}: {other}")),
    }
}

fn create(a: &CreateArgs) -> Result<()> {
    SemaphoreSet::create(&a.name, a.count as usize, a.value, a.mode)
        .map(drop)
        .map_err(|e| object::failure(&what(&a.name), &e))
}

fn op(a: &OpArgs) -> Result<()> {
    // Changing a value needs write ("alter") permission; waiting for zero, read.
    let access = if a.ops.iter().all(|o| o.op == 0) { Access::Read } else { Access::Write };
    let set = open(&a.name, access)?;
    let done = if a.nowait {
        set.try_op(&a.ops)
    } else if let Some(t) = a.timeout {
        set.op_timeout(&a.ops, t)
    } else {
        set.op(&a.ops)
    };
    let ops = a.ops.iter().map(|o| ShowOp(o).to_string()).collect::<Vec<_>>().join(" ");
    match done {
        Ok(()) => Ok(()),
        Err(SemError::WouldBlock) => {
            Err(Failure::would_block(format!("{}: {ops} cannot proceed now: nothing changed", what(&a.name))))
        }
        Err(SemError::Timeout) => Err(Failure::would_block(format!(
            "{}: {ops} could not proceed within {}: nothing changed",
            what(&a.name),
            fmt_secs(a.timeout.unwrap_or_default())
        ))),
        Err(e) => Err(sem_failure(&a.name, &e)),
    }
}

/// Everything `stat` shows: the status, each value and its waiters.
struct Status {
    stat: SemStat,
    values: Vec<u16>,
    waiting: Vec<WaitCounts>,
}

fn stat(a: &StatArgs) -> Result<()> {
    let set = open(&a.name, Access::Read)?;
    let stat = set.stat().map_err(|e| object::failure(&what(&a.name), &e))?;
    let values = set.values().map_err(|e| sem_failure(&a.name, &e))?;
    let waiting = (0..stat.count)
        .map(|i| set.waiting(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sem_failure(&a.name, &e))?;
    let status = Status { stat, values, waiting };
    let text = if a.json { stat_json(&a.name, &status) } else { stat_text(&a.name, &status) };
    object::print_line(&text, true)
}

/// `ipckit sem stat` as `field  value` lines, then one line per semaphore as `ipcs -s -i` shows.
fn stat_text(name: &str, s: &Status) -> String {
    let st = &s.stat;
    let (octal, rwx) = fmt_perms(st.owner.mode);
    let fields = [
        ("semaphore set", name.to_owned()),
        ("semaphores", st.count.to_string()),
        ("last op", fmt_time(st.op_time)),
        ("last change", fmt_time(st.change_time)),
        ("owner", object::fmt_user(st.owner.uid)),
        ("group", object::fmt_group(st.owner.gid)),
        ("perms", format!("{octal} ({rwx})")),
        ("creator", format!("{}, {}", object::fmt_user(st.creator.0), object::fmt_group(st.creator.1))),
        ("undo records", format!("{} process(es) hold undo adjustments", st.undo_records)),
    ];
    let mut lines: Vec<String> = fields.iter().map(|(k, v)| format!("{k:<13} {v}")).collect();
    lines.push(String::new());
    lines.push(format!("{:<8} {:>6} {:>7} {:>7} {:>8}", "semnum", "value", "ncount", "zcount", "pid"));
    for i in 0..st.count {
        let pid = st.last_pids.get(i).copied().unwrap_or(0);
        let w = s.waiting.get(i).copied().unwrap_or_default();
        let v = s.values.get(i).copied().unwrap_or(0);
        lines.push(format!("{i:<8} {v:>6} {:>7} {:>7} {pid:>8}", w.increase, w.zero));
    }
    lines.join("\n")
}

/// `ipckit sem stat --json`: every [`SemStat`] field, each semaphore's value and waiters.
fn stat_json(name: &str, s: &Status) -> String {
    let st = &s.stat;
    let (octal, _) = fmt_perms(st.owner.mode);
    let sems: Vec<_> = (0..st.count)
        .map(|i| {
            let w = s.waiting.get(i).copied().unwrap_or_default();
            serde_json::json!({
                "index": i,
                "value": s.values.get(i).copied().unwrap_or(0),
                "last_pid": st.last_pids.get(i).copied().unwrap_or(0),
                "ncount": w.increase,
                "zcount": w.zero,
            })
        })
        .collect();
    serde_json::json!({
        "name": name,
        "count": st.count,
        "op_time": st.op_time,
        "change_time": st.change_time,
        "uid": st.owner.uid,
        "gid": st.owner.gid,
        "owner": object::user_name(st.owner.uid),
        "group": object::group_name(st.owner.gid),
        "mode": st.owner.mode,
        "perms": octal,
        "cuid": st.creator.0,
        "cgid": st.creator.1,
        "undo_records": st.undo_records,
        "semaphores": sems,
    })
    .to_string()
}

fn rm(a: &RmArgs) -> Result<()> {
    SemaphoreSet::remove_name(&a.name).map_err(|e| object::failure(&what(&a.name), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_as_written() {
        assert_eq!(parse_op("0:-1:undo"), Ok(SemOp { index: 0, op: -1, undo: true }));
        assert_eq!(parse_op("1:+1"), Ok(SemOp { index: 1, op: 1, undo: false }));
        assert_eq!(parse_op("2:0"), Ok(SemOp { index: 2, op: 0, undo: false }));
        for bad in ["", "0", "0:", "x:1", "0:1:redo", "0:1:undo:x", "0:40000", "-1:1"] {
            assert!(parse_op(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(ShowOp(&SemOp { index: 3, op: -2, undo: true }).to_string(), "3:-2:undo");
        assert_eq!(ShowOp(&SemOp { index: 0, op: 1, undo: false }).to_string(), "0:+1");
    }
}
