//! Configuration: read the file, parse it, validate it, reporting every error at once.

mod types;
pub use types::*;
