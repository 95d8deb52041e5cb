//! A shared memory mapping, and the only code that touches its bytes.
//!
//! # Safety
//!
//! A [`Mapping`] owns a `MAP_SHARED` region from `mmap(2)` for its whole
//! life, so its base pointer and length stay valid until `Drop`. Other
//! processes may write the region at any time, so nothing here hands out a
//! plain `&T` or `&[u8]` into it: words are reached only as atomics (whose
//! concurrent use from several processes is exactly what they are for), and
//! bytes are copied in and out with volatile-free `copy_nonoverlapping`
//! after a bounds check, the copy being the point at which bytes from a
//! stranger become ours (and are then validated by the caller). Every
//! offset is checked against the length (and alignment) before use; a
//! check that fails is an `Err`/`None`, never an out-of-bounds access.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::mm::{MapFlags, ProtFlags};

/// A `MAP_SHARED`, read-write mapping of a whole shared-memory object.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with other processes; all
// access goes through atomics or bounds-checked copies, which are as safe
// from several threads as from several processes.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only allows atomic access and copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(2)` `len` bytes of `fd` from offset 0, shared and read-write.
    pub(crate) fn map(fd: impl AsFd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map zero bytes"));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias any Rust object; the fd is valid for the call.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, off: usize, len: usize, align: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.len || off % align != 0 {
            return None;
        }
        // SAFETY: `off + len <= self.len`, so the result stays inside the mapping.
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// The 32-bit word at `off` (4-byte aligned, in bounds), as an atomic.
    pub(crate) fn u32_at(&self, off: usize) -> Option<&AtomicU32> {
        let p = self.check(off, 4, 4)?;
        // SAFETY: in bounds and aligned (checked), valid for the life of
        // `&self`; AtomicU32 has the layout of u32 and any bit pattern is valid.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// The `N` consecutive 32-bit words at `off` (4-byte aligned, all in
    /// bounds), as atomics: one check for a whole cache line of words, so a
    /// hot path indexes them with constant indices and no further checks.
    pub(crate) fn u32s_at<const N: usize>(&self, off: usize) -> Option<&[AtomicU32; N]> {
        let p = self.check(off, N.checked_mul(4)?, 4)?;
        // SAFETY: in bounds and aligned (checked), valid for the life of
        // `&self`; `[AtomicU32; N]` has the layout of `[u32; N]` and any bit
        // pattern is valid; every access through it is atomic.
        Some(unsafe { &*p.cast::<[AtomicU32; N]>() })
    }

    /// The 64-bit word at `off` (8-byte aligned, in bounds), as an atomic.
    pub(crate) fn u64_at(&self, off: usize) -> Option<&AtomicU64> {
        let p = self.check(off, 8, 8)?;
        // SAFETY: as for `u32_at`, with 8-byte size and alignment.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    /// Asks the CPU to fetch the cache line at `off` for writing, without
    /// waiting for it (`prefetchw`, where the CPU has it; else nothing): a
    /// later store or locked instruction on that line then finds it owned
    /// instead of waiting for another CPU to give it up. A hint only: no
    /// memory changes, and out of bounds it does nothing.
    pub(crate) fn prefetch_write(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if has_prefetchw() {
            if let Some(p) = self.check(off, 1, 1) {
                // SAFETY: `prefetchw` (present on this CPU, checked above)
                // only moves a cache line: it never faults, reads or writes
                // nothing architecturally, and `p` is inside the mapping.
                unsafe {
                    std::arch::asm!("prefetchw byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Tells the CPU that the cache line at `off` will be read by another
    /// CPU next (`cldemote`: the line moves from this core's private caches
    /// to the shared last-level cache, so the other core's load finds it
    /// there instead of snooping this core). A hint only: no memory changes;
    /// a CPU without the instruction executes it as a no-op (its encoding is
    /// in the reserved-hint space), and out of bounds it does nothing.
    #[inline]
    pub(crate) fn demote(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.check(off, 1, 1) {
            // `cldemote` is a no-op where unsupported (a reserved hint).
            // SAFETY: it only moves a cache line between cache levels, never
            // faults or reads or writes anything; `p` is inside the mapping.
            unsafe {
                std::arch::asm!("cldemote byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Asks the CPU to fetch the cache line at `off` for reading, without
    /// waiting for it (`prefetcht0`). A hint only: no memory changes, and
    /// out of bounds it does nothing.
    pub(crate) fn prefetch_read(&self, off: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.check(off, 1, 1) {
            // SAFETY: `prefetcht0` (SSE, part of x86_64) only moves a cache
            // line: it never faults, reads or writes nothing architecturally,
            // and `p` is inside the mapping.
            unsafe {
                std::arch::asm!("prefetcht0 byte ptr [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = off;
    }

    /// Copies `dst.len()` bytes out of the mapping at `off`; `false` if out of bounds.
    pub(crate) fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.check(off, dst.len(), 1) else { return false };
        // SAFETY: source in bounds (checked), destination is our own buffer;
        // the regions cannot overlap (one is shared memory, one is not).
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` into the mapping at `off`; `false` if out of bounds.
    pub(crate) fn write(&self, off: usize, src: &[u8]) -> bool {
        let Some(p) = self.check(off, src.len(), 1) else { return false };
        // SAFETY: destination in bounds (checked); source is our own buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
    }
}

impl Mapping {
    /// `msync(MS_SYNC)`: writes the mapping's dirty pages to the file under it.
    pub(crate) fn flush(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this mapping, alive for `&self`.
        unsafe { rustix::mm::msync(self.ptr.as_ptr().cast(), self.len, rustix::mm::MsyncFlags::SYNC)? };
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by `map` with this length and nothing
        // borrowed from it outlives `&self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl Mapping {
    /// `len` bytes at `off` as a shared slice, for zero-copy reading.
    ///
    /// # Safety
    ///
    /// The caller must own those bytes by protocol for the life of the
    /// slice: no process that follows ipckit's protocol writes them meanwhile
    /// (a loaned buffer in the `Reading` state). A hostile process could
    /// still write them; the bytes are then garbage, which callers treat as
    /// input from a stranger, but never out of bounds.
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        let p = self.check(off, len, 1)?;
        // SAFETY: in bounds (checked) and valid while `&self` lives; exclusive
        // use by protocol is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// `len` bytes at `off` as a mutable slice, for zero-copy writing.
    ///
    /// # Safety
    ///
    /// As [`Mapping::slice`], and no other slice of these bytes may exist in
    /// this process (a loaned buffer in the `Writing` state is handed out once).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, off: usize, len: usize) -> Option<&mut [u8]> {
        let p = self.check(off, len, 1)?;
        // SAFETY: in bounds (checked); uniqueness is the caller's promise.
        Some(unsafe { std::slice::from_raw_parts_mut(p, len) })
    }
}

/// Whether the CPU has `prefetchw` (CPUID 0x8000_0001, ECX bit 8), asked once.
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
        max >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
    })
}
