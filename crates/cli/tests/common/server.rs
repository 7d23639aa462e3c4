//! A real `nightshift serve` over a test's home.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use super::Nightshift;

/// A running `nightshift serve` with the default model `openai:m`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// With `workers` workers in the process (0: it only serves), on a free loopback port.
    pub fn start(ns: &Nightshift, workers: usize) -> Server {
        Server::start_on(ns, workers, "127.0.0.1:0")
    }

    pub fn start_on(ns: &Nightshift, workers: usize, listen: &str) -> Server {
        let mut child = ns
            .command(&[
                "serve",
                "--listen",
                listen,
                "--workers",
                &workers.to_string(),
                "--model",
                "openai:m",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string();
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    /// SIGTERM, and its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
