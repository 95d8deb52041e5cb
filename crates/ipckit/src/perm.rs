//! System V-style permission checks: owner uid/gid and rwx mode bits.
//!
//! The rules, as `ipc(5)` applies them to System V objects:
//!
//! 1. uid 0 (root) may do everything;
//! 2. if the caller's uid is the owner's, the owner bits (`0o700`) decide;
//! 3. else if the caller's gid, or one of its supplementary groups, is the
//!    owner's group, the group bits (`0o070`) decide;
//! 4. else the other bits (`0o007`) decide.
//!
//! Read needs `r`, write needs `w`. The caller's identity always comes from
//! the kernel (`geteuid(2)` for this process, `SO_PEERCRED` for a peer),
//! never from anything a client says.

/// Who owns a named object and what the mode bits allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Permission bits (`0o640` style; only the low 9 bits count).
    pub mode: u32,
}

/// What a caller wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Look (receive, map for reading).
    Read,
    /// Change (send, write).
    Write,
    /// Both.
    ReadWrite,
}

/// A caller's kernel-verified identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub groups: Vec<u32>,
}

impl Caller {
    /// This process, as the kernel sees it.
    pub fn current() -> Self {
        Caller { uid: crate::sys::euid(), gid: crate::sys::egid(), groups: crate::sys::groups() }
    }
}

/// Whether `caller` may have `want` on an object owned as `owner`.
///
/// # Examples
///
/// ```
/// use ipckit::perm::{allowed, Access, Caller, Owner};
/// let owner = Owner { uid: 1000, gid: 100, mode: 0o640 };
/// let member = Caller { uid: 1001, gid: 5, groups: vec![100] };
/// assert!(allowed(&owner, &member, Access::Read));
/// assert!(!allowed(&owner, &member, Access::Write));
/// ```
pub fn allowed(owner: &Owner, caller: &Caller, want: Access) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let bits = if caller.uid == owner.uid {
        (owner.mode >> 6) & 7
    } else if caller.gid == owner.gid || caller.groups.contains(&owner.gid) {
        (owner.mode >> 3) & 7
    } else {
        owner.mode & 7
    };
    let need = match want {
        Access::Read => 4,
        Access::Write => 2,
        Access::ReadWrite => 6,
    };
    bits & need == need
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_group_other_and_root() {
        let o = Owner { uid: 10, gid: 20, mode: 0o640 };
        let me = |uid, gid, groups: &[u32]| Caller { uid, gid, groups: groups.to_vec() };
        assert!(allowed(&o, &me(10, 99, &[]), Access::ReadWrite));
        assert!(allowed(&o, &me(11, 20, &[]), Access::Read));
        assert!(!allowed(&o, &me(11, 20, &[]), Access::Write));
        assert!(allowed(&o, &me(11, 21, &[3, 20]), Access::Read));
        assert!(!allowed(&o, &me(11, 21, &[]), Access::Read));
        assert!(allowed(&o, &me(0, 0, &[]), Access::ReadWrite));
        // The owner's own bits decide for the owner, even if "other" allows more.
        let odd = Owner { uid: 10, gid: 20, mode: 0o007 };
        assert!(!allowed(&odd, &me(10, 20, &[]), Access::Read));
        assert!(allowed(&odd, &me(11, 21, &[]), Access::ReadWrite));
    }
}
