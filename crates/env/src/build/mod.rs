//! What nightshift builds itself on top of an image, without Docker: a Dockerfile's steps
//! ([`dockerfile`]) with the files they copy from the build context ([`context`]), and
//! devcontainer features ([`features`]).

pub mod context;
pub mod dockerfile;
pub mod features;
pub mod words;
