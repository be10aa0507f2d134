//! The accept loop of the bench's own peers (the ideal responder and the ideal relay): one
//! tokio thread, like the daemon's one dataplane thread, a bound on sessions open at once,
//! and a bound on each session's life.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Sessions open at once; more wait in the listen backlog.
const MAX_SESSIONS: usize = 8192;

/// Accepts on `listen` forever and runs `session` on each connection for at most
/// `lifetime`; a session's own failure (reset, timeout) ends only it.
pub fn serve<F, Fut>(listen: SocketAddr, lifetime: Duration, session: F) -> Result<ExitCode>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let slots = Arc::new(Semaphore::new(MAX_SESSIONS));
        loop {
            let permit = slots.clone().acquire_owned().await?;
            let (s, _) = l.accept().await?;
            let run = session(s);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(lifetime, run).await;
                drop(permit);
            });
        }
    })
}
