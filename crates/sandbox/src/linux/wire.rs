//! The conversation between the host and a session's init, over one unix stream socket.
//!
//! A frame is `[u32 header length][u32 payload length][JSON header][raw payload]`, both lengths
//! big-endian. The header carries structure; the payload carries bytes that JSON would bloat
//! (standard input, command output). Both ends are ours and run the same binary, so the format
//! needs no negotiation, only bounds: a peer that sends a frame past the limits is broken.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The largest header accepted.
pub const MAX_HEADER: usize = 1 << 20;
/// The largest payload accepted.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// Everything the helper needs to build a session, sent as the first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperConfig {
    /// The task's working copy on the host: the overlay's lower layer.
    pub workspace: PathBuf,
    /// The session's state directory on the host: `upper/` and `work/` of the overlay (owned
    /// by `host_id`) and the proxy's socket.
    pub state: PathBuf,
    /// Host directories bound read-only at the same path inside, besides the system ones.
    pub ro_binds: Vec<PathBuf>,
    /// The host uid and gid the sandbox user is mapped to.
    pub host_id: u32,
    /// The uid and gid the sandbox user has inside.
    pub inside_id: u32,
    /// Whether the helper starts as host root and must drop to `host_id`, showing the
    /// root-owned working copy as the sandbox user's through an idmapped mount.
    pub drop_root: bool,
    /// The host paths of the descriptors passed with this frame: detached mount trees the host
    /// cloned as root (the workspace idmapped), one per path.
    pub trees: Vec<PathBuf>,
    /// Size of the /tmp tmpfs in bytes.
    pub tmp_bytes: u64,
    /// Whether `state/proxy.sock` is the egress proxy's socket, to bind into the sandbox.
    pub proxy: bool,
    /// Whether `state/ca-bundle.pem` is a CA bundle (the host's roots and the session's CA) to
    /// show at `CA_BUNDLE` and over the system bundles inside.
    #[serde(default)]
    pub ca_bundle: bool,
    /// The seccomp filters, compiled by the host (see `confine::compiled_filters`).
    pub seccomp: Vec<Vec<u64>>,
    /// Read-only layers, lowest first: each a directory whose `workspace/`, `home/` and
    /// `system/<name>/` are stacked over the workspace, the home directory and the system
    /// directories (see `rootfs::SYSTEM_DIRS`).
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// The image the root is made of, when not the host's system: its layers' directories,
    /// lowest first (see `SessionSpec::image`).
    #[serde(default)]
    pub image: Vec<PathBuf>,
    /// Whether the working copy is stacked above the layers' `workspace/` parts rather than
    /// below them (see `SessionSpec::workspace_over_layers`).
    #[serde(default)]
    pub workspace_over_layers: bool,
    /// Whether the workspace is mounted read-only (see `SessionSpec::read_only_workspace`).
    #[serde(default)]
    pub read_only_workspace: bool,
    /// Whether the system directories are writable overlays whose changes the session keeps
    /// (`state/system/<name>/upper`): commands run as root of a namespace that maps a range of
    /// ids, over the host's directories idmapped to it.
    #[serde(default)]
    pub writable_system: bool,
    /// The names of the system directories whose idmapped trees follow `trees`' descriptors,
    /// in that order.
    #[serde(default)]
    pub system_trees: Vec<String>,
    /// The image's user every command switches to before it executes, in a namespace that
    /// maps a range of ids (see `SessionSpec::user`); `None`: commands keep the init's ids.
    #[serde(default)]
    pub user: Option<CommandUser>,
}

/// The ids a command runs as, inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; the primary group is always among them.
    pub groups: Vec<u32>,
}

/// The second frame to the helper, sent once the host has made the session's cgroups (while the
/// helper builds the sandbox): the init joins them before it confines itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionLimits {
    /// How many of the descriptors passed with this frame are the init's cgroup leaves (their
    /// `tasks` or `cgroup.procs`, open for writing), which the init joins.
    pub init_cgroups: usize,
    /// How many descriptors follow those: the limited leaves, which every command joins before
    /// it executes.
    pub command_cgroups: usize,
    /// Resource limits applied to the init and inherited by every command.
    pub rlimits: RlimitSpec,
}

/// Resource limits as numbers; `None` leaves a limit as inherited.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RlimitSpec {
    pub nofile: Option<u64>,
    pub fsize: Option<u64>,
    pub nproc: Option<u64>,
    pub data: Option<u64>,
}

/// From the host to the init.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Run a command; standard input is the frame's payload.
    Exec {
        id: u64,
        command: String,
        /// Relative to /workspace, already checked not to climb out.
        cwd: PathBuf,
        env: Vec<(String, String)>,
        timeout_ms: u64,
        output_limit: usize,
        /// Whether the payload is standard input (an empty one still opens a pipe).
        stdin: bool,
    },
    /// Start a long-lived command whose standard input, output and error are the three pipe
    /// ends passed with this frame, in that order; `Done` follows when it exits (see
    /// `SandboxSession::spawn`).
    Spawn {
        id: u64,
        command: String,
        /// Relative to /workspace, already checked not to climb out.
        cwd: PathBuf,
        env: Vec<(String, String)>,
    },
    /// Kill the process group of a running command.
    Kill { id: u64 },
}

/// From the helper or the init to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The init was forked; this is its pid as the host sees it.
    Spawned { pid: i32 },
    /// The session is built and confined; commands may be sent.
    Ready { confinement: Vec<String> },
    /// The session could not be built.
    SetupFailed { message: String },
    /// A command ended; the payload is its rendered output.
    Done {
        id: u64,
        status: WireStatus,
        omitted: u64,
        duration_ms: u64,
    },
}

/// How a command ended, as the init saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireStatus {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    TimedOut,
    /// Killed on the host's request.
    Killed,
    /// It could not be started.
    SpawnFailed {
        message: String,
    },
}

/// Writes one frame in a single buffer, so that frames of two writers never interleave.
pub fn write_frame<T: Serialize>(
    out: &mut impl Write,
    header: &T,
    payload: &[u8],
) -> io::Result<()> {
    let buf = encode_frame(header, payload)?;
    out.write_all(&buf)?;
    out.flush()
}

/// Encodes one frame.
pub fn encode_frame<T: Serialize>(header: &T, payload: &[u8]) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    if json.len() > MAX_HEADER || payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut buf = Vec::with_capacity(8 + json.len() + payload.len());
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Splits the 8-byte prefix into the two lengths, checking the bounds.
pub fn decode_lengths(prefix: [u8; 8]) -> io::Result<(usize, usize)> {
    let header = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let payload = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    if header > MAX_HEADER || payload > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    Ok((header, payload))
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> io::Result<Option<(T, Vec<u8>)>> {
    let mut prefix = [0u8; 8];
    let mut filled = 0;
    while filled < prefix.len() {
        match input.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    let (header_len, payload_len) = decode_lengths(prefix)?;
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header)?;
    let mut payload = vec![0u8; payload_len];
    input.read_exact(&mut payload)?;
    let header = serde_json::from_slice(&header).map_err(io::Error::other)?;
    Ok(Some((header, payload)))
}

/// The most descriptors one frame carries (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 200;

/// Writes an encoded frame on a blocking socket, the descriptors `fds` riding with its first
/// byte.
pub fn send_with_fds(socket: &UnixStream, frame: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let sent = sendmsg_with_fds(socket.as_raw_fd(), frame, fds)?;
    (&*socket).write_all(&frame[sent..])
}

/// One `sendmsg` of (the start of) `frame` with the descriptors `fds`; how many bytes went.
/// Without descriptors nothing is sent: the caller writes the whole frame. On a non-blocking
/// socket it fails with `WouldBlock` when the socket is full.
pub fn sendmsg_with_fds(socket: RawFd, frame: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS || frame.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    if fds.is_empty() {
        return Ok(0);
    }
    let payload = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: an all-zero msghdr is valid; we fill the fields we use.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(payload) bytes, aligned, and zeroed, so the
    // first header exists and has room for `payload` bytes of data.
    let ret = unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(payload) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(header),
            payload as usize,
        );
        libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as usize)
}

/// Reads one frame from a blocking socket, with the descriptors sent along with it
/// (close-on-exec); `Ok(None)` at a clean end of stream. A payload is read and dropped:
/// configuration frames carry none.
pub fn read_frame_with_fds<T: for<'de> Deserialize<'de>>(
    socket: &UnixStream,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    Ok(read_frame_parts(socket, false)?.map(|(header, _, fds)| (header, fds)))
}

/// One frame as read: its header, its payload and the descriptors that came with it.
pub type FrameParts<T> = (T, Vec<u8>, Vec<OwnedFd>);

/// [`read_frame_with_fds`] keeping the payload: a request frame, whose payload may be a
/// command's standard input.
pub fn read_request_with_fds<T: for<'de> Deserialize<'de>>(
    socket: &UnixStream,
) -> io::Result<Option<FrameParts<T>>> {
    read_frame_parts(socket, true)
}

fn read_frame_parts<T: for<'de> Deserialize<'de>>(
    socket: &UnixStream,
    keep_payload: bool,
) -> io::Result<Option<FrameParts<T>>> {
    let mut prefix = [0u8; 8];
    let mut filled = 0;
    let mut fds = Vec::new();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    while filled < prefix.len() {
        let mut iov = libc::iovec {
            iov_base: prefix[filled..].as_mut_ptr().cast(),
            iov_len: prefix.len() - filled,
        };
        // SAFETY: an all-zero msghdr is valid; we fill the fields we use.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = (control.len() * 8) as _;
        // SAFETY: every buffer the header points to is live and as large as it says.
        let ret = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it within its length,
        // and each SCM_RIGHTS payload is an array of descriptors now ours.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET
                    && (*header).cmsg_type == libc::SCM_RIGHTS
                {
                    let data = libc::CMSG_DATA(header);
                    let bytes = (*header).cmsg_len as usize - (data as usize - header as usize);
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("descriptors were truncated"));
        }
        match ret as usize {
            0 if filled == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    let (header_len, payload_len) = decode_lengths(prefix)?;
    let mut header = vec![0u8; header_len];
    (&*socket).read_exact(&mut header)?;
    let mut payload = Vec::new();
    if keep_payload {
        payload = vec![0u8; payload_len];
        (&*socket).read_exact(&mut payload)?;
    } else {
        io::copy(&mut socket.take(payload_len as u64), &mut io::sink())?;
    }
    let header = serde_json::from_slice(&header).map_err(io::Error::other)?;
    Ok(Some((header, payload, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_binary_payloads() {
        let request = Request::Exec {
            id: 7,
            command: "cat".into(),
            cwd: PathBuf::from("src"),
            env: vec![("A".into(), "b".into())],
            timeout_ms: 1000,
            output_limit: 10,
            stdin: true,
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &request, &[0, 255, 10]).unwrap();
        write_frame(&mut buf, &Request::Kill { id: 7 }, &[]).unwrap();
        let mut reader = buf.as_slice();
        let (first, payload): (Request, _) = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(first, request);
        assert_eq!(payload, vec![0, 255, 10]);
        let (second, payload): (Request, _) = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(second, Request::Kill { id: 7 });
        assert!(payload.is_empty());
        assert!(read_frame::<Request>(&mut reader).unwrap().is_none());
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_an_end() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Reply::Spawned { pid: 1 }, b"xyz").unwrap();
        buf.truncate(buf.len() - 1);
        assert!(read_frame::<Reply>(&mut buf.as_slice()).is_err());
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut prefix = [0u8; 8];
        prefix[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_lengths(prefix).is_err());
        let mut input = prefix.as_slice();
        assert!(read_frame::<Reply>(&mut input).is_err());
    }

    #[test]
    fn descriptors_travel_with_a_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let frame = encode_frame(&Request::Kill { id: 3 }, &[]).unwrap();
        send_with_fds(&a, &frame, &[file.as_raw_fd(), file.as_raw_fd()]).unwrap();
        let (request, fds): (Request, _) = read_frame_with_fds(&b).unwrap().unwrap();
        assert_eq!(request, Request::Kill { id: 3 });
        assert_eq!(fds.len(), 2);
        send_with_fds(&a, &frame, &[]).unwrap();
        let (_, fds): (Request, _) = read_frame_with_fds(&b).unwrap().unwrap();
        assert!(fds.is_empty());
        drop(a);
        assert!(read_frame_with_fds::<Request>(&b).unwrap().is_none());
    }

    #[test]
    fn statuses_have_a_stable_json_shape() {
        let reply = Reply::Done {
            id: 1,
            status: WireStatus::Exited { code: 3 },
            omitted: 0,
            duration_ms: 5,
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"type":"done","id":1,"status":{"kind":"exited","code":3},"omitted":0,"duration_ms":5}"#
        );
    }
}
