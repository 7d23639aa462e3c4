//! Inside the sandbox, the only way out: 127.0.0.1:3128 relayed to the host's egress proxy
//! through the unix socket bound at [`PROXY_SOCKET`]. Programs find it through the usual proxy
//! variables; the proxy decides what may pass.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

pub use super::helper::PROXY_SOCKET;

/// The port programs inside connect to.
pub const BRIDGE_PORT: u16 = 3128;

/// Starts the relay on a thread of its own.
pub fn listen() -> Result<(), String> {
    let listener = TcpListener::bind(("127.0.0.1", BRIDGE_PORT))
        .map_err(|e| format!("listening on 127.0.0.1:{BRIDGE_PORT}: {e}"))?;
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            // Relayed writes go out as they come (no wait for a delayed acknowledgement).
            let _ = client.set_nodelay(true);
            std::thread::spawn(move || {
                if let Ok(upstream) = UnixStream::connect(PROXY_SOCKET) {
                    let _ = relay(client, upstream);
                }
            });
        }
    });
    Ok(())
}

fn relay(client: TcpStream, upstream: UnixStream) -> io::Result<()> {
    let mut client_read = client.try_clone()?;
    let mut upstream_write = upstream.try_clone()?;
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
    Ok(())
}
