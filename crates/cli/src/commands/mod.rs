//! One module per subcommand.

pub mod apply;
pub mod cancel;
pub mod compare;
pub mod diff;
pub mod doctor;
pub mod env;
mod env_probe;
pub mod follow;
pub mod image;
pub mod logs;
pub mod ls;
pub mod mcp;
pub mod plan;
pub mod repo;
pub mod review;
pub mod run;
pub mod sandbox;
pub mod say;
pub mod secret;
pub mod serve;
pub mod show;
pub mod token;
pub mod worker;
