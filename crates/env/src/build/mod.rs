//! What nightshift builds itself on top of an image, without Docker: a Dockerfile's steps
//! ([`dockerfile`]) with the files they copy from the build context ([`context`]), and
//! devcontainer features ([`features`]), and the image's users they and the agent run as
//! ([`users`]).

pub mod add_archive;
pub mod context;
pub mod dockerfile;
pub mod features;
pub mod users;
pub mod words;
