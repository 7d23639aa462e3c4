//! A real S3-compatible server on loopback, for tests and benchmarks of the S3 blob store.
//!
//! Faking the object store client in-process would test nothing that matters: the point is
//! that nightshift's requests are built, signed (SigV4), sent over HTTP and answered the way an
//! S3 server answers them. [`LoopbackS3`] runs [`s3s`] (the S3 protocol: parsing, signature
//! checks, XML errors) over [`s3s_fs`] (objects as files in a temporary directory) on
//! `127.0.0.1`, on a thread and runtime of its own, with one access key and secret key that
//! every request must be signed with.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The access key requests must be signed with.
pub const ACCESS_KEY: &str = "nightshift-test";
/// The secret key requests must be signed with.
pub const SECRET_KEY: &str = "nightshift-test-secret";
/// The bucket that exists from the start.
pub const BUCKET: &str = "nightshift";

/// A running server. Dropping it stops the server and removes its objects.
#[derive(Debug)]
pub struct LoopbackS3 {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Declared last: removed after the server has stopped.
    root: tempfile::TempDir,
}

impl LoopbackS3 {
    /// Starts a server with one empty bucket, [`BUCKET`].
    pub fn start() -> io::Result<LoopbackS3> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(BUCKET))?;
        let files = s3s_fs::FileSystem::new(root.path())
            .map_err(|err| io::Error::other(format!("{err:?}")))?;
        let mut service = S3ServiceBuilder::new(files);
        service.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = service.build();

        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loopback-s3")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loopback-s3".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let mut stopped = std::pin::pin!(stopped);
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        // As servers in production do: otherwise a response written in two
                        // parts waits for the client's delayed ACK (tens of milliseconds).
                        let _ = socket.set_nodelay(true);
                        let service = service.clone();
                        tokio::spawn(async move {
                            // A client that hangs up mid-request is its own business.
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(socket), service)
                                .await;
                        });
                    }
                });
                // Connections still open are dropped with the runtime.
                runtime.shutdown_background();
            })?;
        Ok(LoopbackS3 {
            address,
            stop: Some(stop),
            thread: Some(thread),
            root,
        })
    }

    /// The endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `s3://BUCKET`, or `s3://BUCKET/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        }
    }

    /// The `AWS_*` settings a client needs to reach this server with the right keys, as
    /// (name, value) pairs in the form of environment variables.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(SECRET_KEY)
    }

    /// [`LoopbackS3::env`] with another secret key, which the server refuses.
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", secret.into()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
    }

    /// Where the server keeps the object `key` of [`BUCKET`] on disk.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The server's directory: one subdirectory per bucket.
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for LoopbackS3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
