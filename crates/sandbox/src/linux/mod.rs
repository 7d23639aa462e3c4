//! The isolating backend: every session is a set of fresh Linux namespaces with its own root,
//! its workspace as an overlay over the task's working copy, a pid-1 init that runs commands
//! into the live session, cgroup and rlimit limits, Landlock, seccomp, and either no network
//! or an allowlisting egress proxy.
//!
//! The host side (this module and [`session`]) never creates namespaces itself: it starts the
//! helper (see [`helper`]) and talks to the init over a socket ([`wire`]).

mod cgroup;
mod config;
mod confine;
pub(crate) mod helper;
mod limits;
mod process;
mod proxy;
mod proxy_bridge;
mod session;
mod spare;
mod state;
mod sys;
mod system;
mod trees;
pub(crate) mod wire;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;

pub use cgroup::Version as CgroupVersion;
pub use config::{
    EgressLimits, HelperCommand, Limits, NamespacedConfig, NetworkPolicy, ROOT_HOST_ID, SANDBOX_ID,
    SessionOptions,
};
pub use helper::{HELPER_ARG, run_helper_if_requested};
pub use proxy::trust::CA_BUNDLE;
pub use proxy::{EgressEvent, EgressVerdict};
pub use session::NamespacedSession;

pub(crate) use cgroup::probe as probe_cgroups;

use crate::{
    Credential, FileOwner, Sandbox, SandboxError, SandboxSession, SessionSpec, SessionUser,
};
use config::Ids;
use helper::SYSTEM_DIRS;
use limits::limit;
use process::HelperProcess;
use proxy::intercept::Interception;
use proxy::trust::CA_BUNDLE_FILE;
use spare::{Helper, NextSpare, Warm, spawn_helper};
use state::{prepare_state, session_name, sweep_stale_state_now_and_then};
use wire::{CommandUser, HelperConfig, Reply};

/// Isolating backend. See the module documentation.
#[derive(Debug, Clone)]
pub struct Namespaced {
    config: Arc<NamespacedConfig>,
    warm: Arc<Warm>,
}

fn setup_error(message: impl Into<String>) -> SandboxError {
    SandboxError::Setup(message.into())
}

impl Namespaced {
    pub fn new(config: NamespacedConfig) -> Self {
        Namespaced {
            config: Arc::new(config),
            warm: Arc::default(),
        }
    }

    pub fn config(&self) -> &NamespacedConfig {
        &self.config
    }

    /// Starts a session with per-session options; [`Sandbox::start`] uses the defaults.
    pub async fn start_with(
        &self,
        spec: SessionSpec,
        options: SessionOptions,
    ) -> Result<NamespacedSession, SandboxError> {
        let workspace =
            std::fs::canonicalize(&spec.workspace).map_err(|source| SandboxError::Workspace {
                path: spec.workspace.clone(),
                source,
            })?;
        if !workspace.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
            return Err(SandboxError::Workspace {
                path: workspace,
                source,
            });
        }
        let limits = options.limits.unwrap_or_else(|| self.config.limits.clone());
        let network = options
            .network
            .unwrap_or_else(|| self.config.network.clone());
        sweep_stale_state_now_and_then(&self.config.state_dir);

        // The helper first: executing it takes about a millisecond, in which this side prepares
        // everything else. The helper waits for its configuration.
        let (host_id, drop_root) = self.host_ids();
        // Root's commands are root's, whoever the image's user is.
        let user = spec.user.as_ref().filter(|_| !options.root);
        let ids = match user {
            Some(user) => {
                config::check_image_user(user, &spec.image).map_err(setup_error)?;
                Ids::image_user(host_id, drop_root).map_err(setup_error)?
            }
            None => Ids::new(options.root, host_id, drop_root),
        };
        let spare = if options.root || ids.image_user {
            None
        } else {
            self.take_spare(host_id, drop_root)
        };
        let helper = match spare {
            Some(helper) => helper,
            None => spawn_helper(&self.config, ids, false)?,
        };
        let name = session_name();
        let mut resources = state::Resources::new(self.config.state_dir.join(&name));
        let events = options.egress_events;
        let layers = spec
            .layers
            .iter()
            .map(|layer| {
                std::fs::canonicalize(layer).map_err(|source| SandboxError::Workspace {
                    path: layer.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let image = spec
            .image
            .iter()
            .map(|layer| {
                std::fs::canonicalize(layer).map_err(|source| SandboxError::Workspace {
                    path: layer.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prepared = self.prepare(
            (
                &workspace,
                &layers,
                &image,
                (spec.workspace_over_layers, spec.read_only_workspace),
            ),
            &limits,
            (&network, options.credentials),
            events,
            (ids, user),
            &mut resources,
        );
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                drop(helper); // kills it
                resources.teardown(None);
                return Err(error);
            }
        };
        let fds: Vec<_> = prepared.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let sent = wire::encode_frame(&prepared.config, &[])
            .and_then(|frame| wire::send_with_fds(&helper.control, &frame, &fds));
        if let Err(e) = &sent {
            // A helper that failed before reading its configuration said why on the socket:
            // the handshake below reports that rather than a broken pipe.
            tracing::debug!(error = %e, "sending the sandbox helper its configuration");
        }
        drop(prepared.fds);
        // The cgroups while the helper builds the sandbox; the init joins them at the end.
        let (cgroup_frame, mut notes) = match limit(&name, &limits, &mut resources) {
            Ok(made) => made,
            Err(error) => {
                drop(helper); // kills it
                resources.teardown(None);
                return Err(error);
            }
        };
        if let Err(e) = cgroup_frame.send(&helper.control) {
            tracing::debug!(error = %e, "sending the sandbox helper its limits");
        }
        let started = self.handshake(helper).await;
        let next_spare = (self.warm.starts.fetch_add(1, Ordering::Relaxed) > 0)
            .then(|| NextSpare::after_start(&self.warm, &self.config, (host_id, drop_root)));
        let (child, stream, pid, confinement, stderr) = match started {
            Ok(started) => started,
            Err(error) => {
                resources.teardown(None);
                return Err(error);
            }
        };
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                resources.teardown(None);
                return Err(setup_error(format!("pidfd_open({pid}): {e}")));
            }
        };
        notes.extend(confinement);
        let mut env = session::base_env();
        for (key, value) in &spec.image_env {
            env.retain(|(existing, _)| existing != key);
            env.push((key.clone(), value.clone()));
        }
        if spec.image.is_empty() {
            session::apply_host_env(&mut env, &self.config.path_prefix, &self.config.env);
        }
        if options.root {
            session::root_env(&mut env, prepared.config.writable_system);
        } else if let Some(user) = user {
            session::user_env(&mut env, user);
        }
        if resources.proxy.is_some() {
            env.extend(proxy::proxy_env());
        }
        if prepared.config.ca_bundle {
            env.extend(proxy::trust::ca_env());
        }
        for (key, value) in spec.env {
            env.retain(|(existing, _)| *existing != key);
            env.push((key, value));
        }
        Ok(NamespacedSession::new(session::Parts {
            stream,
            child,
            pid,
            pidfd,
            resources,
            upper: prepared.upper,
            limits,
            env,
            report: notes,
            stderr,
            file_owner: prepared.file_owner,
            next_spare,
        }))
    }

    /// The host's share of a session before the helper can start building it: its state
    /// directory, proxy, and (as root) the mount trees, with the configuration and descriptors
    /// that tell the helper about them.
    fn prepare(
        &self,
        (workspace, layers, image, (workspace_over_layers, read_only_workspace)): (
            &Path,
            &[PathBuf],
            &[PathBuf],
            (bool, bool),
        ),
        limits: &Limits,
        (network, credentials): (&NetworkPolicy, Vec<Credential>),
        egress_events: Option<tokio::sync::mpsc::UnboundedSender<EgressEvent>>,
        (ids, user): (Ids, Option<&SessionUser>),
        resources: &mut state::Resources,
    ) -> Result<Prepared, SandboxError> {
        let Ids {
            host_id, drop_root, ..
        } = ids;
        // The host ids the image's user stands for: the workspace and what setup left in it
        // are theirs.
        let user_owner = user.map(|user| (host_id + user.uid, host_id + user.gid));
        // The host's system directories, writable over idmapped copies of them; an image's are
        // writable in every session, over its layers.
        let system = (ids.writable_system() && image.is_empty()).then_some((host_id, ids.range));
        let upper = prepare_state(
            &resources.state_dir,
            drop_root.then_some(host_id),
            state::Overlays {
                system,
                image: !image.is_empty(),
                user: user_owner,
            },
        )
        .map_err(|e| setup_error(format!("preparing {}: {e}", resources.state_dir.display())))?;

        let (proxy, ca_bundle) = match network {
            NetworkPolicy::None => (false, false),
            NetworkPolicy::Allow(patterns) => {
                let interception = if credentials.is_empty() {
                    None
                } else {
                    let interception =
                        Interception::new(credentials, self.config.upstream_roots.clone())
                            .map_err(setup_error)?;
                    let bundle = resources.state_dir.join(CA_BUNDLE_FILE);
                    proxy::trust::write_bundle(&bundle, interception.ca_pem())
                        .map_err(|e| setup_error(format!("writing {}: {e}", bundle.display())))?;
                    Some(Arc::new(interception))
                };
                let ca_bundle = interception.is_some();
                let path = resources.state_dir.join("proxy.sock");
                let policy = proxy::ProxyPolicy {
                    allowlist: proxy::Allowlist::new(patterns),
                    allow_private: proxy::Allowlist::new(&self.config.allow_private),
                    limits: self.config.egress.clone(),
                };
                let proxy = proxy::EgressProxy::start(
                    &path,
                    policy,
                    interception,
                    egress_events,
                    drop_root.then_some(host_id),
                )
                .map_err(|e| setup_error(format!("starting the egress proxy: {e}")))?;
                resources.proxy = Some(proxy);
                (true, ca_bundle)
            }
        };

        // The host's toolchains belong to the host's system: a session on an image sees the
        // image alone.
        let ro_binds: &[PathBuf] = if image.is_empty() {
            &self.config.ro_binds
        } else {
            &[]
        };
        let mut fds = Vec::new();
        let mut tree_paths = Vec::new();
        if drop_root {
            let mut trees = trees::open(
                workspace,
                &resources.state_dir,
                ro_binds.iter().chain(layers).chain(image),
                user_owner.unwrap_or((host_id, host_id)),
            )
            .map_err(setup_error)?;
            if let Some(owner) = user_owner {
                trees.extend(trees::user_parts(layers, host_id, owner).map_err(setup_error)?);
            }
            for (path, fd) in trees {
                tree_paths.push(path);
                fds.push(fd);
            }
        }
        let mut system_trees = Vec::new();
        if let Some((host_id, range)) = system {
            for (name, fd) in trees::system(SYSTEM_DIRS, host_id, range).map_err(setup_error)? {
                system_trees.push(name);
                fds.push(fd);
            }
        }
        let seccomp = confine::compiled_filters().map_err(setup_error)?;
        let config = HelperConfig {
            workspace: workspace.to_path_buf(),
            state: resources.state_dir.clone(),
            ro_binds: ro_binds.to_vec(),
            host_id,
            inside_id: ids.inside_id,
            drop_root,
            trees: tree_paths,
            tmp_bytes: limits.tmp_bytes,
            proxy,
            ca_bundle,
            seccomp,
            layers: layers.to_vec(),
            image: image.to_vec(),
            workspace_over_layers,
            read_only_workspace,
            writable_system: system.is_some() || !image.is_empty(),
            system_trees,
            user: user.map(|user| CommandUser {
                uid: user.uid,
                gid: user.gid,
                groups: user.groups.clone(),
            }),
        };
        Ok(Prepared {
            config,
            fds,
            upper,
            file_owner: match user_owner {
                Some((uid, gid)) => Some(FileOwner { uid, gid }),
                None => drop_root.then_some(FileOwner {
                    uid: host_id,
                    gid: host_id,
                }),
            },
        })
    }

    /// The host uid the sandbox user stands for, and whether the helper starts as root and
    /// drops to it: as root, the configured id that owns nothing; else our own uid.
    fn host_ids(&self) -> (u32, bool) {
        let euid = nix::unistd::geteuid().as_raw();
        let drop_root = euid == 0;
        (
            if drop_root {
                self.config.root_host_id
            } else {
                euid
            },
            drop_root,
        )
    }

    /// The waiting helper, if there is one for these ids and it is still alive.
    fn take_spare(&self, host_id: u32, drop_root: bool) -> Option<Helper> {
        let spare = self
            .warm
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut spare = spare?;
        // A dead one (its parent thread ended, say) is dropped: reaped.
        if spare.ids != (host_id, drop_root) || !spare.child.alive() {
            return None;
        }
        if let Err(e) = spare.restore_priority() {
            tracing::debug!(error = %e, "a spare sandbox helper could not be used");
            return None;
        }
        Some(spare)
    }

    /// Waits for the helper to report its init spawned and the sandbox ready.
    async fn handshake(
        &self,
        helper: Helper,
    ) -> Result<
        (
            HelperProcess,
            UnixStream,
            i32,
            Vec<String>,
            process::StderrTail,
        ),
        SandboxError,
    > {
        let Helper {
            child,
            control,
            stderr,
            reniced,
            early,
            ..
        } = helper;
        // Read before the handshake: the priority was restored then.
        let restored = early.is_some();
        let stderr = process::StderrTail::collect(stderr);
        control
            .set_nonblocking(true)
            .map_err(|e| setup_error(format!("socket: {e}")))?;
        let mut stream =
            UnixStream::from_std(control).map_err(|e| setup_error(format!("socket: {e}")))?;
        let handshake = async {
            let first = match early {
                Some(reply) => reply,
                None => read_reply(&mut stream).await?,
            };
            let pid = match first {
                Reply::Spawned { pid } => {
                    if reniced && !restored {
                        spare::normal_priority(pid)?;
                    }
                    pid
                }
                Reply::SetupFailed { message } => return Err(message),
                other => return Err(format!("unexpected reply {other:?}")),
            };
            match read_reply(&mut stream).await? {
                Reply::Ready { confinement } => Ok((pid, confinement)),
                Reply::SetupFailed { message } => Err(message),
                other => Err(format!("unexpected reply {other:?}")),
            }
        };
        let outcome = tokio::time::timeout(self.config.start_timeout, handshake).await;
        let failure = match outcome {
            Ok(Ok((pid, confinement))) => return Ok((child, stream, pid, confinement, stderr)),
            Ok(Err(message)) => message,
            Err(_) => format!("no answer within {:?}", self.config.start_timeout),
        };
        drop(child); // kills it
        let tail = stderr.finished().await;
        let detail = if tail.trim().is_empty() {
            String::new()
        } else {
            format!(" ({})", tail.trim())
        };
        Err(setup_error(format!(
            "{failure}{detail}; `nightshift doctor` lists what this host lacks"
        )))
    }
}

/// What [`Namespaced::prepare`] made of a session.
struct Prepared {
    config: HelperConfig,
    /// Sent along with the configuration, in the order it lists them; closed once sent.
    fds: Vec<OwnedFd>,
    upper: PathBuf,
    file_owner: Option<FileOwner>,
}

async fn read_reply(stream: &mut (impl AsyncRead + Unpin)) -> Result<Reply, String> {
    read_frame_async(stream)
        .await
        .map_err(|e| format!("reading from the helper: {e}"))?
        .map(|(reply, _)| reply)
        .ok_or_else(|| "the helper exited before the sandbox was ready".to_string())
}

/// The async twin of [`wire::read_frame`].
pub(crate) async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<(Reply, Vec<u8>)>> {
    let mut prefix = [0u8; 8];
    match input.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (header_len, payload_len) = wire::decode_lengths(prefix)?;
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header).await?;
    let mut payload = vec![0u8; payload_len];
    input.read_exact(&mut payload).await?;
    let reply = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
    Ok(Some((reply, payload)))
}

#[async_trait]
impl Sandbox for Namespaced {
    fn backend(&self) -> &'static str {
        "namespaced"
    }

    fn supports_layers(&self) -> bool {
        true
    }

    fn supports_images(&self) -> bool {
        true
    }

    fn writable_system(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn supports_users(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn credentials(&self) -> bool {
        true
    }

    fn warm_up(&self) {
        let (host_id, drop_root) = self.host_ids();
        // As if a session had started: the first one takes this spare and asks for the next.
        self.warm.starts.fetch_max(1, Ordering::Relaxed);
        self.warm.refill(&self.config, host_id, drop_root);
    }

    fn isolated(&self) -> bool {
        true
    }

    async fn start(&self, spec: SessionSpec) -> Result<Box<dyn SandboxSession>, SandboxError> {
        // The backend-neutral parts of the spec, over this backend's configured defaults.
        let mut limits = self.config.limits.clone();
        let wanted = spec.limits;
        if wanted.memory_bytes.is_some() {
            limits.memory_bytes = wanted.memory_bytes;
        }
        if wanted.pids.is_some() {
            limits.pids = wanted.pids;
        }
        if wanted.cpus.is_some() {
            limits.cpus = wanted.cpus;
        }
        if wanted.disk_bytes.is_some() {
            limits.workspace_bytes = wanted.disk_bytes;
        }
        let network = if spec.network.is_empty() {
            NetworkPolicy::None
        } else {
            NetworkPolicy::Allow(spec.network.clone())
        };
        let options = SessionOptions {
            network: Some(network),
            limits: Some(limits),
            egress_events: spec.egress.clone(),
            credentials: spec.credentials.clone(),
            root: spec.root,
        };
        Ok(Box::new(self.start_with(spec, options).await?))
    }
}
