//! The conversation between the host and a session's init, over one unix stream socket.
//!
//! A frame is `[u32 header length][u32 payload length][JSON header][raw payload]`, both lengths
//! big-endian. The header carries structure; the payload carries bytes that JSON would bloat
//! (standard input, command output). Both ends are ours and run the same binary, so the format
//! needs no negotiation, only bounds: a peer that sends a frame past the limits is broken.

use std::io::{self, Read, Write};
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
    /// `cgroup.procs` files the helper joins before anything else.
    pub cgroup_procs: Vec<PathBuf>,
    /// `cgroup.procs` files every command joins before it executes (the limited leaves).
    pub cgroup_commands: Vec<PathBuf>,
    /// Size of the /tmp tmpfs in bytes.
    pub tmp_bytes: u64,
    /// Resource limits applied to the init and inherited by every command.
    pub rlimits: RlimitSpec,
    /// Whether `state/proxy.sock` is the egress proxy's socket, to bind into the sandbox.
    pub proxy: bool,
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
