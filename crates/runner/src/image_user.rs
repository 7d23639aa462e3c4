//! Who the agent and the checks run as on an image: devcontainer.json's `remoteUser` (or
//! `containerUser`), else the image's user (the configuration's `User`, or the last `USER` of
//! the Dockerfile built over it), resolved in the image's `/etc/passwd` and
//! `/etc/group` over every layer the sessions stack (so a user that a build step or setup
//! added is found). Root, or no user, leaves the sandbox's own unprivileged user.

use nightshift_agent::SinkError;
use nightshift_env::build::users::ImageEtc;
use nightshift_env::config::Origin;
use nightshift_protocol::{ErrorKind, Event};
use nightshift_sandbox::SessionUser;

use crate::Runner;
use crate::ending::{Ending, fail};
use crate::handoff::Run;
use crate::image::WantedUser;

impl Runner {
    /// The image's user for the task's sessions that do not run as root; `None` for root or
    /// no user. The task's ending when the user cannot be resolved.
    pub(crate) async fn image_user(
        &self,
        run: &Run<'_>,
    ) -> Result<Result<Option<SessionUser>, Ending>, SinkError> {
        let log = run.log;
        let Some(image) = run.image else {
            return Ok(Ok(None));
        };
        // devcontainer.json's `remoteUser` (or `containerUser`) over what the image says.
        let named = run
            .env
            .config
            .environment
            .user
            .clone()
            .map(|text| WantedUser {
                text,
                origin: match run.env.origin("environment.user") {
                    Some(Origin::Imported { path, field, .. }) => {
                        format!("`{field}` of {}", path.display())
                    }
                    _ => "the repository's user".to_string(),
                },
            });
        let Some(wanted) = named.or_else(|| image.user.clone()) else {
            return Ok(Ok(None));
        };
        let kept: Vec<_> = image.built.iter().chain(run.layers).cloned().collect();
        let etc = ImageEtc::new(&image.layers, &kept);
        let text = wanted.text.clone();
        let resolved = tokio::task::spawn_blocking(move || etc.user(&text))
            .await
            .map_err(|err| err.to_string())
            .and_then(|resolved| resolved.map_err(|err| err.to_string()));
        let user = match resolved {
            Ok(Some(user)) => user,
            Ok(None) => return Ok(Ok(None)),
            Err(message) => {
                let message = format!(
                    "{} is `{}`, which the image does not resolve: {message}",
                    wanted.origin, wanted.text
                );
                let hint = "name a user the image (or a build step before it) creates, or a numeric UID[:GID]".to_string();
                return fail(log, ErrorKind::InvalidInput, message, Some(hint))
                    .await
                    .map(Err);
            }
        };
        if !self.sandbox.supports_users() {
            log.append(Event::Warning {
                message: format!(
                    "{} is `{}`; the `{}` sandbox runs commands as its own user here (an image's user needs nightshift to run as root), so the agent does not run as {}",
                    wanted.origin,
                    wanted.text,
                    self.sandbox.backend(),
                    user.name
                ),
            })
            .await?;
            return Ok(Ok(None));
        }
        Ok(Ok(Some(SessionUser {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups: user.groups,
            home: user.home,
        })))
    }
}
