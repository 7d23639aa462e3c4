//! One module per subcommand.

pub mod cancel;
pub mod diff;
pub mod follow;
pub mod logs;
pub mod ls;
pub mod run;
pub mod show;
pub mod worker;
