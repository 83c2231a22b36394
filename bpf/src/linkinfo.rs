//! What the kernel says about a pinned bpf_link, through two raw `bpf(2)` calls: aya 0.14
//! opens pinned links but does not show the device a TCX link is attached to, and that is
//! how a link whose interface died with its network namespace is told apart from a live one.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_TYPE_TCX` in `enum bpf_link_type`.
const BPF_LINK_TYPE_TCX: u32 = 11;

/// `union bpf_attr` as `BPF_OBJ_GET` reads it.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// `union bpf_attr` as `BPF_OBJ_GET_INFO_BY_FD` reads it.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The device of a pinned TCX link: `Some(ifindex)`, where 0 means the device is gone (the
/// kernel clears it when the interface is unregistered, for example when its network
/// namespace is destroyed); `None` when the pin is not a TCX link.
pub(crate) fn tcx_link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    #[expect(
        unsafe_code,
        reason = "taking ownership of a descriptor the kernel returned"
    )]
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // `struct bpf_link_info`: type, id, prog_id, then (8-byte aligned) the per-type union;
    // for TCX its first member is the ifindex. The kernel's struct is smaller than this
    // buffer and accepts the zeroed tail.
    let mut buf = [0u64; 32];
    let info = InfoAttr {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        info_len: u32::try_from(std::mem::size_of_val(&buf)).unwrap_or(u32::MAX),
        info: buf.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &info)?;
    let low_half = |word: u64| {
        let b = word.to_ne_bytes();
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    };
    if low_half(buf[0]) != BPF_LINK_TYPE_TCX {
        return Ok(None);
    }
    Ok(Some(low_half(buf[2])))
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` for
    // `cmd`, its size is passed with it, and every pointer in it outlives the call.
    #[expect(
        unsafe_code,
        reason = "the bpf(2) system call has no safe wrapper here"
    )]
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(r).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
