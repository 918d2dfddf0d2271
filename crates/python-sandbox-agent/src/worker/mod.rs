//! The supervised Python worker process.
//!
//! The in-process GIL cannot stop a snippet stuck in C (`time.sleep(10**6)`), survive `os._exit` or a segfault, or
//! bound memory per conversation, so Python runs in a child process (this binary in `worker` mode) that the agent
//! can interrupt, kill and restart: [`supervisor`] is the agent's side, [`child`] the worker's, and [`protocol`]
//! the frames between them, and [`env`](mod@env) the worker's environment.

pub mod child;
pub mod env;
pub mod protocol;
pub mod supervisor;

pub use supervisor::{Event, Worker, WorkerOptions};
